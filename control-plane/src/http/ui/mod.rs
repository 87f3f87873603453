//! The console at `/ui/`: server-rendered pages for reviewers and teams, signed in with an API
//! token exchanged for a session cookie. Pages call the same service operations as the API, so
//! they show exactly what the API would and refuse exactly what it refuses.

mod graph;
mod pages;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::error::REQUEST_ID;
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::service::ControlPlane;

const COOKIE: &str = "fanner_session";

/// No inline script or style, nothing from elsewhere, no framing, forms only to ourselves.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

pub(super) fn router() -> Router<ControlPlane> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::home).post(pages::sign_in))
        .route("/ui/sign-out", axum::routing::post(pages::sign_out))
        .route("/ui/events/{name}", get(pages::event))
        .route("/ui/streams/{name}", get(pages::stream))
        .route("/ui/access", get(pages::access))
        .route("/ui/access.csv", get(pages::access_csv))
        .route("/ui/review", get(pages::review))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/health", get(pages::health))
        .route("/ui/static/console.css", get(stylesheet))
        .layer(middleware::from_fn(security_headers))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../../../static/console.css"),
    )
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The session id from the request's cookie, if any.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// The per-session token state-changing forms carry: derived from the session secret, so a
/// page of another origin cannot know it.
fn csrf_token(session_id: &str) -> String {
    hex::encode(&Sha256::digest(format!("csrf:{session_id}").as_bytes())[..16])
}

/// Whether the browser reached us over TLS (directly, or through a proxy that terminated it).
fn over_tls(parts_headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    uri.scheme_str() == Some("https")
        || parts_headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn session_cookie(value: &str, max_age_secs: i64, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A signed-in console user.
pub(super) struct Viewer {
    ctx: Ctx,
    session_id: String,
}

impl Viewer {
    fn csrf(&self) -> String {
        csrf_token(&self.session_id)
    }
}

/// What a page answers when it cannot render: the sign-in page for a missing or expired session,
/// else an error page with the API's status and message.
pub(super) enum UiError {
    SignIn,
    Api(ApiError),
}

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> UiError {
        match error {
            ApiError::Unauthorized => UiError::SignIn,
            other => UiError::Api(other),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::SignIn => Redirect::to("/ui/").into_response(),
            UiError::Api(error) => {
                let request_id = REQUEST_ID.try_with(Clone::clone).ok();
                let (status, body) = super::error::body(error, request_id);
                pages::error_page(status, body.error.message)
            }
        }
    }
}

impl FromRequestParts<ControlPlane> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, cp: &ControlPlane) -> Result<Viewer, UiError> {
        let session_id = session_id(&parts.headers).ok_or(UiError::SignIn)?;
        let caller = cp.session(session_id).await?;
        let request_id = REQUEST_ID
            .try_with(Clone::clone)
            .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
        Ok(Viewer {
            ctx: Ctx { caller, request_id },
            session_id: session_id.to_owned(),
        })
    }
}

fn render(template: &impl askama::Template) -> Result<Response, UiError> {
    render_with(StatusCode::OK, template)
}

fn render_with(status: StatusCode, template: &impl askama::Template) -> Result<Response, UiError> {
    let html = template
        .render()
        .map_err(|e| ApiError::Internal(format!("page template failed: {e}")))?;
    Ok((status, Html(html)).into_response())
}
