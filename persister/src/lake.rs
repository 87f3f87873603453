//! Reading the lake back: which objects hold a shard's records of an event, and the envelopes
//! in them. The inverse of [`crate::encode`] and of the object naming in `state`, kept beside
//! them so the two cannot drift.
//!
//! An object's name says which shard and which sequence numbers (`first..=last`) it covers, so
//! a reader can take exactly the objects at or before a position without opening them. Inside
//! an object, records keep their order on the shard.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::encode::ObjectFormat;
use crate::partition::{Target, decode_segment, encode_segment};
use crate::sink::{ObjectSink, SinkError};
use crate::state::object_key;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("lake object {key} is missing: the persister recorded it as written")]
    Missing { key: String },
    #[error("lake object {key} cannot be read: {reason}")]
    Unreadable { key: String, reason: String },
}

/// One lake object of one shard, located by its name alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LakeObject {
    pub key: String,
    /// The event-time hour of its partition.
    pub hour: DateTime<Utc>,
    pub first: String,
    pub last: String,
    pub format: ObjectFormat,
}

/// The key of the object holding `target`'s records `first..=last` of `shard`.
pub fn key_of(
    base: &str,
    target: &Target,
    shard: &str,
    first: &str,
    last: &str,
    format: ObjectFormat,
) -> String {
    object_key(base, target, &encode_segment(shard), first, last, format)
}

/// Parses an object key of `shard` under `<base>/<event segment>/`; `None` for anything else.
fn parse_key(key: &str, partition_prefix: &str, shard_segment: &str) -> Option<LakeObject> {
    let rest = key.strip_prefix(partition_prefix)?;
    let (hour, name) = rest.split_once('/')?;
    let Target::Lake(partition) = Target::parse(&format!("x/{hour}"))? else {
        return None;
    };
    let name = name.strip_prefix(shard_segment)?.strip_prefix('-')?;
    let (range, format) = [
        ObjectFormat::NdjsonGzip,
        ObjectFormat::Ndjson,
        ObjectFormat::Parquet,
    ]
    .into_iter()
    .find_map(|f| {
        name.strip_suffix(f.extension())?
            .strip_suffix('.')
            .map(|range| (range, f))
    })?;
    let (first, last) = range.split_once('-')?;
    if last.contains('-') {
        return None;
    }
    Some(LakeObject {
        key: key.to_owned(),
        hour: partition.hour(),
        first: decode_segment(first)?,
        last: decode_segment(last)?,
        format,
    })
}

/// The objects of `event` written from `shard` whose partition hour may hold event times at or
/// after `from` and before `to`, in partition order, then shard order.
pub async fn objects(
    sink: &dyn ObjectSink,
    base: &str,
    event: &str,
    shard: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<LakeObject>, LakeError> {
    let prefix = format!("{base}/{}/", encode_segment(event));
    let shard_segment = encode_segment(shard);
    let mut found: Vec<LakeObject> = sink
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|key| parse_key(key, &prefix, &shard_segment))
        .filter(|o| may_hold(o.hour, from, to))
        .collect();
    sort(&mut found);
    found.dedup_by(|a, b| a.key == b.key);
    Ok(found)
}

