//! A control plane in-process (SQLite in a temp dir), a GES on a real backend (the embedded
//! log, or Kinesis on moto), an engine to start and stop, and a backend wrapper that injects the
//! failures real streams have and the emulators do not (throttled entries, slow writes).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{
    Classification, CreateEvent, CreateGrant, CreateStream, CreateSubscription, CreateToken, Grant,
    Role, Subscription,
};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cli::link::InProcess;
use control_plane::auth::{Caller, Ctx};
use control_plane::{Clock, ControlPlane, Settings, Store};
use fanner::{EngineConfig, EngineError, StatusBoard};
use prost::Message;
use shard_runtime::Coordinator;
use streams::embedded::EmbeddedBackend;
use streams::kinesis::{KinesisBackend, KinesisOptions};
use streams::{
    PutFailure, PutOutcome, PutRecord, Record, RetryPolicy, Shard, ShardReader, StartPosition,
    StreamBackend, StreamDescription, StreamSpec,
};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Moto,
}

/// Runs an async test fn once per backend: always on the embedded log, on moto when enabled.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(crate::support::Kind::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn moto() {
                super::$name(crate::support::Kind::Moto).await
            }
        }
    )*};
}
pub(crate) use backend_tests;

pub struct Harness {
    pub cp: ControlPlane,
    pub store: Store,
    /// What the control plane and the test use.
    pub backend: Arc<dyn StreamBackend>,
    /// What engines use: the same streams, with failures on demand.
    pub faults: Arc<Faulty>,
    pub ges: String,
    pub admin: Ctx,
    pub admin_token: String,
    _dir: TempDir,
}

pub fn ctx(principal: &str, role: Role) -> Ctx {
    Ctx {
        caller: Caller {
            principal: principal.to_owned(),
            role,
        },
        request_id: format!("test-{}", uuid::Uuid::new_v4()),
    }
}

/// Logs to the test output when `FANNER_LOG` is set (e.g. `FANNER_LOG=fanner=debug`).
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FANNER_LOG") {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .init();
        }
    });
}

impl Harness {
    /// `None` (after saying why) when `kind` is not available here.
    pub async fn start(kind: Kind, test: &str, ges_shards: u32) -> Option<Harness> {
        init_logging();
        let (backend, engine_backend): (Arc<dyn StreamBackend>, Arc<dyn StreamBackend>) = match kind
        {
            Kind::Embedded => {
                let dir = tempfile::tempdir().expect("temp dir");
                let backend: Arc<dyn StreamBackend> = Arc::new(
                    EmbeddedBackend::open(dir.path().join("streams.redb")).expect("backend"),
                );
                return Some(
                    Harness::with_backends(dir, backend.clone(), backend, ges_shards).await,
                );
            }
            Kind::Moto => {
                let moto = testkit::moto::shared(test)?;
                let config = moto.sdk_config().await;
                (
                    Arc::new(KinesisBackend::new(&config).with_options(moto_options())),
                    Arc::new(KinesisBackend::new(&config).with_options(moto_options())),
                )
            }
        };
        let dir = tempfile::tempdir().expect("temp dir");
        Some(Harness::with_backends(dir, backend, engine_backend, MOTO_GES_SHARDS).await)
    }

    /// On moto, with an engine backend of the caller's (a Kinesis client with an interceptor).
    pub async fn with_engine_backend(
        test: &str,
        engine_backend: impl FnOnce(&aws_config::SdkConfig) -> Arc<dyn StreamBackend>,
    ) -> Option<Harness> {
        let moto = testkit::moto::shared(test)?;
        let config = moto.sdk_config().await;
        let backend: Arc<dyn StreamBackend> =
            Arc::new(KinesisBackend::new(&config).with_options(moto_options()));
        let dir = tempfile::tempdir().expect("temp dir");
        Some(Harness::with_backends(dir, backend, engine_backend(&config), MOTO_GES_SHARDS).await)
    }

