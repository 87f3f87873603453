//! The embedded backend: every stream an append-only log in one redb file.
//!
//! Layout (one table each):
//! - `streams`: name → JSON `StreamMeta` (settings, shards with hash ranges and parents).
//! - `shard_heads`: shard uid → (next sequence number, last arrival in ms).
//! - `records`: (shard uid, first sequence) → a chunk: the records one commit appended to the
//!   shard (see `ChunkBuilder`). Retention drops whole chunks, once their newest record expired.
//!
//! Shard uids are unique in the file and never reused, so a record can never be mistaken for one
//! of an earlier stream of the same name. Sequence numbers start at 1 in every shard and never go
//! back, not even after every record has been trimmed.
//!
//! Appends go to one writer thread that commits whatever puts are waiting in one transaction
//! (group commit), answering each put only after its commit, so a put that returned `Ok` is on
//! disk. Control operations use their own write transactions (redb runs one at a time). Reads use
//! read transactions and never wait for writers. Readers are woken through a per-stream
//! [`watch`] channel bumped after every commit that touches the stream.
//!
//! Changing the shard count closes every open shard and opens the new count, each new shard
//! covering an equal slice of the hash space; its parents are the old shards whose slices
//! overlap it. Parents that no longer appear in [`StreamBackend::list_shards`] were trimmed
//! empty and count as finished.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::{
    PutOutcome, PutRecord, ReadBatch, Record, Result, Shard, ShardReader, StartPosition,
    StreamBackend, StreamDescription, StreamError, StreamSpec, validate_batch, validate_spec,
};

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const SHARD_HEADS: TableDefinition<u64, (u64, i64)> = TableDefinition::new("shard_heads");
const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("records");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_UID: &str = "next_uid";

/// The most shards one stream may have: every put looks its shards up.
pub const MAX_SHARDS: u32 = 1024;
/// How much waiting put data the writer commits in one transaction.
const GROUP_COMMIT_BYTES: usize = 16 * 1024 * 1024;
/// A shard's records of one transaction are stored in values of about this size, so a read of a
/// few records never decodes much more than it returns.
const CHUNK_BYTES: usize = 512 * 1024;

/// The page cache of the embedded log unless configured otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Settings of an [`EmbeddedBackend`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How often expired records are dropped, checked between writes and when idle.
    pub trim_interval: Duration,
    /// redb's page cache: the embedded log's share of the process's memory, whatever the
    /// size of the file (reads past it come from the operating system's page cache).
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            trim_interval: Duration::from_secs(60),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// A durable, file-backed [`StreamBackend`]. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    wakers: Wakers,
}

/// Per-stream counters bumped after each commit that changed the stream.
#[derive(Clone, Default)]
struct Wakers(Arc<Mutex<HashMap<String, watch::Sender<u64>>>>);

