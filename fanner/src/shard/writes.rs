//! Writing to consumer streams: batches, partial failures, falling behind and catching up,
//! broken streams and their probes.

use super::*;

impl Worker {
    pub(super) fn start_puts(&mut self, now: Instant) {
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

    pub(super) fn start_probes(&mut self, now: Instant) {
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
                .then(|| dead_letter::stream_spec(&self.shared.config));
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
    pub(super) fn stall_check(&mut self, now: Instant) {
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
    pub(super) fn catch_up_room(&self) -> usize {
        (self.shared.config.max_backlog / 2).max(1)
    }

    pub(super) fn on_put(
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
        let mut written_count = 0;
        let wall = Utc::now();
        for (delivery, written) in deliveries.into_iter().zip(outcome.outcomes) {
            let subscription = delivery.subscription.clone();
            match written {
                Ok(_) => {
                    written_count += 1;
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
        self.shared.status.add_delivered(name, written_count);
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
    pub(super) fn break_target(&mut self, name: &Arc<str>, reason: String) {
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

    pub(super) fn on_probe(
        &mut self,
        name: &Arc<str>,
        generation: u64,
        result: Result<bool, StreamError>,
    ) {
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
}
