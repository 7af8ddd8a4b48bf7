//! The body of every error answer: `{"error": {"code": ..., "message": ...}}`. The inner object
//! alone is also the exec stream's `error` event.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// An error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`bad_request`, `not_found`, `limit`, `sandbox_failed`, ...).
    pub code: String,
    /// What was wrong and what to do.
    pub message: String,
}

impl ErrorBody {
    /// A body with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: code.into(), message: message.into() } }
    }
}

impl Schema for ErrorDetail {
    const NAME: &'static str = "ErrorDetail";
    fn schema() -> Value {
        json!({ "type": "object", "properties": { "code": { "type": "string" }, "message": { "type": "string" } } })
    }
}

impl Schema for ErrorBody {
    const NAME: &'static str = "Error";
    fn schema() -> Value {
        json!({ "type": "object", "properties": { "error": ErrorDetail::schema() } })
    }
}
