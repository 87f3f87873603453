//! The gatekeeper, pure: per delivery, whether a routed event passes its subscription's filter,
//! and the bytes the stream receives (the grant's redaction and the subscription's delivery
//! format applied).
//!
//! [`Gate`] is compiled once per route-table target (the filter, the redaction, the format);
//! [`RecordGate`] holds one record while it is judged for each of its slots, so the envelope
//! is read, the payload parsed for filters and each distinct rewrite made at most once per
//! record, however many streams receive it. A slot without a gate gets the GES bytes
//! themselves (a `Bytes` clone): the zero-copy path. Live delivery (the shard worker) and any
//! other reader of GES records (history replay) call the same [`RecordGate::decide`] with a
//! [`Slot`].
//!
//! Payload fields are redacted in JSON payloads, and in protobuf payloads of events whose
//! schema `fanner catalog push` stored (decoded with the descriptor, redacted by the same paths,
//! re-encoded: [`proto::schema`]). Redaction is deny-by-default: a payload that is neither (or
//! does not decode as its schema's message) gets withheld (empty), since its fields cannot be
//! found to remove them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use api::rules::filter::{Filter, FilterError, PayloadReads, Subject, Text};
use api::rules::redact::{EnvelopeFieldName, FieldPath};
use api::{DeliveryFormat, RedactMode, RouteTarget};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use proto::{Message, PayloadSchema};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::router::Slot;

/// Why a route-table target cannot be served (the target is then left out: deny by default).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("redact: {0}")]
    Path(String),
    #[error("redact_mode hash needs the grant's key, and the route table carries none")]
    MissingKey,
    #[error("the grant's redaction key is not hex")]
    BadKey,
}

/// What a slot does to the events it receives. Absent (`Slot::gate` is `None`) when it does
/// nothing: no filter, no redaction, the envelope format.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Alternatives: the event is delivered when any of them matches (one per subscription of
    /// the stream that names the event); empty = every event.
    filters: Vec<Filter>,
    /// The payload keys that the filters of every gate on this gate's route read
    /// ([`share_payload_reads`]), so one partial parse per record serves them all; `None` when
    /// none of this gate's filters reads the payload.
    reads: Option<Arc<PayloadReads>>,
    redaction: Option<Arc<Redaction>>,
    format: DeliveryFormat,
}

/// One grant's redaction, shared by every slot with the same set, which gives a record's
/// rewrite its identity: `id`.
#[derive(Debug)]
pub struct Redaction {
    id: usize,
    envelope: Vec<EnvelopeFieldName>,
    attributes: Vec<String>,
    payload: Vec<Vec<String>>,
    /// `Some` in hash mode: the grant's key, already absorbed (each token then costs only
    /// the message's compressions).
    mac: Option<Hmac<Sha256>>,
    /// The event's payload schema, for protobuf payloads.
    schema: Option<Arc<PayloadSchema>>,
}

/// Interns redactions while a route table is compiled: equal field sets under equal modes,
/// keys and schemas (by identity: one per route) become one [`Redaction`].
#[derive(Default)]
pub struct Redactions {
    known: HashMap<RedactionKey, Arc<Redaction>>,
}

/// Paths, mode, key (hash mode) and the schema's address.
type RedactionKey = (Vec<String>, RedactMode, Option<String>, usize);

impl Gate {
    /// The gate for `target` of an event whose payload schema is `schema`, or `None` when it
    /// delivers the GES bytes unchanged.
    pub fn compile(
        target: &RouteTarget,
        schema: Option<&Arc<PayloadSchema>>,
        redactions: &mut Redactions,
    ) -> Result<Option<Gate>, GateError> {
        let filters = match &target.filter {
            Some(pattern) => vec![Filter::compile(pattern)?],
            None => Vec::new(),
        };
        let redaction = redactions.get(target, schema)?;
        if filters.is_empty()
            && redaction.is_none()
            && target.delivery_format == DeliveryFormat::Envelope
        {
            return Ok(None);
        }
        Ok(Some(Gate {
            reads: own_reads(&filters),
            filters,
            redaction,
            format: target.delivery_format,
        }))
    }

