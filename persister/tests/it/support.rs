//! The real GES and lease store (embedded backend, SQLite store) in a temporary directory,
//! fault injection around them and around sinks, and lake readers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use control_plane::Store;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use persister::{ObjectSink, SinkError};
use proto::Message;
use shard_runtime::{Coordinator, CoordinatorError, Lease};
use streams::embedded::EmbeddedBackend;
use streams::{
    PutOutcome, PutRecord, ReadBatch, Record, Shard, ShardReader, StartPosition, StreamBackend,
    StreamDescription, StreamSpec,
};
use testkit::moto::MotoServer;
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A real GES (the embedded backend in a temporary directory) and a real lease store (the
/// control plane's SQLite store), as `fanner serve` runs them.
pub struct Lab {
    /// Holds the files for as long as the lab lives.
    _dir: tempfile::TempDir,
    pub backend: EmbeddedBackend,
    pub store: Store,
    pub stream: String,
}

impl Lab {
    pub async fn new(shards: u32) -> Result<Lab> {
        let dir = tempfile::tempdir()?;
        let backend = EmbeddedBackend::open(dir.path().join("streams.redb"))?;
        let store = Store::open_sqlite(&dir.path().join("fanner.db")).await?;
        let stream = "global-events".to_owned();
        backend
            .create_stream(&StreamSpec {
                name: stream.clone(),
                shard_count: shards,
                retention_hours: 24,
                tags: Default::default(),
            })
            .await?;
        Ok(Lab {
            _dir: dir,
            backend,
            store,
            stream,
        })
    }

    pub fn streams(&self) -> Arc<dyn StreamBackend> {
        Arc::new(self.backend.clone())
    }

    pub fn coordinator(&self) -> Arc<dyn Coordinator> {
        Arc::new(self.store.clone())
    }

    /// Publishes records, each with its own partition key so they spread over the shards.
    pub async fn publish(&self, records: Vec<Bytes>) -> Result<()> {
        let records: Vec<PutRecord> = records
            .into_iter()
            .enumerate()
            .map(|(i, data)| PutRecord {
                partition_key: format!("k{i}-{}", rand::random::<u32>()),
                data,
            })
            .collect();
        let outcome = streams::put_all(
            &self.backend,
            &self.stream,
            &records,
            &streams::RetryPolicy::default(),
        )
        .await?;
        ensure!(outcome.all_written(), "some records were not written");
        Ok(())
    }

    /// Every record on the stream, by shard, in order.
    pub async fn records(&self) -> Result<BTreeMap<String, Vec<Record>>> {
        let mut out = BTreeMap::new();
        for shard in self.backend.list_shards(&self.stream).await? {
            let mut reader = self
                .backend
                .open_reader(&self.stream, &shard.id, StartPosition::TrimHorizon)
                .await?;
            let mut records = Vec::new();
            loop {
                let batch = reader.next_batch(1000).await?;
                if batch.records.is_empty() {
                    break;
                }
                records.extend(batch.records);
            }
            out.insert(shard.id, records);
        }
        Ok(out)
    }
}

/// The lab's GES, counting how often anyone asks a shard for records.
pub struct CountingReads {
    inner: Arc<dyn StreamBackend>,
    pub reads: Arc<AtomicUsize>,
}

impl CountingReads {
    pub fn new(inner: Arc<dyn StreamBackend>) -> Arc<CountingReads> {
        Arc::new(CountingReads {
            inner,
            reads: Arc::default(),
        })
    }
}

struct CountedReader {
    inner: Box<dyn ShardReader>,
    reads: Arc<AtomicUsize>,
}

#[async_trait]
impl ShardReader for CountedReader {
    async fn next_batch(&mut self, limit: usize) -> streams::Result<ReadBatch> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.next_batch(limit).await
    }

    async fn wait_for_records(&mut self, max_wait: Duration) {
        self.inner.wait_for_records(max_wait).await;
    }
}

#[async_trait]
impl StreamBackend for CountingReads {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn create_stream(&self, spec: &StreamSpec) -> streams::Result<StreamDescription> {
        self.inner.create_stream(spec).await
    }

    async fn update_stream(&self, spec: &StreamSpec) -> streams::Result<StreamDescription> {
        self.inner.update_stream(spec).await
    }

