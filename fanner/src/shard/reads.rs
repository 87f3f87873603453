//! Reading the shard: the main cursor, catch-up cursors of streams that fell behind, and
//! turning each record into deliveries.

use super::*;

impl Worker {
    pub(super) fn start_main_read(&mut self, now: Instant) {
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

    pub(super) fn start_catch_up_reads(&mut self, now: Instant) {
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
    pub(super) fn read(
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

    pub(super) async fn on_main_read(
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
        if !table.handover_requests(&self.shard).is_empty() {
            match self.hand_over(&table).await {
                Some(handed_over) => table = handed_over,
                None => {
                    // Not routed, so not owed: read again once the hand-over is recorded.
                    self.main.reader = Reader::Closed;
                    self.main.retry_at = Some(Instant::now() + RETRY_PAUSE);
                    return;
                }
            }
        }
        let mut tally = Tally::default();
        let mut seen: HashMap<Bytes, (u64, Option<DateTime<Utc>>)> = HashMap::new();
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
            if let Some(event) = verdict.catalog_event() {
                let entry = seen.entry(event).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(record.arrival_time);
            }
            let seq: Arc<str> = Arc::from(record.sequence.as_str());
            let prev = self.main.read.replace(seq.clone());
            self.main.count += 1;
            self.deliver(record, seq, prev, verdict, &table, None, &mut tally);
        }
        self.shared.status.add_events(
            seen.into_iter()
                .map(|(event, counted)| (String::from_utf8_lossy(&event).into_owned(), counted))
                .collect(),
        );
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

    /// Chooses where live delivery begins for every hydration waiting on this shard: after the
    /// last record routed (nothing after it went to the hydrating subscription) and after what
    /// the hydration reads itself. Returns a table that carries every choice, or `None` when
    /// one could not be recorded or seen yet, so that no record is routed without it.
    async fn hand_over(&mut self, table: &RouteIndex) -> Option<Arc<RouteIndex>> {
        for request in table.handover_requests(&self.shard) {
            let after: Pos = request.after.as_deref().map(Arc::from);
            let live_after = if cmp_pos(&after, &self.main.read) == Ordering::Greater {
                after
            } else {
                self.main.read.clone()
            };
            match self
                .shared
                .link
                .set_handover(&request.hydration, &self.shard, live_after.as_deref())
                .await
            {
                Ok(held) => {
                    tracing::info!(shard = %self.key, hydration = %request.hydration, live_after = ?held, "Live delivery of a hydrated subscription begins.");
                }
                Err(error) => {
                    tracing::warn!(shard = %self.key, hydration = %request.hydration, %error, "Cannot record a hand-over yet; retrying.");
                    return None;
                }
            }
        }
        self.shared.routes.refresh_if_older(Utc::now()).await;
        let table = self.shared.routes.load();
        table
            .handover_requests(&self.shard)
            .is_empty()
            .then_some(table)
    }

    /// An unknown event triggers one refresh of a table older than the record, at most once per
    /// [`REFRESH_GAP`].
    pub(super) fn may_refresh(&self, record: &Record, table: &RouteIndex) -> bool {
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
    pub(super) fn deliver(
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
                let mut gate = RecordGate::new(&record.data);
                for slot in routed.deliveries() {
                    if !slot.live_at(&self.shard, &seq) {
                        continue;
                    }
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
                    let data = match gate.decide(slot) {
                        Decision::Deliver(data) if data.len() + key.len() <= MAX_RECORD_BYTES => {
                            data
                        }
                        Decision::Deliver(_) => {
                            // Hash tokens can grow a record past the limit: it cannot be
                            // written, and it must not be written unredacted.
                            metrics::counter!("fanner_engine_oversize_after_redaction_total")
                                .increment(1);
                            tally.add(&slot.subscription, &info.stream, Count::Denied);
                            continue;
                        }
                        Decision::Filtered => {
                            tally.add(&slot.subscription, &info.stream, Count::Filtered);
                            continue;
                        }
                    };
                    target.queue.push_back(Delivery {
                        prev: prev.clone(),
                        data,
                        key: key.clone(),
                        event: event.clone(),
                        subscription: Some(slot.subscription.clone()),
                        revision: table.revision,
                        access_expires_at: slot.access_expires_at,
                        arrival: record.arrival_time,
                    });
                }
                if gate.withheld > 0 {
                    metrics::counter!("fanner_engine_payloads_withheld_total")
                        .increment(gate.withheld);
                }
                if only.is_none() {
                    for slot in routed.denied() {
                        let info = &table.targets()[slot.target];
                        tally.add(&slot.subscription, &info.stream, Count::Denied);
                    }
                }
            }
            Verdict::Unrouted { .. } => {
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

    pub(super) fn on_catch_up_read(
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
}
