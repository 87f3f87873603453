//! Turns a batch of buffered records into the bytes of one lake object.
//!
//! Lake objects are NDJSON (optionally gzip) or Parquet. An NDJSON line has the shape of the
//! API's `EnvelopeView`, so what `fanner tail` shows and what the lake holds read the same. Error
//! objects are always NDJSON: they keep the raw record so it can be repaired and replayed.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use flate2::write::GzEncoder;
use proto::EnvelopeRef;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::partition::ErrorReason;

/// The file format of lake objects. Its extension is part of every object name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectFormat {
    Ndjson,
    NdjsonGzip,
    Parquet,
}

impl ObjectFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ObjectFormat::Ndjson => "ndjson",
            ObjectFormat::NdjsonGzip => "ndjson.gz",
            ObjectFormat::Parquet => "parquet",
        }
    }

    pub fn parse_extension(ext: &str) -> Option<ObjectFormat> {
        [
            ObjectFormat::Ndjson,
            ObjectFormat::NdjsonGzip,
            ObjectFormat::Parquet,
        ]
        .into_iter()
        .find(|f| f.extension() == ext)
    }

    /// Error objects hold raw bytes that do not fit a columnar schema: they stay NDJSON, with the
    /// lake's compression.
    pub fn for_errors(self) -> ObjectFormat {
        match self {
            ObjectFormat::Ndjson => ObjectFormat::Ndjson,
            ObjectFormat::NdjsonGzip | ObjectFormat::Parquet => ObjectFormat::NdjsonGzip,
        }
    }
}

/// Compression inside Parquet files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    None,
    #[default]
    Snappy,
}

/// How objects are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub format: ObjectFormat,
    /// zlib level 0–9 for gzip objects.
    pub gzip_level: u32,
    pub parquet_compression: ParquetCompression,
}

/// The default gzip level: see the benchmark notes in the crate docs for why it is low.
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

impl Default for Encoding {
    fn default() -> Self {
        Encoding {
            format: ObjectFormat::NdjsonGzip,
            gzip_level: DEFAULT_GZIP_LEVEL,
            parquet_compression: ParquetCompression::Snappy,
        }
    }
}

/// A record that could not be placed, with enough to repair and replay it.
#[derive(Clone, Debug)]
pub struct ErrorRecord {
    pub reason: ErrorReason,
    pub shard: String,
    pub sequence: String,
    pub arrival_time: Option<DateTime<Utc>>,
    /// The record exactly as read from the stream; written out decoded too when it is an
    /// envelope.
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("writing JSON failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("compressing failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing Parquet failed: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("a record placed in the lake is no longer an envelope: {0}")]
    NotAnEnvelope(#[from] proto::ViewError),
}

/// One envelope in the shape of `api::EnvelopeView`, borrowing instead of copying. A JSON
/// payload is written through verbatim when it is already on one line.
#[derive(Serialize)]
struct EnvelopeLine<'a> {
    event_id: &'a str,
    event_name: &'a str,
    event_time: Option<Rfc3339>,
    ingest_time: Option<Rfc3339>,
    producer: &'a str,
    trace_id: &'a str,
    user_id: &'a str,
    device_id: &'a str,
    attributes: Attributes<'a>,
    content_type: &'a str,
    payload: Option<JsonPayload<'a>>,
    payload_base64: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonPayload<'a> {
    Raw(&'a RawValue),
    Parsed(serde_json::Value),
}

/// Attribute pairs, already in key order, written as a JSON object.
struct Attributes<'a>(&'a [(&'a str, &'a str)]);

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().copied())
    }
}

impl<'a> EnvelopeLine<'a> {
    fn new(envelope: &'a EnvelopeRef<'a>) -> Self {
        let (payload, payload_base64) = match json_payload(envelope.payload) {
            Some(json) => (Some(json), None),
            None => (None, Some(STANDARD.encode(envelope.payload))),
        };
        EnvelopeLine {
            event_id: envelope.event_id,
            event_name: envelope.event_name,
            event_time: envelope
                .event_time
                .as_ref()
                .and_then(timestamp)
                .map(Rfc3339),
            ingest_time: envelope
                .ingest_time
                .as_ref()
                .and_then(timestamp)
                .map(Rfc3339),
            producer: envelope.producer,
            trace_id: envelope.trace_id,
            user_id: envelope.user_id,
            device_id: envelope.device_id,
            attributes: Attributes(&envelope.attributes),
            content_type: envelope.content_type,
            payload,
            payload_base64,
        }
    }
}

