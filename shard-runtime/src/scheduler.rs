//! One job per leased shard: which shards this process takes, when it hands them over, and what
//! happens when a job ends, fails or panics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use streams::{Shard, StreamBackend};
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use crate::coordinator::{Coordinator, Lease};
use crate::keeper::{Keeper, LeaseHandle, LeaseWatch};

/// Lease TTL of every job unless configured otherwise: a dead process's shards move to another
/// within it plus one scan. Renewals come every third of it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);
/// How often shards and leases are looked at.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stopping job may take to write what it holds and checkpoint.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a draining job waits for its final checkpoint write, past the drain timeout.
pub const FINAL_CHECKPOINT_WAIT: Duration = Duration::from_secs(1);
/// The first pause before a failed job's shard is taken again; it doubles per failure.
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// How a scheduler shares shards. One value per process and job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// This process's name on leases: stable across restarts of one deployment slot (so a
    /// restart takes its shards back at once), never shared by two live processes.
    pub owner: String,
    pub lease_ttl: Duration,
    pub scan_interval: Duration,
    /// The most shards this process works on at once.
    pub max_shards: usize,
    pub drain_timeout: Duration,
    pub restart_backoff: Duration,
}

impl Settings {
    /// The defaults, for `owner`.
    pub fn new(owner: impl Into<String>) -> Settings {
        Settings {
            owner: owner.into(),
            lease_ttl: DEFAULT_LEASE_TTL,
            scan_interval: DEFAULT_SCAN_INTERVAL,
            max_shards: usize::MAX,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            restart_backoff: DEFAULT_RESTART_BACKOFF,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.owner.is_empty() {
            return Err("owner must not be empty".to_owned());
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err("lease_ttl must be at least 300 ms".to_owned());
        }
        if self.scan_interval.is_zero() || self.max_shards == 0 {
            return Err("scan_interval and max_shards must be positive".to_owned());
        }
        Ok(())
    }
}

/// What a stored checkpoint says about its shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The shard's children (after a split or merge) may start: this job read it to its end.
    pub children_may_start: bool,
    /// Nothing is left to do on the shard: it is never taken again.
    pub finished: bool,
}

/// How a job's run on one shard ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The shard is done for good ([`Progress::finished`] holds for its final checkpoint).
    Finished,
    /// Asked to stop: the job wrote what it held and its final checkpoint.
    Released,
    /// The lease is lost; the job wrote nothing after noticing.
    Lost,
    /// The job cannot go on; the shard is taken again after a backoff.
    Failed(String),
}

/// A shard handed to a job.
pub struct Assignment {
    pub shard: Shard,
    /// The checkpoint the lease held when it was acquired ([`Job::progress`] accepted it).
    pub checkpoint: Option<String>,
    pub lease: LeaseHandle,
    /// Becomes `true` when the job must drain and return [`Exit::Released`].
    pub stop: watch::Receiver<bool>,
}

/// Work done per shard of one stream, under one lease group.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// The lease group, also the job's name in logs and metrics (`fanner`, `persister`).
    fn group(&self) -> &str;

    /// The stream whose shards the job works on.
    fn stream(&self) -> &str;

    /// Reads a stored checkpoint. An error refuses the shard: it is neither started nor
    /// skipped, but reported until the checkpoint is readable (a newer version wrote it, or it
    /// was damaged); replaying or skipping silently could duplicate or lose records.
    fn progress(&self, checkpoint: &str) -> Result<Progress, String>;

    /// Works on the shard until it is finished, the lease is lost, `stop` is set or it fails.
    async fn run(self: Arc<Self>, assignment: Assignment) -> Exit;
}

/// What a scheduler is doing, for status pages, readiness and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Shard lease keys this process runs a job on.
    pub held: Vec<String>,
    /// Shard lease keys refused, with why (an unreadable checkpoint).
    pub refused: BTreeMap<String, String>,
    /// Live members of the group on this stream, this process included.
    pub members: usize,
    /// Jobs that failed or panicked since the process started.
    pub failures: u64,
    /// The last scan reached the stream and the coordinator.
    pub scanning: bool,
}

