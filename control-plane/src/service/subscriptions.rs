use api::{
    AccessVerdict, CheckSubscription, CreateSubscription, HydrationKind, StartFrom, Subscription,
    SubscriptionStatus, UpdateSubscription, rules,
};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

use super::{Change, ControlPlane, bad_request, check_revision, history, snapshot};
use crate::access;
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::{catalog, grants, hydrations, streams, subscriptions};

impl ControlPlane {
    /// Subscriptions the caller may see, optionally only those of `stream`.
    pub async fn list_subscriptions(
        &self,
        ctx: &Ctx,
        stream: Option<&str>,
    ) -> Result<Vec<Subscription>, ApiError> {
        let mut conn = self.conn().await?;
        let all = subscriptions::list(&mut conn, stream).await?;
        let mut newest = hydrations::newest(&mut conn).await?;
        Ok(all
            .into_iter()
            .filter(|s| ctx.caller.may_read(&s.owner))
            .map(|mut s| {
                s.hydration = newest.remove(&s.id).unwrap_or_default();
                s
            })
            .collect())
    }

    pub async fn get_subscription(&self, ctx: &Ctx, id: &str) -> Result<Subscription, ApiError> {
        let mut conn = self.conn().await?;
        let mut subscription = subscriptions::get(&mut conn, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        subscription.hydration = hydrations::newest_of(&mut conn, id)
            .await?
            .unwrap_or_default();
        if ctx.caller.may_read(&subscription.owner) {
            Ok(subscription)
        } else {
            Err(not_yours(&subscription))
        }
    }

    /// The verdict creating (or updating) such a subscription would get, without writing.
    pub async fn check_subscription(
        &self,
        ctx: &Ctx,
        req: CheckSubscription,
    ) -> Result<AccessVerdict, ApiError> {
        bad_request(rules::check_name("stream", &req.stream))?;
        let events = rules::normalize_events(&req.events).map_err(ApiError::BadRequest)?;
        rules::normalize_filter(req.filter).map_err(ApiError::BadRequest)?;
        let now = self.now();
        let mut conn = self.conn().await?;
        let owner = match streams::get(&mut conn, &req.stream).await? {
            Some(stream) if ctx.caller.may_read(&stream.owner) => stream.owner,
            Some(stream) => {
                return Err(ApiError::Forbidden(format!(
                    "stream {:?} belongs to {:?}; only its owner, admins and auditors may check it",
                    stream.name, stream.owner
                )));
            }
            None => ctx.caller.principal.clone(),
        };
        verdict(&mut conn, &owner, &events, now).await
    }

    pub async fn create_subscription(
        &self,
        ctx: &Ctx,
        req: CreateSubscription,
    ) -> Result<Subscription, ApiError> {
        let mut m = self
            .begin(ctx, "subscription.create", "subscription", &req.stream)
            .await?;
        let now = m.now;
        let result = async {
            bad_request(rules::check_name("stream", &req.stream))?;
            let stream = streams::get(m.conn(), &req.stream).await?.ok_or_else(|| {
                ApiError::NotFound(format!("stream {:?} does not exist", req.stream))
            })?;
            if !ctx.caller.may_modify(&stream.owner) {
                return Err(ApiError::Forbidden(format!(
                    "stream {:?} belongs to {:?}; only its owner or an admin may subscribe it",
                    stream.name, stream.owner
                )));
            }
            let events = rules::normalize_events(&req.events).map_err(ApiError::BadRequest)?;
            let filter = rules::normalize_filter(req.filter).map_err(ApiError::BadRequest)?;
            require_access(m.conn(), &stream.owner, &events, now).await?;
            let start_from = history::stored(req.start_from.unwrap_or_default());
            let mut subscription = Subscription {
                id: uuid::Uuid::new_v4().to_string(),
                stream: stream.name,
                owner: stream.owner,
                events,
                status: SubscriptionStatus::Active,
                status_reason: None,
                start_from,
                hydration: Default::default(),
                revision: 1,
                created_at: now,
                updated_at: now,
                filter,
                delivery_format: req.delivery_format,
            };
            subscriptions::insert(m.conn(), &subscription).await?;
            if start_from != StartFrom::Now {
                subscription.hydration = history::request(
                    m.conn(),
                    ctx,
                    &subscription.id,
                    HydrationKind::Start,
                    start_from.instant(),
                    None,
                    now,
                )
                .await?;
            }
            Ok(
                Change::new(None, snapshot(&subscription), subscription.clone())
                    .with_id(subscription.id),
            )
        }
        .await;
        m.finish(result).await
    }

    pub async fn update_subscription(
        &self,
        ctx: &Ctx,
        id: &str,
        req: UpdateSubscription,
    ) -> Result<Subscription, ApiError> {
        let mut m = self
            .begin(ctx, "subscription.update", "subscription", id)
            .await?;
        let now = m.now;
        let result = async {
            let before = subscriptions::get(m.conn(), id)
                .await?
                .ok_or_else(|| not_found(id))?;
            if !ctx.caller.may_modify(&before.owner) {
                return Err(not_yours(&before));
            }
            check_revision("subscription", id, req.revision, before.revision)?;
            let events = rules::normalize_events(&req.events).map_err(ApiError::BadRequest)?;
            let filter = rules::normalize_filter(req.filter).map_err(ApiError::BadRequest)?;
            require_access(m.conn(), &before.owner, &events, now).await?;
            let start_from = req.start_from.map_or(before.start_from, history::stored);
            let mut after = Subscription {
                events,
                start_from,
                filter,
                delivery_format: req.delivery_format,
                revision: before.revision + 1,
                updated_at: now,
                ..before.clone()
            };
            if !subscriptions::update(m.conn(), &after, before.revision).await? {
                return Err(ApiError::Conflict(format!(
                    "subscription {id:?} changed concurrently; retry"
                )));
            }
            // A new start replays the history since then; live delivery goes on meanwhile.
            after.hydration = if start_from != before.start_from && start_from != StartFrom::Now {
                history::request(
                    m.conn(),
                    ctx,
                    id,
                    HydrationKind::Replay,
                    start_from.instant(),
                    None,
                    now,
                )
                .await?
            } else {
                hydrations::newest_of(m.conn(), id)
                    .await?
                    .unwrap_or_default()
            };
            Ok(Change::new(snapshot(&before), snapshot(&after), after))
        }
        .await;
        m.finish(result).await
    }

    pub async fn delete_subscription(&self, ctx: &Ctx, id: &str) -> Result<Subscription, ApiError> {
        let mut m = self
            .begin(ctx, "subscription.delete", "subscription", id)
            .await?;
        let result = async {
            let before = subscriptions::get(m.conn(), id)
                .await?
                .ok_or_else(|| not_found(id))?;
            if !ctx.caller.may_modify(&before.owner) {
                return Err(not_yours(&before));
            }
            hydrations::delete_of(m.conn(), id).await?;
            subscriptions::delete(m.conn(), id).await?;
            Ok(Change::new(snapshot(&before), None, before))
        }
        .await;
        m.finish(result).await
    }

    /// Marks a subscription failed (its stream cannot take deliveries) or active again. The data
    /// plane reports through this; a change of status is audited like any other.
    pub async fn set_subscription_status(
        &self,
        ctx: &Ctx,
        id: &str,
        status: SubscriptionStatus,
        reason: Option<String>,
    ) -> Result<Subscription, ApiError> {
        let mut m = self
            .begin(ctx, "subscription.status", "subscription", id)
            .await?;
        let now = m.now;
        let result = async {
            if !ctx.caller.is_admin() {
                return Err(ApiError::Forbidden(
                    "only admins (the data plane) may set a subscription's status".to_owned(),
                ));
            }
            let before = subscriptions::get(m.conn(), id)
                .await?
                .ok_or_else(|| not_found(id))?;
            let after = Subscription {
                status,
                status_reason: reason,
                revision: before.revision + 1,
                updated_at: now,
                ..before.clone()
            };
            if !subscriptions::update(m.conn(), &after, before.revision).await? {
                return Err(ApiError::Conflict(format!(
                    "subscription {id:?} changed concurrently; retry"
                )));
            }
            Ok(Change::new(snapshot(&before), snapshot(&after), after))
        }
        .await;
        m.finish(result).await
    }
}

/// Checks every event for `owner` and reports each one it may not read.
async fn verdict(
    conn: &mut AnyConnection,
    owner: &str,
    events: &[String],
    now: DateTime<Utc>,
) -> Result<AccessVerdict, ApiError> {
    let held = grants::unrevoked_to(conn, owner, now).await?;
    let mut problems = Vec::new();
    for name in events {
        let event = catalog::get(conn, name).await?;
        if let Err(reason) = access::evaluate(event.as_ref(), owner, &held, now) {
            problems.push(access::problem(name, owner, reason));
        }
    }
    Ok(AccessVerdict {
        allowed: problems.is_empty(),
        owner: owner.to_owned(),
        problems,
    })
}

async fn require_access(
    conn: &mut AnyConnection,
    owner: &str,
    events: &[String],
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let verdict = verdict(conn, owner, events, now).await?;
    if verdict.allowed {
        return Ok(());
    }
    let listed: Vec<String> = verdict
        .problems
        .iter()
        .map(|p| format!("{} ({})", p.event, p.reason.as_str()))
        .collect();
    Err(ApiError::AccessDenied {
        message: format!("{owner:?} may not read: {}", listed.join(", ")),
        problems: verdict.problems,
    })
}

pub(super) fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("subscription {id:?} does not exist"))
}

pub(super) fn not_yours(subscription: &Subscription) -> ApiError {
    ApiError::Forbidden(format!(
        "subscription {} belongs to {:?}; only its owner or an admin may do this",
        subscription.id, subscription.owner
    ))
}
