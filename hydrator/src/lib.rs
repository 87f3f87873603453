//! History on demand: a subscription's events from the lake and the global event stream (GES),
//! delivered into its stream, then handed to the fan-out engine's live delivery with no gap and
//! no duplicate.
//!
//! The hydrator is a job of the shard runtime (lease group [`GROUP`]): per GES shard it works on
//! every unfinished hydration and replay the control plane lists ([`HistoryLink`]). On one shard,
//! by **sequence number**, never by time:
//!
//! 1. The persister's checkpoint gives `W`: every record at or before it is in the lake, and so
//!    is every record of the cuts it lists as written beyond `W`.
//! 2. A hydration (not a replay) asks for a hand-over after `H`, the highest of those positions.
//!    The engine answers with `F ≥ H`, at or after its own last routed record: it delivers to
//!    the subscription only records after `F` ([`fanner::router::Slot::live_at`]).
//! 3. The lake's objects at or before `W` and the written cuts are read (partitions outside the
//!    window skipped by name), then the GES after `W` up to `F` (a replay: up to the end),
//!    skipping records the lake phase delivered.
//!
//! So every record up to `F` comes from history exactly once and every record after it from live
//! delivery. Progress is checkpointed in the shard's lease after every batch written, so a crash
//! repeats at most one batch. If `W` is older than what the GES still holds, or an object the
//! persister recorded is missing, the hydration fails with that reason; nothing is skipped.

mod deliver;
mod select;
mod shard;

pub use select::{Selection, select};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use api::{Hydration, HydrationProgress, HydrationTask};
use async_trait::async_trait;
use fanner::link::{LinkError, RouteSource};
use fanner::routes::LiveRoutes;
use persister::ObjectSink;
use shard_runtime::{Assignment, Coordinator, Exit, Job, Progress, Scheduler};
use streams::StreamBackend;

/// The lease group hydrator processes share the GES's shards in.
pub const GROUP: &str = "hydration";

/// What the hydrator needs from the control plane besides the route table.
#[async_trait]
pub trait HistoryLink: Send + Sync + 'static {
    /// Hydrations and replays with work left.
    async fn unfinished(&self) -> Result<Vec<HydrationTask>, LinkError>;

    /// Progress on one shard (totals), a hand-over request, or its end.
    async fn report(&self, id: &str, progress: &HydrationProgress) -> Result<Hydration, LinkError>;
}

/// The control plane over its HTTP API; the client needs an admin token.
#[async_trait]
impl HistoryLink for fanner::Http {
    async fn unfinished(&self) -> Result<Vec<HydrationTask>, LinkError> {
        self.client()
            .unfinished_hydrations()
            .await
            .map_err(fanner::link::from_client)
    }

    async fn report(&self, id: &str, progress: &HydrationProgress) -> Result<Hydration, LinkError> {
        self.client()
            .report_hydration(id, progress)
            .await
            .map_err(fanner::link::from_client)
    }
}

/// Hydrator settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The global event stream.
    pub ges: String,
    /// The lake's base prefix, as the persister writes it.
    pub base_prefix: String,
    pub runtime: shard_runtime::Settings,
    /// How often the list of unfinished hydrations is looked at.
    pub poll_interval: Duration,
    /// GES records per read.
    pub read_batch: usize,
    /// Lake objects fetched and decoded ahead of delivery.
    pub objects_in_flight: usize,
    /// The most records per second one shard's hydration writes into a stream (`None`: as fast
    /// as it takes them). A Kinesis shard takes 1,000 records/s.
    pub max_records_per_second: Option<u32>,
    /// The most bytes per second (a Kinesis shard takes 1 MiB/s).
    pub max_bytes_per_second: Option<u32>,
}

impl Config {
    pub fn new(ges: impl Into<String>, owner: impl Into<String>) -> Config {
        Config {
            ges: ges.into(),
            base_prefix: "events".to_owned(),
            runtime: shard_runtime::Settings::new(owner),
            poll_interval: Duration::from_secs(1),
            read_batch: 1000,
            objects_in_flight: 4,
            max_records_per_second: None,
            max_bytes_per_second: None,
        }
    }
}

/// What every shard job of a process shares.
pub(crate) struct Shared {
    pub config: Config,
    pub backend: Arc<dyn StreamBackend>,
    pub coordinator: Arc<dyn Coordinator>,
    pub sink: Arc<dyn ObjectSink>,
    pub routes: Arc<LiveRoutes>,
    pub link: Arc<dyn HistoryLink>,
}

/// The hydrator of one process.
pub struct Hydrator {
    config: Config,
    backend: Arc<dyn StreamBackend>,
    coordinator: Arc<dyn Coordinator>,
    sink: Arc<dyn ObjectSink>,
    routes: Arc<dyn RouteSource>,
    link: Arc<dyn HistoryLink>,
    shards: shard_runtime::Status,
}

impl Hydrator {
    pub fn new(
        config: Config,
        backend: Arc<dyn StreamBackend>,
        coordinator: Arc<dyn Coordinator>,
        sink: Arc<dyn ObjectSink>,
        routes: Arc<dyn RouteSource>,
        link: Arc<dyn HistoryLink>,
    ) -> Hydrator {
        Hydrator {
            config,
            backend,
            coordinator,
            sink,
            routes,
            link,
            shards: shard_runtime::Status::default(),
        }
    }

    /// Which shards this process holds or refuses, as the shard runtime sees them.
    pub fn shards(&self) -> shard_runtime::Status {
        self.shards.clone()
    }

    /// Hydrates until `shutdown` completes; a batch being written finishes and is checkpointed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let routes = tokio::select! {
            routes = LiveRoutes::start(self.routes.clone(), fanner::StatusBoard::default()) => routes,
            () = &mut shutdown => return,
        };
        let follow = tokio::spawn(routes.clone().follow());
        let shared = Arc::new(Shared {
            config: self.config,
            backend: self.backend.clone(),
            coordinator: self.coordinator.clone(),
            sink: self.sink,
            routes,
            link: self.link,
        });
        tracing::info!(owner = %shared.config.runtime.owner, ges = %shared.config.ges, "Hydrator started.");
        Scheduler::new(
            shared.config.runtime.clone(),
            self.backend,
            self.coordinator,
            Arc::new(Hydrate(shared.clone())),
        )
        .reporting_to(self.shards)
        .run(shutdown)
        .await;
        follow.abort();
        tracing::info!(owner = %shared.config.runtime.owner, "Hydrator stopped.");
    }
}

/// The hydrator's work on one GES shard.
struct Hydrate(Arc<Shared>);

#[async_trait]
impl Job for Hydrate {
    fn group(&self) -> &str {
        GROUP
    }

    fn stream(&self) -> &str {
        &self.0.config.ges
    }

    fn progress(&self, checkpoint: &str) -> Result<Progress, String> {
        shard::Checkpoint::parse(checkpoint)?;
        // History has no order across shards to keep, and a shard may get a new hydration at
        // any time: none is ever finished for good.
        Ok(Progress {
            children_may_start: true,
            finished: false,
        })
    }

    async fn run(self: Arc<Self>, assignment: Assignment) -> Exit {
        shard::run(self.0.clone(), assignment).await
    }
}
