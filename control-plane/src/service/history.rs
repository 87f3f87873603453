//! History on demand: a subscription's hydration and replays, and what the data plane reports
//! on them. Each GES shard is handed from history to live delivery at one position the engine
//! chooses (`set_handover`), after the position the hydration asked for; the route table carries
//! both, so the engine delivers only after it and the hydration only up to it.

use api::{
    Handover, Hydration, HydrationKind, HydrationProgress, HydrationState, HydrationTask,
    ReplaySubscription, SetHandover, StartFrom,
};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

use super::subscriptions::{not_found, not_yours};
use super::{Change, ControlPlane, snapshot, to_stored_precision};
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::{hydrations, subscriptions};

/// `start_from` as stored: instants to the millisecond.
pub(super) fn stored(start_from: StartFrom) -> StartFrom {
    match start_from {
        StartFrom::At(at) => StartFrom::At(to_stored_precision(at)),
        other => other,
    }
}

/// Records a hydration or replay for the data plane to pick up.
pub(super) async fn request(
    conn: &mut AnyConnection,
    ctx: &Ctx,
    subscription: &str,
    kind: HydrationKind,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Hydration, ApiError> {
    let new = hydrations::NewHydration {
        id: uuid::Uuid::new_v4().to_string(),
        subscription_id: subscription.to_owned(),
        kind,
        from,
        to,
        requested_by: ctx.caller.principal.clone(),
        created_at: now,
    };
    hydrations::insert(conn, &new).await?;
    Ok(Hydration {
        id: Some(new.id),
        kind,
        state: HydrationState::Pending,
        from,
        to,
        events_delivered: 0,
        error: None,
        requested_by: Some(new.requested_by),
        created_at: Some(now),
        finished_at: None,
    })
}

fn require_admin(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only admins (the data plane) may report on hydrations".to_owned(),
        ))
    }
}

impl ControlPlane {
    /// Re-delivers the events of a window (by event time) into a subscription's stream, beside
    /// its live delivery. Audited: who asked, and for which window; the count when it ends.
    pub async fn replay_subscription(
        &self,
        ctx: &Ctx,
        id: &str,
        req: ReplaySubscription,
    ) -> Result<Hydration, ApiError> {
        let mut m = self
            .begin(ctx, "subscription.replay", "subscription", id)
            .await?;
        let now = m.now;
        let result = async {
            let subscription = subscriptions::get(m.conn(), id)
                .await?
                .ok_or_else(|| not_found(id))?;
            if !ctx.caller.may_modify(&subscription.owner) {
                return Err(not_yours(&subscription));
            }
            let from = match req.from {
                StartFrom::Now => {
                    return Err(ApiError::BadRequest(
                        "`from` must be `earliest` or an RFC 3339 instant: `now` replays nothing"
                            .to_owned(),
                    ));
                }
                other => stored(other).instant(),
            };
            let to = req.to.map(to_stored_precision);
            if let (Some(from), Some(to)) = (from, to)
                && to <= from
            {
                return Err(ApiError::BadRequest(format!(
                    "`to` ({to}) must be after `from` ({from})"
                )));
            }
            let hydration =
                request(m.conn(), ctx, id, HydrationKind::Replay, from, to, now).await?;
            Ok(Change::new(None, snapshot(&hydration), hydration))
        }
        .await;
        m.finish(result).await
    }

    /// Hydrations and replays the data plane still has to work on.
    pub async fn unfinished_hydrations(&self, ctx: &Ctx) -> Result<Vec<HydrationTask>, ApiError> {
        require_admin(ctx)?;
        let mut conn = self.conn().await?;
        let mut tasks = hydrations::unfinished(&mut conn).await?;
        for task in &mut tasks {
            if let Some(subscription) = subscriptions::get(&mut conn, &task.subscription_id).await?
            {
                task.backing_name = self.backing_name(&subscription.stream);
                task.stream = subscription.stream;
                task.events = subscription.events;
            }
        }
        Ok(tasks)
    }

