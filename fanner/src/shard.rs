//! One GES shard, held under a lease: its main cursor, a delivery state per consumer stream,
//! and the checkpoint that ties them together.
//!
//! A worker is a single task that owns all of the shard's state. Every slow operation (a read,
//! a write to a stream, a checkpoint, a probe of a broken stream) runs as a
//! future in one `FuturesUnordered` and hands its result back to the loop, so one stream's
//! slow write never waits for another's and no state is shared between tasks.

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
    StreamSpec,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use shard_runtime::{CoordinatorError, Exit, LeaseHandle};

use crate::checkpoint::{self, Checkpoint};
use crate::config::EngineConfig;
use crate::dead_letter::{self, DeadLetter, Reason};
use crate::router::{self, RouteIndex, Routing};
use crate::routes::LiveRoutes;
use crate::status::{Report, ShardStatus, StatusBoard, TargetMode, TargetStatus};

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

    fn start_main_read(&mut self, now: Instant) {
        if self.main.end
            || !matches!(self.main.reader, Reader::Closed | Reader::Ready(_))
            || self.main.retry_at.is_some_and(|at| now < at)
        {
            return;
        }
        let reader = match std::mem::replace(&mut self.main.reader, Reader::Busy) {
            Reader::Ready(reader) => Some(reader),
            _ => None,
        };
        let wait = self.main.idle.then_some(self.shared.config.idle_wait);
        let read = self.read(reader, &self.main.read.clone(), wait);
        self.io.push(Box::pin(async move {
            let (reader, result) = read.await;
            Io::MainRead { reader, result }
        }));
    }

    fn start_catch_up_reads(&mut self, now: Instant) {
        let mut slots = self.shared.config.max_catchup_readers.saturating_sub(
            self.targets
                .values()
                .filter(|t| matches!(&t.mode, Mode::Behind { reader, .. } if reader.holds_slot()))
                .count(),
        );
        let room = self.catch_up_room();
        let mut reads = Vec::new();
        for target in self.targets.values_mut() {
            let owed = target.owed();
            let Mode::Behind {
                reader,
                position,
                idle,
                ..
            } = &mut target.mode
            else {
                continue;
            };
            if matches!(reader, Reader::Busy)
                || owed >= room
                || target.retry_at.is_some_and(|at| now < at)
            {
                continue;
            }
            if matches!(reader, Reader::Closed) {
                if slots == 0 {
                    continue;
                }
                slots -= 1;
            }
            let open = match std::mem::replace(reader, Reader::Busy) {
                Reader::Ready(reader) => Some(reader),
                _ => None,
            };
            reads.push((
                target.name.clone(),
                target.generation,
                open,
                position.clone(),
                *idle,
            ));
        }
        for (name, generation, open, position, idle) in reads {
            let wait = idle.then_some(self.shared.config.idle_wait);
            let read = self.read(open, &position, wait);
            self.io.push(Box::pin(async move {
                let (reader, result) = read.await;
                Io::CatchUpRead {
                    target: name,
                    generation,
                    reader,
                    result,
                }
            }));
        }
    }

    /// A read of the next batch, opening a reader after `from` if there is none.
    fn read(
        &self,
        reader: Option<Box<dyn ShardReader>>,
        from: &Pos,
        wait: Option<Duration>,
    ) -> impl Future<Output = (Option<Box<dyn ShardReader>>, Result<ReadBatch, StreamError>)>
    + Send
    + 'static {
        let backend = self.shared.backend.clone();
        let ges = self.shared.config.ges.clone();
        let shard = self.shard.clone();
        let start = start_at(from);
        let limit = self.shared.config.read_batch;
        async move {
            let mut reader = match reader {
                Some(reader) => reader,
                None => match backend.open_reader(&ges, &shard, start).await {
                    Ok(reader) => reader,
                    Err(error) => return (None, Err(error)),
                },
            };
            if let Some(wait) = wait {
                reader.wait_for_records(wait).await;
            }
            let result = reader.next_batch(limit).await;
            (Some(reader), result)
        }
    }

    fn start_puts(&mut self, now: Instant) {
        let table = self.shared.routes.load();
        let clock = self.shared.routes.now();
        let policy = self.shared.config.retry_policy();
        let mut denied: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for target in self.targets.values_mut() {
            if target.in_flight.is_some()
                || target.queue.is_empty()
                || matches!(target.mode, Mode::Broken { .. })
                || target.retry_at.is_some_and(|at| now < at)
            {
                continue;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(delivery) = target.queue.front() {
                let size = delivery.data.len() + delivery.key.len();
                if batch.len() == MAX_PUT_RECORDS
                    || (!batch.is_empty() && bytes + size > MAX_PUT_BYTES)
                {
                    break;
                }
                let Some(delivery) = target.queue.pop_front() else {
                    break;
                };
                if still_allowed(&table, clock, &delivery, &target.name) {
                    bytes += size;
                    batch.push(delivery);
                } else if let Some(subscription) = &delivery.subscription {
                    denied.push((subscription.clone(), target.stream.clone()));
                }
            }
            if batch.is_empty() {
                continue;
            }
            target.in_flight = Some(InFlight {
                count: batch.len(),
                first_prev: batch[0].prev.clone(),
            });
            metrics::histogram!("fanner_engine_put_batch_records").record(batch.len() as f64);
            let backend = self.shared.backend.clone();
            let name = target.name.clone();
            let generation = target.generation;
            let policy = policy.clone();
            self.io.push(Box::pin(async move {
                let records: Vec<PutRecord> = batch
                    .iter()
                    .map(|d| PutRecord {
                        partition_key: String::from_utf8_lossy(&d.key).into_owned(),
                        data: d.data.clone(),
                    })
                    .collect();
                let result = streams::put_all(backend.as_ref(), &name, &records, &policy).await;
                Io::Put {
                    target: name,
                    generation,
                    deliveries: batch,
                    result,
                }
            }));
        }
        count_pairs("fanner_engine_denied_records_total", denied);
    }

    fn start_probes(&mut self, now: Instant) {
        for target in self.targets.values_mut() {
            let Mode::Broken {
                next_probe,
                probing,
                ..
            } = &mut target.mode
            else {
                continue;
            };
            if *probing || now < *next_probe {
                continue;
            }
            *probing = true;
            let backend = self.shared.backend.clone();
            let name = target.name.clone();
            let generation = target.generation;
            let create = target
                .dead_letters
                .then(|| dead_letter_spec(&self.shared.config));
            self.io.push(Box::pin(async move {
                let result = match create {
                    Some(spec) => backend.create_stream(&spec).await.map(|d| d.active),
                    None => backend
                        .describe_stream(&name)
                        .await
                        .map(|d| d.is_some_and(|d| d.active)),
                };
                Io::Probe {
                    target: name,
                    generation,
                    result,
                }
            }));
        }
    }

    /// A stream that cannot keep up falls behind: the main cursor stops feeding it (so it no
    /// longer holds back the checkpoint), and it continues with its own reader from the last
    /// record the main cursor gave it, while what is already queued keeps being written.
    /// A stream behind is attached again once its reader reached the main cursor and its queue
    /// is down to the catch-up room.
    fn stall_check(&mut self, now: Instant) {
        let max_backlog = self.shared.config.max_backlog;
        let max_stall = self.shared.config.max_stall;
        let room = self.catch_up_room();
        for target in self.targets.values_mut() {
            match &target.mode {
                Mode::Attached => {
                    let stalled = target.owed() > max_backlog
                        || target
                            .failing_since
                            .is_some_and(|since| now >= since + max_stall);
                    if stalled {
                        tracing::info!(shard = %self.key, stream = %target.name, owed = target.owed(), "Stream fell behind; it continues from its own position.");
                        metrics::counter!("fanner_engine_fell_behind_total", "stream" => target.stream.to_string()).increment(1);
                        target.mode = Mode::Behind {
                            reader: Reader::Closed,
                            position: self.main.read.clone(),
                            idle: false,
                            millis_behind: None,
                        };
                    }
                }
                Mode::Behind { position, .. } => {
                    let caught_up = cmp_pos(position, &self.main.read) != Ordering::Less;
                    let healthy = target.failing_since.is_none();
                    if caught_up && healthy && target.owed() <= room {
                        tracing::info!(shard = %self.key, stream = %target.name, "Stream caught up with the main cursor.");
                        target.mode = Mode::Attached;
                    }
                }
                Mode::Broken { .. } => {}
            }
        }
    }

    /// Deliveries a stream behind may have queued before its reader reads on.
    fn catch_up_room(&self) -> usize {
        (self.shared.config.max_backlog / 2).max(1)
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

    async fn on_main_read(
        &mut self,
        reader: Option<Box<dyn ShardReader>>,
        result: Result<ReadBatch, StreamError>,
    ) {
        let batch = match result {
            Ok(batch) => batch,
            Err(StreamError::ShardNotFound { .. }) => {
                tracing::info!(shard = %self.key, "Shard no longer exists; nothing left to read.");
                self.main.reader = Reader::Closed;
                self.main.end = true;
                return;
            }
            Err(error) => {
                tracing::warn!(shard = %self.key, %error, "Reading the GES failed; retrying.");
                metrics::counter!("fanner_engine_read_errors_total").increment(1);
                self.main.reader = Reader::Closed;
                self.main.retry_at = Some(Instant::now() + RETRY_PAUSE);
                return;
            }
        };
        self.main.reader = reader.map_or(Reader::Closed, Reader::Ready);
        self.main.retry_at = None;
        if self.draining.is_some() {
            // Not routed, so not owed: the next reader of this shard reads these records again.
            self.main.reader = Reader::Closed;
            return;
        }
        self.main.idle = batch.records.is_empty();
        self.main.millis_behind = batch.millis_behind;
        if let Some(millis) = batch.millis_behind {
            metrics::gauge!("fanner_engine_ges_behind_milliseconds", "shard" => self.key.clone())
                .set(millis as f64);
        }
        if !batch.records.is_empty() {
            metrics::histogram!("fanner_engine_read_batch_records")
                .record(batch.records.len() as f64);
            metrics::counter!("fanner_engine_ges_records_total", "shard" => self.key.clone())
                .increment(batch.records.len() as u64);
        }
        let mut table = self.shared.routes.load();
        let mut tally = Tally::default();
        for record in &batch.records {
            let now = self.shared.routes.now();
            let unknown = matches!(
                judge(record, &table, now),
                Verdict::Bad {
                    reason: Reason::UnknownEvent,
                    ..
                }
            );
            if unknown && self.may_refresh(record, &table) {
                self.last_refresh = Some(Instant::now());
                if let Some(arrival) = record.arrival_time {
                    self.shared.routes.refresh_if_older(arrival).await;
                }
                table = self.shared.routes.load();
            }
            let verdict = judge(record, &table, now);
            let seq: Arc<str> = Arc::from(record.sequence.as_str());
            let prev = self.main.read.replace(seq.clone());
            self.main.count += 1;
            self.deliver(record, seq, prev, verdict, &table, None, &mut tally);
        }
        if let Some(last) = &self.main.read
            && !batch.records.is_empty()
        {
            self.main
                .marks
                .push_back((Some(last.clone()), self.main.count));
            if self.main.marks.len() > MAX_MARKS {
                self.main.marks.pop_front();
            }
        }
        tally.flush();
        if batch.shard_end {
            tracing::info!(shard = %self.key, "Read the closed shard to its end.");
            self.main.end = true;
            self.main.reader = Reader::Closed;
            // Children may start as soon as this is recorded.
            self.next_checkpoint = Instant::now();
        }
        if table.revision != self.revision {
            self.sync_targets();
        }
    }

    /// An unknown event triggers one refresh of a table older than the record, at most once per
    /// [`REFRESH_GAP`].
    fn may_refresh(&self, record: &Record, table: &RouteIndex) -> bool {
        record
            .arrival_time
            .is_some_and(|arrival| arrival > table.generated_at)
            && self
                .last_refresh
                .is_none_or(|at| at.elapsed() >= REFRESH_GAP)
    }

    /// Queues `record` for every attached stream it goes to (or, with `only`, for that one
    /// stream), or for the dead-letter stream.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        record: &Record,
        seq: Arc<str>,
        prev: Pos,
        verdict: Verdict<'_>,
        table: &RouteIndex,
        only: Option<&Arc<str>>,
        tally: &mut Tally,
    ) {
        match verdict {
            Verdict::Deliver { event, routed, key } => {
                for slot in routed.deliveries() {
                    let info = &table.targets()[slot.target];
                    if only.is_some_and(|name| *name != info.backing_name) {
                        continue;
                    }
                    let target = self
                        .targets
                        .entry(info.backing_name.clone())
                        .or_insert_with(|| {
                            let mut target =
                                Target::new(info.backing_name.clone(), info.stream.clone(), false);
                            target.subscriptions = info.subscriptions.clone();
                            target
                        });
                    if only.is_none() && !target.is_attached() {
                        continue;
                    }
                    target.queue.push_back(Delivery {
                        prev: prev.clone(),
                        data: record.data.clone(),
                        key: key.clone(),
                        event: event.clone(),
                        subscription: Some(slot.subscription.clone()),
                        revision: table.revision,
                        access_expires_at: slot.access_expires_at,
                        arrival: record.arrival_time,
                    });
                }
                if only.is_none() {
                    for slot in routed.denied() {
                        let info = &table.targets()[slot.target];
                        tally.add(&slot.subscription, &info.stream, Count::Denied);
                    }
                }
            }
            Verdict::Unrouted => {
                if only.is_none() {
                    metrics::counter!("fanner_engine_unrouted_records_total").increment(1);
                }
            }
            Verdict::Bad {
                reason,
                detail,
                event_name,
                event_id,
                intended,
            } => {
                let dead_letters: Arc<str> = Arc::from(self.shared.config.dead_letters());
                if only.is_some_and(|name| *name != dead_letters) {
                    return;
                }
                if only.is_none() {
                    metrics::counter!("fanner_engine_dead_letter_records_total", "reason" => reason.as_str())
                        .increment(1);
                    for slot in intended {
                        let info = &table.targets()[slot.target];
                        tally.add(&slot.subscription, &info.stream, Count::DeadLettered);
                    }
                    tracing::debug!(shard = %self.key, sequence = %seq, reason = reason.as_str(), %detail, "Dead-lettering a record.");
                }
                let target = self.targets.entry(dead_letters.clone()).or_insert_with(|| {
                    Target::new(dead_letters.clone(), dead_letters.clone(), true)
                });
                if only.is_none() && !target.is_attached() {
                    return;
                }
                let key = Bytes::from(seq.to_string());
                let header = DeadLetter {
                    format: String::new(),
                    reason,
                    detail,
                    ges: self.shared.config.ges.clone(),
                    shard: self.shard.clone(),
                    sequence: seq.to_string(),
                    partition_key: record.partition_key.clone(),
                    arrival_time: record.arrival_time,
                    event_name,
                    event_id,
                    original_size: 0,
                    truncated: false,
                    dead_lettered_at: Utc::now(),
                };
                let data = dead_letter::encode(header, &record.data, MAX_RECORD_BYTES - key.len());
                target.queue.push_back(Delivery {
                    prev,
                    data,
                    key,
                    event: Bytes::new(),
                    subscription: None,
                    revision: table.revision,
                    access_expires_at: None,
                    arrival: record.arrival_time,
                });
            }
        }
    }

    fn on_catch_up_read(
        &mut self,
        name: &Arc<str>,
        generation: u64,
        reader: Option<Box<dyn ShardReader>>,
        result: Result<ReadBatch, StreamError>,
    ) {
        let Some(target) = self.targets.get_mut(name) else {
            return;
        };
        if target.generation != generation {
            return;
        }
        let Mode::Behind {
            reader: slot,
            idle,
            millis_behind,
            ..
        } = &mut target.mode
        else {
            return;
        };
        let batch = match result {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(shard = %self.key, stream = %name, %error, "Catch-up read failed; retrying.");
                *slot = Reader::Closed;
                target.retry_at = Some(Instant::now() + RETRY_PAUSE);
                return;
            }
        };
        *slot = reader.map_or(Reader::Closed, Reader::Ready);
        *idle = batch.records.is_empty();
        *millis_behind = batch.millis_behind;
        let table = self.shared.routes.load();
        let now = self.shared.routes.now();
        let mut tally = Tally::default();
        let mut reached = false;
        for record in &batch.records {
            let seq: Arc<str> = Arc::from(record.sequence.as_str());
            if cmp_pos(&Some(seq.clone()), &self.main.read) == Ordering::Greater {
                reached = true;
                break;
            }
            let prev = match self.targets.get(name).map(|t| &t.mode) {
                Some(Mode::Behind { position, .. }) => position.clone(),
                _ => return,
            };
            let verdict = judge(record, &table, now);
            self.deliver(
                record,
                seq.clone(),
                prev,
                verdict,
                &table,
                Some(name),
                &mut tally,
            );
            if let Some(Target {
                mode: Mode::Behind { position, .. },
                ..
            }) = self.targets.get_mut(name)
            {
                *position = Some(seq);
            }
        }
        tally.flush();
        let Some(Target {
            mode: Mode::Behind { reader, .. },
            ..
        }) = self.targets.get_mut(name)
        else {
            return;
        };
        if reached || batch.shard_end {
            // Past records this stream did not take (the main cursor feeds them once the
            // stream is attached, or a new reader reads them), or nothing more to read.
            *reader = Reader::Closed;
        }
    }

    fn on_put(
        &mut self,
        name: &Arc<str>,
        generation: u64,
        deliveries: Vec<Delivery>,
        result: Result<PutAllOutcome, StreamError>,
    ) {
        let Some(target) = self.targets.get_mut(name) else {
            return;
        };
        if target.generation != generation {
            return;
        }
        target.in_flight = None;
        let now = Instant::now();
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                for delivery in deliveries.into_iter().rev() {
                    target.queue.push_front(delivery);
                }
                let reason = match &error {
                    StreamError::NotFound(_) => {
                        format!("backing stream {name:?} does not exist")
                    }
                    other => format!("backing stream {name:?} refuses writes: {other}"),
                };
                self.break_target(name, reason);
                return;
            }
        };
        let mut tally = Tally::default();
        let mut failed = Vec::new();
        let wall = Utc::now();
        for (delivery, written) in deliveries.into_iter().zip(outcome.outcomes) {
            let subscription = delivery.subscription.clone();
            match written {
                Ok(_) => {
                    if let Some(subscription) = &subscription {
                        tally.add(subscription, &target.stream, Count::Delivered);
                    } else {
                        metrics::counter!("fanner_engine_dead_letters_written_total").increment(1);
                    }
                    if let Some(arrival) = delivery.arrival {
                        let seconds = (wall - arrival).num_microseconds().unwrap_or(0) as f64 / 1e6;
                        metrics::histogram!("fanner_engine_delivery_latency_seconds")
                            .record(seconds);
                    }
                }
                Err(_) => {
                    if let Some(subscription) = &subscription {
                        tally.add(subscription, &target.stream, Count::Retried);
                    }
                    failed.push(delivery);
                }
            }
        }
        tally.flush();
        if failed.is_empty() {
            target.failures = 0;
            target.failing_since = None;
            target.retry_at = None;
            if !target.confirmed {
                target.confirmed = true;
                if !target.subscriptions.is_empty() {
                    let _ = self.shared.reports.send(Report::Healthy {
                        subscriptions: target.subscriptions.clone(),
                    });
                }
            }
        } else {
            target.failures += 1;
            target.failing_since.get_or_insert(now);
            let pause = self.shared.config.retry_policy().backoff(target.failures);
            target.retry_at = Some(now + pause);
            tracing::debug!(shard = %self.key, stream = %name, failed = failed.len(), pause_ms = pause.as_millis() as u64, "Some records were not written; retrying them.");
            for delivery in failed.into_iter().rev() {
                target.queue.push_front(delivery);
            }
        }
    }

    /// The stream is missing or refuses writes: its subscriptions are reported failed, its
    /// position is kept, and it is probed until it can take writes again.
    fn break_target(&mut self, name: &Arc<str>, reason: String) {
        let main_read = self.main.read.clone();
        let probe = self.shared.config.probe_interval;
        let Some(target) = self.targets.get_mut(name) else {
            return;
        };
        let cursor = target.coverage(&main_read);
        tracing::warn!(shard = %self.key, stream = %name, %reason, "Stream cannot take deliveries; keeping its position.");
        metrics::counter!("fanner_engine_broken_total", "stream" => target.stream.to_string())
            .increment(1);
        target.generation += 1;
        target.queue.clear();
        target.in_flight = None;
        target.failing_since = None;
        target.retry_at = None;
        target.confirmed = false;
        if !target.subscriptions.is_empty() {
            let _ = self.shared.reports.send(Report::Failed {
                subscriptions: target.subscriptions.clone(),
                reason: reason.clone(),
            });
        }
        target.mode = Mode::Broken {
            cursor,
            reason,
            next_probe: Instant::now() + probe,
            probing: false,
        };
    }

    fn on_probe(&mut self, name: &Arc<str>, generation: u64, result: Result<bool, StreamError>) {
        let probe = self.shared.config.probe_interval;
        let Some(target) = self.targets.get_mut(name) else {
            return;
        };
        if target.generation != generation {
            return;
        }
        let Mode::Broken {
            cursor,
            next_probe,
            probing,
            ..
        } = &mut target.mode
        else {
            return;
        };
        *probing = false;
        match result {
            Ok(true) => {
                tracing::info!(shard = %self.key, stream = %name, "Stream is back; delivering what it missed.");
                let position = cursor.clone();
                target.mode = Mode::Behind {
                    reader: Reader::Closed,
                    position,
                    idle: false,
                    millis_behind: None,
                };
            }
            Ok(false) => *next_probe = Instant::now() + probe,
            Err(error) => {
                tracing::debug!(shard = %self.key, stream = %name, %error, "Stream still unavailable.");
                *next_probe = Instant::now() + probe;
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

    /// The checkpoint that the current state allows. The main position never moves back; a
    /// stream that has not received everything up to it is listed with its own position.
    fn compose(&self) -> Checkpoint {
        let written_main = from_position(&self.written.main);
        let mut candidate = self.main.read.clone();
        for target in self.targets.values().filter(|t| t.is_attached()) {
            candidate = min_pos(candidate, target.coverage(&self.main.read));
        }
        let main = if cmp_pos(&candidate, &written_main) == Ordering::Less {
            written_main
        } else {
            candidate
        };
        let behind = self
            .targets
            .values()
            .filter_map(|target| {
                let coverage = target.coverage(&self.main.read);
                (!target.is_attached() || cmp_pos(&coverage, &main) == Ordering::Less)
                    .then(|| (target.name.to_string(), to_position(&coverage)))
            })
            .collect();
        Checkpoint {
            v: checkpoint::VERSION,
            main_done: self.main.end && cmp_pos(&main, &self.main.read) == Ordering::Equal,
            main: to_position(&main),
            behind,
        }
    }

    /// GES records the main cursor read after `pos`, to a read batch; `None` when `pos` is
    /// older than this worker's memory.
    fn records_after(&self, pos: &Pos) -> Option<u64> {
        if cmp_pos(pos, &self.main.read) != Ordering::Less {
            return Some(0);
        }
        let index = self
            .main
            .marks
            .partition_point(|(mark, _)| cmp_pos(mark, pos) != Ordering::Greater);
        let (_, count) = self.main.marks.get(index.checked_sub(1)?)?;
        Some(self.main.count.saturating_sub(*count))
    }

    fn publish_status(&self, checkpoint: &Checkpoint) {
        let wall = Utc::now();
        let mut targets: Vec<TargetStatus> = self
            .targets
            .values()
            .map(|target| {
                let coverage = target.coverage(&self.main.read);
                let oldest = target.queue.front().and_then(|d| d.arrival);
                let (mode, reason, lag_ms) = match &target.mode {
                    Mode::Attached => (
                        TargetMode::Attached,
                        None,
                        Some(oldest.map_or(0, |at| (wall - at).num_milliseconds().max(0))),
                    ),
                    Mode::Behind { millis_behind, .. } => (
                        TargetMode::Behind,
                        None,
                        oldest
                            .map(|at| (wall - at).num_milliseconds().max(0))
                            .or(*millis_behind),
                    ),
                    Mode::Broken { reason, .. } => (TargetMode::Broken, Some(reason.clone()), None),
                };
                let lag_records = self.records_after(&coverage);
                let labels = [
                    ("shard", self.key.clone()),
                    ("stream", target.stream.to_string()),
                ];
                if let Some(records) = lag_records {
                    metrics::gauge!("fanner_engine_target_lag_records", &labels)
                        .set(records as f64);
                }
                if let Some(millis) = lag_ms {
                    metrics::gauge!("fanner_engine_target_lag_milliseconds", &labels)
                        .set(millis as f64);
                }
                TargetStatus {
                    backing_name: target.name.to_string(),
                    mode,
                    reason,
                    position: to_position(&coverage),
                    owed: target.owed(),
                    lag_records,
                    lag_ms,
                }
            })
            .collect();
        targets.sort_by(|a, b| a.backing_name.cmp(&b.backing_name));
        self.shared.status.set(ShardStatus {
            key: self.key.clone(),
            read_position: to_position(&self.main.read),
            checkpoint: checkpoint.main.clone(),
            millis_behind: self.main.millis_behind,
            read_to_end: self.main.end,
            targets,
        });
    }
}

/// Whether a queued delivery may still be written: access is re-checked against the newest
/// table, so a revoked or expired grant stops deliveries that were queued before it ended.
fn still_allowed(
    table: &RouteIndex,
    now: DateTime<Utc>,
    delivery: &Delivery,
    target: &str,
) -> bool {
    if delivery.subscription.is_none() {
        return true;
    }
    if delivery.revision == table.revision {
        return delivery.access_expires_at.is_none_or(|until| until > now);
    }
    table.permits(&delivery.event, target, now).is_some()
}

/// What to do with one GES record.
enum Verdict<'t> {
    Deliver {
        /// The event name, a slice of the record.
        event: Bytes,
        routed: router::Routed<'t>,
        key: Bytes,
    },
    /// A catalog event nobody subscribed to.
    Unrouted,
    Bad {
        reason: Reason,
        detail: String,
        /// From the envelope, when it could be read.
        event_name: Option<String>,
        event_id: Option<String>,
        /// Subscribed streams that would have received it.
        intended: Vec<&'t router::Slot>,
    },
}

fn judge<'t>(record: &Record, table: &'t RouteIndex, now: DateTime<Utc>) -> Verdict<'t> {
    let not_an_envelope = |detail: String| Verdict::Bad {
        reason: Reason::NotAnEnvelope,
        detail,
        event_name: None,
        event_id: None,
        intended: Vec::new(),
    };
    let head = match proto::EnvelopeHead::read(&record.data) {
        Ok(head) if head.event_name.is_empty() => {
            return not_an_envelope("the envelope has no event name".to_owned());
        }
        Ok(head) => head,
        Err(error) => return not_an_envelope(format!("not a protobuf envelope: {error}")),
    };
    let owned = |text: &str| Some(text.to_owned());
    let routed = match router::route(head.event_name.as_bytes(), table, now) {
        Routing::Unknown => {
            return Verdict::Bad {
                reason: Reason::UnknownEvent,
                detail: format!("event {:?} is not in the catalog", head.event_name),
                event_name: owned(head.event_name),
                event_id: owned(head.event_id),
                intended: Vec::new(),
            };
        }
        Routing::Known(routed) => routed,
    };
    if routed.deliveries().next().is_none() && routed.denied().next().is_none() {
        return Verdict::Unrouted;
    }
    let key = partition_key(&record.data, head.event_id.as_bytes());
    let size = record.data.len() + key.len();
    if size > MAX_RECORD_BYTES {
        return Verdict::Bad {
            reason: Reason::Oversize,
            detail: format!(
                "{size} bytes with the partition key; a stream record holds at most {MAX_RECORD_BYTES}"
            ),
            event_name: owned(head.event_name),
            event_id: owned(head.event_id),
            intended: routed.deliveries().collect(),
        };
    }
    Verdict::Deliver {
        event: record.data.slice_ref(head.event_name.as_bytes()),
        routed,
        key,
    }
}

