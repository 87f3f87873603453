//! The Kinesis Data Streams backend.
//!
//! Streams are provisioned (a shard count), scaled with `UpdateShardCount` (uniform scaling, in
//! the at-most-doubling or halving steps Kinesis allows). Readers poll `GetRecords` with the shard
//! iterator kept between calls, never more often than five calls a second per shard.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ScalingType, ShardIteratorType, StreamStatus,
};
use bytes::Bytes;
use chrono::DateTime;
use rand::Rng;

use crate::{
    PutFailure, PutOutcome, PutRecord, ReadBatch, Record, Result, Shard, ShardReader,
    StartPosition, StreamBackend, StreamDescription, StreamError, StreamSpec, validate_batch,
    validate_spec,
};

/// The retention a new Kinesis stream starts with.
const DEFAULT_RETENTION_HOURS: u32 = 24;
/// `AddTagsToStream` and `RemoveTagsFromStream` take at most this many tags per call.
const TAGS_PER_CALL: usize = 10;
/// `GetRecords` returns at most this many records.
const MAX_GET_RECORDS: usize = 10_000;

/// Timing of a [`KinesisBackend`].
#[derive(Clone, Debug)]
pub struct KinesisOptions {
    /// How long create, update and delete wait for the stream to settle.
    pub settle_timeout: Duration,
    /// The shortest gap between two `GetRecords` calls on one shard (Kinesis allows 5 a second),
    /// kept by all readers of the shard through this backend together: the engine, the
    /// persister and tails in one process share the budget by turns, never by luck.
    pub min_poll_gap: Duration,
    /// How long a reader waits after an empty batch before polling again.
    pub idle_poll: Duration,
    /// `GetRecords` calls a reader makes for one batch when throttled, before giving up.
    pub read_attempts: u32,
}

impl Default for KinesisOptions {
    fn default() -> Self {
        Self {
            settle_timeout: Duration::from_secs(600),
            min_poll_gap: Duration::from_millis(200),
            idle_poll: Duration::from_secs(1),
            read_attempts: 6,
        }
    }
}

/// [`StreamBackend`] on Amazon Kinesis Data Streams (or anything that speaks its API).
#[derive(Clone, Debug)]
pub struct KinesisBackend {
    client: Client,
    options: KinesisOptions,
    budget: Arc<ReadBudget>,
}

/// Turns at `GetRecords` per shard, shared by every reader of this backend: each call takes the
/// next free slot, one `min_poll_gap` after the previous one.
#[derive(Debug, Default)]
struct ReadBudget {
    next_free: Mutex<HashMap<(String, String), Instant>>,
}

impl ReadBudget {
    /// When a call on `shard` of `stream` wanted at `wanted` may go out; the slot is taken.
    fn reserve(&self, stream: &str, shard: &str, wanted: Instant, gap: Duration) -> Instant {
        let mut next_free = self
            .next_free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (stream.to_owned(), shard.to_owned());
        let slot = next_free.get(&key).map_or(wanted, |free| wanted.max(*free));
        next_free.insert(key, slot + gap);
        slot
    }
}

impl KinesisBackend {
    pub fn new(config: &SdkConfig) -> Self {
        Self::from_client(Client::new(config))
    }

    /// The default credential chain, region and endpoint (`AWS_ENDPOINT_URL_KINESIS`,
    /// `AWS_ENDPOINT_URL`) from the environment.
    pub async fn from_env() -> Self {
        Self::new(&aws_config::defaults(BehaviorVersion::latest()).load().await)
    }

