//! Subscription filters: a subset of EventBridge event patterns, compiled once into a
//! [`Filter`] that the API and the provider validate with and the engine matches with.
//!
//! A pattern is a JSON object. Its keys address envelope fields (`event_id`, `event_name`,
//! `producer`, `trace_id`, `user_id`, `device_id`, `content_type`), attributes
//! (`{"attributes": {"region": [...]}}`) and JSON payload fields, by nesting
//! (`{"payload": {"card": {"country": ["US"]}}}`). Keys are taken literally: a key holding a dot
//! is one key. Every addressed field must match (AND); each field lists alternatives in an array
//! (OR):
//!
//! - a string, number, boolean or `null`: the field equals it (numbers compare by value);
//! - `{"prefix": "s"}`, `{"suffix": "s"}`: a string field starting or ending with `s`;
//! - `{"anything-but": v}` with `v` a value, an array of values, or `{"prefix": "s"}`: the field
//!   is present and is none of them;
//! - `{"numeric": [">", 0, "<=", 100]}`: a number field within one or two bounds;
//! - `{"exists": true|false}`: the field is present (an empty envelope string is absent).
//!
//! A payload field holding an array matches when one of its elements does, and arrays of
//! objects on the way are searched element by element, as in EventBridge. A payload that is not
//! JSON matches no payload key at all (not even `exists: false`). Envelope fields are strings,
//! so a number or `numeric` condition never matches them.
//!
//! Complexity is bounded by [`MAX_FILTER_CONDITIONS`] leaf conditions (each alternative counts
//! one) and [`MAX_FILTER_DEPTH`] levels of nesting, so every filter costs the engine a bounded
//! amount of work per event; both are checked when the filter is written and at plan time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The most leaf conditions (alternatives, over all fields) one filter may hold.
pub const MAX_FILTER_CONDITIONS: usize = 300;
/// The deepest a payload key may be nested below `payload`.
pub const MAX_FILTER_DEPTH: usize = 16;

/// Why a pattern is not a valid filter: the key path (e.g. `payload.age`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FilterError {
    /// Dotted, with keys that are not plain words quoted (`payload."a.b"`); empty for the
    /// pattern as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "filter: {}", self.message)
        } else {
            write!(f, "filter key {}: {}", self.path, self.message)
        }
    }
}

/// An envelope string field a filter can address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeField {
    EventId,
    EventName,
    Producer,
    TraceId,
    UserId,
    DeviceId,
    ContentType,
}

impl EnvelopeField {
    const ALL: [(&'static str, EnvelopeField); 7] = [
        ("event_id", EnvelopeField::EventId),
        ("event_name", EnvelopeField::EventName),
        ("producer", EnvelopeField::Producer),
        ("trace_id", EnvelopeField::TraceId),
        ("user_id", EnvelopeField::UserId),
        ("device_id", EnvelopeField::DeviceId),
        ("content_type", EnvelopeField::ContentType),
    ];

    fn parse(key: &str) -> Option<EnvelopeField> {
        EnvelopeField::ALL
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, field)| *field)
    }

    /// The field's value in `envelope`; an empty string is an absent field (proto3).
    pub fn get<'a>(self, envelope: &proto::EnvelopeRef<'a>) -> Option<&'a str> {
        let value = match self {
            EnvelopeField::EventId => envelope.event_id,
            EnvelopeField::EventName => envelope.event_name,
            EnvelopeField::Producer => envelope.producer,
            EnvelopeField::TraceId => envelope.trace_id,
            EnvelopeField::UserId => envelope.user_id,
            EnvelopeField::DeviceId => envelope.device_id,
            EnvelopeField::ContentType => envelope.content_type,
        };
        (!value.is_empty()).then_some(value)
    }
}

/// Where a field's value comes from.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    Envelope(EnvelopeField),
    Attribute(String),
    /// Keys below `payload`.
    Payload(Vec<String>),
}

