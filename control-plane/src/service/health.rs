//! Pipeline health per event name: when each event was last seen and how often it comes, and
//! **gaps**: an event silent for longer than its set maximum (`fanner event update NAME
//! --max-silence 10m`) or than its learned interval.
//!
//! Activity is what this process observes: every event its fan-out engine reads from the GES
//! (whoever published it), or, in a process without an engine, the events published through its
//! API. It lives in memory, so a restart begins learning again. Stream delivery (mode, lag) is what the fan-out
//! engine running beside it last reported from its status board.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use api::{EventHealth, GrantStatus, Role, SetMaxSilence, StreamHealth};
use chrono::{DateTime, Utc};

use super::{Change, ControlPlane, snapshot};
use crate::auth::{Caller, Ctx};
use crate::error::ApiError;
use crate::store::{catalog, expectations};

/// Events seen before an interval is learned.
const LEARN_AFTER: u64 = 5;
/// A learned maximum silence is this many mean intervals…
const LEARNED_INTERVALS: f64 = 10.0;
/// …but never shorter than a minute (bursty producers) nor longer than a day.
const LEARNED_MIN_MS: f64 = 60_000.0;
const LEARNED_MAX_MS: f64 = 86_400_000.0;
/// Weight of the newest interval in the running mean.
const EWMA_WEIGHT: f64 = 0.2;
/// The longest maximum silence that can be set: a year.
const MAX_SET_SILENCE_SECONDS: u64 = 365 * 86_400;

#[derive(Default)]
pub(super) struct Activity {
    seen: Mutex<HashMap<String, Seen>>,
    /// A fan-out engine in this process reports every event it reads from the GES, whoever
    /// published it: then the API's own publishes are not counted again.
    from_the_ges: AtomicBool,
}

#[derive(Clone)]
struct Seen {
    count: u64,
    last: DateTime<Utc>,
    mean_interval_ms: Option<f64>,
}

impl Activity {
    /// Records `count` events of `event` at `at`; a batch spreads its interval over its events.
    pub(super) fn observe(&self, event: &str, count: u64, at: DateTime<Utc>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        match seen.get_mut(event) {
            Some(s) => {
                let interval = (at - s.last).num_milliseconds().max(0) as f64 / count.max(1) as f64;
                s.mean_interval_ms = Some(match s.mean_interval_ms {
                    Some(mean) => mean + EWMA_WEIGHT * (interval - mean),
                    None => interval,
                });
                s.count += count;
                s.last = s.last.max(at);
            }
            None => {
                seen.insert(
                    event.to_owned(),
                    Seen {
                        count,
                        last: at,
                        mean_interval_ms: None,
                    },
                );
            }
        }
    }

