//! Shared by the end-to-end benchmarks: a control plane in-process, a GES and one consumer
//! stream on a real backend, an engine, and a tail of the consumer stream that times each event
//! from the moment it was handed to the GES to the moment the consumer read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api::{Classification, CreateEvent, CreateStream, CreateSubscription, CreateToken, Role};
use bytes::Bytes;
use cli::link::InProcess;
use control_plane::auth::{Caller, Ctx};
use control_plane::{Clock, ControlPlane, Settings, Store};
use fanner::EngineConfig;
use prost::Message;
use shard_runtime::Coordinator;
use streams::{PutRecord, RetryPolicy, StartPosition, StreamBackend, StreamSpec};
use tokio::sync::{Mutex, oneshot};

pub struct Setup {
    pub backend: Arc<dyn StreamBackend>,
    pub ges: String,
    pub consumer: String,
    stop: Option<oneshot::Sender<()>>,
    /// Holds the engine back until [`Setup::resume`].
    go: Option<oneshot::Sender<()>>,
    engine: tokio::task::JoinHandle<Result<(), fanner::EngineError>>,
    _dir: tempfile::TempDir,
}

fn ctx(principal: &str, role: Role) -> Ctx {
    Ctx {
        caller: Caller {
            principal: principal.to_owned(),
            role,
        },
        request_id: "bench".to_owned(),
    }
}

impl Setup {
    pub async fn start(backend: Arc<dyn StreamBackend>, shards: u32, idle_wait: Duration) -> Setup {
        let mut setup = Setup::start_paused(backend, shards, idle_wait).await;
        setup.resume();
        setup
    }