/// One addressed field and its alternatives.
#[derive(Clone, Debug, PartialEq)]
struct Field {
    source: Source,
    any_of: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq)]
enum Condition {
    Equals(Value),
    Prefix(String),
    Suffix(String),
    AnythingBut(Vec<Value>),
    AnythingButPrefix(String),
    Numeric(Vec<(Op, f64)>),
    Exists(bool),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "=" => Op::Eq,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            _ => return None,
        })
    }

    fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Op::Eq => value == bound,
            Op::Lt => value < bound,
            Op::Le => value <= bound,
            Op::Gt => value > bound,
            Op::Ge => value >= bound,
        }
    }
}

/// What a filter is matched against: an envelope read in place, and its payload parsed as JSON
/// (`None` when it is not JSON).
pub struct Subject<'e, 'a> {
    pub envelope: &'e proto::EnvelopeRef<'a>,
    pub payload: Option<&'e Value>,
}

/// A compiled filter: every field must match one of its alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    fields: Vec<Field>,
    conditions: usize,
}

impl Filter {
    /// Compiles and checks a pattern. `Err` names the first bad key and why.
    pub fn compile(pattern: &Value) -> Result<Filter, FilterError> {
        let Value::Object(top) = pattern else {
            return Err(FilterError {
                path: String::new(),
                message: format!(
                    "must be a JSON object of field names, got {}",
                    kind(pattern)
                ),
            });
        };
        let mut compiler = Compiler::default();
        for (key, value) in top {
            let path = [key.as_str()];
            match key.as_str() {
                "attributes" => {
                    let attributes = object(value, &path)?;
                    for (name, value) in attributes {
                        let any_of = compiler.leaf(value, &["attributes", name])?;
                        compiler.fields.push(Field {
                            source: Source::Attribute(name.clone()),
                            any_of,
                        });
                    }
                }
                "payload" => {
                    let payload = object(value, &path)?;
                    compiler.payload(payload, &mut vec![])?;
                }
                other => {
                    let Some(field) = EnvelopeField::parse(other) else {
                        return Err(FilterError {
                            path: render(&path),
                            message: format!(
                                "is not a field a filter can address; use one of {}, attributes or payload",
                                EnvelopeField::ALL.map(|(name, _)| name).join(", ")
                            ),
                        });
                    };
                    let any_of = compiler.leaf(value, &path)?;
                    compiler.fields.push(Field {
                        source: Source::Envelope(field),
                        any_of,
                    });
                }
            }
        }
        Ok(Filter {
            fields: compiler.fields,
            conditions: compiler.conditions,
        })
    }

    /// Parses a pattern from JSON text and compiles it.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let pattern: Value = serde_json::from_str(text).map_err(|error| FilterError {
            path: String::new(),
            message: format!("is not valid JSON: {error}"),
        })?;
        Filter::compile(&pattern)
    }

    /// How many leaf conditions the filter holds (at most [`MAX_FILTER_CONDITIONS`]).
    pub fn conditions(&self) -> usize {
        self.conditions
    }

    pub fn matches(&self, subject: &Subject<'_, '_>) -> bool {
        self.fields.iter().all(|field| field.matches(subject))
    }

    fn payload_paths(&self) -> impl Iterator<Item = &[String]> {
        self.fields.iter().filter_map(|field| match &field.source {
            Source::Payload(path) => Some(path.as_slice()),
            _ => None,
        })
    }
}

/// The payload keys some filters read, as a tree. [`PayloadReads::parse`] builds only those
/// members of a payload (the rest is checked and skipped, never allocated), and each of the
/// filters matches that partial value exactly as it would the whole payload: every path it
/// follows is kept, arrays included.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PayloadReads {
    children: BTreeMap<String, PayloadReads>,
    /// A path ends here: the value is kept whole.
    whole: bool,
}

