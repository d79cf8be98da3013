//! API errors: a status, a stable machine-readable code and a human message, sent as
//! `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use helios_snapshot::Error as Core;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code: `bad_request`, `not_found`, `conflict`, `dirty`, `in_use`, ...
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The paths a `conflict` of a merge names (all of them; sent when not empty).
    pub paths: Vec<String>,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            paths: Vec::new(),
        }
    }

    /// 409 with `code`.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
            paths: Vec::new(),
        }
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
            paths: Vec::new(),
        }
    }
}

impl From<Core> for ApiError {
    fn from(e: Core) -> ApiError {
        let message = e.to_string();
        let paths = match &e {
            Core::Conflict(paths) => paths.clone(),
            _ => Vec::new(),
        };
        let (status, code) = match &e {
            Core::SnapshotNotFound(_) | Core::WorkspaceNotFound(_) | Core::NoEntry(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Core::AlreadyExists(_) => (StatusCode::CONFLICT, "conflict"),
            Core::Dirty(_) => (StatusCode::CONFLICT, "dirty"),
            Core::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Core::NoCommonAncestor(..) => (StatusCode::CONFLICT, "no_common_ancestor"),
            Core::InUse { .. } => (StatusCode::CONFLICT, "in_use"),
            Core::ReadOnly => (StatusCode::CONFLICT, "read_only"),
            Core::QuotaExceeded { .. } => (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded"),
            Core::InvalidName(_)
            | Core::NameTooLong(_)
            | Core::InvalidArgument(_)
            | Core::NotADirectory(_)
            | Core::IsADirectory(_)
            | Core::NotEmpty(_)
            | Core::NotASymlink(_)
            | Core::Loop(_)
            | Core::NoAttr
            | Core::PathNotAllowed { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Core::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                (StatusCode::INSUFFICIENT_STORAGE, "no_space")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError {
            status,
            code,
            message,
            paths,
        }
    }
}

impl From<helios_fs::Error> for ApiError {
    fn from(e: helios_fs::Error) -> ApiError {
        match e {
            helios_fs::Error::Core(c) => c.into(),
            helios_fs::Error::Unsupported(m) => ApiError::bad_request(m),
            other => {
                tracing::error!(error = %other, "engine failed");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "engine",
                    message: other.to_string(),
                    paths: Vec::new(),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if !self.paths.is_empty() {
            error["paths"] = serde_json::json!(self.paths);
        }
        let body = serde_json::json!({ "error": error });
        (self.status, Json(body)).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
