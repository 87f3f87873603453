//! One shard, from lease to lake: read, classify, buffer, cut, record, write, checkpoint.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use shard_runtime::{CoordinatorError, Exit, LeaseHandle};
use streams::{Record, ShardReader, StartPosition, StreamError};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::InitialPosition;
use crate::encode::{self, EncodeError};
use crate::partition::Target;
use crate::state::{Applied, Flush, ShardState, StateError};
use crate::{GROUP, Shared};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("writing the checkpoint failed: {0}")]
    Checkpoint(String),
    #[error("a write task failed: {0}")]
    Task(String),
    #[error("the lease was lost")]
    LeaseLost,
}

/// Runs one leased shard until shutdown, shard end, lease loss or failure.
pub(crate) async fn run_shard(
    shared: Arc<Shared>,
    shard: String,
    checkpoint: Option<&str>,
    lease: LeaseHandle,
    stop: watch::Receiver<bool>,
) -> Exit {
    let state = match ShardState::restore(
        &shard,
        &shared.settings.base_prefix,
        shared.settings.encoding.format,
        shared.settings.max_object_bytes,
        checkpoint,
    ) {
        Ok(state) => state,
        Err(e) => return Exit::Failed(e.to_string()),
    };
    let _counted = shared.stats.count_shard();
    let mut worker = Worker {
        slots: Arc::new(Semaphore::new(shared.settings.max_puts_in_flight)),
        shared,
        shard,
        lease,
        stop,
        state,
        puts: JoinSet::new(),
        reserved: 0,
        held_bytes: 0,
        last_saved: None,
        next_tick: Instant::now(),
    };
    match worker.run().await {
        Ok(exit) => exit,
        Err(WorkerError::LeaseLost) => Exit::Lost,
        Err(e) => Exit::Failed(e.to_string()),
    }
}

struct Worker {
    shared: Arc<Shared>,
    shard: String,
    lease: LeaseHandle,
    stop: watch::Receiver<bool>,
    state: ShardState,
    /// Object writes; each yields the cut it wrote.
    puts: JoinSet<Result<u64, WorkerError>>,
    slots: Arc<Semaphore>,
    /// Open-partition slots this shard holds in the process budget.
    reserved: usize,
    /// Bytes this shard counts in the process budget.
    held_bytes: usize,
    last_saved: Option<String>,
    next_tick: Instant,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.stats.release_partitions(self.reserved);
        self.shared.stats.add_held_bytes(-(self.held_bytes as i64));
        metrics::gauge!("fanner_persister_freshness_seconds", "shard" => self.shard.clone())
            .set(0.0);
    }
}

