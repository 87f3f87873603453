//! An event's payload schema: the protobuf message `fanner catalog push` stores for an event,
//! the fields it marks `(fanner.v1.field).pii = true`, and the redaction of protobuf payloads by
//! the same paths grants use for JSON payloads (`payload.<a>.<b>`, by the fields' JSON names).
//!
//! A path walks nested messages, and every element of a repeated message field. Map fields are
//! not walked (their values have no field names). A recursive message type is followed once, so
//! a PII mark below the second level of recursion is not found; mark the field where it recurses.

use prost::Message as _;
use prost::bytes::Bytes;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, FileDescriptor, Kind,
    MessageDescriptor, ReflectMessage, Value,
};

/// The field option that marks PII: `(fanner.v1.field).pii = true`.
pub const FIELD_OPTION: &str = "fanner.v1.field";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("not a valid FileDescriptorSet: {0}")]
    Descriptors(String),
    #[error("the descriptor set defines no message {0:?}")]
    NoMessage(String),
    #[error("the payload is not a {message}: {reason}")]
    Payload { message: String, reason: String },
}

/// How a redaction replaces a field: `None` removes it; `Some` turns a string or bytes value
/// into the token the function returns (any other kind of field cannot hold one and is removed).
pub type Hasher<'h> = Option<&'h dyn Fn(&[u8]) -> String>;

/// One event's payload message.
#[derive(Clone, Debug)]
pub struct PayloadSchema {
    message: MessageDescriptor,
}

impl PayloadSchema {
    /// The message `message` (full name) of the FileDescriptorSet `descriptor_set`.
    pub fn decode(descriptor_set: &[u8], message: &str) -> Result<PayloadSchema, SchemaError> {
        let pool = DescriptorPool::decode(descriptor_set)
            .map_err(|error| SchemaError::Descriptors(error.to_string()))?;
        let message = pool
            .get_message_by_name(message)
            .ok_or_else(|| SchemaError::NoMessage(message.to_owned()))?;
        Ok(PayloadSchema { message })
    }

    pub fn new(message: MessageDescriptor) -> PayloadSchema {
        PayloadSchema { message }
    }

    /// The message's full name.
    pub fn message_name(&self) -> &str {
        self.message.full_name()
    }

    /// The smallest FileDescriptorSet that defines the message: its file and every file that
    /// file imports, imports first, each with its custom options intact (re-encoding through
    /// `prost_types` would drop them). Deterministic, so equal schemas give equal bytes.
    pub fn descriptor_set(&self) -> Vec<u8> {
        fn visit(file: FileDescriptor, files: &mut Vec<FileDescriptor>) {
            if files.iter().any(|known| known.name() == file.name()) {
                return;
            }
            for import in file.dependencies() {
                visit(import, files);
            }
            files.push(file);
        }
        let mut files = Vec::new();
        visit(self.message.parent_file(), &mut files);
        let mut set = Vec::new();
        for file in files {
            // FileDescriptorSet.file = 1.
            prost::encoding::bytes::encode(1, &file.encode_to_vec(), &mut set);
        }
        set
    }

