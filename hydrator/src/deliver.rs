//! Writing history into a consumer stream: the mark that tells it from live delivery, the
//! rate limit, and the write itself.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint};
use streams::{PutRecord, RetryPolicy, StreamBackend, StreamError};
use tokio::time::Instant;

/// The envelope field that carries the id of the hydration or replay that delivered a record.
const HISTORY_ID_FIELD: u32 = 12;

/// The record as published, with `history_id` appended: protobuf takes the last value of a
/// field, so every other field decodes as the producer wrote it.
pub(crate) fn mark(data: &[u8], history_id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + history_id.len() + 4);
    out.extend_from_slice(data);
    encode_key(HISTORY_ID_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(history_id.len() as u64, &mut out);
    out.extend_from_slice(history_id.as_bytes());
    out.freeze()
}

/// Why a batch was not written.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Worth trying again later: the batch is still owed.
    Transient(String),
    /// The hydration cannot go on (the stream is gone).
    Fatal(String),
}

/// A token bucket over records and bytes per second, refilled continuously.
pub(crate) struct RateLimit {
    records: Option<f64>,
    bytes: Option<f64>,
    since: Instant,
    sent_records: f64,
    sent_bytes: f64,
}

impl RateLimit {
    pub(crate) fn new(records: Option<u32>, bytes: Option<u32>) -> RateLimit {
        RateLimit {
            records: records.map(f64::from),
            bytes: bytes.map(f64::from),
            since: Instant::now(),
            sent_records: 0.0,
            sent_bytes: 0.0,
        }
    }

    pub(crate) fn is_limited(&self) -> bool {
        self.records.is_some() || self.bytes.is_some()
    }

    /// Waits until `records` and `bytes` more keep the rate within its limits.
    pub(crate) async fn admit(&mut self, records: usize, bytes: usize) {
        self.sent_records += records as f64;
        self.sent_bytes += bytes as f64;
        let due = |sent: f64, rate: Option<f64>| rate.map_or(0.0, |rate| sent / rate);
        let wait = due(self.sent_records, self.records).max(due(self.sent_bytes, self.bytes));
        let at = self.since + Duration::from_secs_f64(wait);
        tokio::time::sleep_until(at).await;
        // Forget the distant past so an idle spell does not buy a burst later.
        if self.since.elapsed() > Duration::from_secs(10) {
            *self = RateLimit::new(self.records.map(|r| r as u32), self.bytes.map(|b| b as u32));
        }
    }
}

/// Writes one batch, every record or an error.
pub(crate) async fn write(
    backend: &dyn StreamBackend,
    stream: &str,
    records: &[PutRecord],
) -> Result<(), WriteError> {
    match streams::put_all(backend, stream, records, &RetryPolicy::default()).await {
        Ok(outcome) if outcome.all_written() => Ok(()),
        Ok(outcome) => {
            let (_, failure) = outcome
                .failed()
                .next()
                .map_or((0, None), |(index, failure)| (index, Some(failure.clone())));
            Err(WriteError::Transient(format!(
                "stream {stream:?} did not take every record: {failure:?}"
            )))
        }
        Err(StreamError::NotFound(name)) => Err(WriteError::Fatal(format!(
            "the stream's backing stream {name:?} does not exist"
        ))),
        Err(error) if error.is_transient() => Err(WriteError::Transient(error.to_string())),
        Err(error) => Err(WriteError::Fatal(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_marked_record_decodes_as_published_plus_its_mark() {
        let published = proto::Envelope {
            event_id: "e-1".to_owned(),
            event_name: "signup".to_owned(),
            payload: br#"{"plan":"pro"}"#.to_vec(),
            attributes: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        };
        let bytes = published.encode_to_vec();
        let marked = proto::Envelope::decode(mark(&bytes, "h-42").as_ref()).expect("decodes");
        assert_eq!(
            marked,
            proto::Envelope {
                history_id: "h-42".to_owned(),
                ..published.clone()
            }
        );
        // A mark already there (a record replayed twice) is replaced, not doubled.
        let twice = mark(&mark(&bytes, "h-1"), "h-2");
        let decoded = proto::Envelope::decode(twice.as_ref()).expect("decodes");
        assert_eq!(decoded.history_id, "h-2");
        let view = proto::EnvelopeRef::decode(&twice).expect("the engine's reader agrees");
        assert_eq!(view.history_id, "h-2");
    }
}
