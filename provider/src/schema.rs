//! Schemas declared once and rendered three ways: as tfplugin6 messages for Terraform, as the
//! JSON `terraform providers schema -json` prints (for the docs), and as planning rules
//! (defaults, computed values, attributes that force replacement).

use serde_json::{Value as Json, json};

use crate::tfplugin6::{self, StringKind};
use crate::value::{Obj, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    String,
    Number,
    Bool,
    SetOf(Box<Ty>),
    MapOf(Box<Ty>),
}

impl Ty {
    pub fn set_of_strings() -> Ty {
        Ty::SetOf(Box::new(Ty::String))
    }

    pub fn map_of_strings() -> Ty {
        Ty::MapOf(Box::new(Ty::String))
    }

    fn json(&self) -> Json {
        match self {
            Ty::String => json!("string"),
            Ty::Number => json!("number"),
            Ty::Bool => json!("bool"),
            Ty::SetOf(inner) => json!(["set", inner.json()]),
            Ty::MapOf(inner) => json!(["map", inner.json()]),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Required,
    Optional,
    Computed,
    /// Optional; when not set, the provider plans its default (or the API's value).
    OptionalComputed,
}

/// How a computed attribute nests objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nesting {
    /// A list of objects.
    List,
    /// One object (or null).
    Single,
}

impl Nesting {
    fn proto(self) -> tfplugin6::schema::object::NestingMode {
        match self {
            Nesting::List => tfplugin6::schema::object::NestingMode::List,
            Nesting::Single => tfplugin6::schema::object::NestingMode::Single,
        }
    }

    fn json(self) -> &'static str {
        match self {
            Nesting::List => "list",
            Nesting::Single => "single",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Ty,
    /// Objects with these attributes (only for computed values).
    pub nested: Option<(Nesting, Vec<Attr>)>,
    pub description: &'static str,
    pub mode: Mode,
    pub sensitive: bool,
    /// Changing it destroys and re-creates the object.
    pub replace: bool,
    /// Computed attributes the API changes on every update (`revision`, `updated_at`, ...).
    pub changes_on_update: bool,
    /// The value planned when an optional + computed attribute is not set.
    pub default: Option<Value>,
}

impl Attr {
    fn new(name: &'static str, ty: Ty, mode: Mode, description: &'static str) -> Attr {
        Attr {
            name,
            ty,
            nested: None,
            description,
            mode,
            sensitive: false,
            replace: false,
            changes_on_update: false,
            default: None,
        }
    }

    pub fn required(name: &'static str, ty: Ty, description: &'static str) -> Attr {
        Attr::new(name, ty, Mode::Required, description)
    }

    pub fn optional(name: &'static str, ty: Ty, description: &'static str) -> Attr {
        Attr::new(name, ty, Mode::Optional, description)
    }

    pub fn computed(name: &'static str, ty: Ty, description: &'static str) -> Attr {
        Attr::new(name, ty, Mode::Computed, description)
    }

    pub fn optional_computed(name: &'static str, ty: Ty, description: &'static str) -> Attr {
        Attr::new(name, ty, Mode::OptionalComputed, description)
    }

    /// A computed list of objects.
    pub fn computed_list(
        name: &'static str,
        attributes: Vec<Attr>,
        description: &'static str,
    ) -> Attr {
        Attr {
            nested: Some((Nesting::List, attributes)),
            ..Attr::new(name, Ty::String, Mode::Computed, description)
        }
    }

    /// A computed object (null when there is nothing to show).
    pub fn computed_object(
        name: &'static str,
        attributes: Vec<Attr>,
        description: &'static str,
    ) -> Attr {
        Attr {
            nested: Some((Nesting::Single, attributes)),
            ..Attr::new(name, Ty::String, Mode::Computed, description)
        }
    }

    pub fn sensitive(mut self) -> Attr {
        self.sensitive = true;
        self
    }

    pub fn force_new(mut self) -> Attr {
        self.replace = true;
        self
    }

    pub fn changes_on_update(mut self) -> Attr {
        self.changes_on_update = true;
        self
    }

    pub fn default(mut self, value: impl Into<Value>) -> Attr {
        self.default = Some(value.into());
        self
    }

    pub fn is_computed(&self) -> bool {
        matches!(self.mode, Mode::Computed | Mode::OptionalComputed)
    }