impl Wakers {
    fn subscribe(&self, stream: &str) -> watch::Receiver<u64> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(stream.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake(&self, stream: &str) {
        let map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = map.get(stream) {
            sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }
}

/// One queued put: the stream, its records, where the outcome goes.
type QueuedPut = (String, Vec<PutRecord>, oneshot::Sender<Result<PutOutcome>>);

enum Job {
    Put {
        stream: String,
        records: Vec<PutRecord>,
        reply: oneshot::Sender<Result<PutOutcome>>,
    },
    Trim {
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<usize>>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StreamMeta {
    uid: u64,
    retention_hours: u32,
    tags: BTreeMap<String, String>,
    /// The number the next new shard's id gets.
    next_shard_index: u32,
    shards: Vec<ShardMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShardMeta {
    uid: u64,
    id: String,
    parents: Vec<String>,
    closed: bool,
    /// The slice of the hash space this shard takes while open, both ends included.
    hash_first: u64,
    hash_last: u64,
}

impl StreamMeta {
    fn open_shards(&self) -> impl Iterator<Item = &ShardMeta> {
        self.shards.iter().filter(|shard| !shard.closed)
    }

    fn describe(&self, name: &str) -> StreamDescription {
        StreamDescription {
            name: name.to_owned(),
            backing_id: format!("embedded:stream/{name}/{}", self.uid),
            active: true,
            shard_count: u32::try_from(self.open_shards().count()).unwrap_or(u32::MAX),
            retention_hours: self.retention_hours,
        }
    }

    /// The open shard a partition key goes to.
    fn route(&self, partition_key: &str) -> Option<&ShardMeta> {
        let hash = hash_key(partition_key);
        self.open_shards()
            .find(|shard| shard.hash_first <= hash && hash <= shard.hash_last)
    }
}

/// Where a partition key falls in the hash space: the first 8 bytes of its SHA-256.
fn hash_key(partition_key: &str) -> u64 {
    let digest = Sha256::digest(partition_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The hash slice of shard `index` of `count` equal slices.
fn hash_slice(index: u32, count: u32) -> (u64, u64) {
    let width = (u128::from(u64::MAX) + 1) / u128::from(count);
    let first = width * u128::from(index);
    let last = if index + 1 == count {
        u128::from(u64::MAX)
    } else {
        first + width - 1
    };
    (
        u64::try_from(first).unwrap_or(u64::MAX),
        u64::try_from(last).unwrap_or(u64::MAX),
    )
}

fn storage(error: impl std::fmt::Display) -> StreamError {
    StreamError::Backend(format!("embedded store: {error}"))
}

fn corrupt_meta(name: &str, error: impl std::fmt::Display) -> StreamError {
    StreamError::Backend(format!(
        "embedded store: settings of stream {name:?} are unreadable: {error}"
    ))
}

fn now_millis(now: DateTime<Utc>) -> i64 {
    now.timestamp_millis()
}

/// Records of one shard written in one transaction, stored as one value so that appends and
/// reads touch few B-tree entries: the newest arrival (8 bytes LE), then per record its arrival
/// (8 bytes LE), key length (2 bytes LE), data length (4 bytes LE), key and data. Sequence
/// numbers are consecutive from the one in the chunk's key.
struct ChunkBuilder {
    first_sequence: u64,
    bytes: Vec<u8>,
}

impl ChunkBuilder {
    fn new(first_sequence: u64) -> Self {
        Self {
            first_sequence,
            bytes: vec![0; 8],
        }
    }

    fn push(&mut self, arrival_ms: i64, record: &PutRecord) {
        let key = record.partition_key.as_bytes();
        // Both lengths were validated (a key of at most 256 characters, a record of at most
        // 1 MiB) before the record got here.
        let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX);
        let data_len = u32::try_from(record.data.len()).unwrap_or(u32::MAX);
        self.bytes.reserve(14 + key.len() + record.data.len());
        self.bytes.extend_from_slice(&arrival_ms.to_le_bytes());
        self.bytes.extend_from_slice(&key_len.to_le_bytes());
        self.bytes.extend_from_slice(&data_len.to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(&record.data);
        self.bytes[..8].copy_from_slice(&arrival_ms.to_le_bytes());
    }
}

/// The newest arrival in a chunk.
fn chunk_newest(chunk: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(chunk.get(..8)?.try_into().ok()?))
}

/// How many records a chunk holds.
fn chunk_len(chunk: &[u8]) -> usize {
    let mut at = 8;
    let mut count = 0;
    while let Some(header) = chunk.get(at..at + 14) {
        let key_len = usize::from(u16::from_le_bytes([header[8], header[9]]));
        let data_len = u32::from_le_bytes([header[10], header[11], header[12], header[13]]);
        at += 14 + key_len + usize::try_from(data_len).unwrap_or(usize::MAX - at);
        count += 1;
    }
    count
}

/// Decodes the records of a chunk from sequence `from` on, at most `limit` of them; also says
/// whether the chunk holds more after those.
fn decode_chunk(
    first_sequence: u64,
    chunk: &[u8],
    from: u64,
    limit: usize,
    out: &mut Vec<(Record, i64)>,
) -> Result<bool> {
    let bad = || {
        StreamError::Backend(format!(
            "embedded store: the chunk at sequence {first_sequence} is malformed"
        ))
    };
    let shared = Bytes::copy_from_slice(chunk);
    let mut at = 8;
    let mut sequence = first_sequence;
    let mut taken = 0;
    while at < shared.len() {
        let header = shared.get(at..at + 14).ok_or_else(bad)?;
        let arrival = i64::from_le_bytes(header[..8].try_into().map_err(|_| bad())?);
        let key_len = usize::from(u16::from_le_bytes(
            header[8..10].try_into().map_err(|_| bad())?,
        ));
        let data_len = usize::try_from(u32::from_le_bytes(
            header[10..14].try_into().map_err(|_| bad())?,
        ))
        .map_err(|_| bad())?;
        let key_start = at + 14;
        let data_start = key_start + key_len;
        let end = data_start + data_len;
        if end > shared.len() {
            return Err(bad());
        }
        if sequence >= from {
            if taken == limit {
                return Ok(true);
            }
            let key = std::str::from_utf8(&shared[key_start..data_start]).map_err(|_| bad())?;
            out.push((
                Record {
                    sequence: sequence.to_string(),
                    partition_key: key.to_owned(),
                    data: shared.slice(data_start..end),
                    arrival_time: DateTime::from_timestamp_millis(arrival),
                },
                arrival,
            ));
            taken += 1;
        }
        sequence += 1;
        at = end;
    }
    Ok(false)
}

fn read_meta(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<StreamMeta>> {
    match table.get(name).map_err(storage)? {
        None => Ok(None),
        Some(value) => serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|error| corrupt_meta(name, error)),
    }
}

fn write_meta(txn: &WriteTransaction, name: &str, meta: &StreamMeta) -> Result<()> {
    let bytes = serde_json::to_vec(meta).map_err(storage)?;
    let mut table = txn.open_table(STREAMS).map_err(storage)?;
    table.insert(name, bytes.as_slice()).map_err(storage)?;
    Ok(())
}

fn next_uids(txn: &WriteTransaction, count: u64) -> Result<u64> {
    let mut counters = txn.open_table(COUNTERS).map_err(storage)?;
    let first = counters
        .get(NEXT_UID)
        .map_err(storage)?
        .map_or(1, |value| value.value());
    counters.insert(NEXT_UID, first + count).map_err(storage)?;
    Ok(first)
}

/// Opens `count` new shards covering the hash space; parents are the `previous` shards whose
/// slices overlap.
fn new_shards(
    txn: &WriteTransaction,
    meta: &mut StreamMeta,
    count: u32,
    previous: &[ShardMeta],
) -> Result<()> {
    let first_uid = next_uids(txn, u64::from(count))?;
    let mut heads = txn.open_table(SHARD_HEADS).map_err(storage)?;
    for index in 0..count {
        let (hash_first, hash_last) = hash_slice(index, count);
        let uid = first_uid + u64::from(index);
        heads.insert(uid, (1, 0)).map_err(storage)?;
        meta.shards.push(ShardMeta {
            uid,
            id: format!("shardId-{:012}", meta.next_shard_index),
            parents: previous
                .iter()
                .filter(|old| old.hash_first <= hash_last && hash_first <= old.hash_last)
                .map(|old| old.id.clone())
                .collect(),
            closed: false,
            hash_first,
            hash_last,
        });
        meta.next_shard_index += 1;
    }
    Ok(())
}

fn remove_shard_data(txn: &WriteTransaction, uid: u64) -> Result<()> {
    let mut records = txn.open_table(RECORDS).map_err(storage)?;
    records
        .retain_in((uid, 0)..=(uid, u64::MAX), |_, _| false)
        .map_err(storage)?;
    let mut heads = txn.open_table(SHARD_HEADS).map_err(storage)?;
    heads.remove(uid).map_err(storage)?;
    Ok(())
}

impl EmbeddedBackend {
    /// Opens (or creates) the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref();
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(|error| {
                StreamError::Backend(format!(
                    "cannot open the stream store {}: {error}",
                    path.display()
                ))
            })?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(STREAMS).map_err(storage)?;
        txn.open_table(SHARD_HEADS).map_err(storage)?;
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(COUNTERS).map_err(storage)?;
        txn.commit().map_err(storage)?;

        let db = Arc::new(db);
        let wakers = Wakers::default();
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            wakers: wakers.clone(),
            trim_interval: options.trim_interval,
        };
        let thread = std::thread::Builder::new()
            .name("stream-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|error| StreamError::Backend(format!("cannot start the writer: {error}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(Some(sender)),
                thread: Mutex::new(Some(thread)),
                wakers,
            }),
        })
    }

    /// Drops every record older than its stream's retention as of `now`, and closed shards left
    /// empty. Returns how many records went. The writer also does this every `trim_interval`.
    pub async fn trim_expired(&self, now: DateTime<Utc>) -> Result<usize> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Trim { now, reply })?;
        answer.await.map_err(|_| writer_gone())?
    }

    fn send(&self, job: Job) -> Result<()> {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        writer
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(job)
            .map_err(|_| writer_gone())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|error| StreamError::Backend(format!("embedded store task failed: {error}")))?
    }
}