    async fn delete_stream(&self, name: &str) -> streams::Result<()> {
        self.inner.delete_stream(name).await
    }

    async fn describe_stream(&self, name: &str) -> streams::Result<Option<StreamDescription>> {
        self.inner.describe_stream(name).await
    }

    async fn list_shards(&self, stream: &str) -> streams::Result<Vec<Shard>> {
        self.inner.list_shards(stream).await
    }

    async fn open_reader(
        &self,
        stream: &str,
        shard: &str,
        from: StartPosition,
    ) -> streams::Result<Box<dyn ShardReader>> {
        Ok(Box::new(CountedReader {
            inner: self.inner.open_reader(stream, shard, from).await?,
            reads: self.reads.clone(),
        }))
    }

    async fn put_records(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> streams::Result<PutOutcome> {
        self.inner.put_records(stream, records).await
    }
}

/// A simulated process death shared by the lease store and the sink: once halted, no write
/// of either lands any more (calls never return), exactly as after `kill -9`.
#[derive(Default)]
pub struct Halt {
    halted: std::sync::atomic::AtomicBool,
    /// Where and when to halt: the n-th write of a kind.
    plan: Mutex<Option<(Write, usize, Freeze)>>,
    pub reached: Notify,
}

impl Halt {
    pub fn new() -> Arc<Halt> {
        Arc::new(Halt::default())
    }

    pub fn plan(&self, plan: Option<(Write, usize, Freeze)>) {
        *lock(&self.plan) = plan;
        self.halted.store(false, Ordering::SeqCst);
    }

    fn halt(&self) {
        self.halted.store(true, Ordering::SeqCst);
        self.reached.notify_one();
    }

    /// Called around each write; `n` is the write's number, `landed` whether it is done.
    async fn check(&self, write: Write, n: usize, landed: bool) {
        let plan = *lock(&self.plan);
        let due = match plan {
            Some((w, at, Freeze::BeforePut)) => w == write && !landed && n == at,
            Some((w, at, Freeze::AfterPut)) => w == write && landed && n == at,
            None => false,
        };
        if due {
            self.halt();
        }
        if self.halted.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

/// The real lease store, dying with its [`Halt`] right before or right after the n-th
/// checkpoint write lands (and landing nothing after that).
pub struct HaltingCoordinator {
    inner: Arc<dyn Coordinator>,
    checkpoints: AtomicUsize,
    pub halt: Arc<Halt>,
}

impl HaltingCoordinator {
    pub fn new(inner: Arc<dyn Coordinator>) -> Arc<HaltingCoordinator> {
        Arc::new(HaltingCoordinator {
            inner,
            checkpoints: AtomicUsize::new(0),
            halt: Halt::new(),
        })
    }

    /// Halts at the `n`-th checkpoint write from now.
    pub fn halt_at_checkpoint(&self, n: usize, at: Freeze) {
        let planned = self.checkpoints.load(Ordering::SeqCst) + n;
        self.halt.plan(Some((Write::Checkpoint, planned, at)));
    }
}

#[async_trait]
impl Coordinator for HaltingCoordinator {
    async fn try_acquire(
        &self,
        group: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, CoordinatorError> {
        self.halt.check(Write::Lease, 0, false).await;
        self.inner.try_acquire(group, key, owner, ttl).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, CoordinatorError> {
        self.halt.check(Write::Lease, 0, false).await;
        self.inner.renew(lease, ttl).await
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: &str) -> Result<(), CoordinatorError> {
        let n = self.checkpoints.fetch_add(1, Ordering::SeqCst) + 1;
        self.halt.check(Write::Checkpoint, n, false).await;
        self.inner.checkpoint(lease, checkpoint).await?;
        self.halt.check(Write::Checkpoint, n, true).await;
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), CoordinatorError> {
        self.halt.check(Write::Lease, 0, false).await;
        self.inner.release(lease).await
    }

    async fn leases(&self, group: &str) -> Result<Vec<Lease>, CoordinatorError> {
        self.inner.leases(group).await
    }
}

/// Which writes a [`Halt`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Checkpoint,
    Object,
    /// Acquiring, renewing or releasing a lease: never where a halt is planned, but halted too.
    Lease,
}

/// Where a [`Halt`] stops a write: before or after it lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freeze {
    BeforePut,
    AfterPut,
}

/// Passes puts through to a real sink, records their keys, and dies with its [`Halt`].
pub struct FaultySink {
    inner: Arc<dyn ObjectSink>,
    puts: AtomicUsize,
    keys: Mutex<Vec<String>>,
    pub halt: Arc<Halt>,
}

impl FaultySink {
    pub fn new(inner: Arc<dyn ObjectSink>, halt: Arc<Halt>) -> Arc<FaultySink> {
        Arc::new(FaultySink {
            inner,
            puts: AtomicUsize::new(0),
            keys: Mutex::new(Vec::new()),
            halt,
        })
    }

    /// Halts at the `n`-th put from now.
    pub fn halt_at_put(&self, n: usize, at: Freeze) {
        self.halt.plan(Some((
            Write::Object,
            self.puts.load(Ordering::SeqCst) + n,
            at,
        )));
    }

    /// The key of every put that completed, in order.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.keys).clone()
    }
}

#[async_trait]
impl ObjectSink for FaultySink {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst) + 1;
        self.halt.check(Write::Object, n, false).await;
        self.inner.put(key, body).await?;
        lock(&self.keys).push(key.to_owned());
        self.halt.check(Write::Object, n, true).await;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        self.inner.list(prefix).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, SinkError> {
        self.inner.get(key).await
    }
}

/// A test event.
pub fn envelope(
    id: &str,
    name: &str,
    time: Option<DateTime<Utc>>,
    payload: &[u8],
) -> proto::Envelope {
    proto::Envelope {
        event_id: id.to_owned(),
        event_name: name.to_owned(),
        event_time: time.map(|t| proto::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        }),
        ingest_time: Some(proto::Timestamp {
            seconds: Utc::now().timestamp(),
            nanos: 0,
        }),
        producer: "svc:test".into(),
        trace_id: format!("trace-{id}"),
        user_id: "u1".into(),
        device_id: String::new(),
        attributes: [("region".to_owned(), "eu".to_owned())].into(),
        content_type: "application/json".into(),
        payload: payload.to_vec(),
        history_id: Default::default(),
    }
}