    /// The gate of one stream that several subscriptions feed the same event: it passes what
    /// either passes. `kept` (the subscription whose access lasts longest) gives the format.
    pub fn merge(kept: Option<Arc<Gate>>, other: Option<Arc<Gate>>) -> Option<Arc<Gate>> {
        let (Some(kept), Some(other)) = (&kept, &other) else {
            // One of them has no filter, so every event passes; the kept one says the rest.
            return match kept {
                Some(gate) if !gate.filters.is_empty() => Some(Arc::new(Gate {
                    filters: Vec::new(),
                    reads: None,
                    redaction: gate.redaction.clone(),
                    format: gate.format,
                })),
                kept => kept,
            };
        };
        let filters = if kept.filters.is_empty() || other.filters.is_empty() {
            Vec::new()
        } else {
            kept.filters.iter().chain(&other.filters).cloned().collect()
        };
        Some(Arc::new(Gate {
            reads: own_reads(&filters),
            filters,
            redaction: kept.redaction.clone(),
            format: kept.format,
        }))
    }

    /// What the slot's stream receives: envelopes, or payloads alone.
    pub fn format(&self) -> DeliveryFormat {
        self.format
    }
}

fn own_reads(filters: &[Filter]) -> Option<Arc<PayloadReads>> {
    let reads = PayloadReads::of(filters);
    (!reads.is_empty()).then(|| Arc::new(reads))
}

/// Gives every gate of one route's slots that reads the payload the union of what they all
/// read: a record is then parsed once for all of them ([`RecordGate`] keeps one parse).
pub fn share_payload_reads(slots: &mut [Slot]) {
    let gates = || slots.iter().filter_map(|slot| slot.gate.as_deref());
    if gates().filter(|gate| gate.reads.is_some()).count() < 2 {
        return;
    }
    let union = Arc::new(PayloadReads::of(gates().flat_map(|gate| &gate.filters)));
    for gate in slots.iter_mut().filter_map(|slot| slot.gate.as_mut()) {
        if gate.reads.is_some() {
            Arc::make_mut(gate).reads = Some(union.clone());
        }
    }
}

impl Redactions {
    fn get(
        &mut self,
        target: &RouteTarget,
        schema: Option<&Arc<PayloadSchema>>,
    ) -> Result<Option<Arc<Redaction>>, GateError> {
        if target.redact.is_empty() {
            return Ok(None);
        }
        let key = match target.redact_mode {
            RedactMode::Drop => None,
            RedactMode::Hash => Some(target.redact_key.clone().ok_or(GateError::MissingKey)?),
        };
        let id = self.known.len();
        let entry = (
            target.redact.clone(),
            target.redact_mode,
            key.clone(),
            schema.map_or(0, |schema| Arc::as_ptr(schema) as usize),
        );
        if let Some(known) = self.known.get(&entry) {
            return Ok(Some(known.clone()));
        }
        let mut redaction = Redaction {
            id,
            envelope: Vec::new(),
            attributes: Vec::new(),
            payload: Vec::new(),
            mac: key
                .map(|hex_key| {
                    let key = hex::decode(hex_key).map_err(|_| GateError::BadKey)?;
                    // HMAC accepts keys of any length.
                    <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| GateError::BadKey)
                })
                .transpose()?,
            schema: schema.cloned(),
        };
        for path in &target.redact {
            match FieldPath::parse(path).map_err(GateError::Path)? {
                FieldPath::Envelope(field) => redaction.envelope.push(field),
                FieldPath::Attribute(key) => redaction.attributes.push(key),
                FieldPath::Payload(keys) => redaction.payload.push(keys),
            }
        }
        let redaction = Arc::new(redaction);
        self.known.insert(entry, redaction.clone());
        Ok(Some(redaction))
    }
}

/// What one slot gets of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The subscription's filter does not match: not delivered (counted as filtered).
    Filtered,
    Deliver(Bytes),
}

/// One record, judged slot by slot; see the module docs.
pub struct RecordGate<'r> {
    data: &'r Bytes,
    /// `None` until needed; `Some(None)` when the record is not an envelope.
    envelope: Option<Option<proto::EnvelopeRef<'r>>>,
    /// The payload as far as the filters so far read it (`None`: not JSON), with what they read.
    payload: Option<(Arc<PayloadReads>, Option<Value>)>,
    /// Rewrites made so far, by redaction id and format.
    outputs: Vec<((Option<usize>, DeliveryFormat), Bytes)>,
    /// Deliveries whose payload was withheld because it could not be redacted field by field.
    pub withheld: u64,
}