impl PayloadReads {
    /// The union of what `filters` read.
    pub fn of<'f>(filters: impl IntoIterator<Item = &'f Filter>) -> PayloadReads {
        let mut reads = PayloadReads::default();
        for path in filters.into_iter().flat_map(Filter::payload_paths) {
            let end = path.iter().fold(&mut reads, |node, key| {
                node.children.entry(key.clone()).or_default()
            });
            end.whole = true;
        }
        reads
    }

    /// Whether no filter reads the payload.
    pub fn is_empty(&self) -> bool {
        !self.whole && self.children.is_empty()
    }

    /// The payload's read members, or `None` when the payload is not JSON (exactly when
    /// parsing it whole would fail, lone surrogate escapes and out-of-range numbers in skipped
    /// members aside).
    pub fn parse(&self, payload: &[u8]) -> Option<Value> {
        // Skipped strings are not checked for UTF-8 by the parser; the whole text is, first.
        let text = std::str::from_utf8(payload).ok()?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let value = Pruned(self).deserialize(&mut deserializer).ok()?;
        deserializer.end().ok()?;
        Some(value)
    }
}

/// Deserializes a JSON value keeping only what a [`PayloadReads`] node reads.
struct Pruned<'r>(&'r PayloadReads);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            serde::Deserialize::deserialize(deserializer)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // Filters search arrays on the way element by element, so each keeps the same reads.
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Pruned(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(Text(key)) = map.next_key()? {
            match self.0.children.get(key.as_ref()) {
                Some(child) => {
                    members.insert(key.into_owned(), map.next_value_seed(Pruned(child))?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(members))
    }
}

/// A JSON string (or object key), borrowed from the input unless it holds escapes.
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

impl Field {
    fn matches(&self, subject: &Subject<'_, '_>) -> bool {
        match &self.source {
            Source::Envelope(field) => string_matches(&self.any_of, field.get(subject.envelope)),
            Source::Attribute(key) => {
                let attributes = &subject.envelope.attributes;
                let value = attributes
                    .binary_search_by(|(k, _)| (*k).cmp(key.as_str()))
                    .ok()
                    .map(|i| attributes[i].1);
                string_matches(&self.any_of, value)
            }
            Source::Payload(path) => {
                let Some(payload) = subject.payload else {
                    return false;
                };
                // One walk, no allocation: whether the path holds anything (for `exists`) and
                // whether any value it holds meets a value condition.
                let mut present = false;
                let mut met = false;
                visit(payload, path, &mut |value| {
                    present = true;
                    met = met
                        || self.any_of.iter().any(|condition| {
                            !matches!(condition, Condition::Exists(_))
                                && condition.matches_value(value)
                        });
                });
                met || self.any_of.iter().any(
                    |condition| matches!(condition, Condition::Exists(want) if *want == present),
                )
            }
        }
    }
}

fn string_matches(any_of: &[Condition], value: Option<&str>) -> bool {
    any_of.iter().any(|condition| match (condition, value) {
        (Condition::Exists(want), value) => *want == value.is_some(),
        (_, None) => false,
        (Condition::Equals(Value::String(s)), Some(v)) => s == v,
        (Condition::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
        (Condition::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
        (Condition::AnythingBut(values), Some(v)) => !values.iter().any(|x| x.as_str() == Some(v)),
        (Condition::AnythingButPrefix(p), Some(v)) => !v.starts_with(p.as_str()),
        (Condition::Equals(_) | Condition::Numeric(_), Some(_)) => false,
    })
}

/// Calls `found` with each value at `path` below `value`, descending into arrays of objects on
/// the way and flattening an array at the end.
fn visit<'v>(value: &'v Value, path: &[String], found: &mut impl FnMut(&'v Value)) {
    match (value, path.split_first()) {
        (Value::Array(items), _) => {
            for item in items {
                visit(item, path, found);
            }
        }
        (value, None) => found(value),
        (Value::Object(map), Some((key, rest))) => match map.get(key) {
            // An empty array is present, but holds nothing to compare.
            Some(empty @ Value::Array(items)) if rest.is_empty() && items.is_empty() => {
                found(empty)
            }
            Some(Value::Array(items)) if rest.is_empty() => items.iter().for_each(&mut *found),
            Some(next) if rest.is_empty() => found(next),
            Some(next) => visit(next, rest, found),
            None => {}
        },
        _ => {}
    }
}

impl Condition {
    fn matches_value(&self, value: &Value) -> bool {
        match self {
            Condition::Exists(_) => true,
            Condition::Equals(expected) => equal(expected, value),
            Condition::Prefix(p) => value.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Condition::Suffix(p) => value.as_str().is_some_and(|s| s.ends_with(p.as_str())),
            Condition::AnythingBut(values) => {
                !value.is_array() && !value.is_object() && !values.iter().any(|x| equal(x, value))
            }
            Condition::AnythingButPrefix(p) => {
                value.as_str().is_some_and(|s| !s.starts_with(p.as_str()))
            }
            Condition::Numeric(bounds) => value
                .as_f64()
                .is_some_and(|n| bounds.iter().all(|(op, bound)| op.holds(n, *bound))),
        }
    }
}

/// Numbers compare by value (`1` equals `1.0`), exactly when both are integers.
fn equal(expected: &Value, value: &Value) -> bool {
    match (expected, value) {
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
                a == b
            } else if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
                a == b
            } else {
                a.as_f64() == b.as_f64()
            }
        }
        (a, b) => a == b,
    }
}

#[derive(Default)]
struct Compiler {
    fields: Vec<Field>,
    conditions: usize,
}

impl Compiler {
    fn payload(
        &mut self,
        map: &Map<String, Value>,
        path: &mut Vec<String>,
    ) -> Result<(), FilterError> {
        for (key, value) in map {
            path.push(key.clone());
            let full = || {
                std::iter::once("payload")
                    .chain(path.iter().map(String::as_str))
                    .collect::<Vec<_>>()
            };
            if path.len() > MAX_FILTER_DEPTH {
                return Err(FilterError {
                    path: render(&full()),
                    message: format!("nests deeper than {MAX_FILTER_DEPTH} levels below payload"),
                });
            }
            match value {
                Value::Object(inner) => self.payload(inner, path)?,
                leaf => {
                    let any_of = self.leaf(leaf, &full())?;
                    self.fields.push(Field {
                        source: Source::Payload(path.clone()),
                        any_of,
                    });
                }
            }
            path.pop();
        }
        Ok(())
    }

    /// An array of alternatives.
    fn leaf(&mut self, value: &Value, path: &[&str]) -> Result<Vec<Condition>, FilterError> {
        let bad = |message: String| FilterError {
            path: render(path),
            message,
        };
        let Value::Array(items) = value else {
            return Err(bad(format!(
                "must be an array of alternatives (e.g. [\"a\", \"b\"]), got {}",
                kind(value)
            )));
        };
        if items.is_empty() {
            return Err(bad(
                "has no alternatives: an empty array never matches".to_owned()
            ));
        }
        self.conditions += items.len();
        if self.conditions > MAX_FILTER_CONDITIONS {
            return Err(FilterError {
                path: render(path),
                message: format!(
                    "the filter holds more than {MAX_FILTER_CONDITIONS} conditions (each alternative counts one); split it or simplify it"
                ),
            });
        }
        items
            .iter()
            .map(|item| condition(item).map_err(bad))
            .collect()
    }
}

fn condition(item: &Value) -> Result<Condition, String> {
    let Value::Object(map) = item else {
        return match item {
            Value::Array(_) => Err("alternatives must not be nested arrays".to_owned()),
            scalar => Ok(Condition::Equals(scalar.clone())),
        };
    };
    let mut entries = map.iter();
    let (Some((operator, operand)), None) = (entries.next(), entries.next()) else {
        return Err(
            "an operator object holds exactly one of prefix, suffix, anything-but, numeric, exists"
                .to_owned(),
        );
    };
    match operator.as_str() {
        "prefix" | "suffix" => {
            let Value::String(text) = operand else {
                return Err(format!("{operator} takes a string, got {}", kind(operand)));
            };
            Ok(if operator == "prefix" {
                Condition::Prefix(text.clone())
            } else {
                Condition::Suffix(text.clone())
            })
        }
        "exists" => match operand {
            Value::Bool(want) => Ok(Condition::Exists(*want)),
            other => Err(format!("exists takes true or false, got {}", kind(other))),
        },
        "anything-but" => anything_but(operand),
        "numeric" => numeric(operand),
        other => Err(format!(
            "unknown operator {other:?}; use prefix, suffix, anything-but, numeric or exists"
        )),
    }
}

fn anything_but(operand: &Value) -> Result<Condition, String> {
    match operand {
        Value::Object(map) => match (map.len(), map.get("prefix")) {
            (1, Some(Value::String(prefix))) => Ok(Condition::AnythingButPrefix(prefix.clone())),
            _ => Err(
                "anything-but takes a value, an array of values or {\"prefix\": \"...\"}"
                    .to_owned(),
            ),
        },
        Value::Array(values) => {
            if values.is_empty() {
                return Err("anything-but needs at least one value".to_owned());
            }
            if let Some(bad) = values.iter().find(|v| v.is_array() || v.is_object()) {
                return Err(format!(
                    "anything-but lists plain values, got {}",
                    kind(bad)
                ));
            }
            Ok(Condition::AnythingBut(values.clone()))
        }
        scalar => Ok(Condition::AnythingBut(vec![scalar.clone()])),
    }
}

fn numeric(operand: &Value) -> Result<Condition, String> {
    const SHAPE: &str = "numeric takes [op, number] or [\">\" or \">=\", low, \"<\" or \"<=\", high], op one of =, <, <=, >, >=";
    let Value::Array(items) = operand else {
        return Err(SHAPE.to_owned());
    };
    if items.len() != 2 && items.len() != 4 {
        return Err(SHAPE.to_owned());
    }
    let mut bounds = Vec::new();
    for pair in items.chunks(2) {
        let op = pair[0]
            .as_str()
            .and_then(Op::parse)
            .ok_or_else(|| format!("{SHAPE}; got operator {}", pair[0]))?;
        let bound = match &pair[1] {
            Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
            _ => None,
        }
        .ok_or_else(|| format!("numeric bounds must be numbers, got {}", pair[1]))?;
        bounds.push((op, bound));
    }
    if let [(low_op, low), (high_op, high)] = bounds[..] {
        if !matches!(low_op, Op::Gt | Op::Ge) || !matches!(high_op, Op::Lt | Op::Le) {
            return Err(SHAPE.to_owned());
        }
        if low > high || (low == high && (low_op == Op::Gt || high_op == Op::Lt)) {
            return Err(format!(
                "numeric range from {low} to {high} is empty: nothing can match it"
            ));
        }
    }
    Ok(Condition::Numeric(bounds))
}

fn object<'v>(value: &'v Value, path: &[&str]) -> Result<&'v Map<String, Value>, FilterError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(FilterError {
            path: render(path),
            message: format!("must be an object of field names, got {}", kind(other)),
        }),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `payload.card."a.b"`: keys that are not plain words are quoted so the path reads unambiguously.