    async fn with_backends(
        dir: TempDir,
        backend: Arc<dyn StreamBackend>,
        engine_backend: Arc<dyn StreamBackend>,
        ges_shards: u32,
    ) -> Harness {
        let ges = testkit::unique_name("ges");
        backend
            .create_stream(&StreamSpec {
                name: ges.clone(),
                shard_count: ges_shards,
                retention_hours: 24,
                tags: Default::default(),
            })
            .await
            .expect("GES created");
        let store = Store::open(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("fanner.db").display()
        ))
        .await
        .expect("store opens");
        let settings = Settings {
            backing_prefix: format!("{}-", testkit::unique_name("c")),
            ges: ges.clone(),
        };
        let cp = ControlPlane::new(store.clone(), backend.clone(), settings, Clock::default())
            .await
            .expect("control plane starts");
        let admin_token = cp
            .bootstrap()
            .await
            .expect("bootstrap")
            .expect("a fresh store bootstraps");
        Harness {
            cp,
            store,
            backend,
            faults: Arc::new(Faulty::new(engine_backend)),
            ges,
            admin: ctx("admin", Role::Admin),
            admin_token,
            _dir: dir,
        }
    }

    /// A member principal (a team).
    /// The usual start on the embedded backend: team `growth` owns `signup` and subscribes its
    /// own stream `growth-own` (`stream_shards` shards) to it. Returns the stream's backing name.
    pub async fn own_signups(test: &str, ges_shards: u32, stream_shards: u32) -> (Harness, String) {
        let h = Harness::start(Kind::Embedded, test, ges_shards)
            .await
            .expect("embedded is always available");
        let growth = h.team("growth").await;
        h.event(&growth, "signup").await;
        let stream = h.stream(&growth, "growth-own", stream_shards).await;
        h.subscribe(&growth, "growth-own", &["signup"]).await;
        (h, stream)
    }

    pub async fn team(&self, name: &str) -> Ctx {
        self.cp
            .create_token(
                &self.admin,
                CreateToken {
                    principal: name.to_owned(),
                    role: Some(Role::Member),
                },
            )
            .await
            .expect("principal created");
        ctx(name, Role::Member)
    }

    pub async fn event(&self, owner: &Ctx, name: &str) {
        self.cp
            .create_event(
                owner,
                CreateEvent {
                    name: name.to_owned(),
                    classification: Classification::Internal,
                    description: String::new(),
                    owner: None,
                },
            )
            .await
            .expect("event created");
    }

    /// Creates a stream; returns its backing name.
    pub async fn stream(&self, owner: &Ctx, name: &str, shards: u32) -> String {
        self.cp
            .create_stream(
                owner,
                CreateStream {
                    name: name.to_owned(),
                    shard_count: Some(shards),
                    retention_hours: None,
                    tags: Default::default(),
                },
            )
            .await
            .expect("stream created");
        self.cp.backing_name(name)
    }

    pub async fn subscribe(&self, owner: &Ctx, stream: &str, events: &[&str]) -> Subscription {
        self.cp
            .create_subscription(
                owner,
                CreateSubscription {
                    stream: stream.to_owned(),
                    events: events.iter().map(|e| (*e).to_owned()).collect(),
                    ..Default::default()
                },
            )
            .await
            .expect("subscription created")
    }

    pub async fn grant(
        &self,
        owner: &Ctx,
        event: &str,
        grantee: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Grant {
        self.cp
            .create_grant(
                owner,
                CreateGrant {
                    event: event.to_owned(),
                    grantee: grantee.to_owned(),
                    reason: "Testing delivery.".to_owned(),
                    expires_at,
                    ..Default::default()
                },
            )
            .await
            .expect("grant created")
    }

    /// Writes one envelope per `(event, id)` to the GES, keyed by `user` when given.
    pub async fn publish(&self, events: &[(&str, String)]) {
        self.publish_keyed(events.iter().map(|(e, id)| (*e, id.clone(), id.clone())))
            .await
    }

    pub async fn publish_keyed(&self, events: impl IntoIterator<Item = (&str, String, String)>) {
        let records: Vec<PutRecord> = events
            .into_iter()
            .map(|(event, id, key)| PutRecord {
                partition_key: key,
                data: envelope(event, &id),
            })
            .collect();
        self.put_raw(records).await;
    }

    pub async fn put_raw(&self, records: Vec<PutRecord>) {
        let outcome = streams::put_all(
            self.backend.as_ref(),
            &self.ges,
            &records,
            &RetryPolicy::default(),
        )
        .await
        .expect("published");
        assert!(outcome.all_written(), "every record reached the GES");
    }

    /// Settings that make a test quick: short leases and scans, quick retries.
    pub fn config(&self, owner: &str) -> EngineConfig {
        let mut config = EngineConfig::new(&self.ges);
        config.owner = owner.to_owned();
        config.lease_ttl = Duration::from_millis(1500);
        config.scan_interval = Duration::from_millis(100);
        config.idle_wait = Duration::from_millis(100);
        config.checkpoint_interval = Duration::from_millis(50);
        config.probe_interval = Duration::from_millis(200);
        config.drain_timeout = Duration::from_secs(3);
        config.max_stall = Duration::from_secs(1);
        config.put_backoff = Duration::from_millis(10);
        config.put_max_backoff = Duration::from_millis(100);
        config
    }

    /// An engine linked to the control plane in-process.
    pub fn engine(&self, config: EngineConfig) -> RunningEngine {
        let link = Arc::new(InProcess::new(self.cp.clone()));
        self.engine_with(config, link.clone(), link)
    }

    pub fn engine_with(
        &self,
        config: EngineConfig,
        routes: Arc<dyn fanner::RouteSource>,
        link: Arc<dyn fanner::ControlPlaneLink>,
    ) -> RunningEngine {
        let coordinator: Arc<dyn Coordinator> = Arc::new(self.store.clone());
        let engine = fanner::Engine::new(config, self.faults.clone(), coordinator, routes, link);
        let status = engine.status();
        let runtime = engine.shards();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(engine.run(async move {
            let _ = stopped.await;
        }));
        RunningEngine {
            status,
            runtime,
            stop: Some(stop),
            task,
        }
    }

    /// Every record of a stream, shard by shard, in order.
    pub async fn records(&self, stream: &str) -> Vec<Record> {
        let mut records = Vec::new();
        let Ok(shards) = self.backend.list_shards(stream).await else {
            return records;
        };
        for shard in shards {
            let mut reader = self
                .backend
                .open_reader(stream, &shard.id, StartPosition::TrimHorizon)
                .await
                .expect("reader opens");
            loop {
                let batch = reader.next_batch(10_000).await.expect("read");
                if batch.records.is_empty() {
                    break;
                }
                records.extend(batch.records);
            }
        }
        records
    }

    /// The event ids on a consumer stream, in stream order.
    pub async fn ids(&self, stream: &str) -> Vec<String> {
        self.records(stream)
            .await
            .iter()
            .map(|r| {
                proto::Envelope::decode(r.data.clone())
                    .expect("consumers receive envelopes")
                    .event_id
            })
            .collect()
    }

    /// Waits until `stream` holds every id in `expected` (and maybe more); returns all ids.
    pub async fn wait_for_ids(&self, stream: &str, expected: &[String]) -> Vec<String> {
        let want: HashSet<&String> = expected.iter().collect();
        eventually(
            Duration::from_secs(60),
            &format!("{stream} receives its events"),
            || async {
                let ids = self.ids(stream).await;
                let have: HashSet<&String> = ids.iter().collect();
                want.is_subset(&have).then_some(ids)
            },
        )
        .await
    }
}