fn writer_gone() -> StreamError {
    StreamError::Backend("the embedded store's writer has stopped".to_owned())
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and release the file, so the
        // same path can be opened again as soon as the last handle is gone.
        drop(
            self.writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("The stream writer thread panicked.");
        }
    }
}

struct Writer {
    db: Arc<Database>,
    wakers: Wakers,
    trim_interval: Duration,
}

impl Writer {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        let mut next_trim = Instant::now() + self.trim_interval;
        loop {
            let first = match jobs.recv_timeout(next_trim.saturating_duration_since(Instant::now()))
            {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(error) = self.trim(Utc::now()) {
                        tracing::warn!(%error, "Trimming expired records failed.");
                    }
                    next_trim = Instant::now() + self.trim_interval;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut puts = Vec::new();
            let mut bytes = 0;
            let mut pending = Some(first);
            while let Some(job) = pending.take() {
                match job {
                    Job::Put {
                        stream,
                        records,
                        reply,
                    } => {
                        bytes += records.iter().map(crate::record_size).sum::<usize>();
                        puts.push((stream, records, reply));
                    }
                    Job::Trim { now, reply } => {
                        // Answered in order: puts queued before the trim are written first.
                        self.commit_puts(std::mem::take(&mut puts));
                        bytes = 0;
                        let _ = reply.send(self.trim(now));
                    }
                }
                if bytes < GROUP_COMMIT_BYTES {
                    pending = jobs.try_recv().ok();
                }
            }
            self.commit_puts(puts);
            if Instant::now() >= next_trim {
                if let Err(error) = self.trim(Utc::now()) {
                    tracing::warn!(%error, "Trimming expired records failed.");
                }
                next_trim = Instant::now() + self.trim_interval;
            }
        }
    }