impl<'r> RecordGate<'r> {
    pub fn new(data: &'r Bytes) -> RecordGate<'r> {
        RecordGate {
            data,
            envelope: None,
            payload: None,
            outputs: Vec::new(),
            withheld: 0,
        }
    }

    /// Whether `slot` receives the record, and as which bytes.
    pub fn decide(&mut self, slot: &Slot) -> Decision {
        let Some(gate) = slot.gate.as_deref() else {
            return Decision::Deliver(self.data.clone());
        };
        let data: &'r Bytes = self.data;
        let Some(envelope) = self
            .envelope
            .get_or_insert_with(|| proto::EnvelopeRef::decode(data).ok())
        else {
            // Routed records are envelopes; anything else is refused rather than passed on.
            return Decision::Filtered;
        };
        if !gate.filters.is_empty() {
            let payload = match &gate.reads {
                Some(reads) => parsed(&mut self.payload, reads, envelope),
                None => None,
            };
            let subject = Subject { envelope, payload };
            if !gate.filters.iter().any(|filter| filter.matches(&subject)) {
                return Decision::Filtered;
            }
        }
        let key = (gate.redaction.as_ref().map(|r| r.id), gate.format);
        if let Some((_, bytes)) = self.outputs.iter().find(|(k, _)| *k == key) {
            return Decision::Deliver(bytes.clone());
        }
        let redaction = gate.redaction.as_deref();
        let payload = match redaction.filter(|r| !r.payload.is_empty()) {
            None => None,
            Some(redaction) => {
                // A payload its producer labels protobuf is never read as JSON.
                let json = if envelope.content_type.contains("protobuf") {
                    None
                } else {
                    redaction.apply_json(envelope.payload)
                };
                Some(match json {
                    Some(json) => json,
                    None => redaction
                        .apply_protobuf(envelope.payload)
                        .unwrap_or_else(|| {
                            self.withheld += 1;
                            Bytes::new()
                        }),
                })
            }
        };
        let bytes = match gate.format {
            DeliveryFormat::Payload => payload.unwrap_or_else(|| data.slice_ref(envelope.payload)),
            // Only the payload changes: the other fields are copied as they are.
            DeliveryFormat::Envelope
                if redaction.is_some_and(|r| r.envelope.is_empty() && r.attributes.is_empty()) =>
            {
                match payload.map(|p| proto::EnvelopeRef::replace_payload(data, &p)) {
                    Some(Ok(rewritten)) => Bytes::from(rewritten),
                    // Unreachable for a record that decoded; refused rather than passed on.
                    _ => return Decision::Filtered,
                }
            }
            DeliveryFormat::Envelope => {
                let mut owned = envelope.to_envelope();
                if let Some(payload) = payload {
                    owned.payload = payload.to_vec();
                }
                if let Some(redaction) = redaction {
                    redaction.apply_envelope(&mut owned);
                }
                Bytes::from(owned.encode_to_vec())
            }
        };
        self.outputs.push((key, bytes.clone()));
        Decision::Deliver(bytes)
    }
}

/// A JSON object's members in the producer's order, values unparsed.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::new();
                while let Some((Text(key), value)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// Writes the JSON array `text`, each item by `item`.
fn write_array<'a>(
    text: &'a str,
    out: &mut Vec<u8>,
    mut item: impl FnMut(&'a RawValue, &mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<(), serde_json::Error> {
    let items: Vec<&RawValue> = serde_json::from_str(text)?;
    out.push(b'[');
    for (n, value) in items.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        item(value, out)?;
    }
    out.push(b']');
    Ok(())
}

/// Appends `value` as compact JSON; serializing a `Value` or a `String` into memory cannot fail.
fn write_value(value: &(impl serde::Serialize + ?Sized), out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(out, value);
}

/// The payload as JSON, as far as `reads` reads it: parsed on first use, and again only for a
/// gate that reads other keys (one whose route did not share its reads).
fn parsed<'c>(
    cache: &'c mut Option<(Arc<PayloadReads>, Option<Value>)>,
    reads: &Arc<PayloadReads>,
    envelope: &proto::EnvelopeRef<'_>,
) -> Option<&'c Value> {
    if !cache
        .as_ref()
        .is_some_and(|(cached, _)| Arc::ptr_eq(cached, reads))
    {
        *cache = Some((reads.clone(), reads.parse(envelope.payload)));
    }
    cache.as_ref().and_then(|(_, value)| value.as_ref())
}

