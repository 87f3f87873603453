//! One GES shard of the hydrator: every unfinished hydration and replay on it, one at a time,
//! each through its phases (lake, then GES) with its progress in the shard's lease.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use api::{HydrationKind, HydrationProgress, HydrationTask};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use persister::lake::{self, LakeObject};
use persister::{ObjectFormat, Target};
use serde::{Deserialize, Serialize};
use shard_runtime::{Assignment, Exit, LeaseHandle};
use streams::{PutRecord, Shard, StartPosition, StreamError, cmp_position};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;
use crate::deliver::{self, RateLimit, WriteError};
use crate::select::select;

pub const CHECKPOINT_VERSION: u32 = 1;
/// Records per write into the consumer stream, and per checkpoint.
const BATCH: usize = 500;
/// Progress reports to the control plane, at most this often (the last one always goes).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The pause before a step that failed for a passing reason is tried again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The JSON in a `hydration` lease: each unfinished task's progress on the shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub v: u32,
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskProgress>,
}

impl Checkpoint {
    pub fn parse(text: &str) -> Result<Checkpoint, String> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let unreadable = |e: serde_json::Error| format!("unreadable checkpoint {text:.200?}: {e}");
        let version: Version = serde_json::from_str(text).map_err(unreadable)?;
        if version.v != CHECKPOINT_VERSION {
            return Err(format!(
                "checkpoint format {} is not {CHECKPOINT_VERSION}: written by another version",
                version.v
            ));
        }
        serde_json::from_str(text).map_err(unreadable)
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Lake,
    Ges,
    Done,
    Failed,
}

/// A written persister cut beyond its low-water mark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cut {
    pub target: String,
    pub first: String,
    pub last: String,
    pub format: ObjectFormat,
}

/// One task on one shard. The lake snapshot is fixed when the task begins, so the objects it
/// names, and their order, are the same after any restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskProgress {
    pub phase: Phase,
    /// The persister's low-water mark: the lake holds every record at or before it.
    pub lake_after: Option<String>,
    /// Cuts the persister had written beyond it.
    pub lake_cuts: Vec<Cut>,
    /// Hydrations: whether the hand-over was asked for; replays never ask.
    pub handover_asked: bool,
    /// Known once the engine chose where live delivery begins (replays: at once).
    pub bound: Option<Bound>,
    /// Lake objects delivered, in listing order, and records of the next one.
    pub objects_done: usize,
    pub records_done: usize,
    /// The last GES record looked at (delivered or not).
    pub ges_after: Option<String>,
    pub delivered: u64,
    pub error: Option<String>,
}

enum Stop {
    Released,
    Lost,
}

/// Why a phase did not finish.
enum Fail {
    /// The task cannot go on: it fails with this reason.
    Task(String),
    /// The shard is no longer ours to work on; the next holder resumes.
    Stop(Stop),
}

impl From<Stop> for Fail {
    fn from(stop: Stop) -> Fail {
        Fail::Stop(stop)
    }
}

impl From<String> for Fail {
    fn from(reason: String) -> Fail {
        Fail::Task(reason)
    }
}

/// How far a task reads the GES.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Up to and including this position (`None`: nothing): live delivery takes the rest.
    Upto(Option<String>),
    /// The engine read this closed shard to its end before the subscription existed.
    ShardEnd,
    /// A replay: until it has caught up with the shard.
    CaughtUp,
}

/// Runs the shard until the lease is lost or the runtime asks for it back.
pub(crate) async fn run(shared: Arc<Shared>, assignment: Assignment) -> Exit {
    let Assignment {
        shard,
        checkpoint,
        lease,
        stop,
    } = assignment;
    let checkpoint = match checkpoint.as_deref().map(Checkpoint::parse).transpose() {
        Ok(checkpoint) => checkpoint.unwrap_or(Checkpoint {
            v: CHECKPOINT_VERSION,
            tasks: BTreeMap::new(),
        }),
        Err(error) => return Exit::Failed(error),
    };
    let mut worker = Worker {
        shared,
        shard,
        lease,
        stop,
        checkpoint,
        last_report: None,
    };
    match worker.run().await {
        Stop::Released => Exit::Released,
        Stop::Lost => Exit::Lost,
    }
}

struct Worker {
    shared: Arc<Shared>,
    shard: Shard,
    lease: LeaseHandle,
    stop: watch::Receiver<bool>,
    checkpoint: Checkpoint,
    last_report: Option<Instant>,
}

