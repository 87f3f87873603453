use api::{AccessProblem, ErrorBody, ErrorDetail};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// Every way a request can fail, each with its HTTP status. Caller mistakes echo what was wrong;
/// server faults answer with a generic message and log the cause.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    AccessDenied {
        message: String,
        problems: Vec<AccessProblem>,
    },
    #[error("request body is larger than this endpoint accepts")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
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

    pub fn code(&self) -> &'static str {
        match self {
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

    /// How a refused mutation is recorded on the audit trail; `None` for faults that are ours.
    pub fn audit_outcome(&self) -> Option<&'static str> {
        match self {
            ApiError::Forbidden(_) | ApiError::AccessDenied { .. } => Some("denied"),
            ApiError::BadRequest(_) | ApiError::NotFound(_) | ApiError::PayloadTooLarge => {
                Some("invalid")
            }
            ApiError::Conflict(_) => Some("conflict"),
            ApiError::Unauthorized | ApiError::Unavailable(_) | ApiError::Internal(_) => None,
        }
    }

    pub fn into_body(self, request_id: Option<String>) -> (StatusCode, ErrorBody) {
        let status = self.status();
        let code = self.code().to_owned();
        let (message, problems) = match self {
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
}

tokio::task_local! {
    /// The id of the request being served, so every error body can carry it.
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.into_body(REQUEST_ID.try_with(Clone::clone).ok());
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl From<::streams::StreamError> for ApiError {
    fn from(e: ::streams::StreamError) -> ApiError {
        use ::streams::StreamError;
        match e {
            StreamError::Invalid(message) => ApiError::BadRequest(message),
            StreamError::AlreadyExists(name) => ApiError::Conflict(format!(
                "backing stream {name:?} already exists with other settings"
            )),
            StreamError::NotFound(name) => {
                ApiError::NotFound(format!("backing stream {name:?} does not exist"))
            }
            transient => ApiError::Unavailable(format!("the stream backend failed: {transient}")),
        }
    }
}