fn render(path: &[&str]) -> String {
    path.iter()
        .map(|key| {
            let plain = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
            if plain {
                (*key).to_owned()
            } else {
                format!("{key:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn envelope(payload: &[u8]) -> proto::EnvelopeRef<'_> {
        proto::EnvelopeRef {
            event_id: "e-1",
            event_name: "signup",
            producer: "growth",
            user_id: "u-42",
            attributes: vec![("région", "eu-west"), ("tier", "")],
            content_type: "application/json",
            payload,
            ..Default::default()
        }
    }

    /// Does `pattern` match an envelope carrying `payload` (raw bytes)?
    #[track_caller]
    fn check(pattern: Value, payload: &str, expected: bool) {
        let filter = Filter::compile(&pattern).expect("valid pattern");
        let envelope = envelope(payload.as_bytes());
        // The engine parses only what the filter reads; both must judge alike.
        let whole = serde_json::from_str::<Value>(payload).ok();
        let partial = PayloadReads::of([&filter]).parse(payload.as_bytes());
        for (parsed, how) in [(whole, "whole"), (partial, "partial")] {
            let subject = Subject {
                envelope: &envelope,
                payload: parsed.as_ref(),
            };
            assert_eq!(
                filter.matches(&subject),
                expected,
                "{pattern} on {payload:.60} ({how} parse)"
            );
        }
    }

    #[test]
    fn a_partial_parse_keeps_only_the_read_keys_and_refuses_what_is_not_json() {
        let filters = [
            json!({"payload": {"card": {"country": ["US"]}, "tags": ["a"]}}),
            json!({"payload": {"items": {"sku": [{"prefix": "x"}]}}, "user_id": ["u-1"]}),
        ]
        .map(|pattern| Filter::compile(&pattern).expect("valid pattern"));
        let reads = PayloadReads::of(&filters);
        let payload = br#"{"card":{"country":"US","number":"4111"},"tags":["a",{"b":1}],
            "items":[{"sku":"x1","qty":2},"loose"],"notes":"\u00e9t\u00e9"}"#;
        assert_eq!(
            reads.parse(payload),
            Some(json!({"card": {"country": "US"}, "tags": ["a", {"b": 1}],
                "items": [{"sku": "x1"}, "loose"]})),
        );
        assert!(PayloadReads::of(&filters[..0]).is_empty());
        // Skipped members are still checked: bad UTF-8, bad syntax or trailing text is no JSON.
        for bad in [
            &b"{\"notes\":\"\xff\",\"tags\":[\"a\"]}"[..],
            b"{\"notes\":tru,\"tags\":[\"a\"]}",
            b"{\"tags\":[\"a\"]} x",
            b"{\"tags\":[\"a\"]",
        ] {
            assert_eq!(reads.parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn matching() {
        let p = r#"{"country":"US","age":21,"score":-0.5,"vip":true,"note":null,
            "tags":["a","b"],"items":[{"sku":"x1","qty":2},{"sku":"y9","qty":0}],
            "a.b":"dotted","":"empty","你好":{"😊":"yes"},"big":18446744073709551615,
            "nested":{"deep":{"deeper":{"x":1}}},"none":[]}"#;
        // Exact values, AND across keys, OR across alternatives.
        check(json!({"payload": {"country": ["US"]}}), p, true);
        check(json!({"payload": {"country": ["CA", "US"]}}), p, true);
        check(json!({"payload": {"country": ["us"]}}), p, false);
        check(
            json!({"payload": {"country": ["US"], "age": [{"numeric": [">=", 18]}]}}),
            p,
            true,
        );
        check(
            json!({"payload": {"country": ["US"], "age": [{"numeric": [">=", 30]}]}}),
            p,
            false,
        );
        // Numbers by value; strings are not numbers.
        check(json!({"payload": {"age": [21.0]}}), p, true);
        check(json!({"payload": {"age": ["21"]}}), p, false);
        check(
            json!({"payload": {"score": [{"numeric": ["<", 0]}]}}),
            p,
            true,
        );
        check(
            json!({"payload": {"score": [{"numeric": [">", -1, "<=", -0.5]}]}}),
            p,
            true,
        );
        check(
            json!({"payload": {"score": [{"numeric": [">", -0.5, "<", 1]}]}}),
            p,
            false,
        );
        check(
            json!({"payload": {"big": [18446744073709551615u64]}}),
            p,
            true,
        );
        check(
            json!({"payload": {"big": [18446744073709551614u64]}}),
            p,
            false,
        );
        check(
            json!({"payload": {"country": [{"numeric": [">", 0]}]}}),
            p,
            false,
        );
        // Booleans and null.
        check(json!({"payload": {"vip": [true]}}), p, true);
        check(json!({"payload": {"vip": ["true"]}}), p, false);
        check(json!({"payload": {"note": [null]}}), p, true);
        check(json!({"payload": {"missing": [null]}}), p, false);
        // Prefix, suffix, anything-but.
        check(json!({"payload": {"country": [{"prefix": "U"}]}}), p, true);
        check(json!({"payload": {"country": [{"suffix": "S"}]}}), p, true);
        check(json!({"payload": {"age": [{"prefix": "2"}]}}), p, false);
        check(
            json!({"payload": {"country": [{"anything-but": "CA"}]}}),
            p,
            true,
        );
        check(
            json!({"payload": {"country": [{"anything-but": ["US", "CA"]}]}}),
            p,
            false,
        );
        check(
            json!({"payload": {"country": [{"anything-but": {"prefix": "U"}}]}}),
            p,
            false,
        );
        check(
            json!({"payload": {"missing": [{"anything-but": "x"}]}}),
            p,
            false,
        );
        // Exists, absent fields, empty arrays.
        check(
            json!({"payload": {"missing": [{"exists": false}]}}),
            p,
            true,
        );
        check(
            json!({"payload": {"missing": [{"exists": true}]}}),
            p,
            false,
        );
        check(json!({"payload": {"note": [{"exists": true}]}}), p, true);
        check(json!({"payload": {"none": [{"exists": true}]}}), p, true);
        check(json!({"payload": {"none": ["x"]}}), p, false);
        check(
            json!({"payload": {"country": {"x": [{"exists": false}]}}}),
            p,
            true,
        );
        // Arrays: any element; arrays of objects are searched.
        check(json!({"payload": {"tags": ["b"]}}), p, true);
        check(json!({"payload": {"tags": ["c"]}}), p, false);
        check(json!({"payload": {"items": {"sku": ["y9"]}}}), p, true);
        check(
            json!({"payload": {"items": {"qty": [{"numeric": [">", 1]}]}}}),
            p,
            true,
        );
        check(
            json!({"payload": {"items": {"qty": [{"numeric": [">", 5]}]}}}),
            p,
            false,
        );
        // Awkward keys are literal.
        check(json!({"payload": {"a.b": ["dotted"]}}), p, true);
        check(json!({"payload": {"a": {"b": ["dotted"]}}}), p, false);
        check(json!({"payload": {"": ["empty"]}}), p, true);
        check(json!({"payload": {"你好": {"😊": ["yes"]}}}), p, true);
        check(
            json!({"payload": {"nested": {"deep": {"deeper": {"x": [1]}}}}}),
            p,
            true,
        );
        // Envelope fields and attributes.
        check(
            json!({"user_id": ["u-42"], "producer": ["growth"]}),
            p,
            true,
        );
        check(json!({"user_id": [{"prefix": "u-"}]}), p, true);
        check(json!({"user_id": [42]}), p, false);
        check(json!({"trace_id": [{"exists": false}]}), p, true);
        check(json!({"trace_id": [""]}), p, false);
        check(json!({"event_name": ["signup"]}), p, true);
        check(json!({"attributes": {"région": ["eu-west"]}}), p, true);
        check(
            json!({"attributes": {"région": [{"suffix": "west"}]}}),
            p,
            true,
        );
        check(json!({"attributes": {"tier": [{"exists": true}]}}), p, true);
        check(
            json!({"attributes": {"ghost": [{"exists": false}]}}),
            p,
            true,
        );
        check(
            json!({"attributes": {"ghost": [{"anything-but": "x"}]}}),
            p,
            false,
        );
        // An empty pattern matches everything.
        check(json!({}), p, true);
        // A payload that is not JSON matches no payload key, not even exists: false.
        check(
            json!({"payload": {"country": ["US"]}}),
            "\u{0}binary",
            false,
        );
        check(
            json!({"payload": {"x": [{"exists": false}]}}),
            "not json",
            false,
        );
        check(json!({"user_id": ["u-42"]}), "not json", true);
        // A payload that is JSON but not an object.
        check(
            json!({"payload": {"x": [{"exists": false}]}}),
            "[1,2]",
            true,
        );
        check(json!({"payload": {"x": [1]}}), "7", false);
    }

    #[track_caller]
    fn refuse(pattern: Value, path: &str, words: &str) {
        let error = Filter::compile(&pattern).expect_err("invalid pattern");
        assert_eq!(error.path, path, "{error}");
        assert!(
            error.message.contains(words),
            "{error} should say {words:?}"
        );
    }

    #[test]
    fn invalid_patterns_name_the_key_and_why() {
        refuse(json!([1]), "", "JSON object");
        refuse(json!({"color": ["red"]}), "color", "not a field");
        refuse(
            json!({"user_id": "u-1"}),
            "user_id",
            "array of alternatives",
        );
        refuse(
            json!({"payload": ["x"]}),
            "payload",
            "object of field names",
        );
        refuse(json!({"attributes": {"k": 1}}), "attributes.k", "array");
        refuse(
            json!({"payload": {"a": {"b": []}}}),
            "payload.a.b",
            "no alternatives",
        );
        refuse(
            json!({"payload": {"a.b": [[1]]}}),
            "payload.\"a.b\"",
            "nested arrays",
        );
        refuse(
            json!({"payload": {"x": [{"prefix": 1}]}}),
            "payload.x",
            "prefix takes a string",
        );
        refuse(
            json!({"payload": {"x": [{"wildcard": "*"}]}}),
            "payload.x",
            "unknown operator",
        );
        refuse(
            json!({"payload": {"x": [{"exists": "yes"}]}}),
            "payload.x",
            "true or false",
        );
        refuse(
            json!({"payload": {"x": [{"prefix": "a", "suffix": "b"}]}}),
            "payload.x",
            "exactly one",
        );
        refuse(
            json!({"payload": {"x": [{"numeric": [">", "1"]}]}}),
            "payload.x",
            "numbers",
        );
        refuse(
            json!({"payload": {"x": [{"numeric": ["~", 1]}]}}),
            "payload.x",
            "op one of",
        );
        refuse(
            json!({"payload": {"x": [{"numeric": ["<", 1, ">", 0]}]}}),
            "payload.x",
            "numeric takes",
        );
        refuse(
            json!({"payload": {"x": [{"numeric": [">", 5, "<", 5]}]}}),
            "payload.x",
            "empty",
        );
        refuse(
            json!({"payload": {"x": [{"numeric": [">"]}]}}),
            "payload.x",
            "numeric takes",
        );
        refuse(
            json!({"payload": {"x": [{"anything-but": []}]}}),
            "payload.x",
            "at least one",
        );
        refuse(
            json!({"payload": {"你好": [{"anything-but": [{}]}]}}),
            "payload.你好",
            "plain values",
        );
        let mut deep = json!(["x"]);
        for _ in 0..=MAX_FILTER_DEPTH {
            deep = json!({ "k": deep });
        }
        refuse(
            json!({ "payload": deep }),
            &format!("payload{}", ".k".repeat(MAX_FILTER_DEPTH + 1)),
            "deeper",
        );
        assert!(
            Filter::parse("{")
                .expect_err("bad json")
                .message
                .contains("not valid JSON")
        );
    }

    #[test]
    fn the_condition_budget_is_enforced() {
        let values: Vec<Value> = (0..MAX_FILTER_CONDITIONS).map(|i| json!(i)).collect();
        let at_budget = Filter::compile(&json!({"payload": {"n": values}})).expect("at budget");
        assert_eq!(at_budget.conditions(), MAX_FILTER_CONDITIONS);
        refuse(
            json!({"payload": {"n": values, "m": ["one more"]}}),
            "payload.n",
            "more than 300 conditions",
        );
    }
}
