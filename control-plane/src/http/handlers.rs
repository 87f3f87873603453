use std::time::Duration;

use api::*;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Body, Params};
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::service::ControlPlane;
use crate::store::audit;

type Result<T> = std::result::Result<T, ApiError>;

/// The longest a long-poll waits before answering with what it has.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[utoipa::path(get, path = "/v1/whoami", tag = "principals",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(State(cp): State<ControlPlane>, ctx: Ctx) -> Json<WhoAmI> {
    Json(cp.whoami(&ctx))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "principals", request_body = CreateToken,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Body(req): Body<CreateToken>,
) -> Result<(StatusCode, Json<TokenCreated>)> {
    Ok((StatusCode::CREATED, Json(cp.create_token(&ctx, req).await?)))
}

#[utoipa::path(get, path = "/v1/principals", tag = "principals", responses((status = 200, body = Vec<Principal>)))]
pub async fn list_principals(
    State(cp): State<ControlPlane>,
    _ctx: Ctx,
) -> Result<Json<Vec<Principal>>> {
    Ok(Json(cp.list_principals().await?))
}

#[utoipa::path(get, path = "/v1/events", tag = "events", responses((status = 200, body = Vec<Event>)))]
pub async fn list_events(State(cp): State<ControlPlane>, _ctx: Ctx) -> Result<Json<Vec<Event>>> {
    Ok(Json(cp.list_events().await?))
}

#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = CreateEvent,
    responses((status = 201, body = Event), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_event(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Body(req): Body<CreateEvent>,
) -> Result<(StatusCode, Json<Event>)> {
    Ok((StatusCode::CREATED, Json(cp.create_event(&ctx, req).await?)))
}

#[utoipa::path(get, path = "/v1/events/{name}", tag = "events", params(("name" = String, Path)),
    responses((status = 200, body = Event), (status = 404, body = ErrorBody)))]
pub async fn get_event(
    State(cp): State<ControlPlane>,
    _ctx: Ctx,
    Path(name): Path<String>,
) -> Result<Json<Event>> {
    Ok(Json(cp.get_event(&name).await?))
}

