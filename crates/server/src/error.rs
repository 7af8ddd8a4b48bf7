//! API errors: one type, one mapping to HTTP statuses, a JSON body that says what was wrong.
//! Internal failures are logged in full on the daemon's stderr and answered without internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_api::ErrorBody;
use kiln_daemon::manager::ManagerError;
use kiln_core::{Fault, SandboxError};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }
    /// 403: the caller's token lacks the scope (the message names the one needed).
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into() }
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::UNAUTHORIZED, code: "unauthorized", message: message.into() }
    }
    /// 413.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::PAYLOAD_TOO_LARGE, code: "too_large", message: message.into() }
    }
    fn internal(detail: &dyn std::fmt::Display) -> ApiError {
        eprintln!("kiln serve: internal error: {detail}");
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: "internal error; the daemon's log has the details".into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> ApiError {
        let message = e.to_string();
        match e.fault() {
            Fault::Invalid | Fault::GuestRefused | Fault::GuestDenied => ApiError::bad_request(message),
            Fault::Busy => ApiError { status: StatusCode::TOO_MANY_REQUESTS, code: "limit", message },
            Fault::GuestNotFound => ApiError::not_found(message),
            Fault::GuestConflict => ApiError { status: StatusCode::CONFLICT, code: "conflict", message },
            Fault::SandboxLost => {
                eprintln!("kiln serve: sandbox failed: {}", e.with_causes());
                ApiError { status: StatusCode::BAD_GATEWAY, code: "sandbox_failed", message: first_line(&message) }
            }
            Fault::Host => ApiError::internal(&e.with_causes()),
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> ApiError {
        match e {
            ManagerError::NotFound(_) => ApiError::not_found(e.to_string()),
            ManagerError::Limit(m) => ApiError { status: StatusCode::TOO_MANY_REQUESTS, code: "limit", message: m },
            ManagerError::Invalid(m) => ApiError::bad_request(m),
            ManagerError::Forbidden(m) => ApiError::forbidden(m),
            ManagerError::Conflict(m) => ApiError { status: StatusCode::CONFLICT, code: "conflict", message: m },
            ManagerError::Sandbox(s) => s.into(),
            ManagerError::Store(s) => ApiError::internal(&s),
        }
    }
}

impl From<kiln_ci::CiError> for ApiError {
    fn from(e: kiln_ci::CiError) -> ApiError {
        use kiln_ci::CiError;
        match e {
            CiError::Sandbox(s) => s.into(),
            CiError::Io { .. } | CiError::Daemon(_) => ApiError::internal(&e.with_causes()),
            CiError::Invalid(_) | CiError::Source { .. } | CiError::Artifacts(_) => ApiError::bad_request(e.to_string()),
            CiError::Masked { user_error: true, .. } => ApiError::bad_request(e.to_string()),
            CiError::Masked { .. } => ApiError::internal(&e.to_string()),
        }
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body with an error that names the problem (instead of axum's rejection text).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::bad_request(format!("a JSON body is required: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Checks a guest path from a request: absolute, no `..`, no NUL, bounded.
pub fn guest_path(p: &str) -> ApiResult<String> {
    if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "..") || p.len() > kiln_proto::MAX_PATH {
        return Err(ApiError::bad_request(format!("path must be absolute, without '..' (got {p:?})")));
    }
    Ok(p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(guest_path("/root/x").is_ok());
        assert!(guest_path("../etc/passwd").is_err());
        assert!(guest_path("/root/../etc/passwd").is_err());
        assert!(guest_path("relative").is_err());
    }

    #[test]
    fn statuses() {
        let e: ApiError = ManagerError::Limit("full".into()).into();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let e: ApiError = ManagerError::NotFound("sbx-1".into()).into();
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "not_found"));
        let e: ApiError = SandboxError::Died { status: "x".into(), console: "; guest console (p):\n  secret console".into() }.into();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert!(!e.message.contains("secret console"));
    }
}
