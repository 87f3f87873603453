//! What the worker has achieved: the checkpoint it composes and the status it publishes.

use super::*;

impl Worker {
    /// The checkpoint that the current state allows. The main position never moves back; a
    /// stream that has not received everything up to it is listed with its own position.
    pub(super) fn compose(&self) -> Checkpoint {
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
    pub(super) fn records_after(&self, pos: &Pos) -> Option<u64> {
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

    pub(super) fn publish_status(&self, checkpoint: &Checkpoint) {
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