impl Worker {
    async fn run(&mut self) -> Stop {
        loop {
            if let Some(stop) = self.stopping() {
                return stop;
            }
            match self.shared.link.unfinished().await {
                Ok(tasks) => {
                    self.checkpoint
                        .tasks
                        .retain(|id, _| tasks.iter().any(|t| &t.id == id));
                    let shard = self.shard.id.clone();
                    for task in tasks.iter().filter(|t| !t.finished_shards.contains(&shard)) {
                        if let Err(stop) = self.work(task).await {
                            return stop;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, shard = %self.shard.id, "Cannot list hydrations; retrying.")
                }
            }
            if let Err(stop) = self.pause(self.shared.config.poll_interval).await {
                return stop;
            }
        }
    }

    fn stopping(&self) -> Option<Stop> {
        if self.lease.is_lost() {
            Some(Stop::Lost)
        } else if *self.stop.borrow() {
            Some(Stop::Released)
        } else {
            None
        }
    }

    /// Sleeps, unless the lease goes or the runtime wants the shard back first.
    async fn pause(&mut self, wait: Duration) -> Result<(), Stop> {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = self.stop.changed() => {}
            () = self.lease.lost() => return Err(Stop::Lost),
        }
        match self.stopping() {
            Some(stop) => Err(stop),
            None => Ok(()),
        }
    }

    async fn save(&mut self) -> Result<(), Stop> {
        match self.lease.checkpoint(&self.checkpoint.to_json()).await {
            Ok(()) => Ok(()),
            Err(shard_runtime::CoordinatorError::LeaseLost { .. }) => Err(Stop::Lost),
            Err(error) => {
                // Progress not recorded is repeated after a crash: at most what was delivered
                // since the last checkpoint that went through.
                tracing::warn!(%error, shard = %self.shard.id, "Cannot store hydration progress.");
                Ok(())
            }
        }
    }

    fn progress(&mut self, id: &str) -> &mut TaskProgress {
        self.checkpoint
            .tasks
            .get_mut(id)
            .expect("a task being worked on has progress")
    }

    /// Tells the control plane where the task stands; a hand-over request or the end always
    /// goes, counts at most every [`REPORT_EVERY`].
    async fn report(&mut self, task: &HydrationTask, handover: Option<Option<String>>) -> bool {
        let progress = self.checkpoint.tasks.get(&task.id).cloned();
        let Some(progress) = progress else {
            return false;
        };
        let finished = matches!(progress.phase, Phase::Done | Phase::Failed);
        if handover.is_none()
            && !finished
            && self
                .last_report
                .is_some_and(|at| at.elapsed() < REPORT_EVERY)
        {
            return true;
        }
        let report = HydrationProgress {
            shard: self.shard.id.clone(),
            events_delivered: progress.delivered,
            handover_after: handover,
            done: progress.phase == Phase::Done,
            error: progress.error.clone(),
        };
        match self.shared.link.report(&task.id, &report).await {
            Ok(_) => {
                self.last_report = Some(Instant::now());
                true
            }
            Err(error) => {
                tracing::warn!(%error, hydration = %task.id, shard = %self.shard.id, "Cannot report hydration progress; retrying.");
                false
            }
        }
    }

    async fn work(&mut self, task: &HydrationTask) -> Result<(), Stop> {
        if !self.checkpoint.tasks.contains_key(&task.id) {
            let progress = match self.begin(task).await {
                Ok(progress) => progress,
                Err(error) => TaskProgress {
                    phase: Phase::Failed,
                    lake_after: None,
                    lake_cuts: Vec::new(),
                    handover_asked: false,
                    bound: None,
                    objects_done: 0,
                    records_done: 0,
                    ges_after: None,
                    delivered: 0,
                    error: Some(error),
                },
            };
            self.checkpoint.tasks.insert(task.id.clone(), progress);
            self.save().await?;
        }
        loop {
            if let Some(stop) = self.stopping() {
                return Err(stop);
            }
            let progress = self.progress(&task.id).clone();
            let step = match (progress.phase, progress.bound) {
                (Phase::Done | Phase::Failed, _) => {
                    if !self.report(task, None).await {
                        self.pause(RETRY_PAUSE).await?;
                    }
                    return Ok(());
                }
                (_, None) => match self.hand_over(task).await? {
                    Some(bound) => {
                        self.progress(&task.id).bound = Some(bound);
                        self.save().await?;
                        Ok(())
                    }
                    // Not chosen yet: other tasks go on meanwhile.
                    None => return Ok(()),
                },
                (Phase::Lake, Some(_)) => self.lake_phase(task).await,
                (Phase::Ges, Some(bound)) => self.ges_phase(task, &bound).await,
            };
            match step {
                Ok(()) => {}
                Err(Fail::Stop(stop)) => return Err(stop),
                Err(Fail::Task(error)) => {
                    tracing::warn!(hydration = %task.id, shard = %self.shard.id, %error, "Hydration failed.");
                    let progress = self.progress(&task.id);
                    progress.phase = Phase::Failed;
                    progress.error = Some(error);
                    self.save().await?;
                }
            }
        }
    }

