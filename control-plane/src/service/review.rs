//! The reviewer's views: who can read what, which grants need attention, where PII goes, and the
//! audit history of an event's grants.

use api::{
    AccessMatrix, AccessReview, AccessRow, Attention, AuditEntry, Classification, GrantStatus,
    PiiReach, Reach, ReviewedGrant, SubscriptionStatus,
};

use super::ControlPlane;
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::{audit, catalog, grants, principals, subscriptions};

/// The longest review window `access_review` accepts, in days.
pub const MAX_REVIEW_DAYS: u32 = 3650;
/// What `fanner_control_plane_grants_expiring` counts as expiring.
const EXPIRING_GAUGE_WINDOW: chrono::Duration = chrono::Duration::days(7);
/// The most grant-history entries an event shows.
const MAX_HISTORY: i64 = 500;

impl ControlPlane {
    /// Principals × events. Members see only their own row.
    pub async fn access_matrix(&self, ctx: &Ctx) -> Result<AccessMatrix, ApiError> {
        let events = self.list_events().await?;
        let grants = self.list_grants(ctx, None, None).await?;
        let names: Vec<String> = if ctx.caller.sees_everything() {
            principals::list(&mut *self.conn().await?)
                .await?
                .into_iter()
                .map(|p| p.name)
                .collect()
        } else {
            vec![ctx.caller.principal.clone()]
        };
        let rows = names
            .into_iter()
            .map(|principal| {
                let reach = events
                    .iter()
                    .map(|event| {
                        if event.owner == principal {
                            Reach::Owner
                        } else if grants.iter().any(|g| {
                            g.event == event.name
                                && g.grantee == principal
                                && g.status == GrantStatus::Active
                        }) {
                            Reach::Grant
                        } else {
                            Reach::None
                        }
                    })
                    .collect();
                AccessRow { principal, reach }
            })
            .collect();
        Ok(AccessMatrix { events, rows })
    }

    /// Every grant the caller may see with its use and what needs attention within `days`, and
    /// the reach of `pii` and `restricted` events the caller may see.
    pub async fn access_review(&self, ctx: &Ctx, days: u32) -> Result<AccessReview, ApiError> {
        if days == 0 || days > MAX_REVIEW_DAYS {
            return Err(ApiError::BadRequest(format!(
                "days must be between 1 and {MAX_REVIEW_DAYS}, not {days}"
            )));
        }
        let now = self.now();
        let window = chrono::Duration::days(i64::from(days));
        let grants = self.list_grants(ctx, None, None).await?;
        let routes = self.route_table().await?;
        let mut conn = self.conn().await?;
        let audit_head = audit::head_hash(&mut conn).await?;
        let subscriptions = subscriptions::list(&mut conn, None).await?;
        let events = catalog::list(&mut conn).await?;
        drop(conn);
        let reviewed = grants
            .into_iter()
            .map(|grant| {
                let mut streams: Vec<String> = subscriptions
                    .iter()
                    .filter(|s| {
                        s.owner == grant.grantee
                            && s.status == SubscriptionStatus::Active
                            && s.events.contains(&grant.event)
                    })
                    .map(|s| s.stream.clone())
                    .collect();
                streams.dedup();
                let attention = match grant.status {
                    GrantStatus::Expired => Some(Attention::Expired),
                    GrantStatus::Revoked => None,
                    GrantStatus::Active if grant.expires_at.is_some_and(|e| e - now <= window) => {
                        Some(Attention::Expiring)
                    }
                    GrantStatus::Active
                        if streams.is_empty() && now - grant.created_at >= window =>
                    {
                        Some(Attention::Unused)
                    }
                    GrantStatus::Active => None,
                };
                ReviewedGrant {
                    age_days: (now - grant.created_at).num_days(),
                    grant,
                    streams,
                    attention,
                }
            })
            .collect::<Vec<_>>();
        let pii_reach = events
            .into_iter()
            .filter(|e| {
                matches!(
                    e.classification,
                    Classification::Pii | Classification::Restricted
                ) && ctx.caller.may_read(&e.owner)
            })
            .map(|event| {
                let mut readers = vec![event.owner.clone()];
                readers.extend(
                    reviewed
                        .iter()
                        .filter(|r| {
                            r.grant.event == event.name && r.grant.status == GrantStatus::Active
                        })
                        .map(|r| r.grant.grantee.clone()),
                );
                readers.sort();
                readers.dedup();
                let mut streams: Vec<String> = routes
                    .routes
                    .iter()
                    .filter(|r| r.event == event.name)
                    .flat_map(|r| r.targets.iter().map(|t| t.stream.clone()))
                    .collect();
                streams.sort();
                streams.dedup();
                PiiReach {
                    event: event.name,
                    classification: event.classification,
                    owner: event.owner,
                    readers,
                    streams,
                }
            })
            .collect();
        Ok(AccessReview {
            generated_at: now,
            days,
            audit_head,
            grants: reviewed,
            pii_reach,
        })
    }

    /// Sets `fanner_control_plane_grants_expiring`: active grants that expire within a week.
    pub async fn update_grant_gauges(&self) -> Result<(), ApiError> {
        let now = self.now();
        let all = grants::list(&mut *self.conn().await?, None, now).await?;
        let expiring = all
            .iter()
            .filter(|g| {
                g.status == GrantStatus::Active
                    && g.expires_at
                        .is_some_and(|e| e - now <= EXPIRING_GAUGE_WINDOW)
            })
            .count();
        metrics::gauge!("fanner_control_plane_grants_expiring").set(expiring as f64);
        Ok(())
    }

    /// The audit entries of every grant ever made on `event`, newest last; visible to whoever
    /// may see who reads the event.
    pub async fn grant_history(&self, ctx: &Ctx, event: &str) -> Result<Vec<AuditEntry>, ApiError> {
        let view = self.access_view(ctx, event).await?;
        if view.grants.is_empty() {
            return Ok(Vec::new());
        }
        let filter = audit::Filter {
            object_kind: Some("grant".to_owned()),
            object_ids: view.grants.into_iter().map(|g| g.id).collect(),
            newest: true,
            ..audit::Filter::default()
        };
        Ok(audit::list(&mut *self.conn().await?, &filter, MAX_HISTORY).await?)
    }
}
