//! What the engine is doing, for people and tests, and its reports to the control plane about
//! streams that cannot take deliveries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::link::{ControlPlaneLink, LinkError};

/// One GES shard held by this process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    /// The shard's lease key, `<ges>/<shard id>`.
    pub key: String,
    /// The last record the main cursor routed.
    pub read_position: Option<String>,
    /// The main cursor's last checkpoint.
    pub checkpoint: Option<String>,
    /// How far the main cursor is behind the shard's newest record.
    pub millis_behind: Option<i64>,
    /// The shard is closed and read to its end.
    pub read_to_end: bool,
    pub targets: Vec<TargetStatus>,
}

/// One consumer stream (or the dead-letter stream) as seen from one GES shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    pub backing_name: String,
    pub mode: TargetMode,
    /// Why the stream is broken.
    pub reason: Option<String>,
    /// Every record up to here that was meant for the stream has been written to it.
    pub position: Option<String>,
    /// Deliveries waiting in memory or being written.
    pub owed: usize,
    /// GES records between the stream's position and the main cursor, when known.
    pub lag_records: Option<u64>,
    /// Age of the oldest record the stream still has to receive, when known.
    pub lag_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetMode {
    /// Fed by the shard's main cursor.
    Attached,
    /// Fell behind: re-reads the GES from its own position until it reaches the main cursor.
    Behind,
    /// Its stream is missing or refuses writes: checked again every probe interval.
    Broken,
}

/// Catalog events the main cursors read from the GES since the last
/// [`StatusBoard::take_events`]: how many of one name, and the newest one's arrival.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventsSeen {
    pub event: String,
    pub count: u64,
    pub last_arrival: Option<DateTime<Utc>>,
}

/// Per event name: how many were read, and the newest one's arrival.
pub(crate) type EventCounts = HashMap<String, (u64, Option<DateTime<Utc>>)>;

/// A handle on the engine's live status; cheap to clone.
#[derive(Clone, Debug)]
pub struct StatusBoard {
    shards: Arc<Mutex<BTreeMap<String, ShardStatus>>>,
    revision: Arc<AtomicI64>,
    events: Arc<Mutex<EventCounts>>,
    /// Records written per backing stream since the last [`StatusBoard::take_delivered`].
    delivered: Arc<Mutex<HashMap<String, u64>>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            shards: Arc::default(),
            revision: Arc::new(AtomicI64::new(-1)),
            events: Arc::default(),
            delivered: Arc::default(),
        }
    }
}

impl StatusBoard {
    /// The revision of the route table in use; -1 until the first one is loaded.
    pub fn routes_revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    pub(crate) fn set_routes_revision(&self, revision: i64) {
        self.revision.store(revision, Ordering::Release);
    }

    /// Every shard this process holds now.
    pub fn shards(&self) -> Vec<ShardStatus> {
        self.lock().values().cloned().collect()
    }

    pub(crate) fn set(&self, status: ShardStatus) {
        self.lock().insert(status.key.clone(), status);
    }

    pub(crate) fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The events read since the last call (every GES event of the catalog, whoever
    /// published it and whether or not a stream receives it), for activity and gap tracking.
    pub fn take_events(&self) -> Vec<EventsSeen> {
        let taken = std::mem::take(
            &mut *self
                .events
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut seen: Vec<EventsSeen> = taken
            .into_iter()
            .map(|(event, (count, last_arrival))| EventsSeen {
                event,
                count,
                last_arrival,
            })
            .collect();
        seen.sort_by(|a, b| a.event.cmp(&b.event));
        seen
    }

    /// Adds one read batch's counts (one lock per batch, not per record).
    pub(crate) fn add_events(&self, batch: EventCounts) {
        if batch.is_empty() {
            return;
        }
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (event, (count, arrival)) in batch {
            let entry = events.entry(event).or_default();
            entry.0 += count;
            entry.1 = entry.1.max(arrival);
        }
    }

    /// Records written to each backing stream since the last call, sorted by stream.
    pub fn take_delivered(&self) -> Vec<(String, u64)> {
        let taken = std::mem::take(
            &mut *self
                .delivered
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut delivered: Vec<(String, u64)> = taken.into_iter().collect();
        delivered.sort();
        delivered
    }

    pub(crate) fn add_delivered(&self, backing_name: &str, records: u64) {
        if records == 0 {
            return;
        }
        *self
            .delivered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(backing_name.to_owned())
            .or_default() += records;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ShardStatus>> {
        self.shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What shard workers tell the reporter.
#[derive(Debug)]
pub(crate) enum Report {
    /// These subscriptions' stream cannot take deliveries.
    Failed {
        subscriptions: Vec<String>,
        reason: String,
    },
    /// These subscriptions' stream took a delivery.
    Healthy { subscriptions: Vec<String> },
}

/// Marks subscriptions failed and active again, once per change, whichever shard noticed.
pub(crate) async fn report(
    link: Arc<dyn ControlPlaneLink>,
    mut reports: mpsc::UnboundedReceiver<Report>,
) {
    let mut failed: HashSet<String> = match link.failed_subscriptions().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(error) => {
            tracing::warn!(%error, "Cannot list failed subscriptions; they stay failed until their stream fails again and recovers.");
            HashSet::new()
        }
    };
    while let Some(report) = reports.recv().await {
        match report {
            Report::Failed {
                subscriptions,
                reason,
            } => {
                for id in subscriptions {
                    if failed.contains(&id) {
                        continue;
                    }
                    if tell(link.as_ref(), &id, Some(&reason)).await {
                        tracing::warn!(subscription = %id, %reason, "Marked subscription failed.");
                        failed.insert(id);
                    }
                }
            }
            Report::Healthy { subscriptions } => {
                for id in subscriptions {
                    if failed.contains(&id) && tell(link.as_ref(), &id, None).await {
                        tracing::info!(subscription = %id, "Marked subscription active again.");
                        failed.remove(&id);
                    }
                }
            }
        }
    }
}

/// Whether the control plane took the report (a deleted subscription counts as taken).
async fn tell(link: &dyn ControlPlaneLink, id: &str, reason: Option<&str>) -> bool {
    for attempt in 0..3u32 {
        match link.set_failed(id, reason).await {
            Ok(()) | Err(LinkError::NotFound(_)) => return true,
            Err(error @ LinkError::Refused(_)) => {
                tracing::error!(subscription = id, %error, "The control plane refused a subscription status report.");
                return false;
            }
            Err(error) => {
                tracing::warn!(subscription = id, %error, attempt, "Cannot report a subscription's status; retrying.");
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    false
}
