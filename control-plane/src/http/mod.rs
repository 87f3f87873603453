//! The HTTP API: routing, authentication, body and query extraction that turns every mistake
//! into a 4xx naming it, request ids, metrics, and the OpenAPI document built from the handlers.

mod error;
mod extract;
mod handlers;
pub mod tls;
mod ui;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::REQUEST_ID;
use crate::error::ApiError;
use crate::service::ControlPlane;

pub use extract::MAX_BODY_BYTES;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fanner control plane",
        description = "Access-checked fan-out of a global event stream: events, grants, streams, subscriptions, the audit trail and the route table.",
        version = "1"
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Declares the error statuses the extractors and the shared rules give every operation, so the
/// document lists each status an operation can answer with, without repeating them per handler:
/// 401 everywhere (every operation needs a token), 400 where a body or query is parsed, 413 where
/// a body is read, 404 where a path or body names an object, 403 and 409 on changes, 503 where the stream
/// backend is called.
fn declare_error_statuses(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.delete, true),
        ];
        for (operation, changes) in operations {
            let Some(operation) = operation else {
                continue;
            };
            let parameters = operation.parameters.as_deref().unwrap_or_default();
            let has = |place: ParameterIn| parameters.iter().any(|p| p.parameter_in == place);
            let has_body = operation.request_body.is_some();
            let backend = path.starts_with("/v1/streams") || path == "/v1/publish";
            let read_only_post = path == "/v1/publish" || path.ends_with("/check");
            let statuses = [
                ("401", true, "Missing or invalid bearer token."),
                (
                    "400",
                    has_body || has(ParameterIn::Query),
                    "The body or query is invalid; the message names what.",
                ),
                (
                    "413",
                    has_body,
                    "The body is larger than this endpoint accepts.",
                ),
                (
                    "404",
                    has(ParameterIn::Path) || has_body,
                    "An object the path or body names does not exist.",
                ),
                (
                    "403",
                    changes || has(ParameterIn::Path),
                    "The caller's role or ownership does not allow this.",
                ),
                (
                    "409",
                    changes && !read_only_post,
                    "The object changed since it was read, already exists, or is still in use.",
                ),
                ("503", backend, "The stream backend is unavailable; retry."),
            ];
            for (status, applies, description) in statuses {
                if applies {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// The API routes plus the OpenAPI document describing them.
fn api_router() -> (Router<ControlPlane>, utoipa::openapi::OpenApi) {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::whoami))
        .routes(routes!(handlers::create_token))
        .routes(routes!(handlers::list_principals))
        .routes(routes!(handlers::list_events, handlers::create_event))
        .routes(routes!(
            handlers::get_event,
            handlers::update_event,
            handlers::delete_event
        ))
        .routes(routes!(handlers::set_event_schema))
        .routes(routes!(handlers::list_grants, handlers::create_grant))
        .routes(routes!(
            handlers::get_grant,
            handlers::update_grant,
            handlers::revoke_grant
        ))
        .routes(routes!(handlers::list_streams, handlers::create_stream))
        .routes(routes!(
            handlers::get_stream,
            handlers::update_stream,
            handlers::delete_stream
        ))
        .routes(routes!(
            handlers::list_subscriptions,
            handlers::create_subscription
        ))
        .routes(routes!(handlers::check_subscription))
        .routes(routes!(
            handlers::get_subscription,
            handlers::update_subscription,
            handlers::delete_subscription
        ))
        .routes(routes!(handlers::set_subscription_status))
        .routes(routes!(handlers::replay_subscription))
        .routes(routes!(handlers::unfinished_hydrations))
        .routes(routes!(handlers::report_hydration))
        .routes(routes!(handlers::set_handover))
        .routes(routes!(handlers::access_view))
        .routes(routes!(handlers::access_matrix))
        .routes(routes!(handlers::grant_history))
        .routes(routes!(handlers::access_review))
        .routes(routes!(handlers::event_health))
        .routes(routes!(handlers::health_gaps))
        .routes(routes!(handlers::stream_health))
        .routes(routes!(handlers::set_max_silence))
        .routes(routes!(handlers::audit_log))
        .routes(routes!(handlers::audit_verify))
        .routes(routes!(handlers::routes))
        .routes(routes!(handlers::tail))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(handlers::publish))
                .layer(DefaultBodyLimit::max(handlers::MAX_PUBLISH_BYTES)),
        )
        .split_for_parts();
    let mut openapi = openapi;
    declare_error_statuses(&mut openapi);
    (router, openapi)
}