    fn snapshot(&self) -> HashMap<String, Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl ControlPlane {
    /// Health of every event the caller may see: all for admins and auditors; for members, the
    /// events they own or hold an active grant on.
    pub async fn event_health(&self, ctx: &Ctx) -> Result<Vec<EventHealth>, ApiError> {
        let now = self.now();
        let granted: Vec<String> = self
            .list_grants(ctx, None, Some(&ctx.caller.principal))
            .await?
            .into_iter()
            .filter(|g| g.status == GrantStatus::Active)
            .map(|g| g.event)
            .collect();
        let mut conn = self.conn().await?;
        let events = catalog::list(&mut conn).await?;
        let set: BTreeMap<String, i64> = expectations::list(&mut conn).await?;
        drop(conn);
        let seen = self.inner.activity.snapshot();
        Ok(events
            .into_iter()
            .filter(|e| ctx.caller.may_read(&e.owner) || granted.contains(&e.name))
            .map(|event| {
                let seen = seen.get(&event.name);
                let learned = seen
                    .filter(|s| s.count >= LEARN_AFTER)
                    .and_then(|s| s.mean_interval_ms)
                    .map(|mean| (mean * LEARNED_INTERVALS).clamp(LEARNED_MIN_MS, LEARNED_MAX_MS));
                let (max_silence_ms, expectation) = match (set.get(&event.name), learned) {
                    (Some(ms), _) => (Some(*ms as f64), "set"),
                    (None, Some(ms)) => (Some(ms), "learned"),
                    (None, None) => (None, "learning"),
                };
                let since = seen.map(|s| s.last).unwrap_or(self.inner.started_at);
                let silent_ms = (now - since).num_milliseconds().max(0);
                EventHealth {
                    owner: event.owner,
                    events_seen: seen.map(|s| s.count).unwrap_or(0),
                    last_seen_at: seen.map(|s| s.last),
                    events_per_second: seen
                        .and_then(|s| s.mean_interval_ms)
                        .filter(|mean| *mean > 0.0)
                        .map(|mean| 1000.0 / mean),
                    max_silence_seconds: max_silence_ms.map(|ms| (ms / 1000.0).round() as u64),
                    expectation: expectation.to_owned(),
                    silent_seconds: silent_ms / 1000,
                    gap: max_silence_ms.is_some_and(|max| silent_ms as f64 > max),
                    event: event.name,
                }
            })
            .collect())
    }

    /// The events (that the caller may see) silent for longer than they should be.
    pub async fn health_gaps(&self, ctx: &Ctx) -> Result<Vec<EventHealth>, ApiError> {
        let mut health = self.event_health(ctx).await?;
        health.retain(|h| h.gap);
        Ok(health)
    }

    /// Sets `fanner_health_gaps`: how many events are in a gap now.
    pub async fn update_health_gauges(&self) -> Result<(), ApiError> {
        let everything = Ctx {
            caller: Caller {
                principal: "fanner".to_owned(),
                role: Role::Auditor,
            },
            request_id: "metrics".to_owned(),
        };
        let gaps = self.health_gaps(&everything).await?.len();
        metrics::gauge!("fanner_health_gaps").set(gaps as f64);
        Ok(())
    }

    /// Sets or clears how long `event` may stay silent; its owner or an admin may.
    pub async fn set_max_silence(
        &self,
        ctx: &Ctx,
        event: &str,
        req: SetMaxSilence,
    ) -> Result<SetMaxSilence, ApiError> {
        let mut m = self
            .begin(ctx, "event.set_max_silence", "event", event)
            .await?;
        let now = m.now;
        let result = async {
            super::events::event_to_modify(
                m.conn(),
                ctx,
                event,
                &format!("set how long event {event:?} may stay silent"),
            )
            .await?;
            if let Some(seconds) = req.max_silence_seconds
                && !(1..=MAX_SET_SILENCE_SECONDS).contains(&seconds)
            {
                return Err(ApiError::BadRequest(format!(
                    "max_silence_seconds must be between 1 and {MAX_SET_SILENCE_SECONDS}, not {seconds}"
                )));
            }
            let before = expectations::get(m.conn(), event).await?.map(|ms| SetMaxSilence {
                max_silence_seconds: u64::try_from(ms / 1000).ok(),
            });
            let ms = req
                .max_silence_seconds
                .map(|s| i64::try_from(s * 1000).unwrap_or(i64::MAX));
            expectations::set(m.conn(), event, ms, now.timestamp_millis()).await?;
            Ok(Change::new(
                before.as_ref().and_then(snapshot),
                snapshot(&req),
                req,
            ))
        }
        .await;
        m.finish(result).await
    }
}

/// One consumer stream as one GES shard of the fan-out engine sees it; the engine's status
/// board, handed over by whoever runs the engine beside this control plane.
#[derive(Clone, Debug)]
pub struct TargetReport {
    pub backing_name: String,
    /// `attached`, `behind` or `broken`.
    pub mode: &'static str,
    pub reason: Option<String>,
    pub lag_ms: Option<i64>,
    pub lag_records: Option<u64>,
    pub owed: u64,
}

/// The latest engine report, kept as it came, and the write rates it implies.
#[derive(Default)]
pub(super) struct EngineReport {
    latest: Mutex<Option<(DateTime<Utc>, Vec<TargetReport>)>>,
    rates: Mutex<Rates>,
}

/// When deliveries were last reported, and records per second per backing stream.
type Rates = (Option<DateTime<Utc>>, HashMap<String, f64>);

/// Worse modes win when shards disagree.
fn severity(mode: &str) -> u8 {
    match mode {
        "broken" => 2,
        "behind" => 1,
        _ => 0,
    }
}

impl ControlPlane {
    /// From now on, activity is what the fan-out engine in this process reads from the GES
    /// ([`observe_ges_events`](Self::observe_ges_events)), not what this API publishes.
    pub fn take_activity_from_the_ges(&self) {
        self.inner
            .activity
            .from_the_ges
            .store(true, Ordering::Release);
    }