/// The GES's shard count on moto, whatever the test asks for: moto's PutRecords is not safe for
/// concurrent calls on one shard (two records can get the same sequence number and one is lost),
/// and each GES shard has its own worker writing to the consumer streams. Tests of many GES
/// shards run on the embedded backend.
const MOTO_GES_SHARDS: u32 = 1;

pub fn moto_options() -> KinesisOptions {
    KinesisOptions {
        settle_timeout: Duration::from_secs(30),
        min_poll_gap: Duration::from_millis(20),
        idle_poll: Duration::from_millis(50),
        read_attempts: 6,
        ..KinesisOptions::default()
    }
}

/// An envelope as the control plane's publish writes it.
pub fn envelope(event: &str, id: &str) -> Bytes {
    Bytes::from(
        proto::Envelope {
            event_id: id.to_owned(),
            event_name: event.to_owned(),
            producer: "tests".to_owned(),
            content_type: "application/json".to_owned(),
            payload: format!("{{\"id\":\"{id}\"}}").into_bytes(),
            ..proto::Envelope::default()
        }
        .encode_to_vec(),
    )
}

/// `count` ids `<prefix>-<n>`.
pub fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

pub fn events<'a>(event: &'a str, ids: &[String]) -> Vec<(&'a str, String)> {
    ids.iter().map(|id| (event, id.clone())).collect()
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How often each id occurs.
pub fn counts(ids: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_insert(0) += 1;
    }
    counts
}

