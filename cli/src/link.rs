//! The fan-out engine's link to a control plane in the same process: `fanner serve` wires the
//! engine through it, and the engine's own tests use it the same way.

use std::sync::Arc;
use std::time::Duration;

use api::{RouteTable, SubscriptionStatus};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use control_plane::auth::{Caller, Ctx};
use control_plane::{ApiError, ControlPlane};
use fanner::{ControlPlaneLink, LinkError, RouteSource};
use hydrator::HistoryLink;

/// The principal the engine acts as in-process; it appears as the actor on the audit trail.
pub const ENGINE_PRINCIPAL: &str = "fanner-engine";

/// The control plane in the same process.
#[derive(Clone)]
pub struct InProcess {
    control_plane: ControlPlane,
}

impl InProcess {
    pub fn new(control_plane: ControlPlane) -> InProcess {
        InProcess { control_plane }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            caller: Caller {
                principal: ENGINE_PRINCIPAL.to_owned(),
                role: api::Role::Admin,
            },
            request_id: format!("engine-{}", uuid::Uuid::new_v4()),
        }
    }
}

fn from_api(error: ApiError) -> LinkError {
    match error {
        ApiError::NotFound(message) => LinkError::NotFound(message),
        ApiError::Forbidden(message) | ApiError::BadRequest(message) => LinkError::Refused(message),
        ApiError::Unauthorized => LinkError::Refused(error.to_string()),
        other => LinkError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl RouteSource for InProcess {
    async fn current(&self) -> Result<Arc<RouteTable>, LinkError> {
        self.control_plane.route_table().await.map_err(from_api)
    }

    async fn next(&self, after: i64, wait: Duration) -> Result<Arc<RouteTable>, LinkError> {
        self.control_plane
            .routes(&self.ctx(), Some(after), wait)
            .await
            .map_err(from_api)
    }

    fn now(&self) -> DateTime<Utc> {
        self.control_plane.now()
    }
}

#[async_trait]
impl ControlPlaneLink for InProcess {
    async fn set_failed(&self, subscription: &str, reason: Option<&str>) -> Result<(), LinkError> {
        let status = match reason {
            Some(_) => SubscriptionStatus::Failed,
            None => SubscriptionStatus::Active,
        };
        self.control_plane
            .set_subscription_status(&self.ctx(), subscription, status, reason.map(str::to_owned))
            .await
            .map(drop)
            .map_err(from_api)
    }

    async fn failed_subscriptions(&self) -> Result<Vec<String>, LinkError> {
        let all = self
            .control_plane
            .list_subscriptions(&self.ctx(), None)
            .await
            .map_err(from_api)?;
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
        let body = api::SetHandover {
            shard: shard.to_owned(),
            live_after: live_after.map(str::to_owned),
        };
        self.control_plane
            .set_handover(&self.ctx(), hydration, body)
            .await
            .map(|handover| handover.live_after)
            .map_err(from_api)
    }
}

#[async_trait]
impl HistoryLink for InProcess {
    async fn unfinished(&self) -> Result<Vec<api::HydrationTask>, LinkError> {
        self.control_plane
            .unfinished_hydrations(&self.ctx())
            .await
            .map_err(from_api)
    }

    async fn report(
        &self,
        id: &str,
        progress: &api::HydrationProgress,
    ) -> Result<api::Hydration, LinkError> {
        self.control_plane
            .report_hydration(&self.ctx(), id, progress.clone())
            .await
            .map_err(from_api)
    }
}