pub fn encoded(envelope: &proto::Envelope) -> Bytes {
    Bytes::from(envelope.encode_to_vec())
}

/// One line of an object, as JSON, with the key it came from.
#[derive(Debug, Clone)]
pub struct Line {
    pub key: String,
    pub json: serde_json::Value,
}

/// Every NDJSON line under `prefix` (gzip when the key ends in `.gz`).
pub async fn read_lake(sink: &dyn ObjectSink, prefix: &str) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    let mut keys = sink.list(prefix).await?;
    keys.sort();
    for key in keys {
        let body = sink
            .get(&key)
            .await?
            .with_context(|| format!("{key} listed but missing"))?;
        let text = if key.ends_with(".gz") {
            let mut out = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::MultiGzDecoder::new(&body[..]),
                &mut out,
            )?;
            out
        } else if key.ends_with(".parquet") {
            bail!("{key} is Parquet, not NDJSON");
        } else {
            // Plain NDJSON, whatever the name (Firehose names objects its own way).
            String::from_utf8(body.to_vec())?
        };
        for line in text.lines() {
            lines.push(Line {
                key: key.clone(),
                json: serde_json::from_str(line).with_context(|| format!("line of {key}"))?,
            });
        }
    }
    Ok(lines)
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running persister with a shutdown trigger.
pub struct Running {
    pub stats: Arc<persister::Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(persister: persister::Persister) -> Running {
        let stats = persister.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(persister.run(async move {
            let _ = rx.await;
        }));
        Running {
            stats,
            stop: Some(tx),
            task,
        }
    }

    /// Graceful shutdown: waits until buffers are written and leases released.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .context("shutdown took too long")??;
        Ok(())
    }

    /// A crash: the task and everything it started stop where they are.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// An S3 client for a bucket on the shared moto server; the bucket is created.
pub async fn moto_bucket(moto: &MotoServer, bucket: &str) -> Result<AmazonS3> {
    api::install_crypto_provider();
    let response = reqwest::Client::new()
        .put(format!("{}/{bucket}", moto.endpoint()))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "creating bucket {bucket}: {}",
        response.status()
    );
    Ok(AmazonS3Builder::new()
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()?)
}
