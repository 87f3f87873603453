//! The persister: every event of the global event stream (GES), written to a partitioned lake.
//!
//! It reads the GES through [`streams::StreamBackend`] with its own cursors, shares the shards
//! among persister processes through [`shard_runtime::Coordinator`] leases (group `persister`) and
//! writes objects through one [`sink::ObjectSink`] (S3, local files, or Firehose).
//!
//! * [`partition`] is the pure core: envelope → `<event name>/yyyy-MM-dd:hh` by **event time**
//!   (UTC), or `_errors/<reason>` for records the lake cannot place.
//! * [`encode`] turns a batch into NDJSON (gzip) or Parquet bytes; `columnar` holds the Parquet
//!   layout, written and read back without Arrow.
//! * `state` keeps one shard's buffers and its checkpoint; its module docs state the invariant
//!   that makes every event land in exactly one object across crashes and restarts.
//! * `worker` runs one leased shard; [`Persister`] is the job the [`shard_runtime::Scheduler`]
//!   runs on every shard this process holds.
//!
//! Processes share the shards through the shard runtime: fair shares, hand-over when another
//! process joins, take-over when one dies, children of a reshard once their parents are read to
//! the end and written, and shards with an unreadable checkpoint refused.
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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use shard_runtime::{Assignment, Coordinator, Exit, Job, Progress, Scheduler};
use streams::StreamBackend;
use tokio::sync::Notify;

mod columnar;
pub mod config;
pub mod encode;
pub mod lake;
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

    /// Counts a running shard worker until the guard drops, however the worker ends: the
    /// process-wide budgets are shared among the shards actually running.
    fn count_shard(self: &Arc<Self>) -> ShardCount {
        self.shards.fetch_add(1, Ordering::AcqRel);
        ShardCount(self.clone())
    }

    fn record_written(&self, events: usize) {
        self.events_written
            .fetch_add(events as u64, Ordering::Relaxed);
        self.objects_written.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct ShardCount(Arc<Stats>);

impl Drop for ShardCount {
    fn drop(&mut self) {
        self.0.shards.fetch_sub(1, Ordering::AcqRel);
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
    shards: shard_runtime::Status,
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
            shards: shard_runtime::Status::default(),
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The name this process holds leases under.
    pub fn owner(&self) -> &str {
        &self.shared.settings.owner
    }

    /// Which shards this process holds or refuses, as the shard runtime sees them.
    pub fn shards(&self) -> shard_runtime::Status {
        self.shards.clone()
    }

    /// Persists until `shutdown` completes, then writes what is buffered (within the drain
    /// timeout), stores final checkpoints and gives the leases back. Dropping the future
    /// instead stops everything at once, as a crash would: the next run replays from the
    /// checkpoints and the lake still holds every event once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        tracing::info!(owner = %shared.settings.owner, stream = %shared.settings.stream, sink = shared.sink.kind(), "Persister started.");
        Scheduler::new(
            shared.settings.runtime.clone(),
            shared.backend.clone(),
            shared.coordinator.clone(),
            Arc::new(Persist(shared.clone())),
        )
        .reporting_to(self.shards)
        .run(shutdown)
        .await;
        tracing::info!(owner = %shared.settings.owner, "Persister stopped.");
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

/// The persister's work on one GES shard.
struct Persist(Arc<Shared>);

#[async_trait]
impl Job for Persist {
    fn group(&self) -> &str {
        GROUP
    }

    fn stream(&self) -> &str {
        &self.0.settings.stream
    }

    fn progress(&self, checkpoint: &str) -> Result<Progress, String> {
        let checkpoint = Checkpoint::parse(checkpoint).map_err(|e| e.to_string())?;
        Ok(Progress {
            children_may_start: checkpoint.end,
            finished: checkpoint.end,
        })
    }

    async fn run(self: Arc<Self>, assignment: Assignment) -> Exit {
        worker::run_shard(
            self.0.clone(),
            assignment.shard.id,
            assignment.checkpoint.as_deref(),
            assignment.lease,
            assignment.stop,
        )
        .await
    }
}
