//! Terraform values as they cross the wire: msgpack `DynamicValue`s (and JSON raw state), with
//! unknown as a real third state beside null and a value.

use std::collections::BTreeMap;

use crate::tfplugin6::DynamicValue;

/// cty encodes an unknown value as msgpack extension type 0; refined unknowns (Terraform ≥ 1.6)
/// use extension type 12 and carry refinements the provider may ignore.
const UNKNOWN_EXT: i8 = 0;
const REFINED_UNKNOWN_EXT: i8 = 12;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Unknown,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// Lists, sets and tuples.
    List(Vec<Value>),
    /// Maps and objects.
    Map(BTreeMap<String, Value>),
}

#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("invalid msgpack value: {0}")]
    Msgpack(String),
    #[error("invalid JSON value: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected an object, got {0}")]
    NotAnObject(&'static str),
}

impl Value {
    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    pub fn opt_string(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Null, |s| Value::String(s.into()))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Unknown => "unknown",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::Float(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Known all the way down: no unknown anywhere inside.
    pub fn is_wholly_known(&self) -> bool {
        match self {
            Value::Unknown => false,
            Value::List(items) => items.iter().all(Value::is_wholly_known),
            Value::Map(entries) => entries.values().all(Value::is_wholly_known),
            _ => true,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A whole number, also when cty sent it as an integral float or as a decimal string.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The strings of a known list or set; `None` if it is null, unknown or holds a non-string.
    pub fn as_strings(&self) -> Option<Vec<String>> {
        self.as_list()?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    pub fn as_string_map(&self) -> Option<BTreeMap<String, String>> {
        self.as_map()?
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect()
    }

    pub fn from_msgpack(mut bytes: &[u8]) -> Result<Value, ValueError> {
        let raw =
            rmpv::decode::read_value(&mut bytes).map_err(|e| ValueError::Msgpack(e.to_string()))?;
        Value::from_rmpv(raw)
    }

    fn from_rmpv(raw: rmpv::Value) -> Result<Value, ValueError> {
        Ok(match raw {
            rmpv::Value::Nil => Value::Null,
            rmpv::Value::Boolean(b) => Value::Bool(b),
            rmpv::Value::Integer(i) => match i.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(i.as_f64().unwrap_or(f64::MAX)),
            },
            rmpv::Value::F32(f) => Value::Float(f64::from(f)),
            rmpv::Value::F64(f) => Value::Float(f),
            rmpv::Value::String(s) => match s.into_str() {
                Some(s) => Value::String(s),
                None => return Err(ValueError::Msgpack("a string is not UTF-8".to_owned())),
            },
            rmpv::Value::Binary(b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
            rmpv::Value::Array(items) => Value::List(
                items
                    .into_iter()
                    .map(Value::from_rmpv)
                    .collect::<Result<_, _>>()?,
            ),
            rmpv::Value::Map(entries) => {
                let mut map = BTreeMap::new();
                for (key, value) in entries {
                    let key = match key {
                        rmpv::Value::String(s) => s.into_str().unwrap_or_default(),
                        other => {
                            return Err(ValueError::Msgpack(format!(
                                "a map key is not a string: {other}"
                            )));
                        }
                    };
                    map.insert(key, Value::from_rmpv(value)?);
                }
                Value::Map(map)
            }
            rmpv::Value::Ext(UNKNOWN_EXT | REFINED_UNKNOWN_EXT, _) => Value::Unknown,
            rmpv::Value::Ext(kind, _) => {
                return Err(ValueError::Msgpack(format!(
                    "unexpected extension type {kind}"
                )));
            }
        })
    }

    fn to_rmpv(&self) -> rmpv::Value {
        match self {
            Value::Null => rmpv::Value::Nil,
            Value::Unknown => rmpv::Value::Ext(UNKNOWN_EXT, vec![0]),
            Value::Bool(b) => rmpv::Value::Boolean(*b),
            Value::Int(i) => rmpv::Value::from(*i),
            Value::Float(f) => rmpv::Value::F64(*f),
            Value::String(s) => rmpv::Value::from(s.as_str()),
            Value::List(items) => rmpv::Value::Array(items.iter().map(Value::to_rmpv).collect()),
            Value::Map(entries) => rmpv::Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (rmpv::Value::from(k.as_str()), v.to_rmpv()))
                    .collect(),
            ),
        }
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &self.to_rmpv());
        out
    }

    pub fn from_json(json: serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(items) => {
                Value::List(items.into_iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    pub fn dynamic(&self) -> DynamicValue {
        DynamicValue {
            msgpack: self.to_msgpack(),
            json: Vec::new(),
        }
    }

    /// Decodes a `DynamicValue`; an absent one is null.
    pub fn from_dynamic(value: Option<&DynamicValue>) -> Result<Value, ValueError> {
        match value {
            None => Ok(Value::Null),
            Some(v) if !v.msgpack.is_empty() => Value::from_msgpack(&v.msgpack),
            Some(v) if !v.json.is_empty() => Ok(Value::from_json(serde_json::from_slice(&v.json)?)),
            Some(_) => Ok(Value::Null),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Value {
        Value::Int(i64::from(i))
    }
}

impl From<Vec<String>> for Value {
    fn from(items: Vec<String>) -> Value {
        Value::List(items.into_iter().map(Value::String).collect())
    }
}

impl From<BTreeMap<String, String>> for Value {
    fn from(entries: BTreeMap<String, String>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    }
}

/// An object value: one entry per schema attribute.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Obj(pub BTreeMap<String, Value>);

static NULL: Value = Value::Null;

impl Obj {
    pub fn from_value(value: Value) -> Result<Option<Obj>, ValueError> {
        match value {
            Value::Null => Ok(None),
            Value::Map(entries) => Ok(Some(Obj(entries))),
            other => Err(ValueError::NotAnObject(other.kind())),
        }
    }

    pub fn get(&self, name: &str) -> &Value {
        self.0.get(name).unwrap_or(&NULL)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).as_str()
    }

    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        self.0.insert(name.to_owned(), value.into());
    }

    pub fn into_value(self) -> Value {
        Value::Map(self.0)
    }

    pub fn dynamic(&self) -> DynamicValue {
        Value::Map(self.0.clone()).dynamic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_round_trip_keeps_unknown_and_null() {
        let mut obj = Obj::default();
        obj.set("name", "user_signed_up");
        obj.set("id", Value::Unknown);
        obj.set("description", Value::Null);
        obj.set("shard_count", 2_i64);
        obj.set("events", vec!["a".to_owned(), "b".to_owned()]);
        let value = obj.clone().into_value();
        let back = Value::from_msgpack(&value.to_msgpack()).expect("decodes");
        assert_eq!(back, value);
        assert!(!back.is_wholly_known());
    }

    #[test]
    fn refined_unknown_is_unknown() {
        // fixext2, type 12, with one refinement byte pair as Terraform ≥ 1.6 sends.
        let bytes = [0xd5, 0x0c, 0x81, 0x01];
        let value = Value::from_msgpack(&bytes).expect("decodes");
        assert_eq!(value, Value::Unknown);
    }

    #[test]
    fn numbers_arrive_in_several_shapes() {
        assert_eq!(Value::Float(24.0).as_i64(), Some(24));
        assert_eq!(Value::Float(2.5).as_i64(), None);
        assert_eq!(Value::string("48").as_i64(), Some(48));
    }
}