    fn commit_puts(&self, puts: Vec<QueuedPut>) {
        if puts.is_empty() {
            return;
        }
        match self.write_puts(&puts) {
            Ok(outcomes) => {
                let mut touched = HashSet::new();
                for ((stream, _, reply), outcome) in puts.into_iter().zip(outcomes) {
                    if outcome.is_ok() {
                        touched.insert(stream);
                    }
                    let _ = reply.send(outcome);
                }
                for stream in touched {
                    self.wakers.wake(&stream);
                }
            }
            Err(error) => {
                tracing::error!(%error, puts = puts.len(), "Committing appends failed.");
                for (_, _, reply) in puts {
                    let _ = reply.send(Err(StreamError::Backend(error.to_string())));
                }
            }
        }
    }

    /// Writes every put in one transaction; the outer `Err` means nothing was committed.
    fn write_puts(&self, puts: &[QueuedPut]) -> Result<Vec<Result<PutOutcome>>> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut results = Vec::with_capacity(puts.len());
        {
            let streams = txn.open_table(STREAMS).map_err(storage)?;
            let mut heads = txn.open_table(SHARD_HEADS).map_err(storage)?;
            let mut records_table = txn.open_table(RECORDS).map_err(storage)?;
            let mut metas: HashMap<&str, Option<StreamMeta>> = HashMap::new();
            let mut head_cache: HashMap<u64, (u64, i64)> = HashMap::new();
            let mut chunks: HashMap<u64, ChunkBuilder> = HashMap::new();
            let now = now_millis(Utc::now());
            for (stream, records, _) in puts {
                let meta = match metas.get(stream.as_str()) {
                    Some(meta) => meta,
                    None => {
                        let meta = read_meta(&streams, stream)?;
                        metas.entry(stream.as_str()).or_insert(meta)
                    }
                };
                let Some(meta) = meta else {
                    results.push(Err(StreamError::NotFound(stream.clone())));
                    continue;
                };
                let mut outcome = Vec::with_capacity(records.len());
                for record in records {
                    let shard = meta.route(&record.partition_key).ok_or_else(|| {
                        StreamError::Backend(format!("stream {stream:?} has no open shard"))
                    })?;
                    let head = match head_cache.get_mut(&shard.uid) {
                        Some(head) => head,
                        None => {
                            let head = heads
                                .get(shard.uid)
                                .map_err(storage)?
                                .map_or((1, 0), |value| value.value());
                            head_cache.entry(shard.uid).or_insert(head)
                        }
                    };
                    let sequence = head.0;
                    // Arrival times never go back within a shard, so trimming can stop at the
                    // first record it keeps even if the wall clock steps back.
                    let arrival = now.max(head.1);
                    let chunk = chunks
                        .entry(shard.uid)
                        .or_insert_with(|| ChunkBuilder::new(sequence));
                    chunk.push(arrival, record);
                    if chunk.bytes.len() >= CHUNK_BYTES {
                        records_table
                            .insert((shard.uid, chunk.first_sequence), chunk.bytes.as_slice())
                            .map_err(storage)?;
                        chunks.remove(&shard.uid);
                    }
                    *head = (sequence + 1, arrival);
                    outcome.push(Ok(sequence.to_string()));
                }
                results.push(Ok(outcome));
            }
            for (uid, chunk) in chunks {
                records_table
                    .insert((uid, chunk.first_sequence), chunk.bytes.as_slice())
                    .map_err(storage)?;
            }
            for (uid, head) in head_cache {
                heads.insert(uid, head).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(results)
    }

    fn trim(&self, now: DateTime<Utc>) -> Result<usize> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut removed = 0;
        let mut touched = Vec::new();
        {
            let mut streams = txn.open_table(STREAMS).map_err(storage)?;
            let mut records = txn.open_table(RECORDS).map_err(storage)?;
            let mut heads = txn.open_table(SHARD_HEADS).map_err(storage)?;
            let mut metas = Vec::new();
            for entry in streams.iter().map_err(storage)? {
                let (name, value) = entry.map_err(storage)?;
                let name = name.value().to_owned();
                let meta: StreamMeta = serde_json::from_slice(value.value())
                    .map_err(|error| corrupt_meta(&name, error))?;
                metas.push((name, meta));
            }
            for (name, mut meta) in metas {
                let cutoff = now_millis(now) - i64::from(meta.retention_hours) * 3_600_000;
                let mut emptied = Vec::new();
                for shard in &meta.shards {
                    let mut first_kept = None;
                    let mut expired = 0;
                    for entry in records
                        .range((shard.uid, 0)..=(shard.uid, u64::MAX))
                        .map_err(storage)?
                    {
                        let (key, value) = entry.map_err(storage)?;
                        // A chunk goes when its newest record has expired.
                        if chunk_newest(value.value()).is_some_and(|newest| newest >= cutoff) {
                            first_kept = Some(key.value().1);
                            break;
                        }
                        expired += chunk_len(value.value());
                    }
                    if expired > 0 {
                        let end = first_kept.unwrap_or(u64::MAX);
                        records
                            .retain_in((shard.uid, 0)..(shard.uid, end), |_, _| false)
                            .map_err(storage)?;
                        removed += expired;
                    }
                    if shard.closed && first_kept.is_none() {
                        emptied.push(shard.uid);
                    }
                }
                if !emptied.is_empty() {
                    for uid in &emptied {
                        heads.remove(*uid).map_err(storage)?;
                    }
                    meta.shards.retain(|shard| !emptied.contains(&shard.uid));
                    let bytes = serde_json::to_vec(&meta).map_err(storage)?;
                    streams
                        .insert(name.as_str(), bytes.as_slice())
                        .map_err(storage)?;
                    touched.push(name);
                }
            }
        }
        if removed == 0 && touched.is_empty() {
            txn.abort().map_err(storage)?;
            return Ok(0);
        }
        txn.commit().map_err(storage)?;
        tracing::debug!(removed, "Trimmed expired records.");
        for name in touched {
            self.wakers.wake(&name);
        }
        Ok(removed)
    }
}

