//! Field paths a grant may redact (`redact`) or let through despite the schema's PII marks
//! (`include_pii`): `user_id`, `device_id`, `trace_id`, `producer`, `attributes.<key>`,
//! `payload.<a>.<b>...`. Segments are split at dots, so a payload key holding a dot cannot be
//! addressed (the engine then redacts nothing by that path; the API refuses empty segments).

use super::filter::EnvelopeField;

/// The most paths one grant may list in `redact` (and, separately, in `include_pii`).
pub const MAX_REDACT_FIELDS: usize = 100;
/// The longest one path may be, in bytes.
pub const MAX_FIELD_PATH_LEN: usize = 1024;

/// One field a grant redacts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldPath {
    /// `user_id`, `device_id`, `trace_id` or `producer` (the event's id and name stay: they
    /// are how consumers deduplicate and dispatch).
    Envelope(EnvelopeFieldName),
    Attribute(String),
    /// The keys below `payload`, outermost first.
    Payload(Vec<String>),
}

/// The envelope fields a grant may redact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnvelopeFieldName {
    UserId,
    DeviceId,
    TraceId,
    Producer,
}

impl EnvelopeFieldName {
    const ALL: [(&'static str, EnvelopeFieldName); 4] = [
        ("user_id", EnvelopeFieldName::UserId),
        ("device_id", EnvelopeFieldName::DeviceId),
        ("trace_id", EnvelopeFieldName::TraceId),
        ("producer", EnvelopeFieldName::Producer),
    ];

    pub fn field(self) -> EnvelopeField {
        match self {
            EnvelopeFieldName::UserId => EnvelopeField::UserId,
            EnvelopeFieldName::DeviceId => EnvelopeField::DeviceId,
            EnvelopeFieldName::TraceId => EnvelopeField::TraceId,
            EnvelopeFieldName::Producer => EnvelopeField::Producer,
        }
    }
}

impl FieldPath {
    /// Parses one path; `Err` says why it is not one (with the path in it).
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        if text.len() > MAX_FIELD_PATH_LEN {
            return Err(format!(
                "field path {:.40?}... is longer than {MAX_FIELD_PATH_LEN} bytes",
                text
            ));
        }
        let mut segments = text.split('.');
        let head = segments.next().unwrap_or_default();
        let rest: Vec<String> = segments.map(str::to_owned).collect();
        if rest.iter().any(String::is_empty) {
            return Err(format!("field path {text:?} has an empty key"));
        }
        let known = || {
            format!(
                "field path {text:?} is not one a grant can redact; use {}, attributes.<key> or payload.<key>[.<key>...]",
                EnvelopeFieldName::ALL.map(|(name, _)| name).join(", ")
            )
        };
        match head {
            "attributes" if rest.is_empty() => Err(format!(
                "field path {text:?} names no attribute: use attributes.<key>"
            )),
            // An attribute key may hold dots: everything after `attributes.` is the key.
            "attributes" => Ok(FieldPath::Attribute(rest.join("."))),
            "payload" if rest.is_empty() => Err(format!(
                "field path {text:?} names no payload field: use payload.<key>[.<key>...]"
            )),
            "payload" => Ok(FieldPath::Payload(rest)),
            name if rest.is_empty() => EnvelopeFieldName::ALL
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, field)| FieldPath::Envelope(*field))
                .ok_or_else(known),
            _ => Err(known()),
        }
    }
}

/// Checks a list of paths (`what` is the attribute's name, for messages) and returns it sorted
/// and without duplicates, as it is stored.
pub fn normalize_paths(what: &str, paths: &[String]) -> Result<Vec<String>, String> {
    if paths.len() > MAX_REDACT_FIELDS {
        return Err(format!("{what} lists at most {MAX_REDACT_FIELDS} fields"));
    }
    for path in paths {
        FieldPath::parse(path).map_err(|error| format!("{what}: {error}"))?;
    }
    let mut sorted = paths.to_vec();
    sorted.sort();
    sorted.dedup();
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        #[track_caller]
        fn check(text: &str, expected: Option<FieldPath>) {
            assert_eq!(FieldPath::parse(text).ok(), expected, "{text:?}");
        }
        let payload = |keys: &[&str]| {
            Some(FieldPath::Payload(
                keys.iter().map(|k| (*k).to_owned()).collect(),
            ))
        };
        check(
            "user_id",
            Some(FieldPath::Envelope(EnvelopeFieldName::UserId)),
        );
        check(
            "producer",
            Some(FieldPath::Envelope(EnvelopeFieldName::Producer)),
        );
        check("event_id", None);
        check("event_name", None);
        check("payload.ssn", payload(&["ssn"]));
        check("payload.card.number", payload(&["card", "number"]));
        check("payload.你好.😊", payload(&["你好", "😊"]));
        check("payload.my key", payload(&["my key"]));
        check("payload", None);
        check("payload.", None);
        check("payload..x", None);
        check("attributes.ip", Some(FieldPath::Attribute("ip".to_owned())));
        check(
            "attributes.a.b",
            Some(FieldPath::Attribute("a.b".to_owned())),
        );
        check("attributes", None);
        check("", None);
        check("user_id.x", None);
        check("User_id", None);
        check(&format!("payload.{}", "x".repeat(MAX_FIELD_PATH_LEN)), None);
    }

    #[test]
    fn lists_are_sorted_and_checked() {
        let paths = ["payload.b", "user_id", "payload.b"].map(String::from);
        assert_eq!(
            normalize_paths("redact", &paths),
            Ok(vec!["payload.b".to_owned(), "user_id".to_owned()])
        );
        let error = normalize_paths("redact", &["payload.".to_owned()]).expect_err("empty key");
        assert!(error.starts_with("redact: "), "{error}");
        let many: Vec<String> = (0..=MAX_REDACT_FIELDS)
            .map(|i| format!("payload.f{i}"))
            .collect();
        assert!(normalize_paths("redact", &many).is_err());
    }
}
