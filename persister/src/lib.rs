//! The persister: every event of the global event stream (GES), written to a partitioned lake.
//!
//! It reads the GES through [`streams::StreamBackend`] with its own cursors, shares the shards
//! among persister processes through [`streams::Coordinator`] leases (group `persister`) and
//! writes objects through one [`sink::ObjectSink`] (S3, local files, or Firehose).
//!
//! * [`partition`] is the pure core: envelope → `<event name>/yyyy-MM-dd:hh` by **event time**
//!   (UTC), or `_errors/<reason>` for records the lake cannot place.
//! * [`encode`] turns a batch into NDJSON (gzip) or Parquet bytes.
//! * `state` keeps one shard's buffers and its checkpoint; its module docs state the invariant
//!   that makes every event land in exactly one object across crashes and restarts.
//! * `worker` runs one leased shard; [`Persister`] discovers shards, takes leases and runs
//!   workers until its shutdown future completes.
//!
//! Processes share the shards: each holds a member lease while it runs, takes free shards up
//! to its fair share and hands surplus shards over (written, checkpointed, released) when
//! another process joins; a crashed process's shards are taken over when their leases expire.
//! Children of a reshard start once their parents are read to the end and written.
//!
//! Every event is in exactly one object with the S3 and local-file sinks, whose puts replace.
//! Firehose names objects itself, so through it delivery is at least once.
//!
//! Buffers are per partition. A partition is written when it reaches
//! [`Config::max_object_bytes`], when its oldest record has waited [`Config::max_object_age_ms`],
//! when the process holds more than [`Config::max_open_partitions`] partitions or
//! [`Config::max_buffered_bytes`] bytes (oldest first), and at shutdown.
//!
//! The default gzip level is 1. In `benches/persister.rs` (617-byte envelopes with JSON
//! payloads, one thread, decode to written file), level 1 ran at 199–206 MB/s of raw input
//! per CPU-second, level 3 at ~150 and level 6 at ~95, for objects of 11.6 %, 8.2 % and 8.0 %
//! of the raw size: level 6 halves the throughput to save a few percent. Set `gzip_level` for
//! smaller objects. Parquet with Snappy ran at 188–233 MB/s for 13.6 % (runs on a shared
//! machine vary that much).
//!
//! Records are buffered as the bytes read from the stream and read in place
//! ([`proto::EnvelopeRef`]) when classified and again when encoded: no owned envelope is ever
//! built, which was most of the allocation work.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use chrono::Utc;
use streams::{Coordinator, CoordinatorError, Lease, StreamBackend, StreamError};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

pub mod config;
pub mod encode;
pub mod partition;
pub mod sink;
mod state;
mod worker;

pub use config::{Config, ConfigError, InitialPosition};
pub use encode::{Encoding, ObjectFormat, ParquetCompression};
pub use partition::{ErrorReason, PartitionKey, Target, partition};
pub use sink::{FirehoseSink, LocalFsSink, ObjectSink, S3Sink, SinkError};
pub use state::{CHECKPOINT_VERSION, Checkpoint, CutRecord};

use config::Settings;
use worker::Exit;

/// The lease group persister processes share shards in.
pub const GROUP: &str = "persister";

#[derive(Debug, thiserror::Error)]
pub enum PersisterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("sink {sink} cannot store {format:?} objects; use plain `ndjson` with Firehose")]
    UnsupportedFormat {
        sink: &'static str,
        format: ObjectFormat,
    },
}

/// Live figures of one persister process, beside the exported metrics. Tests and the
/// embedded server's status page read them.
#[derive(Debug, Default)]
pub struct Stats {
    open_partitions: AtomicUsize,
    peak_open_partitions: AtomicUsize,
    held_bytes: AtomicI64,
    peak_held_bytes: AtomicI64,
    shards: AtomicUsize,
    events_written: AtomicU64,
    objects_written: AtomicU64,
    released: Notify,
}

impl Stats {
    pub fn open_partitions(&self) -> usize {
        self.open_partitions.load(Ordering::Relaxed)
    }

    /// The most partitions open at once since the process started.
    pub fn peak_open_partitions(&self) -> usize {
        self.peak_open_partitions.load(Ordering::Relaxed)
    }

