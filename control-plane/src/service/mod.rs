//! The control plane's operations: every rule of the access model, applied in one place, each
//! mutation in one transaction together with its audit entry. HTTP handlers are thin wrappers
//! around these methods, and `fanner serve` and the data plane call them in-process.

mod data;
mod events;
mod grants;
mod health;
mod history;
mod principals;
mod review;
mod sessions;
mod streams;
mod subscriptions;
mod views;

pub use health::TargetReport;
pub use review::MAX_REVIEW_DAYS;
pub use sessions::{SESSION_LIFETIME, Session};
use std::future::Future;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::streams::StreamBackend;
use api::RouteTable;
use chrono::{DateTime, DurationRound, Utc};
use serde::Serialize;
use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::watch;

use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::Store;
use crate::store::audit::{self, Head, NewEntry};

/// The time source of every rule that involves expiry. Tests move it forward instead of sleeping.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, to the millisecond: the store's precision, so what a response shows is what was stored.
    pub fn now(&self) -> DateTime<Utc> {
        to_stored_precision(
            Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed)),
        )
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// `at` truncated to the millisecond, as the store keeps instants.
pub fn to_stored_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::milliseconds(1))
        .unwrap_or(at)
}

/// How often a replica looks for route changes written by other replicas.
const ROUTE_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// A cached route table is rebuilt at least this often, so expired grants drop out of it.
const ROUTE_TABLE_MAX_AGE: chrono::Duration = chrono::Duration::seconds(30);

#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

/// Settings of the control plane proper (the store and backend come ready-made).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Prepended to a stream's name to name its backing stream, keeping Fanner's streams apart
    /// from the global event stream and anything else in the same account.
    pub backing_prefix: String,
    /// The global event stream's name in the backend.
    pub ges: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            backing_prefix: "fanner-".to_owned(),
            ges: "global-events".to_owned(),
        }
    }
}