    fn proto(&self) -> tfplugin6::schema::Attribute {
        let (ty, nested_type) = match &self.nested {
            Some((nesting, attributes)) => (
                Vec::new(),
                Some(tfplugin6::schema::Object {
                    attributes: attributes.iter().map(Attr::proto).collect(),
                    nesting: nesting.proto() as i32,
                    ..Default::default()
                }),
            ),
            None => (self.ty.json().to_string().into_bytes(), None),
        };
        tfplugin6::schema::Attribute {
            name: self.name.to_owned(),
            r#type: ty,
            nested_type,
            description: self.full_description(),
            required: self.mode == Mode::Required,
            optional: matches!(self.mode, Mode::Optional | Mode::OptionalComputed),
            computed: self.is_computed(),
            sensitive: self.sensitive,
            description_kind: StringKind::Markdown as i32,
            ..Default::default()
        }
    }

    fn full_description(&self) -> String {
        let mut description = self.description.to_owned();
        if let Some(default) = &self.default {
            let shown = match default {
                Value::Int(i) => i.to_string(),
                Value::String(s) => format!("\"{s}\""),
                Value::Map(m) if m.is_empty() => "{}".to_owned(),
                other => format!("{other:?}"),
            };
            description.push_str(&format!(" Defaults to `{shown}`."));
        }
        if self.replace {
            description.push_str(" Changing it destroys and re-creates the object.");
        }
        description
    }

    /// The attribute as `terraform providers schema -json` shows it.
    fn json(&self) -> Json {
        let mut out = serde_json::Map::new();
        match &self.nested {
            Some((nesting, attributes)) => {
                out.insert(
                    "nested_type".to_owned(),
                    json!({
                        "attributes": attributes_json(attributes),
                        "nesting_mode": nesting.json(),
                    }),
                );
            }
            None => {
                out.insert("type".to_owned(), self.ty.json());
            }
        }
        out.insert("description".to_owned(), json!(self.full_description()));
        out.insert("description_kind".to_owned(), json!("markdown"));
        match self.mode {
            Mode::Required => {
                out.insert("required".to_owned(), json!(true));
            }
            Mode::Optional => {
                out.insert("optional".to_owned(), json!(true));
            }
            Mode::Computed => {
                out.insert("computed".to_owned(), json!(true));
            }
            Mode::OptionalComputed => {
                out.insert("optional".to_owned(), json!(true));
                out.insert("computed".to_owned(), json!(true));
            }
        }
        if self.sensitive {
            out.insert("sensitive".to_owned(), json!(true));
        }
        Json::Object(out)
    }
}

fn attributes_json(attributes: &[Attr]) -> Json {
    Json::Object(
        attributes
            .iter()
            .map(|a| (a.name.to_owned(), a.json()))
            .collect(),
    )
}

#[derive(Clone, Debug)]
pub struct Schema {
    pub description: &'static str,
    pub attributes: Vec<Attr>,
}

impl Schema {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attributes.iter().find(|a| a.name == name)
    }

    pub fn proto(&self) -> tfplugin6::Schema {
        tfplugin6::Schema {
            version: 0,
            block: Some(tfplugin6::schema::Block {
                version: 0,
                attributes: self.attributes.iter().map(Attr::proto).collect(),
                block_types: Vec::new(),
                description: self.description.to_owned(),
                description_kind: StringKind::Markdown as i32,
                ..Default::default()
            }),
        }
    }

    /// The schema as `terraform providers schema -json` shows it.
    pub fn json(&self) -> Json {
        json!({
            "version": 0,
            "block": {
                "attributes": attributes_json(&self.attributes),
                "description": self.description,
                "description_kind": "markdown",
            }
        })
    }

    /// An object with every attribute null except those given.
    pub fn empty_object(&self) -> Obj {
        Obj(self
            .attributes
            .iter()
            .map(|a| (a.name.to_owned(), Value::Null))
            .collect())
    }

    /// Keeps only schema attributes and fills the missing ones with null, so an object written
    /// by an older provider version (or a hand-edited state) matches the current schema.
    pub fn conform(&self, obj: Obj) -> Obj {
        let mut out = self.empty_object();
        for (name, value) in obj.0 {
            if out.0.contains_key(&name) {
                out.0.insert(name, value);
            }
        }
        out
    }

