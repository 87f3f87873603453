//! The Kinesis Data Streams backend.
//!
//! Streams are provisioned (a shard count), scaled with `UpdateShardCount` (uniform scaling, in
//! the at-most-doubling or halving steps Kinesis allows). Readers poll `GetRecords` with the shard
//! iterator kept between calls, never more often than five calls a second per shard, shared by
//! every poller of the shard in this process ([`ReadMode::Polling`]); or each reader role has its
//! own enhanced fan-out consumer that Kinesis pushes records to ([`ReadMode::Efo`], see
//! [`KinesisBackend::with_enhanced_fan_out`]), with its own 2 MB/s per shard and no call budget.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    ConsumerStatus, PutRecordsRequestEntry, ScalingType, ShardIteratorType, StartingPosition,
    StreamStatus, SubscribeToShardEventStream,
};
use bytes::Bytes;
use chrono::DateTime;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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
    /// `GetRecords` calls a reader makes for one batch when throttled, before giving up; also
    /// the `SubscribeToShard` attempts in a row an enhanced fan-out reader makes before it fails.
    pub read_attempts: u32,
    /// How long one `SubscribeToShard` subscription is read before the reader subscribes again
    /// from where it is. Kinesis ends a subscription after five minutes itself.
    pub resubscribe_after: Duration,
}

/// How the readers of a [`KinesisBackend`] get records: `[streams.kinesis] read` in `fanner serve`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// `GetRecords`, at most 5 calls a second per shard shared by every reader of the shard.
    #[default]
    Polling,
    /// Enhanced fan-out: `SubscribeToShard` with a consumer per reader role, 2 MB/s each.
    Efo,
}

impl Default for KinesisOptions {
    fn default() -> Self {
        Self {
            settle_timeout: Duration::from_secs(600),
            min_poll_gap: Duration::from_millis(200),
            idle_poll: Duration::from_secs(1),
            read_attempts: 6,
            resubscribe_after: Duration::from_secs(300),
        }
    }
}

/// [`StreamBackend`] on Amazon Kinesis Data Streams (or anything that speaks its API).
#[derive(Clone, Debug)]
pub struct KinesisBackend {
    client: Client,
    options: KinesisOptions,
    budget: Arc<ReadBudget>,
    /// The enhanced fan-out consumer readers of this handle subscribe as; `None`: they poll.
    consumer: Option<Arc<str>>,
    /// Consumer ARNs by stream ARN and consumer name, registered once per process.
    consumers: Arc<Mutex<HashMap<(String, String), String>>>,
    /// Shards with a live subscription in this process, by stream, shard and consumer.
    subscribed: Claims,
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

/// The AWS SDK's configuration loader (the default chain for credentials, region and endpoint)
/// with Fanner's HTTPS client: rustls on ring, as every other client Fanner builds, where the
/// SDK's own default is aws-lc, a long C build. Every SDK configuration starts here.
pub fn aws_config_loader() -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest()).http_client(https)
}

impl KinesisBackend {
    pub fn new(config: &SdkConfig) -> Self {
        Self::from_client(Client::new(config))
    }

    /// The default credential chain, region and endpoint (`AWS_ENDPOINT_URL_KINESIS`,
    /// `AWS_ENDPOINT_URL`) from the environment.
    pub async fn from_env() -> Self {
        Self::new(&aws_config_loader().load().await)
    }