impl Worker {
    fn lost(&self) -> bool {
        self.lease.is_lost()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(&mut self) -> Result<Exit, WorkerError> {
        if self.state.ended() {
            return Ok(Exit::Finished);
        }
        let from = match self.state.start() {
            Some(seq) => StartPosition::AfterSequence(seq),
            None => match self.shared.settings.initial_position {
                InitialPosition::TrimHorizon => StartPosition::TrimHorizon,
                InitialPosition::Latest => StartPosition::Latest,
            },
        };
        let mut reader = self
            .shared
            .backend
            .open_reader(&self.shared.settings.stream, &self.shard, from)
            .await?;
        tracing::info!(shard = %self.shard, "Persisting shard.");
        let mut read_errors = 0u32;
        loop {
            if self.lost() {
                return Ok(Exit::Lost);
            }
            if self.stopping() {
                return self.drain(false).await;
            }
            self.reap()?;
            if Instant::now() >= self.next_tick {
                self.maintain().await?;
                self.next_tick = Instant::now() + self.shared.settings.tick();
            }
            if self.puts.len() >= 4 * self.shared.settings.max_puts_in_flight
                || (self.over_bytes() && !self.puts.is_empty())
            {
                self.wait(None, None).await?;
                continue;
            }
            let batch = match reader.next_batch(self.shared.settings.read_batch).await {
                Ok(batch) => {
                    read_errors = 0;
                    batch
                }
                Err(e) if e.is_transient() => {
                    read_errors += 1;
                    tracing::warn!(shard = %self.shard, error = %e, "Reading the shard failed, retrying.");
                    metrics::counter!("fanner_persister_errors_total", "reason" => "read")
                        .increment(1);
                    let backoff = Duration::from_millis(100 * 2u64.pow(read_errors.min(6)));
                    self.wait(None, Some(backoff)).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let read = batch.records.len();
            metrics::counter!("fanner_persister_records_read_total").increment(read as u64);
            for record in batch.records {
                self.handle(record).await?;
            }
            for flush in self.state.take_ready() {
                self.spawn_put(flush);
            }
            self.enforce_bytes().await?;
            if batch.shard_end {
                return self.drain(true).await;
            }
            if read == 0 {
                let until_tick = self.next_tick.saturating_duration_since(Instant::now());
                let idle = self.shared.settings.poll_interval.min(until_tick);
                self.wait(Some(reader.as_mut()), Some(idle)).await?;
            }
        }
    }

    async fn handle(&mut self, record: Record) -> Result<(), WorkerError> {
        let classified = self.state.classify(record, Utc::now());
        if let Target::Errors(reason) = &classified.target {
            metrics::counter!("fanner_persister_errors_total", "reason" => reason.as_str())
                .increment(1);
        }
        if classified.needs_buffer() && !self.state.is_open(classified.target_path()) {
            self.make_room().await?;
        }
        let path = classified.target_path().to_owned();
        if let Applied::Buffered { full: true } = self.state.apply(classified) {
            let flushes = self.state.cut(&[path])?;
            self.round(flushes).await?;
        }
        self.sync_budget();
        Ok(())
    }

    /// Holds one more open-partition slot, writing our oldest partitions first when this shard
    /// is at its share of the process-wide cap.
    async fn make_room(&mut self) -> Result<(), WorkerError> {
        let cap = self.shared.settings.max_open_partitions;
        loop {
            let share = self.shared.stats.partition_share(cap);
            let open = self.state.open_partitions();
            if open >= share {
                // Several at once, so a stream of new names costs one checkpoint per batch of
                // evictions rather than per name.
                let evict = (open + 1 - share).max(share / 4).max(1);
                let targets = self.state.oldest(evict);
                let flushes = self.state.cut(&targets)?;
                self.round(flushes).await?;
                self.sync_budget();
                continue;
            }
            if self.shared.stats.try_reserve_partition(cap) {
                self.reserved += 1;
                return Ok(());
            }
            // Other shards are above their share after a rebalance; they shrink on their next
            // tick and notify.
            let notified = self.shared.stats.partition_released();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.shared.settings.tick()) => {}
            }
            if self.lost() {
                return Err(WorkerError::LeaseLost);
            }
        }
    }

    /// Gives back slots and reports bytes after partitions were opened or cut.
    fn sync_budget(&mut self) {
        let open = self.state.open_partitions();
        if self.reserved > open {
            self.shared.stats.release_partitions(self.reserved - open);
            self.reserved = open;
        }
        let held = self.state.held_bytes();
        self.shared
            .stats
            .add_held_bytes(held as i64 - self.held_bytes as i64);
        self.held_bytes = held;
    }

    fn byte_share(&self) -> usize {
        self.shared
            .stats
            .byte_share(self.shared.settings.max_buffered_bytes)
    }

    fn over_bytes(&self) -> bool {
        self.state.held_bytes() > self.byte_share()
    }

    /// Writes the oldest open partitions while this shard holds more than its byte share.
    async fn enforce_bytes(&mut self) -> Result<(), WorkerError> {
        let share = self.byte_share();
        let mut held = self.state.held_bytes();
        if held <= share {
            self.sync_budget();
            return Ok(());
        }
        let mut targets = Vec::new();
        for (target, bytes) in self.state.oldest_with_bytes() {
            if held <= share {
                break;
            }
            held -= bytes;
            targets.push(target);
        }
        let flushes = self.state.cut(&targets)?;
        self.round(flushes).await?;
        self.sync_budget();
        Ok(())
    }

    /// Periodic work: write aged partitions, shrink to this shard's shares, keep the
    /// checkpoint small and current, report.
    async fn maintain(&mut self) -> Result<(), WorkerError> {
        let settings = &self.shared.settings;
        let now = Instant::now();
        let mut targets: HashSet<String> = self
            .state
            .aged(settings.max_object_age, now)
            .into_iter()
            .collect();
        let share = self
            .shared
            .stats
            .partition_share(settings.max_open_partitions);
        let open = self.state.open_partitions();
        if open > share {
            targets.extend(self.state.oldest(open - share));
        }
        if self.state.cut_count() > settings.max_checkpoint_cuts {
            targets.extend(self.state.open_targets());
        }
        let targets: Vec<String> = targets.into_iter().collect();
        let flushes = self.state.cut(&targets)?;
        self.round(flushes).await?;
        self.enforce_bytes().await?;
        self.save_checkpoint().await?;
        let freshness = self
            .state
            .oldest_unwritten()
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        metrics::gauge!("fanner_persister_freshness_seconds", "shard" => self.shard.clone())
            .set(freshness);
        Ok(())
    }

    /// Records new cuts in the checkpoint, then writes their objects in the background.
    async fn round(&mut self, flushes: Vec<Flush>) -> Result<(), WorkerError> {
        if flushes.is_empty() {
            return Ok(());
        }
        self.sync_budget();
        self.save_checkpoint().await?;
        for flush in flushes {
            self.spawn_put(flush);
        }
        Ok(())
    }

    async fn save_checkpoint(&mut self) -> Result<(), WorkerError> {
        let checkpoint = self.state.checkpoint();
        let json = serde_json::to_string(&checkpoint)
            .map_err(|e| WorkerError::Checkpoint(e.to_string()))?;
        if self.last_saved.as_ref() == Some(&json) {
            return Ok(());
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.lease.checkpoint(&json).await {
                Ok(()) => break,
                Err(CoordinatorError::LeaseLost { .. }) => return Err(WorkerError::LeaseLost),
                Err(e) => {
                    // The write may or may not have landed: retry the same content until it
                    // surely has, and write no object before that.
                    tracing::warn!(shard = %self.shard, error = %e, "Writing the checkpoint failed, retrying.");
                    metrics::counter!("fanner_persister_errors_total", "reason" => "checkpoint")
                        .increment(1);
                    if self.lost() {
                        return Err(WorkerError::LeaseLost);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.last_saved = Some(json);
        Ok(())
    }

    fn spawn_put(&mut self, flush: Flush) {
        let shared = self.shared.clone();
        let slots = self.slots.clone();
        self.puts.spawn(write_object(shared, slots, flush));
    }

    fn on_put(
        &mut self,
        result: Result<Result<u64, WorkerError>, tokio::task::JoinError>,
    ) -> Result<(), WorkerError> {
        match result {
            Ok(Ok(cut_id)) => {
                self.state.complete(cut_id);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(WorkerError::Task(e.to_string())),
        }
    }

    /// Collects finished writes without waiting.
    fn reap(&mut self) -> Result<(), WorkerError> {
        while let Some(result) = self.puts.try_join_next() {
            self.on_put(result)?;
        }
        self.sync_budget();
        Ok(())
    }

    /// Waits for a write to finish, `timeout` to pass (when given), or shutdown / lease loss.
    /// With a reader, new records on the shard end the wait too.
    async fn wait(
        &mut self,
        reader: Option<&mut dyn ShardReader>,
        timeout: Option<Duration>,
    ) -> Result<(), WorkerError> {
        let timeout = timeout.unwrap_or(Duration::from_secs(3600));
        let sleep = async {
            match reader {
                Some(reader) => reader.wait_for_records(timeout).await,
                None => tokio::time::sleep(timeout).await,
            }
        };
        let puts = &mut self.puts;
        let put = async {
            if puts.is_empty() {
                std::future::pending().await
            } else {
                puts.join_next().await
            }
        };
        // On the worker's own receivers, never clones: a clone would see each lease renewal as
        // news forever after and turn every wait into a spin.
        let result = tokio::select! {
            r = put => r,
            _ = sleep => None,
            _ = until(&mut self.stop, |stop| *stop) => None,
            () = self.lease.lost() => None,
        };
        if let Some(result) = result {
            self.on_put(result)?;
        }
        self.sync_budget();
        Ok(())
    }

    /// Writes everything buffered, waits for every write, stores the final checkpoint and
    /// gives the lease back.
    async fn drain(&mut self, end: bool) -> Result<Exit, WorkerError> {
        let targets = self.state.open_targets();
        let flushes = self.state.cut(&targets)?;
        self.round(flushes).await?;
        for flush in self.state.take_ready() {
            self.spawn_put(flush);
        }
        while let Some(result) = self.puts.join_next().await {
            self.on_put(result)?;
        }
        self.sync_budget();
        if end && self.state.unwritten_cuts() == 0 {
            self.state.mark_end();
        }
        self.save_checkpoint().await?;
        Ok(if end { Exit::Finished } else { Exit::Released })
    }
}

/// Returns once `condition` holds; never when the sender is gone without it holding.
async fn until<T>(rx: &mut watch::Receiver<T>, condition: impl FnMut(&T) -> bool) {
    if rx.wait_for(condition).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Encodes and writes one cut, retrying the write until it succeeds (the worker stops waiting
/// when it stops; the next owner rewrites the cut from the checkpoint).
async fn write_object(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    flush: Flush,
) -> Result<u64, WorkerError> {
    let _permit = slots
        .acquire_owned()
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?;
    let started = Instant::now();
    let Flush {
        cut_id,
        key,
        target,
        format,
        rows,
        bytes: raw_bytes,
        opened,
        only_if_absent,
    } = flush;
    let events = rows.len();
    let encoding = shared.settings.encoding;
    let errors = matches!(target, Target::Errors(_));
    let body = tokio::task::spawn_blocking(move || {
        let encoding = encode::Encoding { format, ..encoding };
        if errors {
            encode::encode_errors(&encoding, &rows.errors)
        } else {
            encode::encode_envelopes(&encoding, &rows.lake, raw_bytes)
        }
    })
    .await
    .map_err(|e| WorkerError::Task(e.to_string()))??;
    let body = Bytes::from(body);
    let sink = &shared.sink;
    if only_if_absent && sink.overwrites() {
        match sink.list(&key).await {
            Ok(keys) if keys.contains(&key) => {
                tracing::warn!(
                    key,
                    "Kept the object written before the crash; part of its records left the stream."
                );
                return Ok(cut_id);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key, error = %e, "Could not check for an earlier object."),
        }
    }
    let mut delay = Duration::from_millis(100);
    loop {
        match sink.put(&key, body.clone()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(key, error = %e, sink = sink.kind(), "Writing an object failed, retrying.");
                metrics::counter!("fanner_persister_errors_total", "reason" => "put").increment(1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    let name = match &target {
        Target::Lake(key) => key.name_segment().to_owned(),
        Target::Errors(_) => crate::partition::ERRORS_DIR.to_owned(),
    };
    metrics::counter!("fanner_persister_events_written_total", "event_name" => name.clone())
        .increment(events as u64);
    metrics::counter!("fanner_persister_bytes_written_total", "event_name" => name)
        .increment(body.len() as u64);
    metrics::counter!("fanner_persister_objects_written_total").increment(1);
    metrics::histogram!("fanner_persister_flush_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("fanner_persister_object_age_seconds")
        .record(opened.elapsed().as_secs_f64());
    shared.stats.record_written(events);
    tracing::debug!(
        key,
        events,
        bytes = body.len(),
        group = GROUP,
        "Wrote object."
    );
    Ok(cut_id)
}