#[async_trait]
impl StreamBackend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn create_stream(&self, spec: &StreamSpec) -> Result<StreamDescription> {
        validate_spec(spec)?;
        check_shard_limit(spec)?;
        let spec = spec.clone();
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(storage)?;
            let existing = {
                let streams = txn.open_table(STREAMS).map_err(storage)?;
                read_meta(&streams, &spec.name)?
            };
            if let Some(mut meta) = existing {
                let description = meta.describe(&spec.name);
                if description.shard_count != spec.shard_count
                    || description.retention_hours != spec.retention_hours
                {
                    return Err(StreamError::AlreadyExists(spec.name));
                }
                if meta.tags != spec.tags {
                    meta.tags = spec.tags;
                    write_meta(&txn, &spec.name, &meta)?;
                    txn.commit().map_err(storage)?;
                }
                return Ok(description);
            }
            let mut meta = StreamMeta {
                uid: next_uids(&txn, 1)?,
                retention_hours: spec.retention_hours,
                tags: spec.tags,
                next_shard_index: 0,
                shards: Vec::new(),
            };
            new_shards(&txn, &mut meta, spec.shard_count, &[])?;
            write_meta(&txn, &spec.name, &meta)?;
            txn.commit().map_err(storage)?;
            tracing::info!(stream = %spec.name, shards = spec.shard_count, "Created stream.");
            Ok(meta.describe(&spec.name))
        })
        .await
    }

    async fn update_stream(&self, spec: &StreamSpec) -> Result<StreamDescription> {
        validate_spec(spec)?;
        check_shard_limit(spec)?;
        let spec = spec.clone();
        let name = spec.name.clone();
        let description = self
            .blocking(move |inner| {
                let txn = inner.db.begin_write().map_err(storage)?;
                let mut meta = {
                    let streams = txn.open_table(STREAMS).map_err(storage)?;
                    read_meta(&streams, &spec.name)?
                }
                .ok_or_else(|| StreamError::NotFound(spec.name.clone()))?;
                let open: Vec<ShardMeta> = meta.open_shards().cloned().collect();
                if open.len() != spec.shard_count as usize {
                    for shard in meta.shards.iter_mut() {
                        shard.closed = true;
                    }
                    new_shards(&txn, &mut meta, spec.shard_count, &open)?;
                    tracing::info!(
                        stream = %spec.name,
                        from = open.len(),
                        to = spec.shard_count,
                        "Resharded stream."
                    );
                }
                meta.retention_hours = spec.retention_hours;
                meta.tags = spec.tags;
                write_meta(&txn, &spec.name, &meta)?;
                txn.commit().map_err(storage)?;
                Ok(meta.describe(&spec.name))
            })
            .await?;
        self.inner.wakers.wake(&name);
        Ok(description)
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        let owned = name.to_owned();
        let deleted = self
            .blocking(move |inner| {
                let txn = inner.db.begin_write().map_err(storage)?;
                let meta = {
                    let streams = txn.open_table(STREAMS).map_err(storage)?;
                    read_meta(&streams, &owned)?
                };
                let Some(meta) = meta else {
                    return Ok(false);
                };
                for shard in &meta.shards {
                    remove_shard_data(&txn, shard.uid)?;
                }
                txn.open_table(STREAMS)
                    .map_err(storage)?
                    .remove(owned.as_str())
                    .map_err(storage)?;
                txn.commit().map_err(storage)?;
                Ok(true)
            })
            .await?;
        if deleted {
            tracing::info!(stream = name, "Deleted stream.");
            self.inner.wakers.wake(name);
        }
        Ok(())
    }

    async fn describe_stream(&self, name: &str) -> Result<Option<StreamDescription>> {
        let name = name.to_owned();
        self.blocking(move |inner| Ok(inner.load_meta(&name)?.map(|meta| meta.describe(&name))))
            .await
    }

    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>> {
        let name = stream.to_owned();
        self.blocking(move |inner| {
            let meta = inner
                .load_meta(&name)?
                .ok_or_else(|| StreamError::NotFound(name.clone()))?;
            Ok(meta
                .shards
                .into_iter()
                .map(|shard| Shard {
                    id: shard.id,
                    parents: shard.parents,
                    closed: shard.closed,
                })
                .collect())
        })
        .await
    }

    async fn open_reader(
        &self,
        stream: &str,
        shard: &str,
        from: StartPosition,
    ) -> Result<Box<dyn ShardReader>> {
        let wake = self.inner.wakers.subscribe(stream);
        let name = stream.to_owned();
        let shard_id = shard.to_owned();
        let (stream_uid, shard_uid, after) = self
            .blocking(move |inner| {
                let meta = inner
                    .load_meta(&name)?
                    .ok_or_else(|| StreamError::NotFound(name.clone()))?;
                let shard = meta
                    .shards
                    .iter()
                    .find(|shard| shard.id == shard_id)
                    .ok_or_else(|| StreamError::ShardNotFound {
                        stream: name.clone(),
                        shard: shard_id.clone(),
                    })?;
                let after = match from {
                    StartPosition::TrimHorizon => 0,
                    StartPosition::Latest => {
                        let txn = inner.db.begin_read().map_err(storage)?;
                        let heads = txn.open_table(SHARD_HEADS).map_err(storage)?;
                        heads
                            .get(shard.uid)
                            .map_err(storage)?
                            .map_or(0, |value| value.value().0 - 1)
                    }
                    StartPosition::AfterSequence(sequence) => parse_sequence(&sequence)?,
                    StartPosition::AtSequence(sequence) => {
                        parse_sequence(&sequence)?.saturating_sub(1)
                    }
                };
                Ok((meta.uid, shard.uid, after))
            })
            .await?;
        Ok(Box::new(EmbeddedReader {
            inner: self.inner.clone(),
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            stream_uid,
            shard_uid,
            after,
            finished: false,
            wake,
        }))
    }

    async fn put_records(&self, stream: &str, records: &[PutRecord]) -> Result<PutOutcome> {
        validate_batch(records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Put {
            stream: stream.to_owned(),
            records: records.to_vec(),
            reply,
        })?;
        answer.await.map_err(|_| writer_gone())?
    }
}

