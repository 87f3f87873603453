//! One GES shard, held under a lease: its main cursor, a delivery state per consumer stream,
//! and the checkpoint that ties them together.
//!
//! A worker is a single task that owns all of the shard's state. Every slow operation (a read,
//! a write to a stream, a checkpoint, a probe of a broken stream) runs as a
//! future in one `FuturesUnordered` and hands its result back to the loop, so one stream's
//! slow write never waits for another's and no state is shared between tasks.
//!
//! The worker's loop and its state are here; its work is split by seam:
//! * `reads`: the main cursor and the catch-up cursors; each record into deliveries.
//! * `writes`: batches to consumer streams, partial failures, falling behind, broken streams.
//! * `progress`: the checkpoint it composes and the status it publishes.
//! * `verdict`: the pure part: what a record is, its partition key, and the write-time access
//!   check (`still_allowed`).

mod progress;
mod reads;
mod verdict;
mod writes;

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use streams::{
    MAX_PARTITION_KEY_CHARS, MAX_PUT_BYTES, MAX_PUT_RECORDS, MAX_RECORD_BYTES, PutAllOutcome,
    PutRecord, ReadBatch, Record, ShardReader, StartPosition, StreamBackend, StreamError,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use shard_runtime::{CoordinatorError, Exit, LeaseHandle};

use crate::checkpoint::{self, Checkpoint};
use crate::config::EngineConfig;
use crate::dead_letter::{self, DeadLetter, Reason};
use crate::gate::{Decision, RecordGate};
use crate::link::ControlPlaneLink;
use crate::router::{self, RouteIndex, Routing};
use crate::routes::LiveRoutes;
use crate::status::{Report, ShardStatus, StatusBoard, TargetMode, TargetStatus};
pub use verdict::partition_key;
use verdict::*;

/// A position in the shard, cheap to clone: after this sequence number, or before the first.
type Pos = Option<Arc<str>>;

fn cmp_pos(a: &Pos, b: &Pos) -> Ordering {
    streams::cmp_position(a.as_deref(), b.as_deref())
}

fn min_pos(a: Pos, b: Pos) -> Pos {
    if cmp_pos(&a, &b) == Ordering::Greater {
        b
    } else {
        a
    }
}

fn to_position(pos: &Pos) -> checkpoint::Position {
    pos.as_deref().map(str::to_owned)
}

fn from_position(position: &checkpoint::Position) -> Pos {
    position.as_deref().map(Arc::from)
}

fn start_at(pos: &Pos) -> StartPosition {
    match pos {
        None => StartPosition::TrimHorizon,
        Some(sequence) => StartPosition::AfterSequence(sequence.to_string()),
    }
}

/// One record on its way to one stream.
struct Delivery {
    /// The position just before this record: where the stream stands while it is owed.
    prev: Pos,
    data: Bytes,
    key: Bytes,
    /// The event name (empty for dead letters), to re-check access at write time.
    event: Bytes,
    /// `None` for dead letters, which need no access.
    subscription: Option<Arc<str>>,
    revision: i64,
    access_expires_at: Option<DateTime<Utc>>,
    arrival: Option<DateTime<Utc>>,
}

enum Reader {
    /// Opened from the target's (or main) position when next needed.
    Closed,
    /// A read is in flight.
    Busy,
    Ready(Box<dyn ShardReader>),
}

impl Reader {
    fn holds_slot(&self) -> bool {
        !matches!(self, Reader::Closed)
    }
}

enum Mode {
    Attached,
    Behind {
        reader: Reader,
        /// The catch-up reader's last record.
        position: Pos,
        idle: bool,
        millis_behind: Option<i64>,
    },
    Broken {
        cursor: Pos,
        reason: String,
        next_probe: Instant,
        probing: bool,
    },
}

struct InFlight {
    count: usize,
    first_prev: Pos,
}

struct Target {
    name: Arc<str>,
    dead_letters: bool,
    /// The Fanner stream's name (metrics labels); the backing name for the dead-letter stream.
    stream: Arc<str>,
    subscriptions: Vec<String>,
    mode: Mode,
    queue: VecDeque<Delivery>,
    in_flight: Option<InFlight>,
    /// Bumped whenever in-flight work is abandoned, so its late result is ignored.
    generation: u64,
    retry_at: Option<Instant>,
    failures: u32,
    failing_since: Option<Instant>,
    /// A put succeeded since the worker started or the stream last broke.
    confirmed: bool,
}

impl Target {
    fn new(name: Arc<str>, stream: Arc<str>, dead_letters: bool) -> Target {
        Target {
            name,
            dead_letters,
            stream,
            subscriptions: Vec::new(),
            mode: Mode::Attached,
            queue: VecDeque::new(),
            in_flight: None,
            generation: 0,
            retry_at: None,
            failures: 0,
            failing_since: None,
            confirmed: false,
        }
    }

    fn owed(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, |f| f.count)
    }

    /// Every record up to this position that was meant for the stream has been written to it.
    fn coverage(&self, main_read: &Pos) -> Pos {
        if let Some(in_flight) = &self.in_flight {
            return in_flight.first_prev.clone();
        }
        if let Some(first) = self.queue.front() {
            return first.prev.clone();
        }
        match &self.mode {
            Mode::Attached => main_read.clone(),
            Mode::Behind { position, .. } => position.clone(),
            Mode::Broken { cursor, .. } => cursor.clone(),
        }
    }

    fn is_attached(&self) -> bool {
        matches!(self.mode, Mode::Attached)
    }
}

