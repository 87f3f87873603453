//! Stream backends: where the global event stream (GES) and the consumer streams live.
//!
//! [`StreamBackend`] is the one interface the control plane (provisioning), the fan-out engine
//! (read the GES, write consumer streams) and the persister (read the GES) use.

pub mod embedded;
pub mod kinesis;
mod put;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub shard_count: u32,
    pub retention_hours: u32,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDescription {
    pub name: String,
    /// The backend's identifier (an ARN on Kinesis).
    pub backing_id: String,
    pub active: bool,
    /// Open shards.
    pub shard_count: u32,
    pub retention_hours: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    /// Shards this one was split or merged from; read them to their end first. A parent that is
    /// no longer listed by [`StreamBackend::list_shards`] has expired and counts as finished.
    pub parents: Vec<String>,
    /// A closed shard takes no more writes; once read to its end it is finished.
    pub closed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AfterSequence(String),
    AtSequence(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub sequence: String,
    pub partition_key: String,
    pub data: Bytes,
    pub arrival_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadBatch {
    pub records: Vec<Record>,
    /// How far behind the shard's tip the reader is after this batch, when the backend knows.
    pub millis_behind: Option<i64>,
    /// The shard is closed and every record in it has been returned.
    pub shard_end: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecord {
    pub partition_key: String,
    pub data: Bytes,
}

/// Why one entry of a batch put was not written. The caller retries just those entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutFailure {
    pub code: String,
    pub message: String,
}

impl PutFailure {
    pub fn is_throttle(&self) -> bool {
        self.code == "ProvisionedThroughputExceededException"
    }
}

/// Per entry, in order: the sequence number it was written at, or why it was not.
pub type PutOutcome = Vec<Result<String, PutFailure>>;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream {0:?} does not exist")]
    NotFound(String),
    #[error("stream {0:?} already exists with different settings")]
    AlreadyExists(String),
    #[error("shard {shard:?} of stream {stream:?} does not exist")]
    ShardNotFound { stream: String, shard: String },
    #[error("throttled by the backend: {0}")]
    Throttled(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backend refused the caller's credentials or key: retrying will not help.
    #[error("access denied by the backend: {0}")]
    Denied(String),
    #[error("timed out waiting for stream {0:?} to become active")]
    NotActive(String),
    #[error("stream backend error: {0}")]
    Backend(String),
}

impl StreamError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StreamError::Throttled(_) | StreamError::Backend(_) | StreamError::NotActive(_)
        )
    }
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;

/// Reads one shard in order. Keeps whatever position state the backend needs (a Kinesis iterator).
#[async_trait]
pub trait ShardReader: Send {
    /// Up to `limit` records after the last one returned. An empty batch means nothing new yet.
    async fn next_batch(&mut self, limit: usize) -> Result<ReadBatch>;

    /// Waits, at most `max_wait`, until a following [`next_batch`](Self::next_batch) may return
    /// records: call it after an empty batch instead of sleeping. A backend that can be told about
    /// appends returns as soon as one lands; one that must poll returns when the next poll is
    /// allowed. Returning early without new records is allowed.
    async fn wait_for_records(&mut self, max_wait: Duration) {
        tokio::time::sleep(max_wait).await;
    }
}

#[async_trait]
pub trait StreamBackend: Send + Sync + 'static {
    /// Short name for logs and metrics: `embedded`, `kinesis`.
    fn kind(&self) -> &'static str;

    /// Creates the stream and waits until it is active. Creating a stream that already exists
    /// with the same shard count and retention succeeds (so a retried create is harmless).
    async fn create_stream(&self, spec: &StreamSpec) -> Result<StreamDescription>;

    /// Changes shard count, retention and tags in place and waits until the stream is active.
    async fn update_stream(&self, spec: &StreamSpec) -> Result<StreamDescription>;

    /// Deletes the stream and its records. Deleting a missing stream succeeds.
    async fn delete_stream(&self, name: &str) -> Result<()>;

    async fn describe_stream(&self, name: &str) -> Result<Option<StreamDescription>>;

    /// Every shard, open and closed, that still holds records.
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>>;

    async fn open_reader(
        &self,
        stream: &str,
        shard: &str,
        from: StartPosition,
    ) -> Result<Box<dyn ShardReader>>;

    /// Writes a batch (at most [`MAX_PUT_RECORDS`] records, [`MAX_PUT_BYTES`] bytes).
    /// A whole-call failure is `Err`; per-entry failures are in the outcome.
    async fn put_records(&self, stream: &str, records: &[PutRecord]) -> Result<PutOutcome>;
}