/// A live view of a [`Scheduler`]'s [`Snapshot`].
#[derive(Clone, Debug, Default)]
pub struct Status(Arc<Mutex<Snapshot>>);

impl Status {
    pub fn snapshot(&self) -> Snapshot {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

struct Running {
    key: String,
    stop: watch::Sender<bool>,
    lease: LeaseWatch,
}

/// Shares the shards of a job's stream among the processes running the same job: each holds a
/// membership lease (`<stream>#member/<owner>` in the job's group), takes free shards (parents
/// before children) up to a fair share, hands surplus shards over when another process joins,
/// restarts failed jobs after a backoff, and drains everything on shutdown.
pub struct Scheduler<J: Job> {
    settings: Settings,
    backend: Arc<dyn StreamBackend>,
    coordinator: Arc<dyn Coordinator>,
    job: Arc<J>,
    status: Status,
    workers: JoinSet<Exit>,
    running: HashMap<Id, Running>,
    /// Shards whose final checkpoint says finished.
    finished: HashSet<String>,
    /// Shards whose job failed: failures so far and when to try again.
    failed: HashMap<String, (u32, Instant)>,
    member: Option<Lease>,
}

impl<J: Job> Scheduler<J> {
    pub fn new(
        settings: Settings,
        backend: Arc<dyn StreamBackend>,
        coordinator: Arc<dyn Coordinator>,
        job: Arc<J>,
    ) -> Scheduler<J> {
        Scheduler {
            settings,
            backend,
            coordinator,
            job,
            status: Status::default(),
            workers: JoinSet::new(),
            running: HashMap::new(),
            finished: HashSet::new(),
            failed: HashMap::new(),
            member: None,
        }
    }

    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Reports into `status`, a view its owner made before the scheduler existed.
    pub fn reporting_to(mut self, status: Status) -> Scheduler<J> {
        self.status = status;
        self
    }

    /// Runs jobs until `shutdown` completes, then drains them (bounded by the drain timeout)
    /// and gives every lease back. Dropping the future instead is a crash: leases expire and
    /// the next holders resume from the last checkpoints.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(self.settings.scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.scan().await,
                Some(done) = self.workers.join_next_with_id(), if !self.workers.is_empty() => {
                    self.on_exit(done).await;
                }
            }
        }
        self.stop().await;
    }

    fn group(&self) -> String {
        self.job.group().to_owned()
    }

    fn member_prefix(&self) -> String {
        format!("{}#member/", self.job.stream())
    }

    fn shard_key(&self, shard: &str) -> String {
        format!("{}/{shard}", self.job.stream())
    }

    async fn heartbeat(&mut self) {
        let ttl = self.settings.lease_ttl;
        let renewed = match &self.member {
            Some(lease) => self.coordinator.renew(lease, ttl).await.ok(),
            None => None,
        };
        self.member = match renewed {
            Some(lease) => Some(lease),
            None => {
                let key = format!("{}{}", self.member_prefix(), self.settings.owner);
                self.coordinator
                    .try_acquire(self.job.group(), &key, &self.settings.owner, ttl)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, group = self.job.group(), "Cannot record this process's membership.");
                        None
                    })
            }
        };
    }

    fn progress(&self, lease: Option<&Lease>) -> Result<Progress, String> {
        match lease.and_then(|lease| lease.checkpoint.as_deref()) {
            Some(checkpoint) => self.job.progress(checkpoint),
            None => Ok(Progress::default()),
        }
    }

    fn active(&self) -> usize {
        self.running.values().filter(|r| !*r.stop.borrow()).count()
    }

    /// Takes free shards (up to a fair share) in parent-before-child order, and gives back
    /// shards beyond the fair share so that newly started processes get some.
    async fn scan(&mut self) {
        self.heartbeat().await;
        let group = self.group();
        let shards = match self.backend.list_shards(self.job.stream()).await {
            Ok(shards) => shards,
            Err(error) => {
                tracing::warn!(%error, group, stream = self.job.stream(), "Cannot list the stream's shards.");
                self.status.update(|s| s.scanning = false);
                return;
            }
        };
        let leases: HashMap<String, Lease> = match self.coordinator.leases(&group).await {
            Ok(leases) => leases.into_iter().map(|l| (l.key.clone(), l)).collect(),
            Err(error) => {
                tracing::warn!(%error, group, "Cannot read the shard leases.");
                self.status.update(|s| s.scanning = false);
                return;
            }
        };
        let now = Utc::now();
        let prefix = self.member_prefix();
        let members = leases
            .values()
            .filter(|l| l.key.starts_with(&prefix) && l.expires_at > now)
            .map(|l| l.owner.as_str())
            .chain([self.settings.owner.as_str()])
            .collect::<HashSet<_>>()
            .len();

        let mut refused = BTreeMap::new();
        let mut progress = HashMap::new();
        for shard in &shards {
            let key = self.shard_key(&shard.id);
            match self.progress(leases.get(&key)) {
                Ok(p) => {
                    progress.insert(shard.id.clone(), p);
                }
                Err(reason) => {
                    refused.insert(key, reason);
                }
            }
        }
        self.report_refused(&refused);
        let present: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let live: Vec<&Shard> = shards
            .iter()
            .filter(|s| {
                !self.finished.contains(&self.shard_key(&s.id))
                    && progress.get(&s.id).is_some_and(|p| !p.finished)
            })
            .collect();
        let share = live
            .len()
            .div_ceil(members)
            .min(self.settings.max_shards)
            .max(1);
        self.status.update(|s| {
            s.members = members;
            s.scanning = true;
        });

        let mut surplus = self.active().saturating_sub(share);
        if surplus > 0 {
            for running in self.running.values() {
                if surplus == 0 {
                    break;
                }
                if !*running.stop.borrow() {
                    tracing::info!(group, shard = %running.key, members, share, "Handing a shard over to share the load.");
                    running.stop.send_replace(true);
                    surplus -= 1;
                }
            }
            return;
        }

        let held: HashSet<String> = self.running.values().map(|r| r.key.clone()).collect();
        let instant = Instant::now();
        for shard in live {
            if self.active() >= share {
                break;
            }
            let key = self.shard_key(&shard.id);
            if held.contains(&key) || self.failed.get(&key).is_some_and(|(_, at)| instant < *at) {
                continue;
            }
            if let Some(lease) = leases.get(&key)
                && lease.owner != self.settings.owner
                && lease.expires_at > now
            {
                continue;
            }
            // A parent no longer listed has expired with its records: nothing to wait for.
            let parents_done = shard.parents.iter().all(|parent| {
                !present.contains(parent.as_str())
                    || progress.get(parent).is_some_and(|p| p.children_may_start)
            });
            if !parents_done {
                continue;
            }
            let sent = Instant::now();
            let acquired = self
                .coordinator
                .try_acquire(&group, &key, &self.settings.owner, self.settings.lease_ttl)
                .await;
            let lease = match acquired {
                Ok(Some(lease)) => lease,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(group, shard = %key, %error, "Cannot acquire the shard's lease.");
                    continue;
                }
            };
            // The checkpoint may have moved since the listing.
            match self.progress(Some(&lease)) {
                Err(reason) => {
                    refused.insert(key.clone(), reason);
                    self.report_refused(&refused);
                    self.release(&lease).await;
                }
                Ok(p) if p.finished => {
                    self.finished.insert(key);
                    self.release(&lease).await;
                }
                Ok(_) => self.start(shard.clone(), lease, sent),
            }
        }
        self.report_held();
    }

    fn report_refused(&self, refused: &BTreeMap<String, String>) {
        let group = self.group();
        let before = self.status.snapshot().refused;
        for (key, reason) in refused {
            if before.get(key) != Some(reason) {
                tracing::error!(group, shard = %key, %reason, "Refusing the shard: its checkpoint cannot be read. Nothing is read from it until the checkpoint is fixed or removed.");
            }
        }
        for key in before.keys().filter(|k| !refused.contains_key(*k)) {
            tracing::info!(group, shard = %key, "The shard's checkpoint is readable again.");
        }
        metrics::gauge!("fanner_shards_refused", "group" => group).set(refused.len() as f64);
        self.status.update(|s| s.refused = refused.clone());
    }

    fn report_held(&self) {
        let mut held: Vec<String> = self.running.values().map(|r| r.key.clone()).collect();
        held.sort();
        metrics::gauge!("fanner_shards_held", "group" => self.group()).set(held.len() as f64);
        self.status.update(|s| s.held = held);
    }

    fn start(&mut self, shard: Shard, lease: Lease, sent: Instant) {
        let key = lease.key.clone();
        tracing::info!(group = self.job.group(), shard = %key, token = lease.token, "Acquired shard lease.");
        let checkpoint = lease.checkpoint.clone();
        let (keeper, handle) = Keeper::new(
            self.coordinator.clone(),
            lease,
            self.settings.lease_ttl,
            sent,
        );
        let watch = keeper.watch();
        let (stop, stopped) = watch::channel(false);
        let assignment = Assignment {
            shard,
            checkpoint,
            lease: handle,
            stop: stopped,
        };
        let job = self.job.clone();
        let task = self.workers.spawn(async move {
            tokio::select! {
                exit = job.run(assignment) => exit,
                () = keeper.keep() => Exit::Lost,
            }
        });
        self.running.insert(
            task.id(),
            Running {
                key,
                stop,
                lease: watch,
            },
        );
    }

    async fn on_exit(&mut self, done: Result<(Id, Exit), tokio::task::JoinError>) {
        let (id, exit) = match done {
            Ok((id, exit)) => (id, exit),
            Err(error) => {
                let reason = if error.is_panic() {
                    "the job panicked".to_owned()
                } else {
                    error.to_string()
                };
                (error.id(), Exit::Failed(reason))
            }
        };
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        let group = self.group();
        let key = running.key;
        match exit {
            Exit::Finished => {
                tracing::info!(group, shard = %key, "Shard finished.");
                self.failed.remove(&key);
                self.finished.insert(key);
                self.release(&running.lease.lease()).await;
            }
            Exit::Released => {
                tracing::info!(group, shard = %key, "Shard released.");
                self.failed.remove(&key);
                self.release(&running.lease.lease()).await;
            }
            Exit::Lost => {
                tracing::warn!(group, shard = %key, "Shard lease lost; another process continues from the last checkpoint.");
            }
            Exit::Failed(reason) => {
                let failures = self.failed.get(&key).map_or(0, |(n, _)| *n) + 1;
                let backoff = self
                    .settings
                    .restart_backoff
                    .saturating_mul(1 << failures.min(16).saturating_sub(1))
                    .min(MAX_RESTART_BACKOFF);
                tracing::error!(group, shard = %key, %reason, failures, ?backoff, "A shard job failed; it restarts from its last checkpoint after a pause.");
                metrics::counter!("fanner_shard_job_failures_total", "group" => group.clone())
                    .increment(1);
                self.status.update(|s| s.failures += 1);
                self.failed
                    .insert(key, (failures, Instant::now() + backoff));
                if !running.lease.lost() {
                    self.release(&running.lease.lease()).await;
                }
            }
        }
        self.report_held();
    }

    async fn release(&self, lease: &Lease) {
        if let Err(error) = self.coordinator.release(lease).await {
            tracing::warn!(group = self.job.group(), shard = %lease.key, %error, "Cannot release the lease; it expires by itself.");
        }
    }

    /// Drains every job (bounded by the drain timeout) and gives up membership.
    async fn stop(&mut self) {
        for running in self.running.values() {
            running.stop.send_replace(true);
        }
        let bound = self.settings.drain_timeout + FINAL_CHECKPOINT_WAIT + Duration::from_secs(1);
        let deadline = Instant::now() + bound;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, self.workers.join_next_with_id()).await {
                Ok(Some(done)) => self.on_exit(done).await,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        group = self.job.group(),
                        "Some shard jobs did not drain in time; their leases expire by themselves."
                    );
                    self.workers.abort_all();
                    break;
                }
            }
        }
        if let Some(member) = self.member.take() {
            self.release(&member).await;
        }
        self.report_held();
    }
}
