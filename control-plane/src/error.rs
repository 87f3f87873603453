use api::AccessProblem;

use crate::store::StoreError;

/// Every way an operation can fail. `http::error` gives each its status and body: caller
/// mistakes echo what was wrong; server faults answer with a generic message and log the cause.
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