/// The OpenAPI document of the API, as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().1
}

/// The whole HTTP application. Tests drive it in-process or over a socket alike.
pub fn app(control_plane: ControlPlane) -> Router {
    app_for(
        control_plane,
        Role {
            api: true,
            workers: Vec::new(),
        },
    )
}

/// What one process serves: the API or not, and the shard workers (engine, persister) running
/// beside it, whose health `/readyz` includes.
#[derive(Clone, Debug)]
pub struct Role {
    /// The API, the OpenAPI document and the console; without it only `/healthz`, `/readyz` and
    /// `/metrics` answer (a worker replica).
    pub api: bool,
    /// Each worker's name and live scheduler status.
    pub workers: Vec<(&'static str, shard_runtime::Status)>,
}

/// The HTTP application of a process in `role`.
pub fn app_for(control_plane: ControlPlane, role: Role) -> Router {
    metrics_handle();
    let operations = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics));
    let router = if role.api {
        let (api, openapi) = api_router();
        let openapi_json = openapi.to_pretty_json().unwrap_or_default();
        api.route(
            "/v1/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi_json,
                )
            }),
        )
        .merge(operations)
        .merge(ui::router())
    } else {
        operations
    };
    router
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(observe))
        .layer(axum::Extension(Arc::new(role)))
        .with_state(control_plane)
}

/// Serves `app` on `listener` until `shutdown` completes, then lets in-flight requests finish
/// for at most `drain`; connections still open after that are cut.
pub async fn serve<L>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let begun = Arc::new(tokio::sync::Notify::new());
    let graceful = axum::serve(listener, app).with_graceful_shutdown({
        let begun = begun.clone();
        async move {
            shutdown.await;
            begun.notify_one();
        }
    });
    let mut graceful = std::pin::pin!(graceful.into_future());
    tokio::select! {
        served = &mut graceful => return served,
        () = begun.notified() => {}
    }
    match tokio::time::timeout(drain, graceful).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!(
                ?drain,
                "Requests still open after the drain timeout were cut."
            );
            Ok(())
        }
    }
}

/// Ready when everything this process needs answers: the store; for shard workers also the
/// global event stream and each worker's last lease scan.
async fn readyz(
    State(cp): State<ControlPlane>,
    axum::Extension(role): axum::Extension<Arc<Role>>,
) -> Response {
    let unready = |reason: String| (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    if let Err(error) = cp.store().ping().await {
        tracing::warn!(%error, "Store is not reachable.");
        return unready("store unreachable\n".to_owned());
    }
    if role.workers.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    if let Err(error) = cp.backend().list_shards(cp.ges()).await {
        tracing::warn!(%error, "The global event stream is not reachable.");
        return unready("global event stream unreachable\n".to_owned());
    }
    for (name, status) in &role.workers {
        if !status.snapshot().scanning {
            return unready(format!("{name} is not scanning its shards\n"));
        }
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// The process-wide Prometheus recorder, installed on first use.
/// How often histogram samples are folded into their summaries.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("A metrics recorder was already installed; /metrics will be empty.");
        }
        // Histogram samples wait in the recorder until folded into their summaries: without
        // this, a process nobody scrapes keeps every sample (megabytes a minute under load).
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "Cannot start the metrics upkeep; histograms grow until scraped.");
        }
        handle
    })
}

async fn render_metrics(State(cp): State<ControlPlane>) -> impl IntoResponse {
    if let Err(error) = cp.update_grant_gauges().await {
        tracing::warn!(%error, "Cannot count expiring grants for /metrics.");
    }
    if let Err(error) = cp.update_health_gauges().await {
        tracing::warn!(%error, "Cannot count gaps for /metrics.");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics_handle().render(),
    )
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (the caller's `x-request-id`, or a new one), echoes it, and counts
/// and times the request by route.
async fn observe(mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let mut response = REQUEST_ID
        .scope(request_id.clone(), next.run(request))
        .await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("fanner_api_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("fanner_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}