fn json_payload(payload: &[u8]) -> Option<JsonPayload<'_>> {
    let raw: &RawValue = serde_json::from_slice(payload).ok()?;
    // Whitespace between tokens may contain line breaks (inside strings they are escaped):
    // those payloads are re-serialised compactly so each record stays on one line.
    if memchr::memchr2(b'\n', b'\r', raw.get().as_bytes()).is_some() {
        serde_json::from_str(raw.get())
            .ok()
            .map(JsonPayload::Parsed)
    } else {
        Some(JsonPayload::Raw(raw))
    }
}

/// A time serialised exactly as chrono's `Serialize` does (RFC 3339, `Z`, the fraction in
/// groups of three digits as needed), without the formatting machinery: every lake line has
/// two of them, and chrono's path cost more than the rest of the line.
struct Rfc3339(DateTime<Utc>);

impl Rfc3339 {
    /// `None` where chrono spells things this does not: years outside 0–9999, leap seconds.
    fn format(&self, buf: &mut [u8; 30]) -> Option<usize> {
        let t = self.0;
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 {
            return None;
        }
        fn digits(out: &mut [u8], mut value: u32) {
            for slot in out.iter_mut().rev() {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        digits(&mut buf[0..4], year);
        buf[4] = b'-';
        digits(&mut buf[5..7], t.month());
        buf[7] = b'-';
        digits(&mut buf[8..10], t.day());
        buf[10] = b'T';
        digits(&mut buf[11..13], t.hour());
        buf[13] = b':';
        digits(&mut buf[14..16], t.minute());
        buf[16] = b':';
        digits(&mut buf[17..19], t.second());
        let mut len = 19;
        let (fraction, width) = match nanos {
            0 => (0, 0),
            n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
            n if n % 1_000 == 0 => (n / 1_000, 6),
            n => (n, 9),
        };
        if width > 0 {
            buf[len] = b'.';
            digits(&mut buf[len + 1..len + 1 + width], fraction);
            len += 1 + width;
        }
        buf[len] = b'Z';
        Some(len + 1)
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 30];
        match self.format(&mut buf) {
            Some(len) => serializer.serialize_str(
                std::str::from_utf8(&buf[..len]).map_err(serde::ser::Error::custom)?,
            ),
            None => self.0.serialize(serializer),
        }
    }
}

/// A protobuf timestamp as a UTC time, `None` when it is out of range.
pub fn timestamp(t: &proto::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    Utc.timestamp_opt(t.seconds, nanos).single()
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    reason: &'static str,
    shard: &'a str,
    sequence: &'a str,
    arrival_time: Option<DateTime<Utc>>,
    data_base64: String,
    envelope: Option<EnvelopeLine<'a>>,
}

/// Encodes good envelopes, given as their protobuf bytes, in the lake format.
pub fn encode_envelopes(
    encoding: &Encoding,
    envelopes: &[Bytes],
    raw_bytes: usize,
) -> Result<Vec<u8>, EncodeError> {
    match encoding.format {
        ObjectFormat::Ndjson => {
            let mut out = Vec::with_capacity(raw_bytes + raw_bytes / 2);
            write_envelope_lines(&mut out, envelopes, |_| Ok(()))?;
            Ok(out)
        }
        ObjectFormat::NdjsonGzip => {
            let mut gz = GzEncoder::new(
                Vec::with_capacity(raw_bytes / 4),
                flate2::Compression::new(encoding.gzip_level),
            );
            let mut chunk = Vec::with_capacity(LINE_CHUNK * 2);
            write_envelope_lines(&mut chunk, envelopes, |chunk| {
                gz.write_all(chunk)?;
                chunk.clear();
                Ok(())
            })?;
            Ok(gz.finish()?)
        }
        ObjectFormat::Parquet => crate::columnar::write(encoding.parquet_compression, envelopes),
    }
}

/// How much NDJSON gathers before [`write_envelope_lines`] hands it on: long runs for the
/// compressor, still in cache.
const LINE_CHUNK: usize = 256 * 1024;

/// Appends one line per envelope to `out`, and calls `spill` whenever `out` holds
/// [`LINE_CHUNK`] bytes or more, and at the end.
fn write_envelope_lines(
    out: &mut Vec<u8>,
    envelopes: &[Bytes],
    mut spill: impl FnMut(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    for data in envelopes {
        let envelope = EnvelopeRef::decode(data)?;
        write_line(out, &EnvelopeLine::new(&envelope))?;
        out.push(b'\n');
        if out.len() >= LINE_CHUNK {
            spill(out)?;
        }
    }
    spill(out)
}

/// Writes `line` exactly as serde_json serialises it, but with the field names as literals and
/// strings that need no escaping copied whole: serde_json escapes byte by byte, and that was
/// the largest part of encoding a lake line.
fn write_line(out: &mut Vec<u8>, line: &EnvelopeLine<'_>) -> Result<(), EncodeError> {
    out.extend_from_slice(b"{\"event_id\":");
    write_str(out, line.event_id)?;
    out.extend_from_slice(b",\"event_name\":");
    write_str(out, line.event_name)?;
    out.extend_from_slice(b",\"event_time\":");
    write_time(out, line.event_time.as_ref())?;
    out.extend_from_slice(b",\"ingest_time\":");
    write_time(out, line.ingest_time.as_ref())?;
    out.extend_from_slice(b",\"producer\":");
    write_str(out, line.producer)?;
    out.extend_from_slice(b",\"trace_id\":");
    write_str(out, line.trace_id)?;
    out.extend_from_slice(b",\"user_id\":");
    write_str(out, line.user_id)?;
    out.extend_from_slice(b",\"device_id\":");
    write_str(out, line.device_id)?;
    out.extend_from_slice(b",\"attributes\":{");
    for (i, (key, value)) in line.attributes.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key)?;
        out.push(b':');
        write_str(out, value)?;
    }
    out.extend_from_slice(b"},\"content_type\":");
    write_str(out, line.content_type)?;
    out.extend_from_slice(b",\"payload\":");
    match &line.payload {
        Some(JsonPayload::Raw(raw)) => out.extend_from_slice(raw.get().as_bytes()),
        Some(payload @ JsonPayload::Parsed(_)) => serde_json::to_writer(&mut *out, payload)?,
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"payload_base64\":");
    match &line.payload_base64 {
        Some(text) => write_str(out, text)?,
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(())
}

fn write_str(out: &mut Vec<u8>, text: &str) -> Result<(), EncodeError> {
    // serde_json escapes control characters, quotes and backslashes, nothing else. A fold
    // without early exit, so the check compiles to vector code.
    let plain = text.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text)?;
    }
    Ok(())
}

