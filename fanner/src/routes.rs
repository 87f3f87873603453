//! The live route table: swapped in whole when the control plane changes it, read without locks.

use std::sync::Arc;
use std::time::Duration;

use api::RouteTable;
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, watch};

use crate::link::{LinkError, RouteSource};
use crate::router::RouteIndex;
use crate::status::StatusBoard;

/// How long one long poll for a new table waits; a table is re-read at least this often.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// The pause after a failed fetch, doubling to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct LiveRoutes {
    index: ArcSwap<RouteIndex>,
    source: Arc<dyn RouteSource>,
    revision: watch::Sender<i64>,
    status: StatusBoard,
    /// Serialises forced refreshes so a burst of unknown events costs one fetch.
    refreshing: Mutex<()>,
}

impl LiveRoutes {
    /// Fetches the first table, retrying until it succeeds: without one nothing may be delivered.
    pub async fn start(source: Arc<dyn RouteSource>, status: StatusBoard) -> Arc<LiveRoutes> {
        let mut backoff = FIRST_BACKOFF;
        let table = loop {
            match source.current().await {
                Ok(table) => break table,
                Err(error) => {
                    tracing::warn!(%error, "Cannot read the route table yet; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let (revision, _) = watch::channel(table.revision);
        let routes = Arc::new(LiveRoutes {
            index: ArcSwap::from_pointee(RouteIndex::compile(&table)),
            source,
            revision,
            status,
            refreshing: Mutex::new(()),
        });
        routes.record(&table);
        routes
    }

    /// The table to route by now. Cheap: no lock, one atomic load.
    pub fn load(&self) -> Arc<RouteIndex> {
        self.index.load_full()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.source.now()
    }

    /// Notified with the revision of every table swapped in.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Makes sure the table was generated at or after `instant`, fetching a new one if not: an
    /// event published right after it was registered must not be taken for unknown because the
    /// engine's table predates it.
    pub async fn refresh_if_older(&self, instant: DateTime<Utc>) {
        let _guard = self.refreshing.lock().await;
        if self.index.load().generated_at >= instant {
            return;
        }
        match self.source.current().await {
            Ok(table) => self.swap(&table),
            Err(error) => tracing::warn!(%error, "Cannot refresh the route table."),
        }
    }

    /// Follows the control plane's changes until the task is dropped.
    pub async fn follow(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let after = self.index.load().revision;
            match self.source.next(after, POLL_WAIT).await {
                Ok(table) => {
                    backoff = FIRST_BACKOFF;
                    self.swap(&table);
                }
                Err(error) => {
                    log_fetch_error(&error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn swap(&self, table: &RouteTable) {
        let current = self.index.load();
        if table.revision < current.revision
            || (table.revision == current.revision && table.generated_at <= current.generated_at)
        {
            return;
        }
        self.index.store(Arc::new(RouteIndex::compile(table)));
        self.record(table);
    }

    fn record(&self, table: &RouteTable) {
        metrics::gauge!("fanner_engine_routes_revision").set(table.revision as f64);
        tracing::debug!(
            revision = table.revision,
            routes = table.routes.len(),
            "Route table loaded."
        );
        self.status.set_routes_revision(table.revision);
        self.revision.send_if_modified(|current| {
            let changed = *current != table.revision;
            *current = table.revision;
            changed
        });
    }
}

fn log_fetch_error(error: &LinkError) {
    match error {
        LinkError::Refused(_) => {
            tracing::error!(%error, "The control plane refuses the route table; check the engine's token.")
        }
        _ => tracing::warn!(%error, "Cannot read the route table; retrying."),
    }
}
