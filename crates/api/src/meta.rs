//! `GET /healthz`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// Answer of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

impl Health {
    /// The daemon is up.
    pub fn ok() -> Health {
        Health { status: "ok".into() }
    }
}

impl Schema for Health {
    const NAME: &'static str = "Health";
    fn schema() -> Value {
        json!({ "type": "object", "properties": { "status": { "type": "string", "enum": ["ok"] } } })
    }
}