    /// Records the data plane's progress on one GES shard and, from all shards, the
    /// hydration's state. A hand-over request and the end of the whole hydration change the
    /// route table and are audited; counts alone are not.
    pub async fn report_hydration(
        &self,
        ctx: &Ctx,
        id: &str,
        progress: HydrationProgress,
    ) -> Result<Hydration, ApiError> {
        require_admin(ctx)?;
        // Listed outside the write lock: a slow backend must not hold it.
        let ges_shards: Vec<String> = self
            .backend()
            .list_shards(self.ges())
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot list the GES's shards: {e}")))?
            .into_iter()
            .map(|shard| shard.id)
            .collect();
        if progress.handover_after.is_some() {
            let mut m = self
                .begin(ctx, "hydration.handover", "hydration", id)
                .await?;
            let now = m.now;
            let result = async {
                hydrations::get(m.conn(), id)
                    .await?
                    .ok_or_else(|| hydration_not_found(id))?;
                hydrations::report(m.conn(), id, &progress, now).await?;
                Ok(Change::new(None, snapshot(&progress), ()))
            }
            .await;
            m.finish(result).await?;
        } else {
            let mut conn = self.conn().await?;
            hydrations::get(&mut conn, id)
                .await?
                .ok_or_else(|| hydration_not_found(id))?;
            hydrations::report(&mut conn, id, &progress, self.now()).await?;
        }
        self.settle_hydration(ctx, id, &ges_shards).await
    }

    /// Moves a hydration to `running`, `done` or `failed` from its shards' reports.
    async fn settle_hydration(
        &self,
        ctx: &Ctx,
        id: &str,
        ges_shards: &[String],
    ) -> Result<Hydration, ApiError> {
        let mut conn = self.conn().await?;
        let shards = hydrations::shards(&mut conn, id).await?;
        let (_, current) = hydrations::get(&mut conn, id)
            .await?
            .ok_or_else(|| hydration_not_found(id))?;
        drop(conn);
        let failed =
            shards
                .iter()
                .find(|(_, state, _)| state == "failed")
                .map(|(shard, _, error)| {
                    format!("shard {shard}: {}", error.as_deref().unwrap_or("failed"))
                });
        let all_done = !ges_shards.is_empty()
            && ges_shards.iter().all(|ges| {
                shards
                    .iter()
                    .any(|(shard, state, _)| shard == ges && state == "done")
            });
        let (state, error) = match failed {
            Some(error) => (HydrationState::Failed, Some(error)),
            None if all_done => (HydrationState::Done, None),
            None => (HydrationState::Running, None),
        };
        if state == current.state || current.state.is_finished() {
            return Ok(current);
        }
        if state == HydrationState::Running {
            let mut conn = self.conn().await?;
            hydrations::set_state(&mut conn, id, state, None, self.now()).await?;
        } else {
            let action = if state == HydrationState::Done {
                "hydration.done"
            } else {
                "hydration.failed"
            };
            let mut m = self.begin(ctx, action, "hydration", id).await?;
            let now = m.now;
            let result = async {
                hydrations::set_state(m.conn(), id, state, error.as_deref(), now).await?;
                let (_, after) = hydrations::get(m.conn(), id)
                    .await?
                    .ok_or_else(|| hydration_not_found(id))?;
                Ok(Change::new(snapshot(&current), snapshot(&after), ()))
            }
            .await;
            m.finish(result).await?;
        }
        let mut conn = self.conn().await?;
        Ok(hydrations::get(&mut conn, id)
            .await?
            .ok_or_else(|| hydration_not_found(id))?
            .1)
    }

    /// The engine's choice of where live delivery begins on a shard; the first choice holds,
    /// and the one that holds is returned.
    pub async fn set_handover(
        &self,
        ctx: &Ctx,
        id: &str,
        req: SetHandover,
    ) -> Result<Handover, ApiError> {
        require_admin(ctx)?;
        let mut m = self.begin(ctx, "hydration.live", "hydration", id).await?;
        let result = async {
            hydrations::get(m.conn(), id)
                .await?
                .ok_or_else(|| hydration_not_found(id))?;
            let held = hydrations::set_live_after(m.conn(), id, &req.shard, &req.live_after)
                .await?
                .ok_or_else(|| {
                    ApiError::Conflict(format!(
                        "hydration {id:?} has not asked for a hand-over on shard {:?}",
                        req.shard
                    ))
                })?;
            let handover = Handover {
                after: None,
                live: true,
                live_after: held,
            };
            Ok(Change::new(None, snapshot(&req), handover))
        }
        .await;
        m.finish(result).await
    }
}

fn hydration_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("hydration {id:?} does not exist"))
}
