//! The warm pool: what `GET /v1/pool` shows and `PUT /v1/pool` (admin) sets.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// One template and shape the pool keeps sandboxes of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTarget {
    /// Template name.
    pub template: String,
    /// vCPUs; the template's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB; the template's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Sandboxes to keep ready (0 to 64).
    pub size: usize,
}

/// Body of `PUT /v1/pool`: the whole pool (what it does not name is no longer pooled).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPool {
    /// Templates and shapes to keep ready.
    pub pools: Vec<PoolTarget>,
}

/// One template and shape as the pool holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolShape {
    /// Template name.
    pub template: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Sandboxes to keep ready.
    pub size: usize,
    /// Sandboxes ready now.
    pub ready: usize,
    /// Why the last refill failed, if it did (cleared by the next that works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Answer of `GET /v1/pool` and `PUT /v1/pool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Each template and shape.
    pub pools: Vec<PoolShape>,
    /// Creates served from the pool.
    pub hits: u64,
    /// Creates of a pooled template and shape that found the pool empty (and restored).
    pub misses: u64,
    /// Guest memory the pooled sandboxes hold, MiB (counted against the daemon's limit).
    pub memory_mib: u64,
}

impl Schema for SetPool {
    const NAME: &'static str = "SetPool";
    fn schema() -> Value {
        json!({ "type": "object", "required": ["pools"], "properties": { "pools": { "type": "array", "items": {
            "type": "object", "required": ["template", "size"], "properties": {
                "template": { "type": "string" }, "cpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
                "size": { "type": "integer", "minimum": 0, "maximum": 64 } } } } } })
    }
}

impl Schema for PoolStatus {
    const NAME: &'static str = "PoolStatus";
    fn schema() -> Value {
        json!({ "type": "object", "required": ["pools", "hits", "misses", "memory_mib"], "properties": {
            "pools": { "type": "array", "items": { "type": "object", "required": ["template", "cpus", "memory_mib", "size", "ready"], "properties": {
                "template": { "type": "string" }, "cpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
                "size": { "type": "integer" }, "ready": { "type": "integer" }, "last_error": { "type": "string" } } } },
            "hits": { "type": "integer" }, "misses": { "type": "integer" }, "memory_mib": { "type": "integer" } } })
    }
}