    /// Fixes the lake snapshot the task reads, and checks that the GES still holds what the
    /// lake does not.
    async fn begin(&mut self, task: &HydrationTask) -> Result<TaskProgress, String> {
        let key = format!("{}/{}", self.shared.config.ges, self.shard.id);
        let persisted = self
            .shared
            .coordinator
            .leases(persister::GROUP)
            .await
            .map_err(|e| format!("cannot read the persister's progress: {e}"))?
            .into_iter()
            .find(|lease| lease.key == key)
            .and_then(|lease| lease.checkpoint);
        let (lake_after, lake_cuts) = match persisted {
            Some(text) => {
                let checkpoint = persister::Checkpoint::parse(&text).map_err(|e| e.to_string())?;
                let cuts = checkpoint
                    .cuts
                    .into_iter()
                    .filter(|cut| cut.done)
                    .map(|cut| Cut {
                        target: cut.target,
                        first: cut.first,
                        last: cut.last,
                        format: cut.format,
                    })
                    .collect();
                (checkpoint.after, cuts)
            }
            None => (None, Vec::new()),
        };
        if let Some(after) = &lake_after {
            self.check_retention(after).await?;
        }
        tracing::info!(hydration = %task.id, shard = %self.shard.id, lake_after = ?lake_after, "Hydrating a shard.");
        Ok(TaskProgress {
            phase: Phase::Lake,
            lake_after,
            lake_cuts,
            handover_asked: false,
            bound: (task.kind == HydrationKind::Replay).then_some(Bound::CaughtUp),
            objects_done: 0,
            records_done: 0,
            ges_after: None,
            delivered: 0,
            error: None,
        })
    }