    /// The fields marked PII, as `payload.` paths by JSON names, in field order.
    pub fn pii_fields(&self) -> Vec<String> {
        let Some(option) = self
            .message
            .parent_pool()
            .get_extension_by_name(FIELD_OPTION)
        else {
            // The set does not include fanner/v1/catalog.proto, so nothing can be marked.
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut path = Vec::new();
        let mut open = vec![self.message.full_name().to_owned()];
        walk_pii(&self.message, &option, &mut path, &mut open, &mut found);
        found
    }

    /// `payload` with the fields at `paths` (the keys below `payload`) removed or hashed.
    /// Absent fields are left absent; unknown fields are kept.
    pub fn redact(
        &self,
        payload: &[u8],
        paths: &[Vec<String>],
        hash: Hasher<'_>,
    ) -> Result<Vec<u8>, SchemaError> {
        let mut message =
            DynamicMessage::decode(self.message.clone(), payload).map_err(|error| {
                SchemaError::Payload {
                    message: self.message.full_name().to_owned(),
                    reason: error.to_string(),
                }
            })?;
        for path in paths {
            redact_path(&mut message, path, hash);
        }
        Ok(message.encode_to_vec())
    }
}

fn is_pii(field: &FieldDescriptor, option: &ExtensionDescriptor) -> bool {
    let options = field.options();
    if !options.has_extension(option) {
        return false;
    }
    match options.get_extension(option).as_ref() {
        Value::Message(marks) => marks
            .get_field_by_name("pii")
            .and_then(|pii| pii.as_bool())
            .unwrap_or(false),
        _ => false,
    }
}

fn walk_pii(
    message: &MessageDescriptor,
    option: &ExtensionDescriptor,
    path: &mut Vec<String>,
    open: &mut Vec<String>,
    found: &mut Vec<String>,
) {
    for field in message.fields() {
        path.push(field.json_name().to_owned());
        if is_pii(&field, option) {
            found.push(format!("payload.{}", path.join(".")));
        } else if let Kind::Message(inner) = field.kind()
            && !field.is_map()
            && !open.iter().any(|name| name == inner.full_name())
        {
            open.push(inner.full_name().to_owned());
            walk_pii(&inner, option, path, open, found);
            open.pop();
        }
        path.pop();
    }
}

/// A path segment names a field by its JSON name, or else by its proto name.
fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_json_name(name)
        .or_else(|| message.get_field_by_name(name))
}

fn redact_path(message: &mut DynamicMessage, path: &[String], hash: Hasher<'_>) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    let Some(field) = field_named(&message.descriptor(), head) else {
        return;
    };
    if !message.has_field(&field) {
        return;
    }
    if rest.is_empty() {
        match (hash, field.kind()) {
            (Some(hash), Kind::String | Kind::Bytes) if !field.is_map() => {
                hash_value(message.get_field_mut(&field), hash)
            }
            _ => message.clear_field(&field),
        }
        return;
    }
    match message.get_field_mut(&field) {
        Value::Message(inner) => redact_path(inner, rest, hash),
        Value::List(items) => {
            for item in items {
                if let Value::Message(inner) = item {
                    redact_path(inner, rest, hash);
                }
            }
        }
        _ => {}
    }
}