/// Whether a partition of the hour starting at `hour` may hold event times at or after `from`
/// and before `to`.
pub fn may_hold(
    hour: DateTime<Utc>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> bool {
    from.is_none_or(|from| hour + chrono::Duration::hours(1) > from)
        && to.is_none_or(|to| hour < to)
}

/// The reading order: partition hour, then shard order.
pub fn sort(objects: &mut [LakeObject]) {
    objects.sort_by(|a, b| {
        a.hour
            .cmp(&b.hour)
            .then_with(|| streams::cmp_sequence(&a.first, &b.first))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Whether every record of the object lies at or before `position`.
pub fn at_or_before(object: &LakeObject, position: &str) -> bool {
    streams::cmp_sequence(&object.last, position) != Ordering::Greater
}

/// The envelopes of one object, in shard order, as protobuf bytes that decode to the envelope
/// the persister read.
pub async fn read(sink: &dyn ObjectSink, object: &LakeObject) -> Result<Vec<Bytes>, LakeError> {
    let body = sink
        .get(&object.key)
        .await?
        .ok_or_else(|| LakeError::Missing {
            key: object.key.clone(),
        })?;
    let key = object.key.clone();
    let format = object.format;
    // Decompressing and decoding is CPU work: off the async threads.
    tokio::task::spawn_blocking(move || decode(format, &body))
        .await
        .map_err(|e| LakeError::Unreadable {
            key: key.clone(),
            reason: e.to_string(),
        })?
        .map_err(|reason| LakeError::Unreadable { key, reason })
}

/// Decodes one object's bytes into envelopes.
pub fn decode(format: ObjectFormat, body: &[u8]) -> Result<Vec<Bytes>, String> {
    match format {
        ObjectFormat::Ndjson => decode_lines(body),
        ObjectFormat::NdjsonGzip => {
            let mut text = Vec::with_capacity(body.len() * 8);
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut text)
                .map_err(|e| format!("gzip: {e}"))?;
            decode_lines(&text)
        }
        ObjectFormat::Parquet => crate::columnar::read(body),
    }
}

/// One NDJSON line as `encode` writes it.
#[derive(Deserialize)]
struct Line<'a> {
    event_id: String,
    event_name: String,
    event_time: Option<DateTime<Utc>>,
    ingest_time: Option<DateTime<Utc>>,
    producer: String,
    trace_id: String,
    user_id: String,
    device_id: String,
    attributes: BTreeMap<String, String>,
    content_type: String,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    payload_base64: Option<String>,
}

fn timestamp(at: Option<DateTime<Utc>>) -> Option<proto::Timestamp> {
    at.map(|at| proto::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

fn decode_lines(text: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    for (number, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let line: Line<'_> =
            serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", number + 1))?;
        let payload = match (line.payload, line.payload_base64) {
            (Some(raw), _) => raw.get().as_bytes().to_vec(),
            (None, Some(encoded)) => STANDARD
                .decode(encoded)
                .map_err(|e| format!("line {}: payload_base64: {e}", number + 1))?,
            // The JSON payload `null` itself: anything else that is not JSON (the empty
            // payload too) is written as base64.
            (None, None) => b"null".to_vec(),
        };
        out.push(Bytes::from(
            proto::Envelope {
                event_id: line.event_id,
                event_name: line.event_name,
                event_time: timestamp(line.event_time),
                ingest_time: timestamp(line.ingest_time),
                producer: line.producer,
                trace_id: line.trace_id,
                user_id: line.user_id,
                device_id: line.device_id,
                attributes: line.attributes,
                content_type: line.content_type,
                payload,
                history_id: String::new(),
            }
            .encode_to_vec(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{Encoding, encode_envelopes};

    fn envelope(i: u32, payload: &[u8]) -> proto::Envelope {
        proto::Envelope {
            event_id: format!("id-{i}"),
            event_name: "你好 signup".to_owned(),
            event_time: Some(proto::Timestamp {
                seconds: 1_700_000_000 + i64::from(i),
                nanos: 123_456_000,
            }),
            ingest_time: None,
            producer: "growth".to_owned(),
            trace_id: String::new(),
            user_id: format!("u{i}"),
            device_id: String::new(),
            attributes: [
                ("k".to_owned(), "v".to_owned()),
                ("a b".to_owned(), String::new()),
            ]
            .into(),
            content_type: "application/json".to_owned(),
            payload: payload.to_vec(),
            history_id: String::new(),
        }
    }

    #[test]
    fn every_format_reads_back_to_the_envelopes_written() {
        let payloads: [&[u8]; 5] = [
            br#"{"plan":"pro","n":[1,2.5e3]}"#,
            b"\xff\x00binary",
            b"",
            b"null",
            br#""just a string""#,
        ];
        let envelopes: Vec<proto::Envelope> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| envelope(u32::try_from(i).unwrap_or(0), p))
            .collect();
        let records: Vec<Bytes> = envelopes
            .iter()
            .map(|e| Bytes::from(e.encode_to_vec()))
            .collect();
        for format in [
            ObjectFormat::Ndjson,
            ObjectFormat::NdjsonGzip,
            ObjectFormat::Parquet,
        ] {
            let encoding = Encoding {
                format,
                ..Encoding::default()
            };
            let body = encode_envelopes(&encoding, &records, 1024).expect("encodes");
            let back: Vec<proto::Envelope> = decode(format, &body)
                .expect("decodes")
                .iter()
                .map(|b| proto::Envelope::decode(b.as_ref()).expect("an envelope"))
                .collect();
            assert_eq!(back, envelopes, "{format:?}");
        }
        assert!(decode(ObjectFormat::Ndjson, b"{not json}\n").is_err());
        assert!(decode(ObjectFormat::NdjsonGzip, b"not gzip").is_err());
        assert!(decode(ObjectFormat::Parquet, b"PAR1").is_err());
    }

    #[test]
    fn keys_name_their_shard_and_range() {
        let prefix = "events/sign%20up/";
        let check = |key: &str, expected: Option<(&str, &str, ObjectFormat)>| {
            let got = parse_key(key, prefix, "shard-0001")
                .map(|o| (o.first.clone(), o.last.clone(), o.format));
            let expected = expected.map(|(a, b, f)| (a.to_owned(), b.to_owned(), f));
            assert_eq!(got, expected, "{key}");
        };
        check(
            "events/sign%20up/2024-05-01:12/shard-0001-5-9.ndjson.gz",
            Some(("5", "9", ObjectFormat::NdjsonGzip)),
        );
        check(
            "events/sign%20up/2024-05-01:12/shard-0001-5-9.parquet",
            Some(("5", "9", ObjectFormat::Parquet)),
        );
        // Another shard whose name starts the same, another event, an error object, junk.
        check(
            "events/sign%20up/2024-05-01:12/shard-0001-1-5-9.ndjson",
            None,
        );
        check("events/other/2024-05-01:12/shard-0001-5-9.ndjson", None);
        check("events/sign%20up/2024-05-01/shard-0001-5-9.ndjson", None);
        check("events/sign%20up/2024-05-01:12/shard-0001-5-9.csv", None);
    }
}
