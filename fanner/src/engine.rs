//! The process-wide part: the route table follower, the status reporter, and the lease
//! scanner that starts and stops one worker per GES shard.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use streams::{Coordinator, Lease, Shard, StreamBackend};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::checkpoint::Checkpoint;
use crate::config::{EngineConfig, LEASE_GROUP};
use crate::link::{ControlPlaneLink, RouteSource};
use crate::routes::LiveRoutes;
use crate::shard::{self, Exit, Shared, Worker};
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
}

/// A worker's handle: tells it to drain, and whether it was told.
struct Running {
    stop: watch::Sender<bool>,
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
        }
    }

    /// Live status of the shards this process holds.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
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
            .create_stream(&shard::dead_letter_spec(&self.config))
            .await
        {
            tracing::warn!(%error, stream = %self.config.dead_letters(), "Cannot create the dead-letter stream yet; dead letters wait for it.");
        }
        let shared = Arc::new(Shared {
            config: self.config.clone(),
            backend: self.backend.clone(),
            coordinator: self.coordinator.clone(),
            routes,
            reports,
            status: self.status.clone(),
        });
        let mut scanner = Scanner {
            shared,
            workers: JoinSet::new(),
            running: HashMap::new(),
            finished: HashSet::new(),
            member: None,
        };
        tracing::info!(owner = %self.config.owner, ges = %self.config.ges, "Fan-out engine started.");
        let mut tick = tokio::time::interval(self.config.scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => scanner.scan().await,
                Some(done) = scanner.workers.join_next(), if !scanner.workers.is_empty() => {
                    scanner.on_exit(done);
                }
            }
        }
        scanner.stop().await;
        tracing::info!(owner = %self.config.owner, "Fan-out engine stopped.");
        Ok(())
    }
}

struct Scanner {
    shared: Arc<Shared>,
    workers: JoinSet<(String, Exit)>,
    running: HashMap<String, Running>,
    /// Shards read to their end and delivered everywhere.
    finished: HashSet<String>,
    /// This process's membership lease: other processes count it to share shards fairly.
    member: Option<Lease>,
}

impl Scanner {
    fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    fn member_key(&self) -> String {
        format!("{}#engine/{}", self.config().ges, self.config().owner)
    }