struct Inner {
    store: Store,
    settings: Settings,
    backend: Arc<dyn StreamBackend>,
    clock: Clock,
    routes_revision: watch::Sender<i64>,
    route_cache: Mutex<Option<Arc<RouteTable>>>,
    poller: tokio::task::JoinHandle<()>,
    /// Set when the process shuts down: long-lived reads (tails) end instead of holding it up.
    closing: watch::Sender<bool>,
    activity: health::Activity,
    engine_report: health::EngineReport,
    /// When this control plane began observing activity: silence is counted from here for
    /// events not seen since.
    started_at: DateTime<Utc>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl ControlPlane {
    pub async fn new(
        store: Store,
        backend: Arc<dyn StreamBackend>,
        settings: Settings,
        clock: Clock,
    ) -> Result<ControlPlane, ApiError> {
        let revision = {
            let mut conn = store.pool().acquire().await?;
            audit::routes_revision(&mut conn).await?
        };
        let (routes_revision, _) = watch::channel(revision);
        let started_at = clock.now();
        let poller = tokio::spawn(poll_route_revision(store.clone(), routes_revision.clone()));
        Ok(ControlPlane {
            inner: Arc::new(Inner {
                store,
                settings,
                backend,
                clock,
                routes_revision,
                route_cache: Mutex::new(None),
                poller,
                closing: watch::channel(false).0,
                activity: health::Activity::default(),
                engine_report: health::EngineReport::default(),
                started_at,
            }),
        })
    }

    /// Ends every long-lived read (open tails) now and any started later: the process is
    /// shutting down and must not wait for clients that never hang up.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Completes once [`close`](Self::close) was called.
    pub(crate) fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.inner.closing.subscribe();
        async move {
            // The sender lives as long as the control plane; a dropped one means closed too.
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn backend(&self) -> &Arc<dyn StreamBackend> {
        &self.inner.backend
    }

    pub fn ges(&self) -> &str {
        &self.inner.settings.ges
    }

    /// The name of the backing stream of Fanner stream `name`.
    pub fn backing_name(&self, name: &str) -> String {
        format!("{}{name}", self.inner.settings.backing_prefix)
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Notified with the new revision whenever the route table may have changed.
    pub fn route_revisions(&self) -> watch::Receiver<i64> {
        self.inner.routes_revision.subscribe()
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>, ApiError> {
        Ok(self.inner.store.pool().acquire().await?)
    }

    /// Opens a mutation: a transaction holding the store-wide write lock. Finish it with
    /// [`Mutation::finish`], which writes the audit entry (for success or refusal) and commits.
    async fn begin<'a>(
        &'a self,
        ctx: &'a Ctx,
        action: &'static str,
        object_kind: &'static str,
        object_id: impl Into<String>,
    ) -> Result<Mutation<'a>, ApiError> {
        let mut tx = self.inner.store.pool().begin().await?;
        let head = audit::lock_head(&mut tx).await?;
        Ok(Mutation {
            cp: self,
            ctx,
            action,
            object_kind,
            object_id: object_id.into(),
            tx,
            head,
            now: self.now(),
        })
    }

    /// Records a refused attempt on the audit trail, in its own transaction.
    async fn record_refusal(
        &self,
        ctx: &Ctx,
        action: &str,
        object_kind: &str,
        object_id: &str,
        error: &ApiError,
    ) -> Result<(), ApiError> {
        let Some(outcome) = error.audit_outcome() else {
            return Ok(());
        };
        let mut tx = self.inner.store.pool().begin().await?;
        let head = audit::lock_head(&mut tx).await?;
        let entry = NewEntry {
            time: self.now(),
            request_id: ctx.request_id.clone(),
            actor: ctx.caller.principal.clone(),
            action: action.to_owned(),
            object_kind: object_kind.to_owned(),
            object_id: object_id.to_owned(),
            outcome: outcome.to_owned(),
            detail: Some(error.to_string()),
            before: None,
            after: None,
        };
        audit::append(&mut tx, &head, &entry, false).await?;
        tx.commit().await?;
        metrics::counter!("fanner_api_refusals_total", "action" => action.to_owned(), "outcome" => outcome)
            .increment(1);
        Ok(())
    }

    /// Runs checks that must pass before a slow side effect (provisioning a backing stream), which
    /// must not hold the write lock. A failed check is audited like a refused mutation.
    async fn precheck<T>(
        &self,
        ctx: &Ctx,
        action: &'static str,
        object_kind: &'static str,
        object_id: &str,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        if let Err(error) = &result {
            self.record_refusal(ctx, action, object_kind, object_id, error)
                .await?;
        }
        result
    }

    fn routes_changed(&self, revision: i64) {
        self.inner.routes_revision.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// The route table as of now, rebuilt when the revision moved or the cached one is stale.
    pub async fn route_table(&self) -> Result<Arc<RouteTable>, ApiError> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let revision = audit::routes_revision(&mut conn).await?;
        if let Ok(cache) = self.inner.route_cache.lock()
            && let Some(table) = cache.as_ref()
            && table.revision == revision
            && now - table.generated_at < ROUTE_TABLE_MAX_AGE
        {
            return Ok(table.clone());
        }
        let table = Arc::new(
            views::compile_route_table(&mut conn, revision, now, |name| self.backing_name(name))
                .await?,
        );
        if let Ok(mut cache) = self.inner.route_cache.lock() {
            *cache = Some(table.clone());
        }
        metrics::gauge!("fanner_control_plane_routes_revision").set(revision as f64);
        Ok(table)
    }
}

async fn poll_route_revision(store: Store, sender: watch::Sender<i64>) {
    let mut interval = tokio::time::interval(ROUTE_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let revision = match store.pool().acquire().await {
            Ok(mut conn) => audit::routes_revision(&mut conn).await,
            Err(e) => Err(e.into()),
        };
        match revision {
            Ok(revision) => {
                sender.send_if_modified(|current| {
                    let newer = revision > *current;
                    if newer {
                        *current = revision;
                    }
                    newer
                });
            }
            Err(error) => tracing::warn!(%error, "Cannot read the route revision."),
        }
    }
}

/// What a successful mutation did, for its audit entry.
pub(crate) struct Change<T> {
    /// Set when the object's id is only known once created (grants, subscriptions).
    object_id: Option<String>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    output: T,
}

impl<T> Change<T> {
    fn new(
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
        output: T,
    ) -> Change<T> {
        Change {
            object_id: None,
            before,
            after,
            output,
        }
    }

    fn with_id(mut self, id: impl Into<String>) -> Change<T> {
        self.object_id = Some(id.into());
        self
    }
}

pub(crate) fn snapshot(value: &impl Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

pub(crate) struct Mutation<'a> {
    cp: &'a ControlPlane,
    ctx: &'a Ctx,
    action: &'static str,
    object_kind: &'static str,
    object_id: String,
    tx: Transaction<'static, Any>,
    head: Head,
    now: DateTime<Utc>,
}

impl Mutation<'_> {
    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Commits a successful change with its audit entry, or rolls back and audits the refusal.
    async fn finish<T>(mut self, result: Result<Change<T>, ApiError>) -> Result<T, ApiError> {
        match result {
            Ok(change) => {
                let entry = NewEntry {
                    time: self.now,
                    request_id: self.ctx.request_id.clone(),
                    actor: self.ctx.caller.principal.clone(),
                    action: self.action.to_owned(),
                    object_kind: self.object_kind.to_owned(),
                    object_id: change.object_id.unwrap_or(self.object_id),
                    outcome: "ok".to_owned(),
                    detail: None,
                    before: change.before,
                    after: change.after,
                };
                audit::append(&mut self.tx, &self.head, &entry, true).await?;
                self.tx.commit().await?;
                self.cp.routes_changed(self.head.routes_revision + 1);
                metrics::counter!("fanner_api_mutations_total", "action" => self.action)
                    .increment(1);
                Ok(change.output)
            }
            Err(error) => {
                self.tx.rollback().await?;
                self.cp
                    .record_refusal(
                        self.ctx,
                        self.action,
                        self.object_kind,
                        &self.object_id,
                        &error,
                    )
                    .await?;
                Err(error)
            }
        }
    }
}

/// `Err(Conflict)` unless `expected` is absent or equals `actual`.
fn check_revision(
    kind: &str,
    id: &str,
    expected: Option<i64>,
    actual: i64,
) -> Result<(), ApiError> {
    match expected {
        Some(expected) if expected != actual => Err(ApiError::Conflict(format!(
            "{kind} {id:?} is at revision {actual}, not {expected}: it changed since you read it; read it again and retry"
        ))),
        _ => Ok(()),
    }
}

fn bad_request(result: Result<(), String>) -> Result<(), ApiError> {
    result.map_err(ApiError::BadRequest)
}