impl Redaction {
    fn token(mac: &Hmac<Sha256>, value: &[u8]) -> String {
        let mut mac = mac.clone();
        mac.update(value);
        // `hex::encode` builds its String a char at a time, which cost as much as the HMAC.
        let mut text = [0u8; 64];
        match hex::encode_to_slice(mac.finalize().into_bytes(), &mut text) {
            Ok(()) => String::from_utf8_lossy(&text).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Drops (empties) or hashes a string; an empty string is absent and stays so.
    fn redact_string(&self, value: &mut String) {
        if value.is_empty() {
            return;
        }
        *value = match &self.mac {
            Some(mac) => Redaction::token(mac, value.as_bytes()),
            None => String::new(),
        };
    }

    fn apply_envelope(&self, envelope: &mut proto::Envelope) {
        for field in &self.envelope {
            let value = match field {
                EnvelopeFieldName::UserId => &mut envelope.user_id,
                EnvelopeFieldName::DeviceId => &mut envelope.device_id,
                EnvelopeFieldName::TraceId => &mut envelope.trace_id,
                EnvelopeFieldName::Producer => &mut envelope.producer,
            };
            self.redact_string(value);
        }
        for key in &self.attributes {
            match &self.mac {
                None => {
                    envelope.attributes.remove(key);
                }
                Some(_) => {
                    if let Some(value) = envelope.attributes.get_mut(key) {
                        self.redact_string(value);
                    }
                }
            }
        }
    }

    /// The protobuf payload with the payload fields redacted, when the event has a schema and
    /// the payload decodes as its message.
    fn apply_protobuf(&self, payload: &[u8]) -> Option<Bytes> {
        let schema = self.schema.as_ref()?;
        let token = |value: &[u8]| match &self.mac {
            Some(mac) => Redaction::token(mac, value),
            None => String::new(),
        };
        let hash: proto::schema::Hasher<'_> = match self.mac {
            Some(_) => Some(&token),
            None => None,
        };
        schema
            .redact(payload, &self.payload, hash)
            .ok()
            .map(Bytes::from)
    }

    /// The JSON payload with the fields at the grant's paths removed or hashed, or `None` when
    /// it is not JSON. Only the objects and arrays on a path are parsed and rewritten (their
    /// members in the producer's order, without whitespace); everything else is copied as
    /// produced.
    fn apply_json(&self, payload: &[u8]) -> Option<Bytes> {
        let raw: &RawValue = serde_json::from_slice(payload).ok()?;
        let paths: Vec<&[String]> = self.payload.iter().map(Vec::as_slice).collect();
        let mut out = Vec::with_capacity(payload.len());
        self.write_json(raw, &paths, &mut out).ok()?;
        Some(Bytes::from(out))
    }

    /// Writes `value` with the fields at `paths` (the keys below this level) removed or hashed,
    /// in every element of arrays met on the way.
    fn write_json(
        &self,
        value: &RawValue,
        paths: &[&[String]],
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        let text = value.get();
        match text.as_bytes().first() {
            _ if paths.is_empty() => out.extend_from_slice(text.as_bytes()),
            Some(b'[') => write_array(text, out, |item, out| self.write_json(item, paths, out))?,
            Some(b'{') => {
                let Members(members) = serde_json::from_str(text)?;
                out.push(b'{');
                let mut first = true;
                for (key, field) in members {
                    let mut leaf = false;
                    let mut below: Vec<&[String]> = Vec::new();
                    for path in paths
                        .iter()
                        .filter(|path| path.first().map(String::as_str) == Some(&*key))
                    {
                        match &path[1..] {
                            [] => leaf = true,
                            rest => below.push(rest),
                        }
                    }
                    if leaf && self.mac.is_none() {
                        continue;
                    }
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    write_value(&*key, out);
                    out.push(b':');
                    match &self.mac {
                        Some(secret) if leaf => self.hash_json(secret, field, out)?,
                        _ => self.write_json(field, &below, out)?,
                    }
                }
                out.push(b'}');
            }
            _ => out.extend_from_slice(text.as_bytes()),
        }
        Ok(())
    }

    /// Writes the token of `value`: a string hashes as its text (so it matches the token of the
    /// same envelope string), any other value as its compact JSON; arrays element by element.
    fn hash_json(
        &self,
        secret: &Hmac<Sha256>,
        value: &RawValue,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        let text = value.get();
        match text.as_bytes().first() {
            Some(b'[') => {
                write_array(text, out, |item, out| self.hash_json(secret, item, out))?;
            }
            Some(b'"') => {
                let Text(string) = serde_json::from_str(text)?;
                write_value(&Redaction::token(secret, string.as_bytes()), out);
            }
            _ => {
                let compact = serde_json::from_str::<Value>(text)?.to_string();
                write_value(&Redaction::token(secret, compact.as_bytes()), out);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn token(value: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hex::decode(KEY).expect("hex"))
            .expect("any key");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn target(
        filter: Option<Value>,
        redact: &[&str],
        mode: RedactMode,
        format: DeliveryFormat,
    ) -> RouteTarget {
        RouteTarget {
            subscription_id: "s".to_owned(),
            stream: "fraud".to_owned(),
            backing_name: "fanner-fraud".to_owned(),
            owner: "fraud".to_owned(),
            access_expires_at: None,
            filter,
            delivery_format: format,
            redact: redact.iter().map(|p| (*p).to_owned()).collect(),
            redact_mode: mode,
            redact_key: (mode == RedactMode::Hash).then(|| KEY.to_owned()),
            history_from: Default::default(),
            hydration: Default::default(),
        }
    }

    fn slot(gate: Option<Gate>) -> Slot {
        Slot {
            target: 0,
            subscription: "s".into(),
            access_expires_at: None,
            gate: gate.map(Arc::new),
            history_from: Default::default(),
            hydration: Default::default(),
        }
    }

    fn record(payload: &[u8]) -> Bytes {
        Bytes::from(
            proto::Envelope {
                event_id: "e-1".to_owned(),
                event_name: "signup".to_owned(),
                producer: "growth".to_owned(),
                user_id: "u-42".to_owned(),
                trace_id: String::new(),
                attributes: [("ip", "10.0.0.1"), ("région", "eu")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
                content_type: "application/json".to_owned(),
                payload: payload.to_vec(),
                ..Default::default()
            }
            .encode_to_vec(),
        )
    }

    /// What `target`'s stream receives of an envelope carrying `payload`: `None` if filtered,
    /// else the envelope's user id, attributes and payload (as JSON when it is JSON).
    #[track_caller]
    fn check(target: &RouteTarget, payload: &str, expected: Option<(&str, Value, Value)>) {
        let gate = Gate::compile(target, None, &mut Redactions::default()).expect("valid target");
        let data = record(payload.as_bytes());
        let got = match RecordGate::new(&data).decide(&slot(gate)) {
            Decision::Filtered => None,
            Decision::Deliver(bytes) => {
                let envelope = proto::Envelope::decode(bytes.as_ref()).expect("an envelope");
                let payload = serde_json::from_slice(&envelope.payload)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&envelope.payload)));
                Some((envelope.user_id, json!(envelope.attributes), payload))
            }
        };
        let expected =
            expected.map(|(user, attributes, payload)| (user.to_owned(), attributes, payload));
        assert_eq!(got, expected, "{target:?} on {payload}");
    }

    #[test]
    fn redaction() {
        use DeliveryFormat::Envelope;
        use RedactMode::{Drop, Hash};
        let attributes = json!({"ip": "10.0.0.1", "région": "eu"});
        let p = r#"{"ssn":"123","card":{"number":"4111","exp":"12/30"},"emails":["a@x","b@x"],
            "items":[{"sku":"x","price":3},{"sku":"y"}],"age":30,"你好":{"😊":"secret"}}"#;
        // Drop: top-level, nested, absent, inside arrays of objects, unicode keys.
        check(
            &target(
                None,
                &[
                    "payload.ssn",
                    "payload.card.number",
                    "payload.missing.x",
                    "payload.items.price",
                    "payload.你好.😊",
                ],
                Drop,
                Envelope,
            ),
            p,
            Some((
                "u-42",
                attributes.clone(),
                json!({"card":{"exp":"12/30"},"emails":["a@x","b@x"],
                "items":[{"sku":"x"},{"sku":"y"}],"age":30,"你好":{}}),
            )),
        );
        // Envelope fields and attributes.
        check(
            &target(
                None,
                &["user_id", "trace_id", "attributes.ip", "attributes.ghost"],
                Drop,
                Envelope,
            ),
            r#"{"a":1}"#,
            Some(("", json!({"région": "eu"}), json!({"a": 1}))),
        );
        // Hash: strings as their text (so the payload's and the envelope's tokens of one value
        // match), other values as JSON, repeated fields element by element.
        check(
            &target(
                None,
                &[
                    "user_id",
                    "attributes.ip",
                    "payload.uid",
                    "payload.emails",
                    "payload.age",
                    "payload.card",
                ],
                Hash,
                Envelope,
            ),
            r#"{"uid":"u-42","emails":["a@x","b@x"],"age":30,"card":{"n":1},"keep":true}"#,
            Some((
                &token("u-42"),
                json!({"ip": token("10.0.0.1"), "région": "eu"}),
                json!({"uid": token("u-42"), "emails": [token("a@x"), token("b@x")],
                    "age": token("30"), "card": token(r#"{"n":1}"#), "keep": true}),
            )),
        );
        // A payload that is not JSON cannot be redacted field by field: it is withheld.
        check(
            &target(None, &["payload.ssn"], Drop, Envelope),
            "\u{1}protobuf bytes",
            Some(("u-42", attributes.clone(), json!(""))),
        );
        // Only envelope fields redacted: a non-JSON payload passes unchanged.
        check(
            &target(None, &["user_id"], Drop, Envelope),
            "plain text",
            Some(("", attributes.clone(), json!("plain text"))),
        );
    }

    #[test]
    fn filters_and_formats() {
        use DeliveryFormat::{Envelope, Payload};
        use RedactMode::Drop;
        let us = json!({"payload": {"country": ["US"]}});
        let attributes = json!({"ip": "10.0.0.1", "région": "eu"});
        check(
            &target(Some(us.clone()), &[], Drop, Envelope),
            r#"{"country":"US"}"#,
            Some(("u-42", attributes.clone(), json!({"country": "US"}))),
        );
        check(
            &target(Some(us.clone()), &[], Drop, Envelope),
            r#"{"country":"CA"}"#,
            None,
        );
        check(
            &target(Some(us.clone()), &[], Drop, Envelope),
            "not json",
            None,
        );

        // Unfiltered, unredacted envelope slots get the record itself.
        let data = record(br#"{"country":"US"}"#);
        let plain = target(None, &[], Drop, Envelope);
        assert!(
            Gate::compile(&plain, None, &mut Redactions::default())
                .expect("valid")
                .is_none()
        );
        assert_eq!(
            RecordGate::new(&data).decide(&slot(None)),
            Decision::Deliver(data.clone())
        );

        // Payload format: exactly the payload bytes (a slice of the record), or redacted.
        let produced = br#"{ "country" : "US", "ssn": "1" }"#;
        let data = record(produced);
        let payload_only = Gate::compile(
            &target(None, &[], Drop, Payload),
            None,
            &mut Redactions::default(),
        )
        .expect("valid");
        assert_eq!(
            RecordGate::new(&data).decide(&slot(payload_only)),
            Decision::Deliver(Bytes::from_static(produced))
        );
        let redacted = Gate::compile(
            &target(Some(us), &["payload.ssn", "user_id"], Drop, Payload),
            None,
            &mut Redactions::default(),
        )
        .expect("valid");
        assert_eq!(
            RecordGate::new(&data).decide(&slot(redacted)),
            Decision::Deliver(Bytes::from_static(br#"{"country":"US"}"#))
        );
    }

    #[test]
    fn filters_reading_different_keys_judge_one_record_alike_shared_or_not() {
        use DeliveryFormat::Envelope;
        use RedactMode::Drop;
        let patterns = [
            json!({"payload": {"country": ["US"]}}),
            json!({"payload": {"card": {"brand": [{"prefix": "vi"}]}}}),
            json!({"payload": {"items": {"sku": ["x1"]}, "country": [{"exists": true}]}}),
            json!({"payload": {"age": [{"numeric": [">", 90]}]}}),
            json!({"user_id": ["u-42"]}),
        ];
        let data = record(
            br#"{"country":"US","card":{"brand":"visa","number":"4111"},"items":[{"sku":"x1"}],"age":30}"#,
        );
        let expected = [true, true, true, false, true];
        let slots = || -> Vec<Slot> {
            patterns
                .iter()
                .map(|pattern| {
                    let target = target(Some(pattern.clone()), &[], Drop, Envelope);
                    slot(Gate::compile(&target, None, &mut Redactions::default()).expect("valid"))
                })
                .collect()
        };
        let mut shared = slots();
        share_payload_reads(&mut shared);
        for slots in [slots(), shared] {
            // One record gate for all of them, as the engine judges a record's slots.
            let mut gate = RecordGate::new(&data);
            let delivered: Vec<bool> = slots
                .iter()
                .map(|slot| matches!(gate.decide(slot), Decision::Deliver(_)))
                .collect();
            assert_eq!(delivered, expected);
        }
    }

    #[test]
    fn one_rewrite_per_distinct_redaction() {
        let mut redactions = Redactions::default();
        let drop_ssn = target(
            None,
            &["payload.ssn"],
            RedactMode::Drop,
            DeliveryFormat::Envelope,
        );
        let a = slot(Gate::compile(&drop_ssn, None, &mut redactions).expect("valid"));
        let b = slot(Gate::compile(&drop_ssn, None, &mut redactions).expect("valid"));
        let hashed = target(
            None,
            &["payload.ssn"],
            RedactMode::Hash,
            DeliveryFormat::Envelope,
        );
        let c = slot(Gate::compile(&hashed, None, &mut redactions).expect("valid"));
        let data = record(br#"{"ssn":"1"}"#);
        let mut gate = RecordGate::new(&data);
        let (Decision::Deliver(first), Decision::Deliver(second), Decision::Deliver(third)) =
            (gate.decide(&a), gate.decide(&b), gate.decide(&c))
        else {
            panic!("all delivered");
        };
        // The same rewrite, shared (one allocation), and a different one for the other set.
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_ne!(first, third);
        assert_eq!(gate.outputs.len(), 2);
    }

    #[test]
    fn bad_targets_are_refused() {
        let mut hashed = target(
            None,
            &["user_id"],
            RedactMode::Hash,
            DeliveryFormat::Envelope,
        );
        hashed.redact_key = None;
        assert!(matches!(
            Gate::compile(&hashed, None, &mut Redactions::default()),
            Err(GateError::MissingKey)
        ));
        let bad = target(
            Some(json!({"payload": 1})),
            &[],
            RedactMode::Drop,
            DeliveryFormat::Envelope,
        );
        assert!(matches!(
            Gate::compile(&bad, None, &mut Redactions::default()),
            Err(GateError::Filter(_))
        ));
    }

    /// `shop.Signup { string name = 1; string ssn = 2; int64 age = 3; repeated string emails = 4; }`
    fn signup_schema() -> Arc<PayloadSchema> {
        use prost_types::field_descriptor_proto::{Label, Type};
        use prost_types::{
            DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        };
        let field = |name: &str, number: i32, ty: Type, label: Label| FieldDescriptorProto {
            name: Some(name.to_owned()),
            json_name: Some(name.to_owned()),
            number: Some(number),
            r#type: Some(ty as i32),
            label: Some(label as i32),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("shop.proto".to_owned()),
            package: Some("shop".to_owned()),
            syntax: Some("proto3".to_owned()),
            message_type: vec![DescriptorProto {
                name: Some("Signup".to_owned()),
                field: vec![
                    field("name", 1, Type::String, Label::Optional),
                    field("ssn", 2, Type::String, Label::Optional),
                    field("age", 3, Type::Int64, Label::Optional),
                    field("emails", 4, Type::String, Label::Repeated),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let set = FileDescriptorSet { file: vec![file] }.encode_to_vec();
        Arc::new(PayloadSchema::decode(&set, "shop.Signup").expect("schema"))
    }

    /// The protobuf encoding of a `shop.Signup`, field by field in number order (every value
    /// shorter than 128 bytes).
    fn signup(name: &str, ssn: &str, age: u8, emails: &[&str]) -> Vec<u8> {
        fn text(bytes: &mut Vec<u8>, number: u8, value: &str) {
            bytes.push(number << 3 | 2);
            bytes.push(value.len() as u8);
            bytes.extend_from_slice(value.as_bytes());
        }
        let mut bytes = Vec::new();
        if !name.is_empty() {
            text(&mut bytes, 1, name);
        }
        if !ssn.is_empty() {
            text(&mut bytes, 2, ssn);
        }
        if age > 0 {
            bytes.extend_from_slice(&[3 << 3, age]);
        }
        for email in emails {
            text(&mut bytes, 4, email);
        }
        bytes
    }

    #[test]
    fn protobuf_payloads_are_redacted_with_the_event_schema() {
        let schema = signup_schema();
        let produced = signup("ada", "123-45", 37, &["a@x", "b@x"]);
        let data = Bytes::from(
            proto::Envelope {
                event_id: "e-1".to_owned(),
                event_name: "signup".to_owned(),
                content_type: "application/x-protobuf".to_owned(),
                payload: produced.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        #[track_caller]
        fn payload_of(
            data: &Bytes,
            schema: Option<&Arc<PayloadSchema>>,
            target: &RouteTarget,
        ) -> Vec<u8> {
            let gate = Gate::compile(target, schema, &mut Redactions::default()).expect("valid");
            match RecordGate::new(data).decide(&slot(gate)) {
                Decision::Deliver(bytes) if target.delivery_format == DeliveryFormat::Payload => {
                    bytes.to_vec()
                }
                Decision::Deliver(bytes) => {
                    proto::Envelope::decode(bytes.as_ref())
                        .expect("envelope")
                        .payload
                }
                Decision::Filtered => panic!("filtered"),
            }
        }
        let redact = |paths: &[&str], mode: RedactMode, format: DeliveryFormat| {
            target(None, paths, mode, format)
        };
        use DeliveryFormat::{Envelope, Payload};
        use RedactMode::{Drop, Hash};
        // Drop: the field is gone, the rest byte for byte as produced; absent and unknown paths
        // change nothing; a repeated field goes whole; a non-string field can be dropped.
        assert_eq!(
            payload_of(
                &data,
                Some(&schema),
                &redact(&["payload.ssn"], Drop, Envelope)
            ),
            signup("ada", "", 37, &["a@x", "b@x"])
        );
        assert_eq!(
            payload_of(
                &data,
                Some(&schema),
                &redact(
                    &[
                        "payload.emails",
                        "payload.age",
                        "payload.nope",
                        "payload.name.deeper"
                    ],
                    Drop,
                    Payload
                )
            ),
            signup("ada", "123-45", 0, &[])
        );
        // Hash: strings (each element of a repeated one) become the grant's tokens, the same
        // tokens a JSON payload's equal values get; a number cannot hold one and is dropped.
        assert_eq!(
            payload_of(
                &data,
                Some(&schema),
                &redact(
                    &["payload.ssn", "payload.emails", "payload.age"],
                    Hash,
                    Envelope
                )
            ),
            signup("ada", &token("123-45"), 0, &[&token("a@x"), &token("b@x")])
        );
        // Without a schema, or when the payload is not the schema's message, the payload is
        // withheld rather than delivered unredacted; the owner's slot (no gate) gets it whole.
        assert_eq!(
            payload_of(&data, None, &redact(&["payload.ssn"], Drop, Envelope)),
            Vec::<u8>::new()
        );
        let garbage = Bytes::from(
            proto::Envelope {
                event_name: "signup".to_owned(),
                content_type: "application/x-protobuf".to_owned(),
                payload: vec![0xff, 0xff, 0xff],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert_eq!(
            payload_of(
                &garbage,
                Some(&schema),
                &redact(&["payload.ssn"], Drop, Envelope)
            ),
            Vec::<u8>::new()
        );
        assert_eq!(
            RecordGate::new(&data).decide(&slot(None)),
            Decision::Deliver(data.clone())
        );
    }
}
