//! The egress log: every connection a sandbox attempted through the proxy (`GET
//! /v1/sandboxes/{id}/egress`, and the `egress` part of a CI report).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// One connection attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressAttempt {
    /// `CONNECT`, `GET`, ...; empty if the request could not be parsed.
    pub method: String,
    /// The host asked for (lower case, no trailing dot, IPv6 without brackets); empty if the
    /// request could not be parsed.
    pub host: String,
    /// The port asked for; 0 if the request could not be parsed.
    pub port: u16,
    /// Whether the policy let the connection through.
    pub allowed: bool,
    /// Why it was denied, failed, or was cut short (a limit, the idle timeout); `None` for a
    /// connection that was allowed and ended normally.
    pub reason: Option<String>,
    /// Bytes sent from the sandbox to the destination (for plain HTTP including the rewritten
    /// request head; never the proxy's own replies).
    pub bytes_up: u64,
    /// Bytes sent from the destination to the sandbox.
    pub bytes_down: u64,
    /// When the connection arrived, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// How long it lasted, in milliseconds.
    pub duration_ms: u64,
    /// The upstream HTTP proxy (`host:port`, never its credentials) the connection was sent
    /// through (`--egress-upstream`); absent when kiln connected to the destination itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// The attempts logged so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressLog {
    /// The attempts kept, in the order they ended.
    pub attempts: Vec<EgressAttempt>,
    /// Attempts not kept because the log was full.
    pub dropped: u64,
}

impl Schema for EgressAttempt {
    const NAME: &'static str = "EgressAttempt";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "method": { "type": "string" }, "host": { "type": "string" }, "port": { "type": "integer" },
            "allowed": { "type": "boolean" }, "reason": { "type": "string", "nullable": true },
            "bytes_up": { "type": "integer" }, "bytes_down": { "type": "integer" },
            "started_unix_ms": { "type": "integer" }, "duration_ms": { "type": "integer" }, "via": { "type": "string" } } })
    }
}

impl Schema for EgressLog {
    const NAME: &'static str = "EgressLog";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "attempts": { "type": "array", "items": EgressAttempt::schema() }, "dropped": { "type": "integer" } } })
    }
}
