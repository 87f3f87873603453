//! The process-wide part: the route table follower, the status reporter, and the fan-out job
//! the shard runtime runs on every GES shard this process holds.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use shard_runtime::{Assignment, Coordinator, Exit, Job, Progress, Scheduler};
use streams::StreamBackend;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::checkpoint::Checkpoint;
use crate::config::{EngineConfig, LEASE_GROUP};
use crate::link::{ControlPlaneLink, RouteSource};
use crate::routes::LiveRoutes;
use crate::shard::{Shared, Worker};
use crate::status::{self, StatusBoard};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine configuration: {0}")]
    Config(String),
}

/// The fan-out engine of one process. Build it, keep a [`StatusBoard`] if you want one, then
/// [`run`](Engine::run) it until shutdown.
pub struct Engine {
    config: EngineConfig,
    backend: Arc<dyn StreamBackend>,
    coordinator: Arc<dyn Coordinator>,
    routes: Arc<dyn RouteSource>,
    link: Arc<dyn ControlPlaneLink>,
    status: StatusBoard,
    shards: shard_runtime::Status,
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        backend: Arc<dyn StreamBackend>,
        coordinator: Arc<dyn Coordinator>,
        routes: Arc<dyn RouteSource>,
        link: Arc<dyn ControlPlaneLink>,
    ) -> Engine {
        Engine {
            config,
            backend,
            coordinator,
            routes,
            link,
            status: StatusBoard::default(),
            shards: shard_runtime::Status::default(),
        }
    }

    /// Live status of the shards this process holds.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
    }

    /// Which shards this process holds or refuses, as the shard runtime sees them.
    pub fn shards(&self) -> shard_runtime::Status {
        self.shards.clone()
    }

    /// Delivers until `shutdown` completes, then drains: in-flight writes finish (bounded by
    /// `drain_timeout`), checkpoints are written and leases released. Dropping the returned
    /// future instead stops everything at once, like a crash: nothing acknowledged is lost and
    /// the next holder of each shard resumes from its last checkpoint.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), EngineError> {
        self.config.validate().map_err(EngineError::Config)?;
        let mut shutdown = std::pin::pin!(shutdown);
        let routes = tokio::select! {
            routes = LiveRoutes::start(self.routes.clone(), self.status.clone()) => routes,
            () = &mut shutdown => return Ok(()),
        };
        // Dropping the set aborts these with the engine.
        let mut background = JoinSet::new();
        background.spawn(routes.clone().follow());
        let (reports, receiver) = mpsc::unbounded_channel();
        background.spawn(status::report(self.link.clone(), receiver));
        if let Err(error) = self
            .backend
            .create_stream(&crate::dead_letter::stream_spec(&self.config))
            .await
        {
            tracing::warn!(%error, stream = %self.config.dead_letters(), "Cannot create the dead-letter stream yet; dead letters wait for it.");
        }
        let job = Arc::new(FanOut(Arc::new(Shared {
            config: self.config.clone(),
            backend: self.backend.clone(),
            routes,
            reports,
            status: self.status.clone(),
            link: self.link.clone(),
        })));
        tracing::info!(owner = %self.config.owner, ges = %self.config.ges, "Fan-out engine started.");
        Scheduler::new(
            self.config.runtime_settings(),
            self.backend.clone(),
            self.coordinator.clone(),
            job,
        )
        .reporting_to(self.shards.clone())
        .run(shutdown)
        .await;
        tracing::info!(owner = %self.config.owner, "Fan-out engine stopped.");
        Ok(())
    }
}

/// The engine's work on one GES shard.
struct FanOut(Arc<Shared>);

#[async_trait]
impl Job for FanOut {
    fn group(&self) -> &str {
        LEASE_GROUP
    }

    fn stream(&self) -> &str {
        &self.0.config.ges
    }

    fn progress(&self, checkpoint: &str) -> Result<Progress, String> {
        let checkpoint = Checkpoint::parse(checkpoint)?;
        Ok(Progress {
            children_may_start: checkpoint.main_done,
            finished: checkpoint.finished(),
        })
    }

    async fn run(self: Arc<Self>, assignment: Assignment) -> Exit {
        let Assignment {
            shard,
            checkpoint,
            lease,
            stop,
        } = assignment;
        match Worker::new(self.0.clone(), shard.id, lease, checkpoint.as_deref()) {
            Ok(worker) => worker.run(stop).await,
            Err(reason) => Exit::Failed(reason),
        }
    }
}