    async fn heartbeat(&mut self) {
        let coordinator = self.shared.coordinator.clone();
        let ttl = self.config().lease_ttl;
        let renewed = match &self.member {
            Some(lease) => coordinator.renew(lease, ttl).await.ok(),
            None => None,
        };
        self.member = match renewed {
            Some(lease) => Some(lease),
            None => coordinator
                .try_acquire(LEASE_GROUP, &self.member_key(), &self.config().owner, ttl)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "Cannot record this engine's membership.");
                    None
                }),
        };
    }

    /// Takes free shards (up to a fair share), in parent-before-child order, and gives back
    /// shards beyond the fair share so newly started processes get some.
    async fn scan(&mut self) {
        self.heartbeat().await;
        let ges = self.config().ges.clone();
        let shards = match self.shared.backend.list_shards(&ges).await {
            Ok(shards) => shards,
            Err(error) => {
                tracing::warn!(%error, %ges, "Cannot list the GES's shards.");
                return;
            }
        };
        let leases: HashMap<String, Lease> = match self.shared.coordinator.leases(LEASE_GROUP).await
        {
            Ok(leases) => leases.into_iter().map(|l| (l.key.clone(), l)).collect(),
            Err(error) => {
                tracing::warn!(%error, "Cannot read shard leases.");
                return;
            }
        };
        let now = Utc::now();
        let member_prefix = format!("{ges}#engine/");
        let members = leases
            .values()
            .filter(|l| l.key.starts_with(&member_prefix) && l.expires_at > now)
            .count()
            .max(1);
        let done = |lease: Option<&Lease>, whole: bool| {
            lease
                .and_then(|l| l.checkpoint.as_deref())
                .and_then(|c| Checkpoint::parse(c).ok())
                .is_some_and(|c| if whole { c.finished() } else { c.main_done })
        };
        let present: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let live: Vec<&Shard> = shards
            .iter()
            .filter(|s| {
                let key = self.config().lease_key(&s.id);
                !self.finished.contains(&key) && !done(leases.get(&key), true)
            })
            .collect();
        let share = live
            .len()
            .div_ceil(members)
            .min(self.config().max_shards)
            .max(1);

        let stopping = self.running.values().filter(|r| *r.stop.borrow()).count();
        let mut surplus = (self.running.len() - stopping).saturating_sub(share);
        if surplus > 0 {
            for (key, running) in &self.running {
                if surplus == 0 {
                    break;
                }
                if !*running.stop.borrow() {
                    tracing::info!(shard = %key, members, share, "Handing a shard over to share the load.");
                    let _ = running.stop.send(true);
                    surplus -= 1;
                }
            }
            return;
        }

        for shard in live {
            if self.running.len() - stopping >= share {
                break;
            }
            let key = self.config().lease_key(&shard.id);
            if self.running.contains_key(&key) {
                continue;
            }
            if let Some(lease) = leases.get(&key)
                && lease.owner != self.config().owner
                && lease.expires_at > now
            {
                continue;
            }
            let parents_done = shard.parents.iter().all(|parent| {
                !present.contains(parent.as_str())
                    || done(leases.get(&self.config().lease_key(parent)), false)
            });
            if !parents_done {
                continue;
            }
            let acquired = self
                .shared
                .coordinator
                .try_acquire(
                    LEASE_GROUP,
                    &key,
                    &self.config().owner,
                    self.config().lease_ttl,
                )
                .await;
            match acquired {
                Ok(Some(lease)) => {
                    if done(Some(&lease), true) {
                        self.finished.insert(key);
                        let _ = self.shared.coordinator.release(&lease).await;
                        continue;
                    }
                    self.start(shard.id.clone(), key, lease);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(shard = %key, %error, "Cannot acquire the shard's lease.")
                }
            }
        }
        metrics::gauge!("fanner_engine_leases_held").set(self.running.len() as f64);
    }

    fn start(&mut self, shard: String, key: String, lease: Lease) {
        tracing::info!(shard = %key, token = lease.token, "Acquired shard lease.");
        let (stop, stopped) = watch::channel(false);
        let worker = Worker::new(self.shared.clone(), shard, lease);
        let task_key = key.clone();
        self.workers
            .spawn(async move { (task_key, worker.run(stopped).await) });
        self.running.insert(key, Running { stop });
    }

    fn on_exit(&mut self, done: Result<(String, Exit), tokio::task::JoinError>) {
        match done {
            Ok((key, exit)) => {
                self.running.remove(&key);
                if exit == Exit::Finished {
                    self.finished.insert(key);
                }
            }
            Err(error) => {
                // A worker only ends by returning; a panic is a bug, and its shard's lease
                // expires so that it is picked up again.
                tracing::error!(%error, "A shard worker failed.");
                self.running.retain(|_, running| !running.stop.is_closed());
            }
        }
        metrics::gauge!("fanner_engine_leases_held").set(self.running.len() as f64);
    }

    /// Drains every worker (each bounded by `drain_timeout`) and gives up membership.
    async fn stop(&mut self) {
        for running in self.running.values() {
            let _ = running.stop.send(true);
        }
        let bound = self.config().drain_timeout * 2 + std::time::Duration::from_secs(1);
        let drained = tokio::time::timeout(bound, async {
            while let Some(done) = self.workers.join_next().await {
                self.on_exit(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "Some shard workers did not drain in time; their leases expire by themselves."
            );
            self.workers.abort_all();
        }
        if let Some(member) = self.member.take() {
            let _ = self.shared.coordinator.release(&member).await;
        }
    }
}