    /// For a client built with extra settings (interceptors, retry config).
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            options: KinesisOptions::default(),
            budget: Arc::default(),
        }
    }

    pub fn with_options(mut self, options: KinesisOptions) -> Self {
        self.options = options;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn summary(&self, name: &str) -> Result<Option<(StreamDescription, StreamStatus)>> {
        match self
            .client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
        {
            Ok(output) => {
                let Some(summary) = output.stream_description_summary() else {
                    return Err(StreamError::Backend(format!(
                        "DescribeStreamSummary for {name:?} returned no description"
                    )));
                };
                let status = summary.stream_status().clone();
                Ok(Some((
                    StreamDescription {
                        name: summary.stream_name().to_owned(),
                        backing_id: summary.stream_arn().to_owned(),
                        active: status == StreamStatus::Active,
                        shard_count: non_negative(summary.open_shard_count()),
                        retention_hours: non_negative(summary.retention_period_hours()),
                    },
                    status,
                )))
            }
            Err(error) if error.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(error) => Err(map_error(name, error)),
        }
    }

    /// Polls until the stream is `ACTIVE`, with backoff, for at most `settle_timeout`.
    async fn wait_active(&self, name: &str) -> Result<StreamDescription> {
        let deadline = Instant::now() + self.options.settle_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.summary(name).await? {
                Some((description, StreamStatus::Active)) => return Ok(description),
                Some((_, StreamStatus::Deleting)) | None => {
                    return Err(StreamError::NotFound(name.to_owned()));
                }
                Some(_) => {}
            }
            if Instant::now() + pause > deadline {
                return Err(StreamError::NotActive(name.to_owned()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn set_shard_count(&self, name: &str, current: u32, target: u32) -> Result<()> {
        let mut current = current;
        while current != target {
            // Kinesis scales by at most a factor of two per call.
            let step = target.clamp(current.div_ceil(2), current.saturating_mul(2));
            self.client
                .update_shard_count()
                .stream_name(name)
                .target_shard_count(signed(step)?)
                .scaling_type(ScalingType::UniformScaling)
                .send()
                .await
                .map_err(|error| map_error(name, error))?;
            tracing::info!(
                stream = name,
                from = current,
                to = step,
                "Resharding stream."
            );
            current = self.wait_active(name).await?.shard_count;
            if current != step {
                return Err(StreamError::Backend(format!(
                    "stream {name:?} has {current} open shards after scaling to {step}"
                )));
            }
        }
        Ok(())
    }

    async fn set_retention(&self, name: &str, current: u32, target: u32) -> Result<()> {
        if target > current {
            self.client
                .increase_stream_retention_period()
                .stream_name(name)
                .retention_period_hours(signed(target)?)
                .send()
                .await
                .map_err(|error| map_error(name, error))?;
        } else if target < current {
            self.client
                .decrease_stream_retention_period()
                .stream_name(name)
                .retention_period_hours(signed(target)?)
                .send()
                .await
                .map_err(|error| map_error(name, error))?;
        } else {
            return Ok(());
        }
        self.wait_active(name).await.map(drop)
    }

    async fn tags(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let mut tags = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let output = self
                .client
                .list_tags_for_stream()
                .stream_name(name)
                .set_exclusive_start_tag_key(after.take())
                .send()
                .await
                .map_err(|error| map_error(name, error))?;
            for tag in output.tags() {
                tags.insert(
                    tag.key().to_owned(),
                    tag.value().unwrap_or_default().to_owned(),
                );
            }
            match output.tags().last() {
                Some(last) if output.has_more_tags() => after = Some(last.key().to_owned()),
                _ => return Ok(tags),
            }
        }
    }

    /// Makes the stream's tags exactly `wanted`.
    async fn sync_tags(&self, name: &str, wanted: &BTreeMap<String, String>) -> Result<()> {
        let current = self.tags(name).await?;
        let stale: Vec<String> = current
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for keys in stale.chunks(TAGS_PER_CALL) {
            self.client
                .remove_tags_from_stream()
                .stream_name(name)
                .set_tag_keys(Some(keys.to_vec()))
                .send()
                .await
                .map_err(|error| map_error(name, error))?;
        }
        let changed: Vec<(&String, &String)> = wanted
            .iter()
            .filter(|(key, value)| current.get(*key) != Some(*value))
            .collect();
        for tags in changed.chunks(TAGS_PER_CALL) {
            let tags: HashMap<String, String> = tags
                .iter()
                .map(|(key, value)| ((*key).clone(), (*value).clone()))
                .collect();
            self.client
                .add_tags_to_stream()
                .stream_name(name)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|error| map_error(name, error))?;
        }
        Ok(())
    }

    async fn shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        from: &StartPosition,
    ) -> Result<Option<String>> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard);
        let request = match from {
            StartPosition::TrimHorizon => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            StartPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartPosition::AfterSequence(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
            StartPosition::AtSequence(sequence) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence),
        };
        match request.send().await {
            Ok(output) => Ok(output.shard_iterator().map(str::to_owned)),
            Err(error) if error.code() == Some("ResourceNotFoundException") => {
                Err(self.missing(stream, shard).await)
            }
            Err(error) => Err(map_error(stream, error)),
        }
    }

    /// Tells a missing stream from a missing shard.
    async fn missing(&self, stream: &str, shard: &str) -> StreamError {
        match self.summary(stream).await {
            Ok(Some(_)) => StreamError::ShardNotFound {
                stream: stream.to_owned(),
                shard: shard.to_owned(),
            },
            Ok(None) => StreamError::NotFound(stream.to_owned()),
            Err(error) => error,
        }
    }
}