/// How long to wait after a failed read or checkpoint before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// At most one forced route-table refresh per shard in this interval.
const REFRESH_GAP: Duration = Duration::from_secs(1);
/// Batch marks kept for estimating lag in records.
const MAX_MARKS: usize = 10_000;

/// Everything a shard worker shares with the rest of the engine.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub backend: Arc<dyn StreamBackend>,
    pub routes: Arc<LiveRoutes>,
    pub reports: mpsc::UnboundedSender<Report>,
    pub status: StatusBoard,
    /// Hand-overs from a hydration to live delivery are recorded before any record after them
    /// is routed, so the worker awaits them itself.
    pub link: Arc<dyn ControlPlaneLink>,
}

enum Io {
    MainRead {
        reader: Option<Box<dyn ShardReader>>,
        result: Result<ReadBatch, StreamError>,
    },
    CatchUpRead {
        target: Arc<str>,
        generation: u64,
        reader: Option<Box<dyn ShardReader>>,
        result: Result<ReadBatch, StreamError>,
    },
    Put {
        target: Arc<str>,
        generation: u64,
        deliveries: Vec<Delivery>,
        result: Result<PutAllOutcome, StreamError>,
    },
    Probe {
        target: Arc<str>,
        generation: u64,
        result: Result<bool, StreamError>,
    },
    Checkpoint {
        checkpoint: Checkpoint,
        result: Result<(), CoordinatorError>,
    },
}

struct Main {
    reader: Reader,
    /// The last record routed.
    read: Pos,
    end: bool,
    idle: bool,
    retry_at: Option<Instant>,
    millis_behind: Option<i64>,
    /// Records routed since the worker started.
    count: u64,
    /// (position after a batch, `count` there), oldest first, starting with where the worker
    /// started: lag in records, to a read batch.
    marks: VecDeque<(Pos, u64)>,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    shard: String,
    key: String,
    lease: LeaseHandle,
    main: Main,
    targets: HashMap<Arc<str>, Target>,
    io: FuturesUnordered<BoxFuture<'static, Io>>,
    written: Checkpoint,
    checkpointing: bool,
    next_checkpoint: Instant,
    revision: i64,
    last_refresh: Option<Instant>,
    draining: Option<Instant>,
    exit: Option<Exit>,
}