    /// The most raw bytes buffered at once (open partitions and objects being written).
    pub fn peak_held_bytes(&self) -> u64 {
        self.peak_held_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Shards this process is working on.
    pub fn shards(&self) -> usize {
        self.shards.load(Ordering::Relaxed)
    }

    /// Events in objects written by this process (replays included).
    pub fn events_written(&self) -> u64 {
        self.events_written.load(Ordering::Relaxed)
    }

    pub fn objects_written(&self) -> u64 {
        self.objects_written.load(Ordering::Relaxed)
    }

    /// One shard's share of the process-wide partition cap.
    fn partition_share(&self, cap: usize) -> usize {
        (cap / self.shards().max(1)).max(1)
    }

    fn byte_share(&self, cap: usize) -> usize {
        (cap / self.shards().max(1)).max(1)
    }

    fn try_reserve_partition(&self, cap: usize) -> bool {
        let reserved =
            self.open_partitions
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                    (open < cap).then_some(open + 1)
                });
        match reserved {
            Ok(before) => {
                self.peak_open_partitions
                    .fetch_max(before + 1, Ordering::Relaxed);
                metrics::gauge!("fanner_persister_open_partitions").set((before + 1) as f64);
                true
            }
            Err(_) => false,
        }
    }

    fn release_partitions(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.open_partitions.fetch_sub(n, Ordering::AcqRel);
        metrics::gauge!("fanner_persister_open_partitions").set(before.saturating_sub(n) as f64);
        self.released.notify_waiters();
    }

    fn partition_released(&self) -> impl Future<Output = ()> + '_ {
        self.released.notified()
    }

    fn add_held_bytes(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let now = self.held_bytes.fetch_add(delta, Ordering::AcqRel) + delta;
        self.peak_held_bytes.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!("fanner_persister_buffered_bytes").set(now as f64);
    }

    fn record_written(&self, events: usize) {
        self.events_written
            .fetch_add(events as u64, Ordering::Relaxed);
        self.objects_written.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every shard worker of a process shares.
pub(crate) struct Shared {
    pub settings: Settings,
    pub backend: Arc<dyn StreamBackend>,
    pub coordinator: Arc<dyn Coordinator>,
    pub sink: Arc<dyn ObjectSink>,
    pub stats: Arc<Stats>,
}

/// A configured persister process.
pub struct Persister {
    shared: Arc<Shared>,
}

impl Persister {
    pub fn new(
        config: &Config,
        backend: Arc<dyn StreamBackend>,
        coordinator: Arc<dyn Coordinator>,
        sink: Arc<dyn ObjectSink>,
    ) -> Result<Persister, PersisterError> {
        let settings = config.validate()?;
        if !sink.accepts(settings.encoding.format) {
            return Err(PersisterError::UnsupportedFormat {
                sink: sink.kind(),
                format: settings.encoding.format,
            });
        }
        Ok(Persister {
            shared: Arc::new(Shared {
                settings,
                backend,
                coordinator,
                sink,
                stats: Arc::new(Stats::default()),
            }),
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The name this process holds leases under.
    pub fn owner(&self) -> &str {
        &self.shared.settings.owner
    }

    /// Persists until `shutdown` completes, then writes what is buffered (within the drain
    /// timeout), stores final checkpoints and gives the leases back. Dropping the future
    /// instead stops everything at once, as a crash would: the next run replays from the
    /// checkpoints and the lake still holds every event once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let mut workers: JoinSet<(String, Exit)> = JoinSet::new();
        let mut running: HashMap<String, watch::Sender<bool>> = HashMap::new();
        let mut discovery = tokio::time::interval(shared.settings.discovery_interval);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        tracing::info!(owner = %shared.settings.owner, stream = %shared.settings.stream, sink = shared.sink.kind(), "Persister started.");
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = discovery.tick() => {
                    if let Err(e) = discover(&shared, &mut workers, &mut running).await {
                        tracing::warn!(error = %e, "Looking for shards failed.");
                        metrics::counter!("fanner_persister_errors_total", "reason" => "discovery").increment(1);
                    }
                }
                Some(joined) = workers.join_next(), if !workers.is_empty() => {
                    on_exit(&shared, &mut running, joined);
                }
            }
        }
        tracing::info!("Persister stopping; writing what is buffered.");
        for stop in running.values() {
            stop.send_replace(true);
        }
        let drain = async {
            while let Some(joined) = workers.join_next().await {
                on_exit(&shared, &mut running, joined);
            }
        };
        if tokio::time::timeout(shared.settings.drain_timeout, drain)
            .await
            .is_err()
        {
            let shards: Vec<&String> = running.keys().collect();
            tracing::warn!(
                ?shards,
                "Shutdown timed out; the next owner replays what was not written."
            );
        }
        let member = Lease {
            group: GROUP.to_owned(),
            key: member_key(&shared.settings.owner),
            owner: shared.settings.owner.clone(),
            token: 0,
            expires_at: Utc::now(),
            checkpoint: None,
        };
        if let Ok(Some(held)) = shared.coordinator.leases(GROUP).await.map(|all| {
            all.into_iter()
                .find(|l| l.key == member.key && l.owner == member.owner)
        }) {
            shared.coordinator.release(&held).await.ok();
        }
    }
}

/// Runs a persister until `shutdown` completes: the entry point for `fanner serve` (embedded)
/// and for a standalone persister process.
pub async fn run(
    config: &Config,
    backend: Arc<dyn StreamBackend>,
    coordinator: Arc<dyn Coordinator>,
    sink: Arc<dyn ObjectSink>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PersisterError> {
    Persister::new(config, backend, coordinator, sink)?
        .run(shutdown)
        .await;
    Ok(())
}

fn on_exit(
    shared: &Shared,
    running: &mut HashMap<String, watch::Sender<bool>>,
    joined: Result<(String, Exit), tokio::task::JoinError>,
) {
    let (shard, exit) = match joined {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "A shard worker panicked.");
            return;
        }
    };
    running.remove(&shard);
    shared.stats.shards.store(running.len(), Ordering::Relaxed);
    match exit {
        Exit::Released => tracing::info!(shard, "Shard released."),
        Exit::Finished => tracing::info!(shard, "Shard finished."),
        Exit::LeaseLost => tracing::warn!(shard, "Lease lost to another process."),
        Exit::Failed(e) => {
            metrics::counter!("fanner_persister_errors_total", "reason" => "worker").increment(1);
            tracing::error!(shard, error = %e, "Shard worker failed; it restarts from its checkpoint.");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DiscoveryError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
}

/// Each process holds a lease on this key while it runs, so the others know to share shards
/// with it even before it holds one.
fn member_key(owner: &str) -> String {
    format!("{MEMBERS}/{owner}")
}

const MEMBERS: &str = "_members";

fn lease_key(stream: &str, shard: &str) -> String {
    format!("{stream}/{shard}")
}

fn finished(checkpoint: Option<&str>) -> bool {
    checkpoint
        .and_then(|c| serde_json::from_str::<Checkpoint>(c).ok())
        .is_some_and(|c| c.end)
}

/// Announces this process, takes free shards up to its fair share and starts their workers,
/// and hands shards back when it holds more than its share (another process joined). Children
/// of a split or merge wait until their parents are fully written, so event order per key
/// holds.
async fn discover(
    shared: &Arc<Shared>,
    workers: &mut JoinSet<(String, Exit)>,
    running: &mut HashMap<String, watch::Sender<bool>>,
) -> Result<(), DiscoveryError> {
    let settings = &shared.settings;
    shared
        .coordinator
        .try_acquire(
            GROUP,
            &member_key(&settings.owner),
            &settings.owner,
            settings.lease_ttl,
        )
        .await?;
    let shards = shared.backend.list_shards(&settings.stream).await?;
    let leases: HashMap<String, Lease> = shared
        .coordinator
        .leases(GROUP)
        .await?
        .into_iter()
        .map(|l| (l.key.clone(), l))
        .collect();
    let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    let is_finished = |shard: &str| {
        leases
            .get(&lease_key(&settings.stream, shard))
            .is_some_and(|l| finished(l.checkpoint.as_deref()))
    };
    let eligible: Vec<&streams::Shard> = shards
        .iter()
        .filter(|s| !is_finished(&s.id))
        .filter(|s| {
            s.parents
                .iter()
                .all(|p| !listed.contains(p.as_str()) || is_finished(p))
        })
        .collect();
    let now = Utc::now();
    let members: HashSet<&str> = leases
        .values()
        .filter(|l| l.key.starts_with(MEMBERS) && l.expires_at > now)
        .map(|l| l.owner.as_str())
        .chain([settings.owner.as_str()])
        .collect();
    let fair = eligible.len().div_ceil(members.len());
    let stopping = running.values().filter(|s| *s.borrow()).count();
    let active = running.len() - stopping;
    if active > fair {
        // Hand the surplus back: those workers write what they hold, checkpoint and release,
        // and the newcomer picks the shards up on its next look.
        let surplus: Vec<String> = running
            .iter()
            .filter(|(_, stop)| !*stop.borrow())
            .map(|(shard, _)| shard.clone())
            .take(active - fair)
            .collect();
        for shard in surplus {
            tracing::info!(
                shard,
                members = members.len(),
                "Handing a shard over to share the load."
            );
            if let Some(stop) = running.get(&shard) {
                stop.send_replace(true);
            }
        }
        return Ok(());
    }
    for shard in eligible {
        if running.len() >= fair {
            break;
        }
        if running.contains_key(&shard.id) {
            continue;
        }
        let key = lease_key(&settings.stream, &shard.id);
        let Some(lease) = shared
            .coordinator
            .try_acquire(GROUP, &key, &settings.owner, settings.lease_ttl)
            .await?
        else {
            continue;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        running.insert(shard.id.clone(), stop_tx);
        shared.stats.shards.store(running.len(), Ordering::Relaxed);
        let shard_id = shard.id.clone();
        let worker = worker::run_shard(shared.clone(), shard_id.clone(), lease, stop_rx);
        workers.spawn(async move { (shard_id, worker.await) });
    }
    Ok(())
}