    /// Everything set up, the engine not started until [`Setup::resume`].
    pub async fn start_paused(
        backend: Arc<dyn StreamBackend>,
        shards: u32,
        idle_wait: Duration,
    ) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let ges = testkit::unique_name("ges");
        backend
            .create_stream(&StreamSpec {
                name: ges.clone(),
                shard_count: shards,
                retention_hours: 24,
                tags: Default::default(),
            })
            .await
            .expect("GES");
        let store = Store::open(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("fanner.db").display()
        ))
        .await
        .expect("store");
        let settings = Settings {
            backing_prefix: format!("{}-", testkit::unique_name("c")),
            ges: ges.clone(),
        };
        let cp = ControlPlane::new(store.clone(), backend.clone(), settings, Clock::default())
            .await
            .expect("control plane");
        cp.bootstrap().await.expect("bootstrap");
        let admin = ctx("admin", Role::Admin);
        cp.create_token(
            &admin,
            CreateToken {
                principal: "growth".to_owned(),
                role: Some(Role::Member),
            },
        )
        .await
        .expect("team");
        let growth = ctx("growth", Role::Member);
        for name in ["signup", "login"] {
            cp.create_event(
                &growth,
                CreateEvent {
                    name: name.to_owned(),
                    classification: Classification::Internal,
                    description: String::new(),
                    owner: None,
                },
            )
            .await
            .expect("event");
        }
        cp.create_stream(
            &growth,
            CreateStream {
                name: "growth-own".to_owned(),
                shard_count: Some(shards),
                retention_hours: None,
                tags: Default::default(),
            },
        )
        .await
        .expect("stream");
        cp.create_subscription(
            &growth,
            CreateSubscription {
                stream: "growth-own".to_owned(),
                events: vec!["signup".to_owned()],
                ..Default::default()
            },
        )
        .await
        .expect("subscription");
        let consumer = cp.backing_name("growth-own");

        let mut config = EngineConfig::new(&ges);
        config.idle_wait = idle_wait;
        let link = Arc::new(InProcess::new(cp.clone()));
        let coordinator: Arc<dyn Coordinator> = Arc::new(store);
        let (stop, stopped) = oneshot::channel::<()>();
        let (go, resumed) = oneshot::channel::<()>();
        let engine_backend = backend.clone();
        let engine = tokio::spawn(async move {
            if resumed.await.is_err() {
                return Ok(());
            }
            fanner::run(
                config,
                engine_backend,
                coordinator,
                link.clone(),
                link,
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        });
        Setup {
            backend,
            ges,
            consumer,
            stop: Some(stop),
            go: Some(go),
            engine,
            _dir: dir,
        }
    }

    pub fn resume(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }

    /// `count` envelopes; every other one is routed (the other event has no subscriber).
    /// Each routed one carries its send time, set by [`Setup::publish`].
    pub async fn publish(&self, first: usize, count: usize) {
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let records: Vec<PutRecord> = (first..first + count)
            .map(|n| {
                let envelope = proto::Envelope {
                    event_id: format!("{n:012}"),
                    event_name: if n % 2 == 0 { "signup" } else { "login" }.to_owned(),
                    producer: "bench".to_owned(),
                    attributes: [("sent_at_us".to_owned(), sent_at.to_string())].into(),
                    content_type: "application/octet-stream".to_owned(),
                    payload: vec![b'x'; 512],
                    ..proto::Envelope::default()
                };
                PutRecord {
                    partition_key: format!("user-{}", n % 1000),
                    data: Bytes::from(envelope.encode_to_vec()),
                }
            })
            .collect();
        let outcome = streams::put_all(
            self.backend.as_ref(),
            &self.ges,
            &records,
            &RetryPolicy::default(),
        )
        .await
        .expect("published");
        assert!(outcome.all_written());
    }

    /// Tails every shard of the consumer stream, recording each event's latency.
    pub async fn tail(&self) -> Arc<Tail> {
        let tail = Arc::new(Tail {
            received: AtomicUsize::new(0),
            latencies_us: Mutex::new(Vec::new()),
        });
        for shard in self
            .backend
            .list_shards(&self.consumer)
            .await
            .expect("shards")
        {
            let mut reader = self
                .backend
                .open_reader(&self.consumer, &shard.id, StartPosition::TrimHorizon)
                .await
                .expect("reader");
            let tail = tail.clone();
            tokio::spawn(async move {
                loop {
                    let batch = match reader.next_batch(10_000).await {
                        Ok(batch) => batch,
                        Err(error) => {
                            eprintln!("the benchmark's consumer stopped reading: {error}");
                            return;
                        }
                    };
                    if batch.records.is_empty() {
                        reader.wait_for_records(Duration::from_millis(100)).await;
                        continue;
                    }
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64);
                    let mut latencies = tail.latencies_us.lock().await;
                    for record in &batch.records {
                        let sent = proto::Envelope::decode(record.data.clone())
                            .ok()
                            .and_then(|e| e.attributes.get("sent_at_us")?.parse::<u64>().ok())
                            .unwrap_or(now);
                        latencies.push(now.saturating_sub(sent));
                    }
                    tail.received
                        .fetch_add(batch.records.len(), Ordering::Relaxed);
                }
            });
        }
        tail
    }

    /// Records on the consumer stream, read in full.
    pub async fn count_consumer(&self) -> usize {
        let mut count = 0;
        for shard in self
            .backend
            .list_shards(&self.consumer)
            .await
            .unwrap_or_default()
        {
            let Ok(mut reader) = self
                .backend
                .open_reader(&self.consumer, &shard.id, StartPosition::TrimHorizon)
                .await
            else {
                continue;
            };
            while let Ok(batch) = reader.next_batch(10_000).await {
                if batch.records.is_empty() {
                    break;
                }
                count += batch.records.len();
            }
        }
        count
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.engine).await;
    }
}

pub struct Tail {
    pub received: AtomicUsize,
    pub latencies_us: Mutex<Vec<u64>>,
}

impl Tail {
    /// Waits until `count` events arrived (or `timeout` passed); returns how long it took.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        while self.received.load(Ordering::Relaxed) < count && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        started.elapsed()
    }

    pub async fn percentiles(&self) -> (f64, f64, f64) {
        let mut latencies = self.latencies_us.lock().await.clone();
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
                .map_or(f64::NAN, |&us| us as f64 / 1e3)
        };
        (at(0.5), at(0.99), at(1.0))
    }
}