/// A string hashes as its text, so its token equals that of the same value in a JSON payload
/// or an envelope field; bytes hash as themselves and hold the token's text.
fn hash_value(value: &mut Value, hash: &dyn Fn(&[u8]) -> String) {
    match value {
        Value::String(text) => *text = hash(text.as_bytes()),
        Value::Bytes(bytes) => *bytes = Bytes::from(hash(bytes).into_bytes()),
        Value::List(items) => {
            for item in items {
                hash_value(item, hash);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles `source` (importing fanner/v1/catalog.proto) into a FileDescriptorSet, as
    /// `protoc --include_imports --descriptor_set_out` writes it.
    pub(crate) fn compile(source: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("fanner/v1")).expect("mkdir");
        std::fs::write(
            dir.path().join("fanner/v1/catalog.proto"),
            crate::CATALOG_PROTO,
        )
        .expect("write");
        std::fs::write(dir.path().join("shop.proto"), source).expect("write");
        let mut compiler = protox::Compiler::new([dir.path()]).expect("compiler");
        compiler.include_imports(true);
        compiler.open_file("shop.proto").expect("compiles");
        compiler.encode_file_descriptor_set()
    }

    const SHOP: &str = r#"syntax = "proto3";
package shop;
import "fanner/v1/catalog.proto";
message Card {
  string number = 1 [(fanner.v1.field).pii = true];
  string brand = 2;
  int32 exp_year = 3 [(fanner.v1.field).pii = true];
}
message Node {
  string label = 1 [(fanner.v1.field).pii = true];
  Node child = 2;
}
message Signup {
  option (fanner.v1.event) = { name: "signup" classification: CLASSIFICATION_PII };
  string user_name = 1;
  string ssn = 2 [(fanner.v1.field).pii = true];
  Card card = 3;
  repeated Card old_cards = 4;
  repeated string emails = 5 [(fanner.v1.field).pii = true];
  bytes photo = 6;
  map<string, Card> cards_by_id = 7;
  Node tree = 8;
  string country = 9;
  int64 age = 10;
}
"#;

    fn schema() -> PayloadSchema {
        PayloadSchema::decode(&compile(SHOP), "shop.Signup").expect("schema")
    }

    fn payload(schema: &PayloadSchema, fill: impl FnOnce(&mut DynamicMessage)) -> Vec<u8> {
        let mut message = DynamicMessage::new(schema.message.clone());
        fill(&mut message);
        message.encode_to_vec()
    }

    fn card(schema: &PayloadSchema, number: &str, brand: &str) -> Value {
        let descriptor = schema
            .message
            .parent_pool()
            .get_message_by_name("shop.Card")
            .expect("Card");
        let mut card = DynamicMessage::new(descriptor);
        card.set_field_by_name("number", Value::String(number.to_owned()));
        card.set_field_by_name("brand", Value::String(brand.to_owned()));
        card.set_field_by_name("exp_year", Value::I32(2030));
        Value::Message(card)
    }

    fn decoded(schema: &PayloadSchema, bytes: &[u8]) -> DynamicMessage {
        DynamicMessage::decode(schema.message.clone(), bytes).expect("decodes")
    }

    fn paths(list: &[&str]) -> Vec<Vec<String>> {
        list.iter()
            .map(|p| p.split('.').map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn pii_marks_are_found_through_nested_and_repeated_messages_by_json_name() {
        assert_eq!(
            schema().pii_fields(),
            [
                "payload.ssn",
                "payload.card.number",
                "payload.card.expYear",
                "payload.oldCards.number",
                "payload.oldCards.expYear",
                "payload.emails",
                // Node is followed once: its own label, not its child's.
                "payload.tree.label",
            ]
        );
    }

    #[test]
    fn a_set_without_the_catalog_proto_marks_nothing_and_a_missing_message_is_named() {
        let plain = {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(
                dir.path().join("p.proto"),
                "syntax = \"proto3\"; package p; message M { string ssn = 1; }",
            )
            .expect("write");
            let mut compiler = protox::Compiler::new([dir.path()]).expect("compiler");
            compiler.open_file("p.proto").expect("compiles");
            compiler.encode_file_descriptor_set()
        };
        let schema = PayloadSchema::decode(&plain, "p.M").expect("schema");
        assert!(schema.pii_fields().is_empty());
        assert!(matches!(
            PayloadSchema::decode(&plain, "p.Other"),
            Err(SchemaError::NoMessage(name)) if name == "p.Other"
        ));
        assert!(matches!(
            PayloadSchema::decode(b"\x0a\x02zz", "p.M"),
            Err(SchemaError::Descriptors(_))
        ));
    }

    #[test]
    fn the_stored_descriptor_set_is_minimal_deterministic_and_keeps_the_marks() {
        let schema = schema();
        let set = schema.descriptor_set();
        assert_eq!(set, schema.descriptor_set());
        let again = PayloadSchema::decode(&set, "shop.Signup").expect("decodes alone");
        assert_eq!(again.pii_fields(), schema.pii_fields());
        let files: Vec<String> = again
            .message
            .parent_pool()
            .files()
            .map(|f| f.name().to_owned())
            .collect();
        assert_eq!(
            files,
            [
                "google/protobuf/descriptor.proto",
                "fanner/v1/catalog.proto",
                "shop.proto"
            ]
        );
    }

    #[test]
    fn redaction_drops_nested_repeated_and_absent_fields() {
        let schema = schema();
        let bytes = payload(&schema, |m| {
            m.set_field_by_name("user_name", Value::String("ada".into()));
            m.set_field_by_name("ssn", Value::String("123-45-6789".into()));
            m.set_field_by_name("card", card(&schema, "4111", "visa"));
            m.set_field_by_name(
                "old_cards",
                Value::List(vec![card(&schema, "1", "amex"), card(&schema, "2", "mc")]),
            );
            m.set_field_by_name(
                "emails",
                Value::List(vec![
                    Value::String("a@x".into()),
                    Value::String("b@x".into()),
                ]),
            );
            m.set_field_by_name("age", Value::I64(37));
        });
        let redacted = schema
            .redact(
                &bytes,
                // JSON and proto names both address a field; absent ones change nothing.
                &paths(&[
                    "ssn",
                    "card.number",
                    "oldCards.number",
                    "emails",
                    "age",
                    "tree.label",
                    "photo",
                    "no_such",
                    "card.no_such.deeper",
                    "old_cards.exp_year",
                ]),
                None,
            )
            .expect("redacts");
        let got = decoded(&schema, &redacted);
        let text = |name: &str| got.get_field_by_name(name).expect("field").into_owned();
        assert_eq!(text("user_name"), Value::String("ada".into()));
        assert_eq!(text("ssn"), Value::String(String::new()));
        assert!(!got.has_field_by_name("ssn"));
        assert!(!got.has_field_by_name("emails"));
        assert!(!got.has_field_by_name("age"));
        let Value::Message(card) = text("card") else {
            panic!("card")
        };
        assert!(!card.has_field_by_name("number"));
        assert_eq!(
            card.get_field_by_name("brand").expect("brand").into_owned(),
            Value::String("visa".into())
        );
        assert!(card.has_field_by_name("exp_year"));
        let Value::List(old) = text("old_cards") else {
            panic!("old_cards")
        };
        for item in old {
            let Value::Message(card) = item else {
                panic!("card")
            };
            assert!(!card.has_field_by_name("number"));
            assert!(!card.has_field_by_name("exp_year"));
            assert!(card.has_field_by_name("brand"));
        }
    }

    #[test]
    fn hashing_replaces_strings_and_bytes_with_tokens_and_removes_what_cannot_hold_one() {
        let schema = schema();
        let bytes = payload(&schema, |m| {
            m.set_field_by_name("ssn", Value::String("123".into()));
            m.set_field_by_name(
                "emails",
                Value::List(vec![Value::String("a".into()), Value::String("b".into())]),
            );
            m.set_field_by_name("photo", Value::Bytes(Bytes::from_static(b"\x00\x01")));
            m.set_field_by_name("age", Value::I64(37));
            m.set_field_by_name("card", card(&schema, "4111", "visa"));
        });
        let token = |value: &[u8]| format!("T({})", String::from_utf8_lossy(value));
        let redacted = schema
            .redact(
                &bytes,
                &paths(&["ssn", "emails", "photo", "age", "card"]),
                Some(&token),
            )
            .expect("redacts");
        let got = decoded(&schema, &redacted);
        let field = |name: &str| got.get_field_by_name(name).expect("field").into_owned();
        assert_eq!(field("ssn"), Value::String("T(123)".into()));
        assert_eq!(
            field("emails"),
            Value::List(vec![
                Value::String("T(a)".into()),
                Value::String("T(b)".into())
            ])
        );
        assert_eq!(
            field("photo"),
            Value::Bytes(Bytes::from("T(\u{0}\u{1})".as_bytes().to_vec()))
        );
        assert!(!got.has_field_by_name("age"));
        assert!(!got.has_field_by_name("card"));
    }

    #[test]
    fn a_payload_that_is_not_the_message_is_an_error() {
        let schema = schema();
        let error = schema
            .redact(b"\xff\xff\xff", &paths(&["ssn"]), None)
            .expect_err("not a Signup");
        assert!(error.to_string().contains("shop.Signup"), "{error}");
    }

    /// The catalog example compiles and marks what its comment says.
    #[test]
    fn the_catalog_example_marks_its_pii_fields() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut compiler =
            protox::Compiler::new([root.join("../examples/catalog"), root.join("proto")])
                .expect("compiler");
        compiler.include_imports(true);
        compiler.open_file("signup.proto").expect("compiles");
        let schema = PayloadSchema::decode(
            &compiler.encode_file_descriptor_set(),
            "growth.v1.UserSignedUp",
        )
        .expect("schema");
        assert_eq!(
            schema.pii_fields(),
            ["payload.email", "payload.ssn", "payload.address.street"]
        );
    }
}