impl Worker {
    /// A worker resuming from `checkpoint`, which the scheduler has already read successfully
    /// (an unreadable one refuses the shard there, before any worker starts).
    pub(crate) fn new(
        shared: Arc<Shared>,
        shard: String,
        lease: LeaseHandle,
        checkpoint: Option<&str>,
    ) -> Result<Worker, String> {
        let now = Instant::now();
        let written = match checkpoint.map(Checkpoint::parse) {
            None => Checkpoint {
                v: checkpoint::VERSION,
                ..Checkpoint::default()
            },
            Some(parsed) => parsed?,
        };
        let main_read = from_position(&written.main);
        let mut targets = HashMap::new();
        for (name, position) in &written.behind {
            let name: Arc<str> = Arc::from(name.as_str());
            let position = from_position(position);
            if cmp_pos(&position, &main_read) != Ordering::Less {
                continue;
            }
            let dead_letters = *name == *shared.config.dead_letters();
            let mut target = Target::new(name.clone(), name.clone(), dead_letters);
            target.mode = Mode::Behind {
                reader: Reader::Closed,
                position,
                idle: false,
                millis_behind: None,
            };
            targets.insert(name, target);
        }
        let revision = shared.routes.load().revision;
        let mut worker = Worker {
            key: lease.key(),
            shard,
            lease,
            main: Main {
                reader: Reader::Closed,
                read: main_read.clone(),
                end: false,
                idle: false,
                retry_at: None,
                millis_behind: None,
                count: 0,
                marks: VecDeque::from([(main_read.clone(), 0)]),
            },
            targets,
            io: FuturesUnordered::new(),
            written,
            checkpointing: false,
            next_checkpoint: now,
            revision,
            last_refresh: None,
            draining: None,
            exit: None,
            shared,
        };
        worker.sync_targets();
        Ok(worker)
    }

    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) -> Exit {
        tracing::info!(shard = %self.key, position = ?self.main.read, behind = self.targets.len(), "Reading shard.");
        let mut revisions = self.shared.routes.subscribe();
        let exit = loop {
            self.start_io();
            if let Some(exit) = self.exit {
                break exit;
            }
            if let Some(exit) = self.finished_draining().await {
                break exit;
            }
            let wake = self.next_wake();
            tokio::select! {
                Some(io) = self.io.next(), if !self.io.is_empty() => self.handle(io).await,
                () = tokio::time::sleep_until(wake) => {}
                () = self.lease.lost() => self.exit = Some(Exit::Lost),
                changed = stop.changed(), if self.draining.is_none() => {
                    if changed.is_err() || *stop.borrow_and_update() {
                        tracing::info!(shard = %self.key, "Draining shard.");
                        self.draining = Some(Instant::now() + self.shared.config.drain_timeout);
                    }
                }
                changed = revisions.changed() => {
                    if changed.is_ok() {
                        self.sync_targets();
                    }
                }
            }
        };
        self.shared.status.remove(&self.key);
        tracing::info!(shard = %self.key, ?exit, "Stopped reading shard.");
        exit
    }

    fn next_wake(&self) -> Instant {
        // Nothing due: sleep until IO, a route change, a stop or the loss of the lease.
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if !self.checkpointing {
            wake = wake.min(self.next_checkpoint);
        }
        if let Some(at) = self.main.retry_at {
            wake = wake.min(at);
        }
        for target in self.targets.values() {
            if let Some(at) = target.retry_at {
                wake = wake.min(at);
            }
            if let Some(since) = target.failing_since
                && target.is_attached()
            {
                wake = wake.min(since + self.shared.config.max_stall);
            }
            if let Mode::Broken { next_probe, .. } = target.mode {
                wake = wake.min(next_probe);
            }
        }
        if let Some(deadline) = self.draining {
            wake = wake.min(deadline);
        }
        wake
    }

    /// Starts whatever IO is due.
    fn start_io(&mut self) {
        let now = Instant::now();
        if self.lease.is_lost() {
            self.exit = Some(Exit::Lost);
            return;
        }
        self.stall_check(now);
        if self.draining.is_none() {
            self.start_main_read(now);
            self.start_catch_up_reads(now);
        }
        self.start_puts(now);
        self.start_probes(now);
        if !self.checkpointing && now >= self.next_checkpoint {
            self.next_checkpoint = now + self.shared.config.checkpoint_interval;
            let checkpoint = self.compose();
            self.publish_status(&checkpoint);
            if checkpoint != self.written {
                self.write_checkpoint(checkpoint);
            } else if checkpoint.finished() {
                self.exit = Some(Exit::Finished);
            }
        }
    }

    fn write_checkpoint(&mut self, checkpoint: Checkpoint) {
        self.checkpointing = true;
        let lease = self.lease.clone();
        self.io.push(Box::pin(async move {
            let result = lease.checkpoint(&checkpoint.to_json()).await;
            Io::Checkpoint { checkpoint, result }
        }));
    }

    /// Whether a drain in progress is over; if so, the last checkpoint is written and the
    /// runtime releases the lease.
    async fn finished_draining(&mut self) -> Option<Exit> {
        let deadline = self.draining?;
        let busy = self.targets.values().any(|t| {
            t.in_flight.is_some() || (!t.queue.is_empty() && !matches!(t.mode, Mode::Broken { .. }))
        });
        if busy && Instant::now() < deadline {
            return None;
        }
        if busy {
            tracing::warn!(shard = %self.key, "Drain timed out; streams still owed records continue from their positions next time.");
        }
        let checkpoint = self.compose();
        if checkpoint != self.written {
            let result = tokio::time::timeout(
                shard_runtime::FINAL_CHECKPOINT_WAIT,
                self.lease.checkpoint(&checkpoint.to_json()),
            )
            .await;
            match result {
                Ok(Ok(())) => self.written = checkpoint,
                Ok(Err(error)) => {
                    tracing::warn!(shard = %self.key, %error, "Final checkpoint failed.");
                }
                Err(_) => tracing::warn!(shard = %self.key, "Final checkpoint timed out."),
            }
        }
        Some(Exit::Released)
    }

    async fn handle(&mut self, io: Io) {
        match io {
            Io::MainRead { reader, result } => self.on_main_read(reader, result).await,
            Io::CatchUpRead {
                target,
                generation,
                reader,
                result,
            } => self.on_catch_up_read(&target, generation, reader, result),
            Io::Put {
                target,
                generation,
                deliveries,
                result,
            } => self.on_put(&target, generation, deliveries, result),
            Io::Probe {
                target,
                generation,
                result,
            } => self.on_probe(&target, generation, result),
            Io::Checkpoint { checkpoint, result } => {
                self.checkpointing = false;
                match result {
                    Ok(()) => {
                        metrics::counter!("fanner_engine_checkpoints_total").increment(1);
                        let finished = checkpoint.finished();
                        self.written = checkpoint;
                        if finished {
                            self.exit = Some(Exit::Finished);
                        }
                    }
                    Err(CoordinatorError::LeaseLost { .. }) => {
                        tracing::warn!(shard = %self.key, "Lease taken over; stopping.");
                        self.exit = Some(Exit::Lost);
                    }
                    Err(error) => {
                        tracing::warn!(shard = %self.key, %error, "Checkpoint failed; retrying.");
                        self.next_checkpoint = Instant::now() + RETRY_PAUSE;
                    }
                }
            }
        }
    }

    /// Follows a new route table: streams no longer in it stop receiving (what was queued for
    /// them is dropped; a write already sent completes), the others learn their subscriptions.
    fn sync_targets(&mut self) {
        let table = self.shared.routes.load();
        self.revision = table.revision;
        let mut denied = Vec::new();
        self.targets.retain(|name, target| {
            if target.dead_letters {
                return true;
            }
            match table.target(name) {
                Some(info) => {
                    target.subscriptions = info.subscriptions.clone();
                    target.stream = info.stream.clone();
                    true
                }
                None => {
                    for delivery in &target.queue {
                        if let Some(subscription) = &delivery.subscription {
                            denied.push((subscription.clone(), target.stream.clone()));
                        }
                    }
                    tracing::info!(stream = %name, "Stream no longer in the route table; delivery stopped.");
                    false
                }
            }
        });
        count_pairs("fanner_engine_denied_records_total", denied);
    }
}