fn check_shard_limit(spec: &StreamSpec) -> Result<()> {
    if spec.shard_count > MAX_SHARDS {
        return Err(StreamError::Invalid(format!(
            "stream {:?}: the embedded backend takes at most {MAX_SHARDS} shards, got {}",
            spec.name, spec.shard_count
        )));
    }
    Ok(())
}

fn parse_sequence(sequence: &str) -> Result<u64> {
    sequence.parse().map_err(|_| {
        StreamError::Invalid(format!(
            "{sequence:?} is not a sequence number of the embedded backend"
        ))
    })
}

impl Inner {
    fn load_meta(&self, name: &str) -> Result<Option<StreamMeta>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let streams = txn.open_table(STREAMS).map_err(storage)?;
        read_meta(&streams, name)
    }
}

struct EmbeddedReader {
    inner: Arc<Inner>,
    stream: String,
    shard: String,
    stream_uid: u64,
    shard_uid: u64,
    /// The last sequence number returned (or skipped by the start position).
    after: u64,
    finished: bool,
    wake: watch::Receiver<u64>,
}

struct Page {
    records: Vec<Record>,
    more: bool,
    closed: bool,
    last_arrival: Option<i64>,
}

impl EmbeddedReader {
    fn read_page(
        inner: &Inner,
        stream: &str,
        stream_uid: u64,
        shard_uid: u64,
        after: u64,
        limit: usize,
    ) -> Result<Page> {
        let txn = inner.db.begin_read().map_err(storage)?;
        let streams = txn.open_table(STREAMS).map_err(storage)?;
        let meta = read_meta(&streams, stream)?
            .filter(|meta| meta.uid == stream_uid)
            .ok_or_else(|| StreamError::NotFound(stream.to_owned()))?;
        // A shard missing from a live stream was closed and trimmed empty.
        let closed = meta
            .shards
            .iter()
            .find(|shard| shard.uid == shard_uid)
            .is_none_or(|shard| shard.closed);
        let table = txn.open_table(RECORDS).map_err(storage)?;
        let from = after.saturating_add(1);
        // Start at the chunk holding `from`: the last one that begins at or before it.
        let start = match table
            .range((shard_uid, 0)..=(shard_uid, from))
            .map_err(storage)?
            .next_back()
        {
            Some(entry) => entry.map_err(storage)?.0.value().1,
            None => from,
        };
        let mut decoded = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for entry in table
            .range((shard_uid, start)..=(shard_uid, u64::MAX))
            .map_err(storage)?
        {
            if decoded.len() == limit {
                more = true;
                break;
            }
            let (key, value) = entry.map_err(storage)?;
            let left = limit - decoded.len();
            if decode_chunk(key.value().1, value.value(), from, left, &mut decoded)? {
                more = true;
                break;
            }
        }
        let last_arrival = decoded.last().map(|(_, arrival)| *arrival);
        let records = decoded.into_iter().map(|(record, _)| record).collect();
        Ok(Page {
            records,
            more,
            closed,
            last_arrival,
        })
    }
}