fn write_time(out: &mut Vec<u8>, time: Option<&Rfc3339>) -> Result<(), EncodeError> {
    let mut buf = [0u8; 30];
    match time.map(|t| (t, t.format(&mut buf))) {
        Some((_, Some(len))) => {
            out.push(b'"');
            out.extend_from_slice(&buf[..len]);
            out.push(b'"');
        }
        Some((t, None)) => serde_json::to_writer(&mut *out, t)?,
        None => out.extend_from_slice(b"null"),
    }
    Ok(())
}

/// Encodes error records as NDJSON in the errors format of the lake format.
pub fn encode_errors(encoding: &Encoding, records: &[ErrorRecord]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    for record in records {
        let envelope = EnvelopeRef::decode(&record.data).ok();
        let line = ErrorLine {
            reason: record.reason.as_str(),
            shard: &record.shard,
            sequence: &record.sequence,
            arrival_time: record.arrival_time,
            data_base64: STANDARD.encode(&record.data),
            envelope: envelope.as_ref().map(EnvelopeLine::new),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.push(b'\n');
    }
    match encoding.format.for_errors() {
        ObjectFormat::NdjsonGzip => {
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::new(encoding.gzip_level));
            gz.write_all(&out)?;
            Ok(gz.finish()?)
        }
        ObjectFormat::Ndjson | ObjectFormat::Parquet => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use proto::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn envelope(payload: &[u8]) -> proto::Envelope {
        proto::Envelope {
            event_id: "id-1".into(),
            event_name: "orders.created".into(),
            event_time: Some(proto::Timestamp {
                seconds: 1_714_566_600,
                nanos: 5,
            }),
            payload: payload.to_vec(),
            ..Default::default()
        }
    }

    fn line(payload: &[u8]) -> serde_json::Value {
        let mut out = Vec::new();
        write_envelope_lines(
            &mut out,
            &[envelope(payload).encode_to_vec().into()],
            |_| Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn encodings_are_deterministic_and_parquet_reads_back() {
        let envelopes: Vec<_> = (0..50u8)
            .map(|i| {
                let mut e = envelope(&[i, b'x']);
                e.attributes.insert("k".into(), i.to_string());
                Bytes::from(e.encode_to_vec())
            })
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
            let a = encode_envelopes(&encoding, &envelopes, 1000).unwrap_or_else(|e| panic!("{e}"));
            let b = encode_envelopes(&encoding, &envelopes, 1000).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a, b, "{format:?} encodes the same batch to the same bytes");
        }
    }

    #[test]
    fn times_are_spelled_as_chrono_spells_them() {
        let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        let nanos = [
            0,
            5,
            1_000,
            120_000,
            1_000_000,
            999_000_000,
            999_999_999,
            1_500_000_000,
        ];
        let mut checked = 0;
        for i in 0..20_000 {
            let seconds = rng.random_range(-100_000_000_000..300_000_000_000_i64);
            let nano = if i < 1000 {
                nanos[i % nanos.len()]
            } else {
                rng.random_range(0..1_000_000_000)
            };
            let Some(time) = Utc.timestamp_opt(seconds, nano).single() else {
                continue;
            };
            let ours = serde_json::to_string(&Rfc3339(time)).unwrap_or_else(|e| panic!("{e}"));
            let chrono = serde_json::to_string(&time).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ours, chrono, "{seconds} s {nano} ns");
            checked += 1;
        }
        assert!(checked > 15_000, "{checked} times compared");
    }

    #[test]
    fn lines_are_written_exactly_as_serde_json_writes_them() {
        const TEXT: [&str; 8] = [
            "",
            "orders",
            "é😊",
            "\"",
            "\\",
            "\u{1}\n\t",
            "\u{7f}",
            "a/b<c>",
        ];
        fn text(rng: &mut StdRng) -> String {
            let piece = TEXT[rng.random_range(0..TEXT.len())];
            piece.repeat(rng.random_range(1..4))
        }
        let mut rng = StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        const PAYLOADS: [&[u8]; 6] = [
            br#"{"a":[1,2.5e3,"x\"y"],"b":null}"#,
            b"{\n  \"multi\": \"line\\n\"\n}",
            b"\"just a string\"",
            b"",
            &[0xff, 0x00, 0x01],
            b"{\"unterminated\":",
        ];
        for case in 0..5_000 {
            let mut envelope = proto::Envelope {
                event_id: text(&mut rng),
                event_name: text(&mut rng),
                producer: text(&mut rng),
                trace_id: text(&mut rng),
                user_id: text(&mut rng),
                device_id: text(&mut rng),
                content_type: text(&mut rng),
                ..Default::default()
            };
            for _ in 0..rng.random_range(0..3) {
                envelope.attributes.insert(text(&mut rng), text(&mut rng));
            }
            let seconds =
                [0, 1_714_566_600, -62_135_596_800, 253_402_300_800][rng.random_range(0..4)];
            let nanos = [0, 5, 120_000, 999_999_999][rng.random_range(0..4)];
            envelope.event_time = rng
                .random_bool(0.75)
                .then_some(proto::Timestamp { seconds, nanos });
            envelope.ingest_time = rng.random_bool(0.5).then_some(proto::Timestamp {
                seconds: 1_714_566_600,
                nanos: 1_000_000,
            });
            envelope.payload = PAYLOADS[rng.random_range(0..PAYLOADS.len())].to_vec();
            let view = EnvelopeRef::from(&envelope);
            let line = EnvelopeLine::new(&view);
            let mut ours = Vec::new();
            write_line(&mut ours, &line).unwrap_or_else(|e| panic!("{e}"));
            let serde = serde_json::to_vec(&line).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde),
                "case {case}"
            );
        }
    }

    #[test]
    fn payloads_are_json_when_they_parse() {
        let l = line(br#"{"a": [1, 2]}"#);
        assert_eq!(l["payload"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(l["payload_base64"], serde_json::Value::Null);
        let l = line(b"{\n  \"multi\": \"line\\n\"\n}\n");
        assert_eq!(l["payload"], serde_json::json!({"multi": "line\n"}));
        let l = line(&[0xff, 0x00, 0x01]);
        assert_eq!(l["payload"], serde_json::Value::Null);
        assert_eq!(l["payload_base64"], "/wAB");
        let l = line(b"");
        assert_eq!(l["payload_base64"], "");
        assert_eq!(l["event_time"], "2024-05-01T12:30:00.000000005Z");
    }
}
