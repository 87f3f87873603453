//! Test doubles for the GES and the lease store (until the embedded backend and the control
//! plane's coordinator are available), lake readers, and fault injection.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use persister::{ObjectSink, SinkError};
use proto::Message;
use streams::{
    Coordinator, CoordinatorError, Lease, PutOutcome, PutRecord, ReadBatch, Record, Shard,
    ShardReader, StartPosition, StreamBackend, StreamDescription, StreamError, StreamSpec,
    cmp_sequence,
};
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct ShardLog {
    records: Vec<Record>,
    closed: bool,
}

/// An in-memory stream backend: shards are vectors, sequence numbers decimal strings that grow
/// in length (so ordering by text alone would be wrong).
#[derive(Default)]
pub struct MemBackend {
    streams: Mutex<BTreeMap<String, BTreeMap<String, ShardLog>>>,
    next_seq: AtomicUsize,
}

impl MemBackend {
    pub fn with_stream(name: &str, shards: usize) -> Arc<MemBackend> {
        let backend = MemBackend {
            next_seq: AtomicUsize::new(7),
            ..Default::default()
        };
        let logs = (0..shards)
            .map(|i| (format!("shard-{i:04}"), ShardLog::default()))
            .collect();
        lock(&backend.streams).insert(name.to_owned(), logs);
        Arc::new(backend)
    }

    pub fn shard_ids(&self, stream: &str) -> Vec<String> {
        lock(&self.streams)
            .get(stream)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Appends one record to a shard, arriving at `arrival`; returns its sequence number.
    pub fn append(&self, stream: &str, shard: &str, data: Bytes, arrival: DateTime<Utc>) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed).to_string();
        let mut streams = lock(&self.streams);
        let log = streams
            .get_mut(stream)
            .and_then(|s| s.get_mut(shard))
            .unwrap_or_else(|| panic!("no shard {stream}/{shard}"));
        log.records.push(Record {
            sequence: seq.clone(),
            partition_key: "k".into(),
            data,
            arrival_time: Some(arrival),
        });
        seq
    }

    pub fn close(&self, stream: &str, shard: &str) {
        if let Some(log) = lock(&self.streams)
            .get_mut(stream)
            .and_then(|s| s.get_mut(shard))
        {
            log.closed = true;
        }
    }

    pub fn record_count(&self, stream: &str) -> usize {
        lock(&self.streams)
            .get(stream)
            .map(|s| s.values().map(|l| l.records.len()).sum())
            .unwrap_or(0)
    }
}

struct MemReader {
    backend: Arc<MemBackend>,
    stream: String,
    shard: String,
    next: usize,
}

#[async_trait]
impl ShardReader for MemReader {
    async fn next_batch(&mut self, limit: usize) -> streams::Result<ReadBatch> {
        let streams = lock(&self.backend.streams);
        let log = streams
            .get(&self.stream)
            .and_then(|s| s.get(&self.shard))
            .ok_or_else(|| StreamError::ShardNotFound {
                stream: self.stream.clone(),
                shard: self.shard.clone(),
            })?;
        let end = (self.next + limit).min(log.records.len());
        let records = log.records[self.next..end].to_vec();
        self.next = end;
        Ok(ReadBatch {
            records,
            millis_behind: Some(0),
            shard_end: log.closed && end == log.records.len(),
        })
    }
}

/// Wraps the backend in an `Arc` the reader can hold.
pub struct MemStreams(pub Arc<MemBackend>);

#[async_trait]
impl StreamBackend for MemStreams {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn create_stream(&self, spec: &StreamSpec) -> streams::Result<StreamDescription> {
        Err(StreamError::Invalid(format!(
            "not supported: {}",
            spec.name
        )))
    }

    async fn update_stream(&self, spec: &StreamSpec) -> streams::Result<StreamDescription> {
        Err(StreamError::Invalid(format!(
            "not supported: {}",
            spec.name
        )))
    }

    async fn delete_stream(&self, _name: &str) -> streams::Result<()> {
        Ok(())
    }

    async fn describe_stream(&self, _name: &str) -> streams::Result<Option<StreamDescription>> {
        Ok(None)
    }

    async fn list_shards(&self, stream: &str) -> streams::Result<Vec<Shard>> {
        let streams = lock(&self.0.streams);
        let shards = streams
            .get(stream)
            .ok_or_else(|| StreamError::NotFound(stream.to_owned()))?;
        Ok(shards
            .iter()
            .map(|(id, log)| Shard {
                id: id.clone(),
                parents: Vec::new(),
                closed: log.closed,
            })
            .collect())
    }

    async fn open_reader(
        &self,
        stream: &str,
        shard: &str,
        from: StartPosition,
    ) -> streams::Result<Box<dyn ShardReader>> {
        let streams = lock(&self.0.streams);
        let log = streams
            .get(stream)
            .and_then(|s| s.get(shard))
            .ok_or_else(|| StreamError::ShardNotFound {
                stream: stream.to_owned(),
                shard: shard.to_owned(),
            })?;
        let position = |seq: &str, inclusive: bool| {
            log.records
                .iter()
                .position(|r| {
                    let ord = cmp_sequence(&r.sequence, seq);
                    ord.is_gt() || (inclusive && ord.is_eq())
                })
                .unwrap_or(log.records.len())
        };
        let next = match &from {
            StartPosition::TrimHorizon => 0,
            StartPosition::Latest => log.records.len(),
            StartPosition::AfterSequence(seq) => position(seq, false),
            StartPosition::AtSequence(seq) => position(seq, true),
        };
        Ok(Box::new(MemReader {
            backend: self.0.clone(),
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            next,
        }))
    }