    /// The planned new state of a create (`prior` = None) or an update, before any
    /// resource-specific checks, plus the attributes whose change forces replacement.
    pub fn plan(&self, prior: Option<&Obj>, config: &Obj, proposed: &Obj) -> (Obj, Vec<String>) {
        let mut planned = self.conform(proposed.clone());
        for attr in &self.attributes {
            let configured = config.get(attr.name);
            match attr.mode {
                Mode::Required | Mode::Optional => {
                    planned.set(attr.name, configured.clone());
                }
                Mode::OptionalComputed if !configured.is_null() => {
                    planned.set(attr.name, configured.clone());
                }
                Mode::OptionalComputed | Mode::Computed => {
                    let value = match (&attr.default, prior) {
                        (Some(default), _) => default.clone(),
                        (None, Some(prior)) => prior.get(attr.name).clone(),
                        (None, None) => Value::Unknown,
                    };
                    planned.set(attr.name, value);
                }
            }
        }
        let Some(prior) = prior else {
            return (planned, Vec::new());
        };
        let changed: Vec<&Attr> = self
            .attributes
            .iter()
            .filter(|a| a.mode != Mode::Computed && !same(planned.get(a.name), prior.get(a.name)))
            .collect();
        if changed.is_empty() {
            // Nothing to do: the plan is the prior state, byte for byte, so it shows no diff.
            return (prior.clone(), Vec::new());
        }
        for attr in &self.attributes {
            if attr.mode == Mode::Computed && attr.changes_on_update {
                planned.set(attr.name, Value::Unknown);
            }
        }
        let replace = changed
            .iter()
            .filter(|a| a.replace)
            .map(|a| a.name.to_owned())
            .collect();
        (planned, replace)
    }
}

/// Equality as Terraform sees it: sets compare without order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().all(|i| y.contains(i)) && y.iter().all(|i| x.contains(i))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            description: "A stream.",
            attributes: vec![
                Attr::computed("id", Ty::String, "Id."),
                Attr::required("name", Ty::String, "Name.").force_new(),
                Attr::optional_computed("shard_count", Ty::Number, "Shards.").default(1_i64),
                Attr::optional_computed("tags", Ty::map_of_strings(), "Tags.")
                    .default(std::collections::BTreeMap::<String, String>::new()),
                Attr::computed("revision", Ty::Number, "Revision.").changes_on_update(),
            ],
        }
    }

    fn obj(pairs: &[(&str, Value)]) -> Obj {
        let mut o = schema().empty_object();
        for (k, v) in pairs {
            o.set(k, v.clone());
        }
        o
    }

    #[test]
    fn create_plans_defaults_and_unknown_computed() {
        let config = obj(&[("name", "s".into())]);
        let (planned, replace) = schema().plan(None, &config, &config);
        assert_eq!(planned.get("shard_count"), &Value::Int(1));
        assert_eq!(planned.get("tags"), &Value::Map(Default::default()));
        assert_eq!(planned.get("id"), &Value::Unknown);
        assert!(replace.is_empty());
    }

    #[test]
    fn unchanged_config_plans_the_prior_state() {
        let prior = obj(&[
            ("id", "s".into()),
            ("name", "s".into()),
            ("shard_count", 1_i64.into()),
            ("tags", Value::Map(Default::default())),
            ("revision", 3_i64.into()),
        ]);
        let config = obj(&[("name", "s".into())]);
        let (planned, replace) = schema().plan(Some(&prior), &config, &prior);
        assert_eq!(planned, prior);
        assert!(replace.is_empty());
    }

    #[test]
    fn changes_mark_volatile_attributes_and_replacements() {
        let prior = obj(&[
            ("id", "s".into()),
            ("name", "s".into()),
            ("shard_count", 1_i64.into()),
            ("tags", Value::Map(Default::default())),
            ("revision", 3_i64.into()),
        ]);
        let config = obj(&[("name", "t".into()), ("shard_count", 2_i64.into())]);
        let (planned, replace) = schema().plan(Some(&prior), &config, &prior);
        assert_eq!(planned.get("shard_count"), &Value::Int(2));
        assert_eq!(planned.get("revision"), &Value::Unknown);
        assert_eq!(planned.get("id"), &Value::string("s"));
        assert_eq!(replace, vec!["name".to_owned()]);
    }
}