#[async_trait]
impl ShardReader for EmbeddedReader {
    async fn next_batch(&mut self, limit: usize) -> Result<ReadBatch> {
        if self.finished {
            return Ok(ReadBatch {
                shard_end: true,
                millis_behind: Some(0),
                ..ReadBatch::default()
            });
        }
        // Marked seen before reading: an append that lands after the read wakes the next wait.
        self.wake.borrow_and_update();
        let inner = self.inner.clone();
        let (stream, stream_uid, shard_uid, after) = (
            self.stream.clone(),
            self.stream_uid,
            self.shard_uid,
            self.after,
        );
        let limit = limit.max(1);
        let page = tokio::task::spawn_blocking(move || {
            Self::read_page(&inner, &stream, stream_uid, shard_uid, after, limit)
        })
        .await
        .map_err(|error| StreamError::Backend(format!("embedded read task failed: {error}")))??;
        if let Some(last) = page.records.last() {
            self.after = parse_sequence(&last.sequence)?;
        }
        let millis_behind = match (page.more, page.last_arrival) {
            (true, Some(arrival)) => Some((now_millis(Utc::now()) - arrival).max(0)),
            _ => Some(0),
        };
        self.finished = page.closed && !page.more;
        tracing::trace!(
            stream = %self.stream,
            shard = %self.shard,
            records = page.records.len(),
            "Read batch."
        );
        Ok(ReadBatch {
            records: page.records,
            millis_behind,
            shard_end: self.finished,
        })
    }

    async fn wait_for_records(&mut self, max_wait: Duration) {
        if self.finished {
            return;
        }
        let _ = tokio::time::timeout(max_wait, self.wake.changed()).await;
    }
}