/// The partition key on consumer streams: the envelope's event id (a slice of `data`), which
/// publishing makes a random UUID, so records spread evenly over shards and a record delivered
/// twice lands on the same shard as the first copy; a random key when the id is empty or too
/// long.
pub(crate) fn partition_key(data: &Bytes, event_id: &[u8]) -> Bytes {
    if !event_id.is_empty() && event_id.len() <= MAX_PARTITION_KEY_CHARS {
        data.slice_ref(event_id)
    } else {
        Bytes::from(format!("{:032x}", rand::random::<u128>()))
    }
}

pub(crate) fn dead_letter_spec(config: &EngineConfig) -> StreamSpec {
    StreamSpec {
        name: config.dead_letters(),
        shard_count: 1,
        retention_hours: config.dead_letter_retention_hours,
        tags: [("fanner".to_owned(), "dead-letters".to_owned())].into(),
    }
}

#[derive(Clone, Copy)]
enum Count {
    Delivered,
    Denied,
    Retried,
    DeadLettered,
}

/// Per-subscription counts of one batch, added to the metrics once.
#[derive(Default)]
struct Tally {
    counts: HashMap<(Arc<str>, Arc<str>), [u64; 4]>,
}

impl Tally {
    fn add(&mut self, subscription: &Arc<str>, stream: &Arc<str>, count: Count) {
        self.counts
            .entry((subscription.clone(), stream.clone()))
            .or_default()[count as usize] += 1;
    }

    fn flush(self) {
        const NAMES: [&str; 4] = [
            "fanner_engine_delivered_records_total",
            "fanner_engine_denied_records_total",
            "fanner_engine_retried_records_total",
            "fanner_engine_dead_lettered_records_total",
        ];
        for ((subscription, stream), counts) in self.counts {
            for (name, count) in NAMES.iter().zip(counts) {
                if count > 0 {
                    metrics::counter!(*name, "subscription" => subscription.to_string(), "stream" => stream.to_string())
                        .increment(count);
                }
            }
        }
    }
}

fn count_pairs(name: &'static str, pairs: Vec<(Arc<str>, Arc<str>)>) {
    for (subscription, stream) in pairs {
        metrics::counter!(name, "subscription" => subscription.to_string(), "stream" => stream.to_string())
            .increment(1);
    }
}