#[async_trait]
impl StreamBackend for KinesisBackend {
    fn kind(&self) -> &'static str {
        "kinesis"
    }

    async fn create_stream(&self, spec: &StreamSpec) -> Result<StreamDescription> {
        validate_spec(spec)?;
        let name = spec.name.as_str();
        let created = self
            .client
            .create_stream()
            .stream_name(name)
            .shard_count(signed(spec.shard_count)?)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(stream = name, shards = spec.shard_count, "Creating stream.");
                self.wait_active(name).await?;
                self.set_retention(name, DEFAULT_RETENTION_HOURS, spec.retention_hours)
                    .await?;
            }
            Err(error) if error.code() == Some("ResourceInUseException") => {
                let existing = self.wait_active(name).await?;
                if existing.shard_count != spec.shard_count
                    || existing.retention_hours != spec.retention_hours
                {
                    return Err(StreamError::AlreadyExists(spec.name.clone()));
                }
            }
            Err(error) => return Err(map_error(name, error)),
        }
        self.sync_tags(name, &spec.tags).await?;
        self.wait_active(name).await
    }

    async fn update_stream(&self, spec: &StreamSpec) -> Result<StreamDescription> {
        validate_spec(spec)?;
        let name = spec.name.as_str();
        let current = self.wait_active(name).await?;
        self.set_shard_count(name, current.shard_count, spec.shard_count)
            .await?;
        self.set_retention(name, current.retention_hours, spec.retention_hours)
            .await?;
        self.sync_tags(name, &spec.tags).await?;
        self.wait_active(name).await
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        match self
            .client
            .delete_stream()
            .stream_name(name)
            .enforce_consumer_deletion(true)
            .send()
            .await
        {
            Ok(_) => {}
            Err(error) if error.code() == Some("ResourceNotFoundException") => return Ok(()),
            Err(error) => return Err(map_error(name, error)),
        }
        tracing::info!(stream = name, "Deleting stream.");
        let deadline = Instant::now() + self.options.settle_timeout;
        let mut pause = Duration::from_millis(50);
        while self.summary(name).await?.is_some() {
            if Instant::now() + pause > deadline {
                return Err(StreamError::Backend(format!(
                    "stream {name:?} is still being deleted"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        Ok(())
    }

    async fn describe_stream(&self, name: &str) -> Result<Option<StreamDescription>> {
        Ok(self
            .summary(name)
            .await?
            .map(|(description, _)| description))
    }

    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            // A follow-up page is asked for by its token alone: Kinesis refuses both.
            let request = match next_token.take() {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(stream),
            };
            let output = request.send().await.map_err(|error| {
                if error.code() == Some("ResourceNotFoundException") {
                    StreamError::NotFound(stream.to_owned())
                } else {
                    map_error(stream, error)
                }
            })?;
            shards.extend(output.shards().iter().map(|shard| {
                Shard {
                    id: shard.shard_id().to_owned(),
                    parents: shard
                        .parent_shard_id()
                        .into_iter()
                        .chain(shard.adjacent_parent_shard_id())
                        .map(str::to_owned)
                        .collect(),
                    closed: shard
                        .sequence_number_range()
                        .is_some_and(|range| range.ending_sequence_number().is_some()),
                }
            }));
            match output.next_token() {
                Some(token) => next_token = Some(token.to_owned()),
                None => return Ok(shards),
            }
        }
    }

    async fn open_reader(
        &self,
        stream: &str,
        shard: &str,
        from: StartPosition,
    ) -> Result<Box<dyn ShardReader>> {
        let iterator = self.shard_iterator(stream, shard, &from).await?;
        Ok(Box::new(KinesisReader {
            backend: self.clone(),
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            start: from,
            last_sequence: None,
            finished: iterator.is_none(),
            iterator,
            next_call: Instant::now(),
            last_was_empty: false,
        }))
    }

    async fn put_records(&self, stream: &str, records: &[PutRecord]) -> Result<PutOutcome> {
        validate_batch(records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let entries = records
            .iter()
            .map(|record| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&record.partition_key)
                    .data(Blob::new(record.data.to_vec()))
                    .build()
                    .map_err(|error| StreamError::Invalid(error.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let output = self
            .client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|error| map_error(stream, error))?;
        if output.records().len() != records.len() {
            return Err(StreamError::Backend(format!(
                "PutRecords on {stream:?} answered {} entries for {} records",
                output.records().len(),
                records.len()
            )));
        }
        Ok(output
            .records()
            .iter()
            .map(
                |entry| match (entry.error_code(), entry.sequence_number()) {
                    (None, Some(sequence)) => Ok(sequence.to_owned()),
                    (code, _) => Err(PutFailure {
                        code: code.unwrap_or("MissingSequenceNumber").to_owned(),
                        message: entry.error_message().unwrap_or_default().to_owned(),
                    }),
                },
            )
            .collect())
    }
}

struct KinesisReader {
    backend: KinesisBackend,
    stream: String,
    shard: String,
    start: StartPosition,
    last_sequence: Option<String>,
    /// `None` once the shard is closed and read to its end.
    iterator: Option<String>,
    finished: bool,
    /// Not before this instant may the next `GetRecords` go out.
    next_call: Instant,
    last_was_empty: bool,
}

impl KinesisReader {
    /// Where to start again when the iterator expired: after the last record returned.
    fn resume_position(&self) -> StartPosition {
        match &self.last_sequence {
            Some(sequence) => StartPosition::AfterSequence(sequence.clone()),
            None => self.start.clone(),
        }
    }

    fn end_batch() -> ReadBatch {
        ReadBatch {
            records: Vec::new(),
            millis_behind: Some(0),
            shard_end: true,
        }
    }
}

#[async_trait]
impl ShardReader for KinesisReader {
    async fn next_batch(&mut self, limit: usize) -> Result<ReadBatch> {
        let options = self.backend.options.clone();
        let mut throttled = 0;
        let mut expired = 0;
        loop {
            if self.finished {
                return Ok(Self::end_batch());
            }
            let Some(iterator) = self.iterator.clone() else {
                self.finished = true;
                continue;
            };
            let slot = self.backend.budget.reserve(
                &self.stream,
                &self.shard,
                self.next_call.max(Instant::now()),
                options.min_poll_gap,
            );
            tokio::time::sleep_until(slot.into()).await;
            self.next_call = Instant::now() + options.min_poll_gap;
            metrics::counter!("fanner_kinesis_get_records_total", "stream" => self.stream.clone(), "shard" => self.shard.clone())
                .increment(1);
            let result = self
                .backend
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(signed(
                    u32::try_from(limit.clamp(1, MAX_GET_RECORDS)).unwrap_or(1),
                )?)
                .send()
                .await;
            let output = match result {
                Ok(output) => output,
                Err(error) => match error.code() {
                    Some("ProvisionedThroughputExceededException")
                        if throttled + 1 < options.read_attempts =>
                    {
                        throttled += 1;
                        let ceiling = options.min_poll_gap * (1 << throttled.min(6));
                        let pause = Duration::from_millis(rand::rng().random_range(
                            u64::try_from(options.min_poll_gap.as_millis()).unwrap_or(0)
                                ..=u64::try_from(ceiling.as_millis()).unwrap_or(0),
                        ));
                        tracing::debug!(
                            stream = %self.stream,
                            shard = %self.shard,
                            pause_ms = pause.as_millis() as u64,
                            "GetRecords throttled; backing off."
                        );
                        self.next_call = Instant::now() + pause;
                        continue;
                    }
                    Some("ExpiredIteratorException") if expired < 2 => {
                        expired += 1;
                        tracing::debug!(
                            stream = %self.stream,
                            shard = %self.shard,
                            "Shard iterator expired; getting a new one."
                        );
                        self.iterator = self
                            .backend
                            .shard_iterator(&self.stream, &self.shard, &self.resume_position())
                            .await?;
                        continue;
                    }
                    Some("ResourceNotFoundException") => {
                        return Err(StreamError::NotFound(self.stream.clone()));
                    }
                    _ => {
                        let mapped = map_error(&self.stream, error);
                        // Some emulators answer a read of a deleted stream with a server error.
                        if self.backend.summary(&self.stream).await?.is_none() {
                            return Err(StreamError::NotFound(self.stream.clone()));
                        }
                        return Err(mapped);
                    }
                },
            };
            let records = output
                .records()
                .iter()
                .map(|record| Record {
                    sequence: record.sequence_number().to_owned(),
                    partition_key: record.partition_key().unwrap_or_default().to_owned(),
                    data: Bytes::copy_from_slice(record.data().as_ref()),
                    arrival_time: record
                        .approximate_arrival_timestamp()
                        .and_then(|time| time.to_millis().ok())
                        .and_then(DateTime::from_timestamp_millis),
                })
                .collect::<Vec<_>>();
            if let Some(last) = records.last() {
                self.last_sequence = Some(last.sequence.clone());
            }
            self.iterator = output.next_shard_iterator().map(str::to_owned);
            self.finished = self.iterator.is_none();
            self.last_was_empty = records.is_empty();
            return Ok(ReadBatch {
                records,
                millis_behind: output.millis_behind_latest(),
                shard_end: self.finished,
            });
        }
    }

    async fn wait_for_records(&mut self, max_wait: Duration) {
        if self.finished {
            return;
        }
        let poll_at = if self.last_was_empty {
            self.next_call
                .max(Instant::now() + self.backend.options.idle_poll)
        } else {
            self.next_call
        };
        let until = poll_at.min(Instant::now() + max_wait);
        tokio::time::sleep_until(until.into()).await;
    }
}

fn non_negative(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn signed(value: u32) -> Result<i32> {
    i32::try_from(value).map_err(|_| StreamError::Invalid(format!("{value} is out of range")))
}

/// Maps an SDK error to the backend-neutral kind the callers act on.
fn map_error<E, R>(stream: &str, error: SdkError<E, R>) -> StreamError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    let message = error.message().unwrap_or_default().to_owned();
    match error.code() {
        Some("ResourceNotFoundException") => StreamError::NotFound(stream.to_owned()),
        Some(
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "KMSThrottlingException",
        ) => StreamError::Throttled(message),
        Some("InvalidArgumentException" | "ValidationException") => StreamError::Invalid(message),
        Some("ResourceInUseException") => {
            StreamError::Backend(format!("stream {stream:?} is busy: {message}"))
        }
        Some(
            code @ ("AccessDeniedException"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSNotFoundException"
            | "KMSOptInRequired"),
        ) => StreamError::Denied(format!("{code}: {message}")),
        _ => StreamError::Backend(DisplayErrorContext(&error).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_of_one_shard_take_turns_and_other_shards_are_apart() {
        let budget = ReadBudget::default();
        let gap = Duration::from_millis(200);
        let now = Instant::now();
        // The engine, the persister and a tail all want shard 0 at once: 5 calls a second
        // between them, in turn.
        let slots: Vec<Duration> = (0..3)
            .map(|_| budget.reserve("ges", "shard-0", now, gap) - now)
            .collect();
        assert_eq!(slots, [Duration::ZERO, gap, 2 * gap]);
        assert_eq!(
            budget.reserve("ges", "shard-1", now, gap),
            now,
            "another shard has its own budget"
        );
        assert_eq!(
            budget.reserve("other", "shard-0", now, gap),
            now,
            "so has another stream"
        );
        // A reader that wants a later turn than the next free one gets the later one.
        let later = now + Duration::from_secs(5);
        assert_eq!(budget.reserve("ges", "shard-0", later, gap), later);
        assert_eq!(budget.reserve("ges", "shard-0", now, gap), later + gap);
    }
}