#[utoipa::path(put, path = "/v1/events/{name}", tag = "events", params(("name" = String, Path)), request_body = UpdateEvent,
    responses((status = 200, body = Event), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_event(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
    Body(req): Body<UpdateEvent>,
) -> Result<Json<Event>> {
    Ok(Json(cp.update_event(&ctx, &name, req).await?))
}

/// Stores the protobuf message the event's payload is (`fanner catalog push` sends it); the
/// fields it marks `(fanner.v1.field).pii = true` are redacted for every grantee whose grant does
/// not `include_pii` them.
#[utoipa::path(put, path = "/v1/events/{name}/schema", tag = "events", params(("name" = String, Path)), request_body = SetEventSchema,
    responses((status = 200, body = Event), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_event_schema(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
    Body(req): Body<SetEventSchema>,
) -> Result<Json<Event>> {
    Ok(Json(cp.set_event_schema(&ctx, &name, req).await?))
}

#[utoipa::path(delete, path = "/v1/events/{name}", tag = "events", params(("name" = String, Path)),
    responses((status = 200, body = Event), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_event(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Result<Json<Event>> {
    Ok(Json(cp.delete_event(&ctx, &name).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GrantFilter {
    event: Option<String>,
    grantee: Option<String>,
}

#[utoipa::path(get, path = "/v1/grants", tag = "grants", params(GrantFilter), responses((status = 200, body = Vec<Grant>)))]
pub async fn list_grants(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Params(filter): Params<GrantFilter>,
) -> Result<Json<Vec<Grant>>> {
    Ok(Json(
        cp.list_grants(&ctx, filter.event.as_deref(), filter.grantee.as_deref())
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/grants", tag = "grants", request_body = CreateGrant,
    responses((status = 201, body = Grant), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_grant(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Body(req): Body<CreateGrant>,
) -> Result<(StatusCode, Json<Grant>)> {
    Ok((StatusCode::CREATED, Json(cp.create_grant(&ctx, req).await?)))
}

#[utoipa::path(get, path = "/v1/grants/{id}", tag = "grants", params(("id" = String, Path)),
    responses((status = 200, body = Grant), (status = 404, body = ErrorBody)))]
pub async fn get_grant(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Grant>> {
    Ok(Json(cp.get_grant(&ctx, &id).await?))
}

#[utoipa::path(put, path = "/v1/grants/{id}", tag = "grants", params(("id" = String, Path)), request_body = UpdateGrant,
    responses((status = 200, body = Grant), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_grant(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<UpdateGrant>,
) -> Result<Json<Grant>> {
    Ok(Json(cp.update_grant(&ctx, &id, req).await?))
}

/// Revokes the grant; it stays listed as revoked.
#[utoipa::path(delete, path = "/v1/grants/{id}", tag = "grants", params(("id" = String, Path)),
    responses((status = 200, body = Grant), (status = 403, body = ErrorBody)))]
pub async fn revoke_grant(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Grant>> {
    Ok(Json(cp.revoke_grant(&ctx, &id).await?))
}

#[utoipa::path(get, path = "/v1/streams", tag = "streams", responses((status = 200, body = Vec<Stream>)))]
pub async fn list_streams(State(cp): State<ControlPlane>, ctx: Ctx) -> Result<Json<Vec<Stream>>> {
    Ok(Json(cp.list_streams(&ctx).await?))
}

#[utoipa::path(post, path = "/v1/streams", tag = "streams", request_body = CreateStream,
    responses((status = 201, body = Stream), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_stream(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Body(req): Body<CreateStream>,
) -> Result<(StatusCode, Json<Stream>)> {
    Ok((
        StatusCode::CREATED,
        Json(cp.create_stream(&ctx, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/streams/{name}", tag = "streams", params(("name" = String, Path)),
    responses((status = 200, body = Stream), (status = 404, body = ErrorBody)))]
pub async fn get_stream(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Result<Json<Stream>> {
    Ok(Json(cp.get_stream(&ctx, &name).await?))
}

#[utoipa::path(put, path = "/v1/streams/{name}", tag = "streams", params(("name" = String, Path)), request_body = UpdateStream,
    responses((status = 200, body = Stream), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_stream(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
    Body(req): Body<UpdateStream>,
) -> Result<Json<Stream>> {
    Ok(Json(cp.update_stream(&ctx, &name, req).await?))
}

/// Deletes the stream, its subscriptions and its backing stream.
#[utoipa::path(delete, path = "/v1/streams/{name}", tag = "streams", params(("name" = String, Path)),
    responses((status = 200, body = Stream), (status = 403, body = ErrorBody)))]
pub async fn delete_stream(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Result<Json<Stream>> {
    Ok(Json(cp.delete_stream(&ctx, &name).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFilter {
    stream: Option<String>,
}

#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", params(SubscriptionFilter),
    responses((status = 200, body = Vec<Subscription>)))]
pub async fn list_subscriptions(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Params(filter): Params<SubscriptionFilter>,
) -> Result<Json<Vec<Subscription>>> {
    Ok(Json(
        cp.list_subscriptions(&ctx, filter.stream.as_deref())
            .await?,
    ))
}

/// Creates a subscription if the stream's owner may read every event; else 403 naming each one.
#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = CreateSubscription,
    responses((status = 201, body = Subscription), (status = 403, body = ErrorBody)))]
pub async fn create_subscription(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Body(req): Body<CreateSubscription>,
) -> Result<(StatusCode, Json<Subscription>)> {
    Ok((
        StatusCode::CREATED,
        Json(cp.create_subscription(&ctx, req).await?),
    ))
}

/// The verdict a subscription would get, without creating it (a dry run for `terraform plan`).
#[utoipa::path(post, path = "/v1/subscriptions/check", tag = "subscriptions", request_body = CheckSubscription,
    responses((status = 200, body = AccessVerdict), (status = 400, body = ErrorBody)))]
pub async fn check_subscription(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Body(req): Body<CheckSubscription>,
) -> Result<Json<AccessVerdict>> {
    Ok(Json(cp.check_subscription(&ctx, req).await?))
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)),
    responses((status = 200, body = Subscription), (status = 404, body = ErrorBody)))]
pub async fn get_subscription(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Subscription>> {
    Ok(Json(cp.get_subscription(&ctx, &id).await?))
}

#[utoipa::path(put, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)),
    request_body = UpdateSubscription,
    responses((status = 200, body = Subscription), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_subscription(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<UpdateSubscription>,
) -> Result<Json<Subscription>> {
    Ok(Json(cp.update_subscription(&ctx, &id, req).await?))
}

#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)),
    responses((status = 200, body = Subscription), (status = 403, body = ErrorBody)))]
pub async fn delete_subscription(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Subscription>> {
    Ok(Json(cp.delete_subscription(&ctx, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    status: SubscriptionStatus,
    reason: Option<String>,
}

/// The data plane reports a subscription it cannot deliver to (admins only).
#[utoipa::path(put, path = "/v1/subscriptions/{id}/status", tag = "subscriptions", params(("id" = String, Path)),
    request_body = SetStatus, responses((status = 200, body = Subscription), (status = 403, body = ErrorBody)))]
pub async fn set_subscription_status(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<SetStatus>,
) -> Result<Json<Subscription>> {
    Ok(Json(
        cp.set_subscription_status(&ctx, &id, req.status, req.reason)
            .await?,
    ))
}

/// Re-delivers a window of history (by event time) into the subscription's stream.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/replay", tag = "subscriptions", params(("id" = String, Path)),
    request_body = ReplaySubscription,
    responses((status = 200, body = Hydration), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replay_subscription(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<ReplaySubscription>,
) -> Result<Json<Hydration>> {
    Ok(Json(cp.replay_subscription(&ctx, &id, req).await?))
}

/// Hydrations and replays the data plane has to work on (admins only).
#[utoipa::path(get, path = "/v1/hydrations", tag = "hydrations",
    responses((status = 200, body = Vec<HydrationTask>), (status = 403, body = ErrorBody)))]
pub async fn unfinished_hydrations(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
) -> Result<Json<Vec<HydrationTask>>> {
    Ok(Json(cp.unfinished_hydrations(&ctx).await?))
}

/// The data plane's progress on one GES shard of a hydration (admins only).
#[utoipa::path(post, path = "/v1/hydrations/{id}/progress", tag = "hydrations", params(("id" = String, Path)),
    request_body = HydrationProgress,
    responses((status = 200, body = Hydration), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn report_hydration(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<HydrationProgress>,
) -> Result<Json<Hydration>> {
    Ok(Json(cp.report_hydration(&ctx, &id, req).await?))
}

/// The engine's choice of where live delivery begins on a GES shard (admins only).
#[utoipa::path(post, path = "/v1/hydrations/{id}/handover", tag = "hydrations", params(("id" = String, Path)),
    request_body = SetHandover,
    responses((status = 200, body = Handover), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_handover(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<SetHandover>,
) -> Result<Json<Handover>> {
    Ok(Json(cp.set_handover(&ctx, &id, req).await?))
}

/// Who can read an event: grants (with who granted them, why, when, until when) and the
/// subscriptions that receive it.
#[utoipa::path(get, path = "/v1/access/{event}", tag = "access", params(("event" = String, Path)),
    responses((status = 200, body = AccessView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn access_view(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(event): Path<String>,
) -> Result<Json<AccessView>> {
    Ok(Json(cp.access_view(&ctx, &event).await?))
}

/// The audit entries of every grant ever made on an event, oldest first.
#[utoipa::path(get, path = "/v1/access/{event}/history", tag = "access", params(("event" = String, Path)),
    responses((status = 200, body = AuditPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn grant_history(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(event): Path<String>,
) -> Result<Json<AuditPage>> {
    let entries = cp.grant_history(&ctx, &event).await?;
    Ok(Json(AuditPage { entries }))
}

/// Who can read what: principals × events (members see their own row).
#[utoipa::path(get, path = "/v1/access", tag = "access",
    responses((status = 200, body = AccessMatrix), (status = 401, body = ErrorBody)))]
pub async fn access_matrix(State(cp): State<ControlPlane>, ctx: Ctx) -> Result<Json<AccessMatrix>> {
    Ok(Json(cp.access_matrix(&ctx).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuery {
    /// The review window: grants expiring within, or unused for, this many days (default 30).
    #[param(minimum = 1, maximum = 3650)]
    days: Option<u32>,
}

/// Grants with their use and what needs attention, and the reach of `pii`/`restricted` events.
#[utoipa::path(get, path = "/v1/review", tag = "access", params(ReviewQuery),
    responses((status = 200, body = AccessReview), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn access_review(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Params(query): Params<ReviewQuery>,
) -> Result<Json<AccessReview>> {
    Ok(Json(
        cp.access_review(&ctx, query.days.unwrap_or(DEFAULT_REVIEW_DAYS))
            .await?,
    ))
}

/// The review window when none is asked for.
pub const DEFAULT_REVIEW_DAYS: u32 = 30;

/// Per event: when it was last seen, its rate, how long it may stay silent, and whether it is
/// in a gap. Members see the events they own or hold an active grant on.
#[utoipa::path(get, path = "/v1/health", tag = "health",
    responses((status = 200, body = Vec<EventHealth>), (status = 401, body = ErrorBody)))]
pub async fn event_health(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
) -> Result<Json<Vec<EventHealth>>> {
    Ok(Json(cp.event_health(&ctx).await?))
}

/// Events silent for longer than their set maximum or learned interval.
#[utoipa::path(get, path = "/v1/health/gaps", tag = "health",
    responses((status = 200, body = Vec<EventHealth>), (status = 401, body = ErrorBody)))]
pub async fn health_gaps(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
) -> Result<Json<Vec<EventHealth>>> {
    Ok(Json(cp.health_gaps(&ctx).await?))
}

/// Delivery health of each consumer stream the caller may see: mode, lag, owed records.
#[utoipa::path(get, path = "/v1/health/streams", tag = "health",
    responses((status = 200, body = Vec<StreamHealth>), (status = 401, body = ErrorBody)))]
pub async fn stream_health(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
) -> Result<Json<Vec<StreamHealth>>> {
    Ok(Json(cp.stream_health(&ctx).await?))
}

/// Sets (or with `null` clears) how long an event may stay silent before it is a gap.
#[utoipa::path(put, path = "/v1/events/{name}/max-silence", tag = "health", params(("name" = String, Path)),
    request_body = SetMaxSilence,
    responses((status = 200, body = SetMaxSilence), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_max_silence(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
    Body(req): Body<SetMaxSilence>,
) -> Result<Json<SetMaxSilence>> {
    Ok(Json(cp.set_max_silence(&ctx, &name, req).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries at or after this instant (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only entries after this sequence number (for paging).
    after_seq: Option<i64>,
    /// Only entries at or before this instant (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// Only entries by this principal.
    actor: Option<String>,
    /// Only entries of this action, e.g. `grant.create`.
    action: Option<String>,
    /// Only entries on objects of this kind, e.g. `grant`.
    object_kind: Option<String>,
    /// Only entries on this object (a name or an id).
    object_id: Option<String>,
    /// At most this many entries (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = ErrorBody)))]
pub async fn audit_log(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Params(query): Params<AuditQuery>,
) -> Result<Json<AuditPage>> {
    let filter = audit::Filter {
        after_seq: query.after_seq,
        since: query.since,
        until: query.until,
        actor: query.actor,
        action: query.action,
        object_kind: query.object_kind,
        object_ids: query.object_id.into_iter().collect(),
        newest: false,
    };
    let entries = cp.audit_log(&ctx, &filter, query.limit).await?;
    Ok(Json(AuditPage { entries }))
}

/// Recomputes the audit trail's hash chain and reports the first entry that does not match.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerification), (status = 403, body = ErrorBody)))]
pub async fn audit_verify(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
) -> Result<Json<AuditVerification>> {
    Ok(Json(cp.audit_verify(&ctx).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RoutesQuery {
    /// Answer once the revision is past this one (long poll).
    after: Option<i64>,
    /// How long to wait for a newer revision, in milliseconds.
    #[param(minimum = 0, maximum = 60000)]
    wait_ms: Option<u64>,
}

/// The compiled route table for the data plane (admins and auditors).
#[utoipa::path(get, path = "/v1/routes", tag = "routes", params(RoutesQuery),
    responses((status = 200, body = RouteTable), (status = 403, body = ErrorBody)))]
pub async fn routes(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Params(query): Params<RoutesQuery>,
) -> Result<Json<RouteTable>> {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most {}, not {}",
            MAX_WAIT.as_millis(),
            wait.as_millis()
        )));
    }
    let table = cp.routes(&ctx, query.after, wait).await?;
    Ok(Json(RouteTable::clone(&table)))
}

/// The largest publish request body.
pub const MAX_PUBLISH_BYTES: usize = 16 * 1024 * 1024;

/// Wraps events in envelopes and appends them to the global event stream. Only an event's owner
/// (or an admin) may publish it; unknown events are refused by name.
#[utoipa::path(post, path = "/v1/publish", tag = "data", request_body = PublishRequest,
    responses((status = 200, body = PublishResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn publish(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Body(req): Body<PublishRequest>,
) -> Result<Json<PublishResponse>> {
    Ok(Json(cp.publish(&ctx, req).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// `beginning` to read from the oldest retained record; default: only new records.
    from: Option<String>,
    /// Stop after this many records.
    limit: Option<u64>,
    /// Stop after this many milliseconds without a new record.
    idle_ms: Option<u64>,
}

/// Streams a consumer stream's envelopes as JSON lines (`TailRecord`), for its owner, admins and
/// auditors.
#[utoipa::path(get, path = "/v1/streams/{name}/records", tag = "data", params(("name" = String, Path), TailQuery),
    responses((status = 200, description = "One TailRecord per line", content_type = "application/x-ndjson"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tail(
    State(cp): State<ControlPlane>,
    ctx: Ctx,
    Path(name): Path<String>,
    Params(query): Params<TailQuery>,
) -> Result<axum::response::Response> {
    let from_beginning = match query.from.as_deref() {
        None | Some("latest") => false,
        Some("beginning") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "from must be `beginning` or `latest`, not {other:?}"
            )));
        }
    };
    let idle = query.idle_ms.map(Duration::from_millis);
    let receiver = cp
        .tail(&ctx, &name, from_beginning, query.limit, idle)
        .await?;
    let lines = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), receiver))
    });
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
