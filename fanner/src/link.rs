//! The engine's two needs from the control plane, and the way of meeting them over HTTP
//! ([`Http`], for a standalone engine). `fanner serve` meets them in-process, where it wires the
//! engine to the control plane.
//!
//! - [`RouteSource`]: the route table, a way to wait for the next one, and the clock grant
//!   expiries are judged by.
//! - [`ControlPlaneLink`]: reporting a subscription whose stream cannot take deliveries.

use std::sync::Arc;
use std::time::Duration;

use api::{RouteTable, SetHandover, SubscriptionStatus};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The object is gone (a subscription deleted meanwhile): nothing to report.
    #[error("not found: {0}")]
    NotFound(String),
    /// Worth trying again later.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The control plane refused: retrying will not help (a token without admin rights).
    #[error("refused by the control plane: {0}")]
    Refused(String),
}

/// Where the route table comes from.
#[async_trait]
pub trait RouteSource: Send + Sync + 'static {
    /// The route table as of now.
    async fn current(&self) -> Result<Arc<RouteTable>, LinkError>;

    /// The route table once its revision is past `after`, or the current one after `wait`.
    async fn next(&self, after: i64, wait: Duration) -> Result<Arc<RouteTable>, LinkError>;

    /// Now, by the clock the control plane judges grant expiry with.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What the engine tells the control plane.
#[async_trait]
pub trait ControlPlaneLink: Send + Sync + 'static {
    /// Marks a subscription failed (`reason` says why) or, with `None`, active again.
    async fn set_failed(&self, subscription: &str, reason: Option<&str>) -> Result<(), LinkError>;

    /// The subscriptions currently marked failed, so a restarted engine can mark them active
    /// again once their streams take deliveries.
    async fn failed_subscriptions(&self) -> Result<Vec<String>, LinkError>;

    /// Records that live delivery of a hydrating subscription begins after `live_after` on GES
    /// shard `shard` (`None`: its start). The first choice holds; returns the one that does.
    async fn set_handover(
        &self,
        hydration: &str,
        shard: &str,
        live_after: Option<&str>,
    ) -> Result<Option<String>, LinkError>;
}

/// The control plane over its HTTP API; the client needs an admin token.
#[derive(Clone, Debug)]
pub struct Http {
    client: api::Client,
}

impl Http {
    pub fn new(client: api::Client) -> Http {
        Http { client }
    }

    pub fn client(&self) -> &api::Client {
        &self.client
    }
}

/// How an API error reads to the data plane.
pub fn from_client(error: api::ClientError) -> LinkError {
    match error.status() {
        Some(404) => LinkError::NotFound(error.to_string()),
        Some(400 | 401 | 403) => LinkError::Refused(error.to_string()),
        _ => LinkError::Unavailable(error.to_string()),
    }
}

#[async_trait]
impl RouteSource for Http {
    async fn current(&self) -> Result<Arc<RouteTable>, LinkError> {
        self.client
            .routes(None, Duration::ZERO)
            .await
            .map(Arc::new)
            .map_err(from_client)
    }

    async fn next(&self, after: i64, wait: Duration) -> Result<Arc<RouteTable>, LinkError> {
        self.client
            .routes(Some(after), wait)
            .await
            .map(Arc::new)
            .map_err(from_client)
    }
}

#[async_trait]
impl ControlPlaneLink for Http {
    async fn set_failed(&self, subscription: &str, reason: Option<&str>) -> Result<(), LinkError> {
        let status = match reason {
            Some(_) => SubscriptionStatus::Failed,
            None => SubscriptionStatus::Active,
        };
        self.client
            .set_subscription_status(subscription, status, reason)
            .await
            .map(drop)
            .map_err(from_client)
    }

    async fn failed_subscriptions(&self) -> Result<Vec<String>, LinkError> {
        let all = self
            .client
            .list_subscriptions(None)
            .await
            .map_err(from_client)?;
        Ok(all
            .into_iter()
            .filter(|s| s.status == SubscriptionStatus::Failed)
            .map(|s| s.id)
            .collect())
    }

    async fn set_handover(
        &self,
        hydration: &str,
        shard: &str,
        live_after: Option<&str>,
    ) -> Result<Option<String>, LinkError> {
        let body = SetHandover {
            shard: shard.to_owned(),
            live_after: live_after.map(str::to_owned),
        };
        self.client
            .set_handover(hydration, &body)
            .await
            .map(|handover| handover.live_after)
            .map_err(from_client)
    }
}