    /// For a client built with extra settings (interceptors, retry config).
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            options: KinesisOptions::default(),
            budget: Arc::default(),
            consumer: None,
            consumers: Arc::default(),
            subscribed: Arc::default(),
        }
    }

    /// The same backend whose readers use enhanced fan-out as the consumer `consumer` (a reader
    /// role, such as the engine's lease group), registered on each stream on first use. Every
    /// process of one role shares the consumer. Kinesis allows one subscription per consumer and
    /// shard: a second reader of a shard in this process (the engine's cursor of a stream that
    /// fell behind) polls while the first is subscribed.
    pub fn with_enhanced_fan_out(&self, consumer: &str) -> Self {
        Self {
            consumer: Some(Arc::from(consumer)),
            ..self.clone()
        }
    }

    /// This backend for a reader role under `mode`: itself when polling, else
    /// [`with_enhanced_fan_out`](Self::with_enhanced_fan_out) as `consumer`.
    pub fn for_readers(&self, mode: ReadMode, consumer: &str) -> Self {
        match mode {
            ReadMode::Polling => self.clone(),
            ReadMode::Efo => self.with_enhanced_fan_out(consumer),
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

    /// The ARN of `consumer` on `stream`, registered (idempotently: an existing one is looked up)
    /// and active.
    async fn consumer_arn(&self, stream: &str, consumer: &str) -> Result<String> {
        let Some((description, _)) = self.summary(stream).await? else {
            return Err(StreamError::NotFound(stream.to_owned()));
        };
        let key = (description.backing_id.clone(), consumer.to_owned());
        if let Some(arn) = self.lock_consumers().get(&key) {
            return Ok(arn.clone());
        }
        let registered = self
            .client
            .register_stream_consumer()
            .stream_arn(&description.backing_id)
            .consumer_name(consumer)
            .send()
            .await;
        match registered {
            Ok(_) => tracing::info!(stream, consumer, "Registered an enhanced fan-out consumer."),
            Err(error) if error.code() == Some("ResourceInUseException") => {}
            Err(error) => return Err(map_error(stream, error)),
        }
        let deadline = Instant::now() + self.options.settle_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let described = self
                .client
                .describe_stream_consumer()
                .stream_arn(&description.backing_id)
                .consumer_name(consumer)
                .send()
                .await
                .map_err(|error| map_error(stream, error))?;
            let Some(found) = described.consumer_description() else {
                return Err(StreamError::Backend(format!(
                    "DescribeStreamConsumer for {consumer:?} on {stream:?} returned no description"
                )));
            };
            if *found.consumer_status() == ConsumerStatus::Active {
                let arn = found.consumer_arn().to_owned();
                self.lock_consumers().insert(key, arn.clone());
                return Ok(arn);
            }
            if Instant::now() + pause > deadline {
                return Err(StreamError::Backend(format!(
                    "consumer {consumer:?} of stream {stream:?} did not become active"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn lock_consumers(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        if let Some(consumer) = &self.consumer {
            let key = (stream.to_owned(), shard.to_owned(), consumer.to_string());
            if let Some(claim) = SubscriptionClaim::take(&self.subscribed, key) {
                let consumer_arn = self.consumer_arn(stream, consumer).await?;
                return Ok(Box::new(SubscribedReader::start(
                    self.clone(),
                    stream,
                    shard,
                    from,
                    consumer_arn,
                    claim,
                )));
            }
        }
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
            let records = output.records().iter().map(record).collect::<Vec<_>>();
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

fn record(record: &aws_sdk_kinesis::types::Record) -> Record {
    Record {
        sequence: record.sequence_number().to_owned(),
        partition_key: record.partition_key().unwrap_or_default().to_owned(),
        data: Bytes::copy_from_slice(record.data().as_ref()),
        arrival_time: record
            .approximate_arrival_timestamp()
            .and_then(|time| time.to_millis().ok())
            .and_then(DateTime::from_timestamp_millis),
    }
}

/// What the subscription task of a [`SubscribedReader`] hands over, in order.
enum Delivery {
    Records {
        records: Vec<Record>,
        millis_behind: i64,
    },
    /// The shard is closed and every record was delivered.
    End,
    /// The subscription failed for good; the task has stopped.
    Failed(StreamError),
}

/// A shard read by enhanced fan-out. A task holds the `SubscribeToShard` event stream, subscribes
/// again every `resubscribe_after` and after an error from just after the last record delivered
/// (or, before any, from the last continuation sequence number of a `Latest` start), and hands
/// events over through a short queue, so a slow reader holds Kinesis back rather than buffering.
struct SubscribedReader {
    deliveries: mpsc::Receiver<Delivery>,
    pending: VecDeque<Record>,
    millis_behind: Option<i64>,
    /// The shard's end was delivered; once `pending` is empty, every batch says so.
    ended: bool,
    failed: Option<StreamError>,
    task: tokio::task::AbortHandle,
    stream: String,
    shard: String,
    _claim: SubscriptionClaim,
}

/// Shards with a live subscription in one process: (stream, shard, consumer).
type Claims = Arc<Mutex<HashSet<(String, String, String)>>>;

/// A shard subscribed to by a consumer in this process, released on drop.
struct SubscriptionClaim {
    claims: Claims,
    key: (String, String, String),
}

impl SubscriptionClaim {
    /// The claim on `key`, unless another reader holds it.
    fn take(claims: &Claims, key: (String, String, String)) -> Option<Self> {
        let fresh = claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone());
        fresh.then(|| Self {
            claims: claims.clone(),
            key,
        })
    }
}

impl Drop for SubscriptionClaim {
    fn drop(&mut self) {
        self.claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Events a subscription task may get ahead of its reader.
const SUBSCRIPTION_QUEUE: usize = 2;

impl SubscribedReader {
    fn start(
        backend: KinesisBackend,
        stream: &str,
        shard: &str,
        from: StartPosition,
        consumer_arn: String,
        claim: SubscriptionClaim,
    ) -> Self {
        let (sender, deliveries) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let subscription = Subscription {
            backend,
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            consumer_arn,
            start: from,
            last_sequence: None,
            continuation: None,
            end_checked: None,
        };
        let task = tokio::spawn(subscription.run(sender)).abort_handle();
        Self {
            deliveries,
            pending: VecDeque::new(),
            millis_behind: None,
            ended: false,
            failed: None,
            task,
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            _claim: claim,
        }
    }

    fn absorb(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Records {
                records,
                millis_behind,
            } => {
                self.pending.extend(records);
                self.millis_behind = Some(millis_behind);
            }
            Delivery::End => {
                self.ended = true;
                self.millis_behind = Some(0);
            }
            Delivery::Failed(error) => self.failed = Some(error),
        }
    }
}

impl Drop for SubscribedReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl ShardReader for SubscribedReader {
    async fn next_batch(&mut self, limit: usize) -> Result<ReadBatch> {
        let limit = limit.max(1);
        while self.pending.len() < limit && !self.ended && self.failed.is_none() {
            match self.deliveries.try_recv() {
                Ok(delivery) => self.absorb(delivery),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.failed = Some(StreamError::Backend(format!(
                        "the subscription to shard {:?} of stream {:?} ended",
                        self.shard, self.stream
                    )));
                }
            }
        }
        // Records delivered before a failure are handed out first.
        if self.pending.is_empty()
            && let Some(error) = self.failed.take()
        {
            return Err(error);
        }
        let take = limit.min(self.pending.len());
        let records: Vec<Record> = self.pending.drain(..take).collect();
        Ok(ReadBatch {
            records,
            millis_behind: self.millis_behind,
            shard_end: self.ended && self.pending.is_empty(),
        })
    }

    async fn wait_for_records(&mut self, max_wait: Duration) {
        if !self.pending.is_empty() || self.ended || self.failed.is_some() {
            return;
        }
        // `recv` is cancel-safe: a wait cut short by the caller loses nothing.
        if let Ok(Some(delivery)) = tokio::time::timeout(max_wait, self.deliveries.recv()).await {
            self.absorb(delivery);
        }
    }
}

/// One shard's `SubscribeToShard` subscriptions, one after the other, and the position they
/// continue from.
struct Subscription {
    backend: KinesisBackend,
    stream: String,
    shard: String,
    consumer_arn: String,
    start: StartPosition,
    /// The last record handed over; nothing at or before it is handed over again.
    last_sequence: Option<String>,
    /// The latest event's continuation sequence number.
    continuation: Option<String>,
    /// When the shard's end was last checked with `GetRecords`.
    end_checked: Option<Instant>,
}

/// How often an idle subscription checks whether its shard is closed and read to its end.
const END_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How long subscribing may keep failing before the reader fails: a shard's previous
/// subscription by the same consumer (another process's, before a takeover, or this reader's own,
/// just renewed) holds it for up to five seconds.
const SUBSCRIBE_PATIENCE: Duration = Duration::from_secs(30);

/// How one subscription ended.
enum Ended {
    /// Read for `resubscribe_after`, closed by Kinesis, or failed after handing events over:
    /// subscribe again.
    Renew,
    /// The reader is gone or the shard's end was handed over.
    Done,
    Error(StreamError),
}

impl Subscription {
    async fn run(mut self, sender: mpsc::Sender<Delivery>) {
        let floor = self
            .backend
            .options
            .min_poll_gap
            .max(Duration::from_millis(50));
        let mut failures = 0;
        let mut failing_since: Option<Instant> = None;
        loop {
            let ended = match self.subscribe().await {
                Ok(events) => self.read(events, &sender).await,
                Err(error) => Ended::Error(error),
            };
            let error = match ended {
                Ended::Done => return,
                Ended::Renew => {
                    failures = 0;
                    failing_since = None;
                    continue;
                }
                Ended::Error(error) => error,
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            if !error.is_transient() || since.elapsed() > SUBSCRIBE_PATIENCE {
                let _ = sender.send(Delivery::Failed(error)).await;
                return;
            }
            failures += 1;
            let ceiling = (floor * (1 << failures.min(6))).min(Duration::from_secs(2));
            let pause = Duration::from_millis(rand::rng().random_range(
                u64::try_from(floor.as_millis()).unwrap_or(0)
                    ..=u64::try_from(ceiling.as_millis()).unwrap_or(0),
            ));
            tracing::debug!(
                stream = %self.stream,
                shard = %self.shard,
                error = %error,
                pause_ms = pause.as_millis() as u64,
                "Subscription to a shard failed; subscribing again."
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Whether an idle subscription may check for the shard's end again (once per
    /// [`END_CHECK_EVERY`]).
    fn end_check_due(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .end_checked
            .is_none_or(|checked| now.duration_since(checked) >= END_CHECK_EVERY);
        if due {
            self.end_checked = Some(now);
        }
        due
    }

    /// Whether the shard is closed and read to its end: an iterator just after what was handed
    /// over returns no records and no next iterator. A failed check counts as not ended.
    async fn read_to_end(&self) -> bool {
        let from = match &self.last_sequence {
            Some(sequence) => StartPosition::AfterSequence(sequence.clone()),
            None => self.start.clone(),
        };
        let Ok(Some(iterator)) = self
            .backend
            .shard_iterator(&self.stream, &self.shard, &from)
            .await
        else {
            return false;
        };
        let slot = self.backend.budget.reserve(
            &self.stream,
            &self.shard,
            Instant::now(),
            self.backend.options.min_poll_gap,
        );
        tokio::time::sleep_until(slot.into()).await;
        metrics::counter!("fanner_kinesis_get_records_total", "stream" => self.stream.clone(), "shard" => self.shard.clone())
            .increment(1);
        self.backend
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(1)
            .send()
            .await
            .is_ok_and(|output| {
                output.records().is_empty() && output.next_shard_iterator().is_none()
            })
    }

    /// Where the next subscription starts: just after the last record handed over; before any,
    /// where the reader was opened, except that a `Latest` start that has seen events goes on
    /// from its continuation sequence number (a new `Latest` would skip what arrived between).
    fn starting_position(&self) -> Result<StartingPosition> {
        let (kind, sequence) = match (&self.last_sequence, &self.continuation, &self.start) {
            (Some(sequence), _, _) | (None, Some(sequence), StartPosition::Latest) => (
                ShardIteratorType::AfterSequenceNumber,
                Some(sequence.clone()),
            ),
            (None, _, StartPosition::TrimHorizon) => (ShardIteratorType::TrimHorizon, None),
            (None, _, StartPosition::Latest) => (ShardIteratorType::Latest, None),
            (None, _, StartPosition::AfterSequence(sequence)) => (
                ShardIteratorType::AfterSequenceNumber,
                Some(sequence.clone()),
            ),
            (None, _, StartPosition::AtSequence(sequence)) => {
                (ShardIteratorType::AtSequenceNumber, Some(sequence.clone()))
            }
        };
        StartingPosition::builder()
            .r#type(kind)
            .set_sequence_number(sequence)
            .build()
            .map_err(|error| StreamError::Invalid(error.to_string()))
    }

    async fn subscribe(
        &self,
    ) -> Result<
        aws_sdk_kinesis::primitives::event_stream::EventReceiver<
            SubscribeToShardEventStream,
            aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
        >,
    > {
        metrics::counter!("fanner_kinesis_subscriptions_total", "stream" => self.stream.clone(), "shard" => self.shard.clone())
            .increment(1);
        match self
            .backend
            .client
            .subscribe_to_shard()
            .consumer_arn(&self.consumer_arn)
            .shard_id(&self.shard)
            .starting_position(self.starting_position()?)
            .send()
            .await
        {
            Ok(output) => Ok(output.event_stream),
            Err(error) => Err(self.error(error).await),
        }
    }

    /// A failed subscription, as the reader reports it.
    async fn error<E, R>(&self, error: SdkError<E, R>) -> StreamError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: Debug,
    {
        match error.code() {
            Some("ResourceNotFoundException") => {
                self.backend.missing(&self.stream, &self.shard).await
            }
            // The shard's previous subscription by this consumer is still open: Kinesis lets it
            // go within seconds.
            Some("ResourceInUseException") => {
                StreamError::Throttled(error.message().unwrap_or_default().to_owned())
            }
            _ => map_error(&self.stream, error),
        }
    }

    async fn read(
        &mut self,
        mut events: aws_sdk_kinesis::primitives::event_stream::EventReceiver<
            SubscribeToShardEventStream,
            aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
        >,
        sender: &mpsc::Sender<Delivery>,
    ) -> Ended {
        let renew_at = tokio::time::Instant::now() + self.backend.options.resubscribe_after;
        let mut delivered = false;
        let mut millis_behind = None;
        loop {
            let event = match tokio::time::timeout_at(renew_at, events.recv()).await {
                Err(_) | Ok(Ok(None)) => return Ended::Renew,
                Ok(Err(error)) => {
                    let error = self.error(error).await;
                    tracing::debug!(stream = %self.stream, shard = %self.shard, error = %error, "Subscription to a shard broke off.");
                    return if delivered {
                        Ended::Renew
                    } else {
                        Ended::Error(error)
                    };
                }
                Ok(Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)))) => event,
                Ok(Ok(Some(_))) => continue,
            };
            delivered = true;
            let records: Vec<Record> = event
                .records()
                .iter()
                .map(record)
                .filter(|record| {
                    crate::cmp_position(self.last_sequence.as_deref(), Some(&record.sequence))
                        .is_lt()
                })
                .collect();
            if let Some(last) = records.last() {
                self.last_sequence = Some(last.sequence.clone());
            }
            if !event.continuation_sequence_number().is_empty() {
                self.continuation = Some(event.continuation_sequence_number().to_owned());
            }
            // Child shards come only with the last event of a closed shard. An emulator that never
            // sends them leaves a caught-up, idle subscription: that is when to ask GetRecords.
            let end = !event.child_shards().is_empty()
                || (records.is_empty()
                    && event.millis_behind_latest() == 0
                    && self.end_check_due()
                    && self.read_to_end().await);
            // Empty events are handed over only when they change how far behind the reader is.
            let behind_changed = millis_behind != Some(event.millis_behind_latest());
            millis_behind = Some(event.millis_behind_latest());
            if (!records.is_empty() || behind_changed)
                && sender
                    .send(Delivery::Records {
                        records,
                        millis_behind: event.millis_behind_latest(),
                    })
                    .await
                    .is_err()
            {
                return Ended::Done;
            }
            if end {
                let _ = sender.send(Delivery::End).await;
                return Ended::Done;
            }
        }
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
