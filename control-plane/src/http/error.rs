//! How an [`ApiError`] reaches an HTTP client: its status, its JSON body, and the request id
//! every error body carries. The service layer knows none of this.

use api::{ErrorBody, ErrorDetail};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

tokio::task_local! {
    /// The id of the request being served, so every error body can carry it.
    pub static REQUEST_ID: String;
}

pub(crate) fn status(error: &ApiError) -> StatusCode {
    match error {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) | ApiError::AccessDenied { .. } => StatusCode::FORBIDDEN,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The machine-readable code in an error body.
fn code(error: &ApiError) -> &'static str {
    match error {
        ApiError::BadRequest(_) => "bad_request",
        ApiError::Unauthorized => "unauthorized",
        ApiError::Forbidden(_) => "forbidden",
        ApiError::NotFound(_) => "not_found",
        ApiError::Conflict(_) => "conflict",
        ApiError::AccessDenied { .. } => "access_denied",
        ApiError::PayloadTooLarge => "payload_too_large",
        ApiError::Unavailable(_) => "unavailable",
        ApiError::Internal(_) => "internal",
    }
}

/// The status and body of `error`; a server fault's cause goes to the log, not the client.
pub(crate) fn body(error: ApiError, request_id: Option<String>) -> (StatusCode, ErrorBody) {
    let status = status(&error);
    let code = code(&error).to_owned();
    let (message, problems) = match error {
        ApiError::Internal(cause) => {
            tracing::error!(%cause, request_id = request_id.as_deref().unwrap_or(""), "Request failed.");
            (
                "internal error; the server log has the cause".to_owned(),
                Vec::new(),
            )
        }
        ApiError::AccessDenied { message, problems } => (message, problems),
        other => {
            tracing::debug!(error = %other, "Request refused.");
            (other.to_string(), Vec::new())
        }
    };
    (
        status,
        ErrorBody {
            error: ErrorDetail {
                code,
                message,
                problems,
                request_id,
            },
        },
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = body(self, REQUEST_ID.try_with(Clone::clone).ok());
        (status, Json(body)).into_response()
    }
}