    /// Fails when the oldest record the GES still holds comes after `after`: the records in
    /// between are in neither the lake nor the GES.
    async fn check_retention(&self, after: &str) -> Result<(), String> {
        let backend = &self.shared.backend;
        let ges = &self.shared.config.ges;
        let mut reader = match backend
            .open_reader(ges, &self.shard.id, StartPosition::TrimHorizon)
            .await
        {
            Ok(reader) => reader,
            Err(StreamError::ShardNotFound { .. }) => return Ok(()),
            Err(error) => return Err(format!("cannot read the GES: {error}")),
        };
        // Pollers may answer empty a few times before the first record.
        for _ in 0..3 {
            let batch = reader
                .next_batch(1)
                .await
                .map_err(|e| format!("cannot read the GES: {e}"))?;
            if let Some(oldest) = batch.records.first() {
                if streams::cmp_sequence(&oldest.sequence, after) == Ordering::Greater {
                    return Err(format!(
                        "the persister is behind: the lake holds shard {}'s records up to {after}, \
                         but the GES's oldest record is {}; the records between are in neither \
                         (they outlived the GES's retention before the persister wrote them)",
                        self.shard.id, oldest.sequence
                    ));
                }
                return Ok(());
            }
            if batch.shard_end || batch.millis_behind == Some(0) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Asks for the hand-over (once) and waits, within a poll interval, until the route table
    /// shows where live delivery begins on this shard. `None` when it is not known yet.
    async fn hand_over(&mut self, task: &HydrationTask) -> Result<Option<Bound>, Stop> {
        let progress = self.progress(&task.id).clone();
        if !progress.handover_asked {
            if self.engine_finished().await {
                return Ok(Some(Bound::ShardEnd));
            }
            let mut asked = progress.lake_after.clone();
            for cut in &progress.lake_cuts {
                if cmp_position(Some(&cut.last), asked.as_deref()) == Ordering::Greater {
                    asked = Some(cut.last.clone());
                }
            }
            if !self.report(task, Some(asked)).await {
                self.pause(RETRY_PAUSE).await?;
                return Ok(None);
            }
            self.progress(&task.id).handover_asked = true;
            self.save().await?;
        }
        let deadline = Instant::now() + self.shared.config.poll_interval;
        loop {
            let table = self.shared.routes.load();
            match table.hydration(&task.id) {
                Some(hydration) => {
                    if let Some(handover) = hydration.shards.get(&self.shard.id)
                        && handover.live
                    {
                        return Ok(Some(Bound::Upto(handover.live_after.clone())));
                    }
                }
                None if !self.any_readable(task) => {
                    let progress = self.progress(&task.id);
                    progress.phase = Phase::Failed;
                    progress.error = Some(no_access(task));
                    self.save().await?;
                    return Ok(None);
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.shared.routes.refresh_if_older(Utc::now()).await;
            self.pause(Duration::from_millis(100)).await?;
        }
    }

    /// Whether the engine has read this (closed) shard to its end.
    async fn engine_finished(&self) -> bool {
        if !self.shard.closed {
            return false;
        }
        let key = format!("{}/{}", self.shared.config.ges, self.shard.id);
        let Ok(leases) = self
            .shared
            .coordinator
            .leases(fanner::config::LEASE_GROUP)
            .await
        else {
            return false;
        };
        leases
            .into_iter()
            .find(|lease| lease.key == key)
            .and_then(|lease| lease.checkpoint)
            .and_then(|text| fanner::checkpoint::Checkpoint::parse(&text).ok())
            .is_some_and(|checkpoint| checkpoint.main_done)
    }

    fn any_readable(&self, task: &HydrationTask) -> bool {
        let table = self.shared.routes.load();
        let now = self.shared.routes.now();
        task.events.iter().any(|event| {
            table
                .permits(event.as_bytes(), &task.backing_name, now)
                .is_some()
        })
    }

    /// The objects this task reads from the lake, in a fixed order.
    async fn lake_objects(&self, task: &HydrationTask) -> Result<Vec<LakeObject>, String> {
        let progress = self
            .checkpoint
            .tasks
            .get(&task.id)
            .ok_or("no progress for the task")?;
        let Some(after) = progress.lake_after.clone() else {
            if progress.lake_cuts.is_empty() {
                return Ok(Vec::new());
            }
            return Err("the persister's checkpoint lists cuts but no low-water mark".to_owned());
        };
        let config = &self.shared.config;
        // Written cuts of the task's partitions in its window, by key.
        let written: Vec<(String, String)> = progress
            .lake_cuts
            .iter()
            .filter_map(|cut| match Target::parse(&cut.target)? {
                Target::Lake(partition) if lake::may_hold(partition.hour(), task.from, task.to) => {
                    let key = lake::key_of(
                        &config.base_prefix,
                        &Target::Lake(partition.clone()),
                        &self.shard.id,
                        &cut.first,
                        &cut.last,
                        cut.format,
                    );
                    Some((partition.name_segment().to_owned(), key))
                }
                _ => None,
            })
            .collect();
        let mut all = Vec::new();
        for event in &task.events {
            let found = lake::objects(
                self.shared.sink.as_ref(),
                &config.base_prefix,
                event,
                &self.shard.id,
                task.from,
                task.to,
            )
            .await
            .map_err(|e| e.to_string())?;
            let segment = persister::partition::encode_segment(event);
            let cuts: HashSet<&str> = written
                .iter()
                .filter(|(name, _)| *name == segment)
                .map(|(_, key)| key.as_str())
                .collect();
            // The persister recorded these as written: one missing is a hole, never skipped.
            let listed: HashSet<&str> = found.iter().map(|o| o.key.as_str()).collect();
            if let Some(key) = cuts.iter().find(|key| !listed.contains(*key)) {
                return Err(lake::LakeError::Missing {
                    key: (*key).to_owned(),
                }
                .to_string());
            }
            all.extend(
                found
                    .into_iter()
                    .filter(|o| lake::at_or_before(o, &after) || cuts.contains(o.key.as_str())),
            );
        }
        lake::sort(&mut all);
        Ok(all)
    }

    async fn lake_phase(&mut self, task: &HydrationTask) -> Result<(), Fail> {
        let objects = self.lake_objects(task).await.map_err(Fail::Task)?;
        let start = self.progress(&task.id).objects_done;
        let in_flight = self.shared.config.objects_in_flight.max(1);
        let sink = self.shared.sink.clone();
        let mut reads = futures::stream::iter(objects.into_iter().enumerate().skip(start))
            .map(|(index, object)| {
                let sink = sink.clone();
                async move { (index, lake::read(sink.as_ref(), &object).await) }
            })
            .buffered(in_flight);
        let mut limit = self.rate_limit();
        while let Some((index, records)) = reads.next().await {
            let records = records.map_err(|e| Fail::Task(e.to_string()))?;
            let skip = if index == start {
                self.progress(&task.id).records_done
            } else {
                0
            };
            let mut position = skip;
            let batch = self.batch_size();
            for chunk in records[skip.min(records.len())..].chunks(batch) {
                let chunk: Vec<&Bytes> = chunk.iter().collect();
                self.deliver(task, &chunk, &mut limit).await?;
                position += chunk.len();
                let progress = self.progress(&task.id);
                progress.objects_done = index;
                progress.records_done = position;
                self.save().await?;
                self.report(task, None).await;
            }
            let progress = self.progress(&task.id);
            progress.objects_done = index + 1;
            progress.records_done = 0;
            self.save().await?;
            if let Some(stop) = self.stopping() {
                return Err(Fail::Stop(stop));
            }
        }
        self.progress(&task.id).phase = Phase::Ges;
        self.save().await?;
        Ok(())
    }

    /// Reads the GES after the lake's mark up to the task's bound, skipping what the lake
    /// phase delivered.
    async fn ges_phase(&mut self, task: &HydrationTask, bound: &Bound) -> Result<(), Fail> {
        let progress = self.progress(&task.id).clone();
        let from = progress.ges_after.clone().or(progress.lake_after.clone());
        // Past the bound: live delivery's, not ours.
        let beyond = |position: &str| match bound {
            Bound::Upto(live) => cmp_position(Some(position), live.as_deref()) == Ordering::Greater,
            Bound::ShardEnd | Bound::CaughtUp => false,
        };
        let at_bound = |position: Option<&str>| match bound {
            Bound::Upto(live) => cmp_position(position, live.as_deref()) != Ordering::Less,
            Bound::ShardEnd | Bound::CaughtUp => false,
        };
        if at_bound(from.as_deref()) {
            return self.finish(task).await;
        }
        let backend = self.shared.backend.clone();
        let config = self.shared.config.clone();
        let start = match &from {
            Some(sequence) => StartPosition::AfterSequence(sequence.clone()),
            None => StartPosition::TrimHorizon,
        };
        let mut reader = match backend
            .open_reader(&config.ges, &self.shard.id, start)
            .await
        {
            Ok(reader) => reader,
            Err(StreamError::ShardNotFound { .. }) => return self.finish(task).await,
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, shard = %self.shard.id, "Cannot read the GES; retrying.");
                self.pause(RETRY_PAUSE).await?;
                return Ok(());
            }
            Err(error) => return Err(Fail::Task(format!("cannot read the GES: {error}"))),
        };
        let cuts: Vec<(String, String, String)> = progress
            .lake_cuts
            .iter()
            .map(|c| (c.target.clone(), c.first.clone(), c.last.clone()))
            .collect();
        let mut limit = self.rate_limit();
        loop {
            if let Some(stop) = self.stopping() {
                return Err(Fail::Stop(stop));
            }
            let batch = match reader.next_batch(config.read_batch).await {
                Ok(batch) => batch,
                Err(StreamError::ShardNotFound { .. }) => return self.finish(task).await,
                Err(error) => {
                    tracing::warn!(%error, shard = %self.shard.id, "Cannot read the GES; retrying.");
                    self.pause(RETRY_PAUSE).await?;
                    return Ok(());
                }
            };
            let mut taken = Vec::with_capacity(batch.records.len());
            let mut last = None;
            let mut passed = false;
            for record in &batch.records {
                if beyond(&record.sequence) {
                    passed = true;
                    break;
                }
                last = Some(record.sequence.clone());
                if !in_written_cut(record, &cuts) {
                    taken.push(&record.data);
                }
            }
            for chunk in taken.chunks(self.batch_size()) {
                self.deliver(task, chunk, &mut limit).await?;
            }
            if let Some(last) = last {
                self.progress(&task.id).ges_after = Some(last);
                self.save().await?;
                self.report(task, None).await;
            }
            let position = self.progress(&task.id).ges_after.clone().or(from.clone());
            let caught_up = batch.records.is_empty() && batch.millis_behind.unwrap_or(0) == 0;
            if passed
                || batch.shard_end
                || at_bound(position.as_deref())
                || (*bound == Bound::CaughtUp && caught_up)
            {
                return self.finish(task).await;
            }
            if batch.records.is_empty() {
                reader.wait_for_records(config.poll_interval).await;
            }
        }
    }

    async fn finish(&mut self, task: &HydrationTask) -> Result<(), Fail> {
        self.progress(&task.id).phase = Phase::Done;
        self.save().await?;
        let delivered = self.progress(&task.id).delivered;
        tracing::info!(hydration = %task.id, shard = %self.shard.id, delivered, "Hydrated a shard.");
        Ok(())
    }

    fn rate_limit(&self) -> RateLimit {
        RateLimit::new(
            self.shared.config.max_records_per_second,
            self.shared.config.max_bytes_per_second,
        )
    }

    /// The records of `data` this task delivers, as of the newest route table.
    fn admit<'a>(
        &self,
        task: &HydrationTask,
        data: impl Iterator<Item = &'a Bytes>,
    ) -> (Vec<PutRecord>, bool) {
        let table = self.shared.routes.load();
        let selection = select(task, &table, self.shared.routes.now(), data);
        if selection.filtered > 0 {
            metrics::counter!("fanner_hydration_filtered_records_total", "subscription" => task.subscription_id.clone())
                .increment(selection.filtered);
        }
        (selection.records, selection.denied)
    }

    /// Records per write: a fifth of a second's worth under a rate limit, so writes are even.
    fn batch_size(&self) -> usize {
        self.shared
            .config
            .max_records_per_second
            .map_or(BATCH, |rate| (rate as usize / 5).clamp(1, BATCH))
    }

    /// Writes what this task takes of `chunk`, waiting out passing failures; the task fails
    /// if the stream is gone or may read none of its events any more. Access is judged after
    /// the rate limit's wait, so a grant revoked meanwhile stops the batch.
    async fn deliver(
        &mut self,
        task: &HydrationTask,
        chunk: &[&Bytes],
        limit: &mut RateLimit,
    ) -> Result<(), Fail> {
        if limit.is_limited() {
            let (due, _) = self.admit(task, chunk.iter().copied());
            let bytes: usize = due.iter().map(|r| r.data.len()).sum();
            limit.admit(due.len(), bytes).await;
        }
        let (records, denied) = self.admit(task, chunk.iter().copied());
        if denied && !self.any_readable(task) {
            return Err(Fail::Task(no_access(task)));
        }
        if records.is_empty() {
            return Ok(());
        }
        let bytes: usize = records.iter().map(|r| r.data.len()).sum();
        loop {
            match deliver::write(self.shared.backend.as_ref(), &task.backing_name, &records).await {
                Ok(()) => break,
                Err(WriteError::Fatal(reason)) => return Err(Fail::Task(reason)),
                Err(WriteError::Transient(reason)) => {
                    tracing::warn!(%reason, hydration = %task.id, "Writing history failed; retrying.");
                    self.pause(RETRY_PAUSE).await?;
                }
            }
        }
        let count = records.len() as u64;
        self.progress(&task.id).delivered += count;
        metrics::counter!("fanner_hydration_delivered_records_total", "subscription" => task.subscription_id.clone())
            .increment(count);
        metrics::counter!("fanner_hydration_delivered_bytes_total", "subscription" => task.subscription_id.clone())
            .increment(bytes as u64);
        Ok(())
    }
}

fn no_access(task: &HydrationTask) -> String {
    format!(
        "stream {:?} may no longer read any of {}: access ended (a grant was revoked or expired)",
        task.stream,
        task.events.join(", ")
    )
}

/// Whether the lake phase delivered this GES record: it lies in a written cut of its partition.
fn in_written_cut(record: &streams::Record, cuts: &[(String, String, String)]) -> bool {
    if cuts.is_empty() {
        return false;
    }
    let Ok(envelope) = proto::EnvelopeRef::decode(&record.data) else {
        return false;
    };
    let now = record.arrival_time.unwrap_or_else(Utc::now);
    let Ok(key) = persister::partition(envelope.event_name, envelope.event_time.as_ref(), now)
    else {
        return false;
    };
    let path = Target::Lake(key).path();
    cuts.iter().any(|(target, first, last)| {
        *target == path
            && streams::cmp_sequence(&record.sequence, first) != Ordering::Less
            && streams::cmp_sequence(&record.sequence, last) != Ordering::Greater
    })
}
