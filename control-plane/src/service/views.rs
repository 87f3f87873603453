use std::time::Duration;

use api::{
    AccessSubscription, AccessView, AuditEntry, AuditVerification, RouteTable, SubscriptionStatus,
};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

use super::ControlPlane;
use crate::access::{self, Catalog};
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::{audit, catalog, grants, hydrations, streams, subscriptions};

/// The most entries one audit page returns.
pub const MAX_AUDIT_PAGE: i64 = 10_000;

impl ControlPlane {
    /// Who can read `event`: every grant ever made on it, and the subscriptions that name it.
    pub async fn access_view(&self, ctx: &Ctx, event: &str) -> Result<AccessView, ApiError> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let event = catalog::get(&mut conn, event)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("event {event:?} does not exist")))?;
        if !ctx.caller.may_read(&event.owner) {
            return Err(ApiError::Forbidden(format!(
                "who may read {:?} is visible to its owner {:?}, admins and auditors",
                event.name, event.owner
            )));
        }
        let grants = grants::list(&mut conn, Some(&event.name), now).await?;
        let mut receivers = Vec::new();
        for subscription in subscriptions::naming_event(&mut conn, &event.name).await? {
            let delivering = subscription.status == SubscriptionStatus::Active
                && access::evaluate(Some(&event), &subscription.owner, &grants, now).is_ok();
            receivers.push(AccessSubscription {
                subscription_id: subscription.id,
                stream: subscription.stream,
                owner: subscription.owner,
                delivering,
                filter: subscription.filter,
                delivery_format: subscription.delivery_format,
            });
        }
        Ok(AccessView {
            event,
            grants,
            subscriptions: receivers,
        })
    }

    pub async fn audit_log(
        &self,
        ctx: &Ctx,
        filter: &audit::Filter,
        limit: Option<i64>,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        require_auditor(ctx)?;
        let limit = limit.unwrap_or(1000);
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_AUDIT_PAGE}, not {limit}"
            )));
        }
        Ok(audit::list(&mut *self.conn().await?, filter, limit).await?)
    }

    pub async fn audit_verify(&self, ctx: &Ctx) -> Result<AuditVerification, ApiError> {
        require_auditor(ctx)?;
        Ok(audit::verify(&mut *self.conn().await?).await?)
    }

    /// The route table once its revision is past `after`, or the current one after `wait`.
    pub async fn routes(
        &self,
        ctx: &Ctx,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<std::sync::Arc<RouteTable>, ApiError> {
        require_auditor(ctx)?;
        let mut revisions = self.route_revisions();
        if let Some(after) = after {
            let _ =
                tokio::time::timeout(wait, revisions.wait_for(|revision| *revision > after)).await;
        }
        let table = self.route_table().await?;
        if ctx.caller.is_admin() {
            return Ok(table);
        }
        // Auditors read the table but not the grants' HMAC keys: only the data plane (an
        // admin principal) needs them.
        let mut table = RouteTable::clone(&table);
        for target in table.routes.iter_mut().flat_map(|route| &mut route.targets) {
            target.redact_key = None;
        }
        Ok(std::sync::Arc::new(table))
    }
}

fn require_auditor(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.caller.sees_everything() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only admins and auditors may do this".to_owned(),
        ))
    }
}

pub(super) async fn compile_route_table(
    conn: &mut AnyConnection,
    revision: i64,
    now: DateTime<Utc>,
    backing_name: impl Fn(&str) -> String,
) -> Result<RouteTable, ApiError> {
    let events = catalog::list(conn).await?;
    let streams = streams::list(conn).await?;
    let subscriptions = subscriptions::list(conn, None).await?;
    let grants = grants::list(conn, None, now).await?;
    let hydrations = hydrations::handovers(conn).await?;
    let grant_keys = grants::keys(conn).await?;
    let schemas = catalog::route_schemas(conn).await?;
    let routes = access::compile_routes(
        &Catalog {
            events: &events,
            streams: &streams,
            subscriptions: &subscriptions,
            grants: &grants,
            hydrations: &hydrations,
            grant_keys: &grant_keys,
            schemas: &schemas,
        },
        now,
        backing_name,
    );
    Ok(RouteTable {
        revision,
        generated_at: now,
        known_events: events.into_iter().map(|e| e.name).collect(),
        routes,
    })
}