pub use put::{PutAllOutcome, RetryPolicy, put_all};

pub const MAX_PUT_RECORDS: usize = 500;
pub const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;
/// The largest record (data plus partition key) a stream accepts.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// The longest partition key, in characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Retention bounds every backend accepts (Kinesis's).
pub const RETENTION_HOURS_RANGE: std::ops::RangeInclusive<u32> = 24..=8760;

/// Checks what every backend requires of a stream's settings, with the same message everywhere.
pub fn validate_spec(spec: &StreamSpec) -> Result<()> {
    if spec.name.is_empty() || spec.name.len() > 128 {
        return Err(StreamError::Invalid(format!(
            "stream name {:?} must be 1 to 128 characters long",
            spec.name
        )));
    }
    if spec.shard_count == 0 {
        return Err(StreamError::Invalid(format!(
            "stream {:?}: shard_count must be at least 1",
            spec.name
        )));
    }
    if !RETENTION_HOURS_RANGE.contains(&spec.retention_hours) {
        return Err(StreamError::Invalid(format!(
            "stream {:?}: retention_hours must be between {} and {}, got {}",
            spec.name,
            RETENTION_HOURS_RANGE.start(),
            RETENTION_HOURS_RANGE.end(),
            spec.retention_hours
        )));
    }
    Ok(())
}

/// The size a record counts for against [`MAX_RECORD_BYTES`] and [`MAX_PUT_BYTES`].
pub fn record_size(record: &PutRecord) -> usize {
    record.data.len() + record.partition_key.len()
}

/// Checks one record against the limits every backend enforces; `index` names it in the message.
pub fn validate_record(index: usize, record: &PutRecord) -> Result<()> {
    let chars = record.partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(StreamError::Invalid(format!(
            "record {index}: the partition key must be 1 to {MAX_PARTITION_KEY_CHARS} characters, \
             got {chars}"
        )));
    }
    let size = record_size(record);
    if size > MAX_RECORD_BYTES {
        return Err(StreamError::Invalid(format!(
            "record {index} is too large: {size} bytes (data plus partition key), the limit is \
             {MAX_RECORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks a batch for [`StreamBackend::put_records`]: every record, the record count and the size.
pub fn validate_batch(records: &[PutRecord]) -> Result<()> {
    if records.len() > MAX_PUT_RECORDS {
        return Err(StreamError::Invalid(format!(
            "a batch holds at most {MAX_PUT_RECORDS} records, got {}",
            records.len()
        )));
    }
    let mut total = 0;
    for (index, record) in records.iter().enumerate() {
        validate_record(index, record)?;
        total += record_size(record);
    }
    if total > MAX_PUT_BYTES {
        return Err(StreamError::Invalid(format!(
            "a batch holds at most {MAX_PUT_BYTES} bytes, got {total}"
        )));
    }
    Ok(())
}

/// Orders positions in a shard: after the record with this sequence number, or (`None`) before
/// the first record, which comes first.
pub fn cmp_position(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => cmp_sequence(a, b),
    }
}

/// Orders sequence numbers, which are decimal strings that may exceed `u128` (Kinesis uses 56
/// digits): a shorter number is smaller; equal lengths compare as text.
pub fn cmp_sequence(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_order_by_length_then_text() {
        assert_eq!(cmp_sequence("2", "10"), Ordering::Less);
        assert_eq!(cmp_sequence("10", "10"), Ordering::Equal);
        let kinesis_a = "49590338271490256608559692538361571095921575989136588898";
        let kinesis_b = "49590338271490256608559692540925702759324208523137515618";
        assert_eq!(cmp_sequence(kinesis_a, kinesis_b), Ordering::Less);
        assert_eq!(cmp_sequence(kinesis_b, "9"), Ordering::Greater);
    }

    #[test]
    fn the_start_of_a_shard_comes_before_every_record() {
        assert_eq!(cmp_position(None, Some("1")), Ordering::Less);
        assert_eq!(cmp_position(Some("10"), Some("9")), Ordering::Greater);
        assert_eq!(cmp_position(Some("1"), None), Ordering::Greater);
        assert_eq!(cmp_position(None, None), Ordering::Equal);
    }
}
