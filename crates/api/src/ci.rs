//! `POST /v1/ci/runs`: a CI job for the daemon to run. The answer is the run's report, which
//! `kiln-ci` defines (it is also `kiln ci run --json` and the report file).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// Body of `POST /v1/ci/runs`. Paths are on the daemon's host; secrets stay in its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiRunRequest {
    /// Local path (on the daemon's host) or URL.
    pub repo: String,
    /// Ref.
    #[serde(rename = "ref", default = "head")]
    pub git_ref: String,
    /// Build command.
    pub build: String,
    /// Setup command.
    #[serde(default)]
    pub setup: Option<String>,
    /// Timeout of each step.
    #[serde(default = "thirty_minutes")]
    pub timeout_seconds: u64,
    /// Template.
    #[serde(default = "base")]
    pub template: String,
    /// Secrets by name (held in memory only).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Secrets for the setup step too.
    #[serde(default)]
    pub setup_secrets: bool,
    /// Egress allowlist.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Cache key files (paths on the daemon's host).
    #[serde(default)]
    pub cache_keys: Vec<String>,
    /// May write the cache.
    #[serde(default)]
    pub trusted: bool,
    /// Matrix axes.
    #[serde(default)]
    pub matrix: BTreeMap<String, Vec<String>>,
    /// Artifact globs.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Output folder on the daemon's host.
    pub out: String,
    /// Cells at once.
    #[serde(default)]
    pub parallel: Option<usize>,
}

fn head() -> String {
    "HEAD".into()
}
fn thirty_minutes() -> u64 {
    1800
}
fn base() -> String {
    "base".into()
}

impl Schema for CiRunRequest {
    const NAME: &'static str = "CiRunRequest";
    fn schema() -> Value {
        json!({ "type": "object", "required": ["repo", "build", "out"], "properties": {
            "repo": { "type": "string" }, "ref": { "type": "string" }, "build": { "type": "string" }, "setup": { "type": "string" },
            "timeout_seconds": { "type": "integer" }, "template": { "type": "string" },
            "secrets": { "type": "object", "additionalProperties": { "type": "string" } }, "setup_secrets": { "type": "boolean" },
            "allow": { "type": "array", "items": { "type": "string" } }, "cache_keys": { "type": "array", "items": { "type": "string" } },
            "trusted": { "type": "boolean" }, "matrix": { "type": "object", "additionalProperties": { "type": "array", "items": { "type": "string" } } },
            "artifacts": { "type": "array", "items": { "type": "string" } }, "out": { "type": "string" }, "parallel": { "type": "integer" } } })
    }
}
