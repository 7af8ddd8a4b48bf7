//! Sandboxes: what the API shows of one, and the bodies of create, extend and fork.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// Where a sandbox is in its life (the daemon's lifecycle moves it between these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Its VM is being restored or booted.
    Creating,
    /// Its agent answers; it takes requests.
    Running,
    /// Its vCPUs are stopped (while it is forked).
    Paused,
    /// It is being destroyed.
    Stopping,
    /// It is gone (destroyed on request or by its TTL).
    Stopped,
    /// It died or could not be created.
    Failed,
}

impl SandboxState {
    /// Every state, for tables and tests.
    pub const ALL: [SandboxState; 6] =
        [SandboxState::Creating, SandboxState::Running, SandboxState::Paused, SandboxState::Stopping, SandboxState::Stopped, SandboxState::Failed];

    /// The lowercase name (as on the wire).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<SandboxState> {
        SandboxState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A sandbox as the API shows it (the answer of create, get, list, extend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Id.
    pub id: String,
    /// Template.
    pub template: String,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds: the reaper destroys it then.
    pub deadline: i64,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// restored | cold | forked | pooled (restored ahead of time by the warm pool).
    pub mode: String,
    /// The sandbox it was forked from.
    pub parent: Option<String>,
}

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Template name (or give `image`).
    #[serde(default)]
    pub template: String,
    /// An OCI image to boot instead of a template (`HOST[:PORT]/NAME:TAG` or `…@sha256:…`):
    /// the daemon makes a template of it the first time (per image digest) and reuses it after.
    /// Allowed when the reference matches one of the daemon's `--images` patterns, or for the
    /// admin scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Time to live; the daemon's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// vCPUs; the template's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB; the template's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Environment of every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Keep RAM in a file so it can be forked cheaply.
    #[serde(default)]
    pub forkable: bool,
    /// Egress allowlist: `HOST[:PORT]` entries reachable through the proxy; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

/// Body of `POST /v1/sandboxes/{id}/extend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendSandbox {
    /// The new deadline is now + this.
    pub ttl_seconds: i64,
}

/// Body of `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkSandbox {
    /// How many clones; 1 when absent.
    #[serde(default = "one")]
    pub count: i64,
}

fn one() -> i64 {
    1
}

/// Answer of `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forked {
    /// The clones.
    pub sandboxes: Vec<SandboxInfo>,
}

impl Schema for SandboxInfo {
    const NAME: &'static str = "Sandbox";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "id": { "type": "string" }, "template": { "type": "string" },
            "state": { "type": "string", "enum": SandboxState::ALL.map(SandboxState::as_str) },
            "created_at": { "type": "integer" }, "deadline": { "type": "integer" },
            "cpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
            "mode": { "type": "string", "enum": ["restored", "cold", "forked", "pooled"] },
            "parent": { "type": "string", "nullable": true } } })
    }
}

impl Schema for CreateSandbox {
    const NAME: &'static str = "CreateSandbox";
    fn schema() -> Value {
        json!({ "type": "object", "description": "exactly one of template and image", "properties": {
            "template": { "type": "string" },
            "image": { "type": "string", "description": "an OCI image reference, HOST[:PORT]/NAME:TAG or HOST[:PORT]/NAME@sha256:DIGEST" },
            "ttl_seconds": { "type": "integer", "minimum": 1 },
            "cpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
            "env": { "type": "object", "additionalProperties": { "type": "string" } },
            "forkable": { "type": "boolean" },
            "allow": { "type": "array", "items": { "type": "string" }, "description": "egress allowlist, HOST[:PORT]" } } })
    }
}

impl Schema for ExtendSandbox {
    const NAME: &'static str = "ExtendSandbox";
    fn schema() -> Value {
        json!({ "type": "object", "required": ["ttl_seconds"], "properties": { "ttl_seconds": { "type": "integer", "minimum": 1 } } })
    }
}

impl Schema for ForkSandbox {
    const NAME: &'static str = "ForkSandbox";
    fn schema() -> Value {
        json!({ "type": "object", "properties": { "count": { "type": "integer", "minimum": 1, "default": 1 } } })
    }
}

impl Schema for Forked {
    const NAME: &'static str = "Forked";
    fn schema() -> Value {
        json!({ "type": "object", "properties": { "sandboxes": { "type": "array", "items": SandboxInfo::schema() } } })
    }
}