    /// Records events the engine read from the GES: per name, how many and the newest arrival
    /// (the report's time when the backend gives none).
    pub fn observe_ges_events(&self, events: Vec<(String, u64, Option<DateTime<Utc>>)>) {
        let now = self.now();
        for (event, count, arrival) in events {
            self.inner
                .activity
                .observe(&event, count, arrival.unwrap_or(now));
        }
    }

    /// Records events this API published, unless the GES reader counts them.
    pub(super) fn observe_published(&self, event: &str, count: u64, at: DateTime<Utc>) {
        if !self.inner.activity.from_the_ges.load(Ordering::Acquire) {
            self.inner.activity.observe(event, count, at);
        }
    }

    /// Records written per backing stream since the engine's previous report: the streams'
    /// write rates until the next one (a stream absent from it wrote nothing).
    pub fn observe_deliveries(&self, delivered: Vec<(String, u64)>) {
        let now = self.now();
        let Ok(mut rates) = self.inner.engine_report.rates.lock() else {
            return;
        };
        let (last, per_stream) = &mut *rates;
        let seconds = last.map(|last| (now - last).num_milliseconds() as f64 / 1000.0);
        *last = Some(now);
        per_stream.clear();
        // The first report only starts the clock.
        if let Some(seconds) = seconds.filter(|s| *s > 0.0) {
            for (backing, records) in delivered {
                per_stream.insert(backing, records as f64 / seconds);
            }
        }
    }

    /// Takes the engine's current view of every consumer stream, one entry per shard and stream.
    pub fn report_engine_status(&self, targets: Vec<TargetReport>) {
        if let Ok(mut latest) = self.inner.engine_report.latest.lock() {
            *latest = Some((self.now(), targets));
        }
    }

    /// Delivery health of the streams the caller may see.
    pub async fn stream_health(&self, ctx: &Ctx) -> Result<Vec<StreamHealth>, ApiError> {
        let streams = self.list_streams(ctx).await?;
        let latest = self
            .inner
            .engine_report
            .latest
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let rates = self
            .inner
            .engine_report
            .rates
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        Ok(streams
            .into_iter()
            .map(|stream| {
                let backing = self.backing_name(&stream.name);
                let mut health = StreamHealth {
                    stream: stream.name,
                    owner: stream.owner,
                    mode: "unreported".to_owned(),
                    reason: None,
                    lag_ms: None,
                    lag_records: None,
                    owed: 0,
                    events_per_second: rates
                        .0
                        .map(|_| rates.1.get(&backing).copied().unwrap_or(0.0)),
                    reported_at: None,
                };
                let Some((at, targets)) = &latest else {
                    return health;
                };
                for target in targets.iter().filter(|t| t.backing_name == backing) {
                    if health.reported_at.is_none()
                        || severity(target.mode) > severity(&health.mode)
                    {
                        health.mode = target.mode.to_owned();
                        health.reason.clone_from(&target.reason);
                    }
                    health.reported_at = Some(*at);
                    health.lag_ms = health.lag_ms.max(target.lag_ms);
                    health.lag_records = match (health.lag_records, target.lag_records) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    };
                    health.owed += target.owed;
                }
                health
            })
            .collect())
    }
}