    async fn put_records(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> streams::Result<PutOutcome> {
        let shards = self.0.shard_ids(stream);
        let mut out = Vec::new();
        for r in records {
            let i = r.partition_key.bytes().map(usize::from).sum::<usize>() % shards.len();
            self.0
                .append(stream, &shards[i], r.data.clone(), Utc::now());
            out.push(Ok(String::new()));
        }
        Ok(out)
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

/// An in-memory lease store with fencing tokens. With a [`Halt`] planned on checkpoint writes
/// it dies right before or right after the n-th one lands.
#[derive(Default)]
pub struct MemCoordinator {
    leases: Mutex<HashMap<(String, String), Lease>>,
    checkpoints: AtomicUsize,
    pub halt: Arc<Halt>,
}

impl MemCoordinator {
    pub fn new() -> Arc<MemCoordinator> {
        Arc::new(MemCoordinator::default())
    }

    pub fn checkpoint_writes(&self) -> usize {
        self.checkpoints.load(Ordering::SeqCst)
    }

    /// Halts at the `n`-th checkpoint write from now.
    pub fn halt_at_checkpoint(&self, n: usize, at: Freeze) {
        self.halt
            .plan(Some((Write::Checkpoint, self.checkpoint_writes() + n, at)));
    }

    pub fn checkpoint_of(&self, group: &str, key: &str) -> Option<String> {
        lock(&self.leases)
            .get(&(group.to_owned(), key.to_owned()))
            .and_then(|l| l.checkpoint.clone())
    }
}

fn lost(lease: &Lease) -> CoordinatorError {
    CoordinatorError::LeaseLost {
        group: lease.group.clone(),
        key: lease.key.clone(),
        owner: lease.owner.clone(),
    }
}

#[async_trait]
impl Coordinator for MemCoordinator {
    async fn try_acquire(
        &self,
        group: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, CoordinatorError> {
        let mut leases = lock(&self.leases);
        let now = Utc::now();
        let ttl =
            chrono::Duration::from_std(ttl).map_err(|e| CoordinatorError::Store(e.to_string()))?;
        let entry = leases.entry((group.to_owned(), key.to_owned()));
        let lease = entry.or_insert_with(|| Lease {
            group: group.to_owned(),
            key: key.to_owned(),
            owner: String::new(),
            token: 0,
            expires_at: now,
            checkpoint: None,
        });
        if lease.owner != owner && lease.expires_at > now {
            return Ok(None);
        }
        lease.owner = owner.to_owned();
        lease.token += 1;
        lease.expires_at = now + ttl;
        Ok(Some(lease.clone()))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, CoordinatorError> {
        let mut leases = lock(&self.leases);
        let current = leases
            .get_mut(&(lease.group.clone(), lease.key.clone()))
            .filter(|l| l.token == lease.token)
            .ok_or_else(|| lost(lease))?;
        current.expires_at = Utc::now()
            + chrono::Duration::from_std(ttl)
                .map_err(|e| CoordinatorError::Store(e.to_string()))?;
        Ok(current.clone())
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: &str) -> Result<(), CoordinatorError> {
        let n = self.checkpoints.load(Ordering::SeqCst) + 1;
        self.halt.check(Write::Checkpoint, n, false).await;
        {
            let mut leases = lock(&self.leases);
            let current = leases
                .get_mut(&(lease.group.clone(), lease.key.clone()))
                .filter(|l| l.token == lease.token)
                .ok_or_else(|| lost(lease))?;
            current.checkpoint = Some(checkpoint.to_owned());
        }
        let n = self.checkpoints.fetch_add(1, Ordering::SeqCst) + 1;
        self.halt.check(Write::Checkpoint, n, true).await;
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), CoordinatorError> {
        let mut leases = lock(&self.leases);
        if let Some(current) = leases
            .get_mut(&(lease.group.clone(), lease.key.clone()))
            .filter(|l| l.token == lease.token)
        {
            current.expires_at = Utc::now();
        }
        Ok(())
    }

    async fn leases(&self, group: &str) -> Result<Vec<Lease>, CoordinatorError> {
        Ok(lock(&self.leases)
            .values()
            .filter(|l| l.group == group)
            .cloned()
            .collect())
    }
}

/// Which writes a [`Halt`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Checkpoint,
    Object,
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
    }
}

pub fn encoded(envelope: &proto::Envelope) -> Bytes {
    Bytes::from(envelope.encode_to_vec())
}

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("bad test time {text}: {e}"))
}

/// One line of an object, as JSON, with the key it came from.
#[derive(Debug, Clone)]
pub struct Line {
    pub key: String,
    pub json: serde_json::Value,
}

/// Every NDJSON line under `prefix` (gzip or plain).
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
        } else if key.ends_with(".ndjson") {
            String::from_utf8(body.to_vec())?
        } else {
            bail!("unexpected object {key}");
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

pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

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

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// moto in server mode on a loopback port, stopped on drop.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Moto {
    /// `None` (with a note on stderr) when `FANNER_MOTO_SERVER` is not set.
    pub async fn start() -> Result<Option<Moto>> {
        let Ok(bin) = std::env::var("FANNER_MOTO_SERVER") else {
            eprintln!(
                "skipped: set FANNER_MOTO_SERVER (scripts/setup-tools prints it) to run the moto tests"
            );
            return Ok(None);
        };
        let port = free_port();
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let url = format!("{}/moto-api/", moto.endpoint);
        eventually(Duration::from_secs(20), "moto to start", || {
            let request = client.get(&url).send();
            async move { Ok(request.await.is_ok()) }
        })
        .await?;
        Ok(Some(moto))
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("creating bucket {bucket}: {}", response.status());
        }
        Ok(())
    }

    pub fn s3(&self, bucket: &str) -> Result<object_store::aws::AmazonS3> {
        Ok(object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()?)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
