//! The dead-letter record format.
//!
//! A GES record the engine cannot deliver (not an envelope, an event not in the catalog, too
//! large for a consumer stream) is written to the dead-letter stream as one record:
//!
//! ```text
//! {"format":"fanner.dead_letter.v1","reason":"unknown_event",...}\n<the original bytes>
//! ```
//!
//! The first line is a compact JSON [`DeadLetter`] header (JSON escapes newlines, so the first
//! `\n` ends it); everything after it is the GES record's data, unchanged, cut short (and
//! `truncated` set) only when header and data together would exceed a record's size limit.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use streams::StreamSpec;

use crate::config::EngineConfig;

pub const FORMAT: &str = "fanner.dead_letter.v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The bytes are not a Fanner envelope.
    NotAnEnvelope,
    /// The envelope names an event the catalog does not hold.
    UnknownEvent,
    /// The record is too large for a consumer stream (with the engine's partition key).
    Oversize,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotAnEnvelope => "not_an_envelope",
            Reason::UnknownEvent => "unknown_event",
            Reason::Oversize => "oversize",
        }
    }
}

/// The header of a dead-letter record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Always [`FORMAT`].
    pub format: String,
    pub reason: Reason,
    /// Why, for people.
    pub detail: String,
    /// Where the record was read: the GES, its shard and the record's sequence number.
    pub ges: String,
    pub shard: String,
    pub sequence: String,
    pub partition_key: String,
    pub arrival_time: Option<DateTime<Utc>>,
    /// From the envelope, when it could be read.
    pub event_name: Option<String>,
    pub event_id: Option<String>,
    /// The GES record's size in bytes.
    pub original_size: usize,
    /// Only the first bytes of the GES record follow the header.
    pub truncated: bool,
    pub dead_lettered_at: DateTime<Utc>,
}

/// Builds a dead-letter record of at most `limit` bytes: the header line, then as much of `data`
/// as fits.
pub fn encode(mut header: DeadLetter, data: &[u8], limit: usize) -> Bytes {
    header.format = FORMAT.to_owned();
    header.original_size = data.len();
    header.truncated = false;
    let mut line = serde_json::to_vec(&header).unwrap_or_default();
    let room = limit.saturating_sub(line.len() + 1);
    if data.len() > room {
        header.truncated = true;
        line = serde_json::to_vec(&header).unwrap_or_default();
    }
    let room = limit.saturating_sub(line.len() + 1);
    let kept = &data[..data.len().min(room)];
    let mut out = BytesMut::with_capacity(line.len() + 1 + kept.len());
    out.put_slice(&line);
    out.put_u8(b'\n');
    out.put_slice(kept);
    out.freeze()
}

/// Splits a dead-letter record into its header and the (possibly truncated) original bytes.
pub fn decode(record: &Bytes) -> Result<(DeadLetter, Bytes), String> {
    let end = record
        .iter()
        .position(|&byte| byte == b'\n')
        .ok_or_else(|| "a dead-letter record starts with a JSON line".to_owned())?;
    let header: DeadLetter = serde_json::from_slice(&record[..end])
        .map_err(|error| format!("unreadable dead-letter header: {error}"))?;
    if header.format != FORMAT {
        return Err(format!("unknown dead-letter format {:?}", header.format));
    }
    Ok((header, record.slice(end + 1..)))
}

/// The dead-letter stream as the engine creates it: one shard, the configured retention.
pub(crate) fn stream_spec(config: &EngineConfig) -> StreamSpec {
    StreamSpec {
        name: config.dead_letters(),
        shard_count: 1,
        retention_hours: config.dead_letter_retention_hours,
        tags: [("fanner".to_owned(), "dead-letters".to_owned())].into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(reason: Reason) -> DeadLetter {
        DeadLetter {
            format: String::new(),
            reason,
            detail: "event \"ghost\" is not in the catalog\nsecond line".to_owned(),
            ges: "global-events".to_owned(),
            shard: "shardId-000000000000".to_owned(),
            sequence: "42".to_owned(),
            partition_key: "user-1".to_owned(),
            arrival_time: Some(Utc::now()),
            event_name: Some("ghost".to_owned()),
            event_id: None,
            original_size: 0,
            truncated: false,
            dead_lettered_at: Utc::now(),
        }
    }

    #[test]
    fn round_trip_keeps_bytes_and_truncates_to_the_limit() {
        let data = b"\n\x00binary\nwith newlines".to_vec();
        let record = encode(header(Reason::UnknownEvent), &data, 1024 * 1024);
        let (decoded, body) = decode(&record).expect("decodes");
        assert_eq!(decoded.reason, Reason::UnknownEvent);
        assert_eq!(decoded.format, FORMAT);
        assert_eq!(decoded.original_size, data.len());
        assert!(!decoded.truncated);
        assert_eq!(&body[..], &data[..]);

        let big = vec![9u8; 1024 * 1024];
        let record = encode(header(Reason::Oversize), &big, 1024 * 1024 - 40);
        assert!(record.len() <= 1024 * 1024 - 40);
        let (decoded, body) = decode(&record).expect("decodes");
        assert!(decoded.truncated);
        assert_eq!(decoded.original_size, big.len());
        assert!(!body.is_empty() && big.starts_with(&body));

        assert!(decode(&Bytes::from_static(b"no header")).is_err());
        assert!(decode(&Bytes::from_static(b"{\"format\":\"x\"}\n")).is_err());
    }
}