pub struct RunningEngine {
    pub status: StatusBoard,
    /// The shard runtime's view: held and refused shards.
    pub runtime: shard_runtime::Status,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), EngineError>>,
}

impl RunningEngine {
    /// Graceful shutdown: drains, checkpoints, releases.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("engine stops within its drain bound")
            .expect("engine task did not panic")
            .expect("engine ran");
    }

    /// Like `kill -9`: everything stops at its next await; nothing is drained or released.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Shards held, by lease key.
    pub fn shards(&self) -> Vec<String> {
        self.status.shards().into_iter().map(|s| s.key).collect()
    }
}

/// Puts to chosen streams fail (every entry throttled), entries with chosen partition keys
/// fail a number of times, and writes can be slowed; everything else passes through.
pub struct Faulty {
    inner: Arc<dyn StreamBackend>,
    state: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    throttled: HashSet<String>,
    key_failures: HashMap<String, u32>,
    delay: Option<Duration>,
    /// Partition keys of every put call, per stream.
    calls: HashMap<String, Vec<Vec<String>>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn StreamBackend>) -> Faulty {
        Faulty {
            inner,
            state: Mutex::new(FaultState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn throttle(&self, stream: &str, on: bool) {
        let mut state = self.lock();
        if on {
            state.throttled.insert(stream.to_owned());
        } else {
            state.throttled.remove(stream);
        }
    }

    pub fn fail_key(&self, key: &str, times: u32) {
        self.lock().key_failures.insert(key.to_owned(), times);
    }

    pub fn delay_puts(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    pub fn calls(&self, stream: &str) -> Vec<Vec<String>> {
        self.lock().calls.get(stream).cloned().unwrap_or_default()
    }
}

fn throttled() -> PutFailure {
    PutFailure {
        code: "ProvisionedThroughputExceededException".to_owned(),
        message: "Rate exceeded for shard (injected by the test).".to_owned(),
    }
}

#[async_trait]
impl StreamBackend for Faulty {
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
        self.inner.open_reader(stream, shard, from).await
    }

    async fn put_records(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> streams::Result<PutOutcome> {
        let (throttle, failing, delay) = {
            let mut state = self.lock();
            state
                .calls
                .entry(stream.to_owned())
                .or_default()
                .push(records.iter().map(|r| r.partition_key.clone()).collect());
            let throttle = state.throttled.contains(stream);
            let failing: Vec<bool> = records
                .iter()
                .map(|r| match state.key_failures.get_mut(&r.partition_key) {
                    Some(left) if *left > 0 => {
                        *left -= 1;
                        true
                    }
                    _ => false,
                })
                .collect();
            (throttle, failing, state.delay)
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if throttle {
            return Ok(records.iter().map(|_| Err(throttled())).collect());
        }
        let passing: Vec<PutRecord> = records
            .iter()
            .zip(&failing)
            .filter(|(_, fail)| !**fail)
            .map(|(r, _)| r.clone())
            .collect();
        let mut written = if passing.is_empty() {
            Vec::new()
        } else {
            self.inner.put_records(stream, &passing).await?
        }
        .into_iter();
        Ok(failing
            .iter()
            .map(|fail| {
                if *fail {
                    Err(throttled())
                } else {
                    written.next().unwrap_or_else(|| Err(throttled()))
                }
            })
            .collect())
    }
}
