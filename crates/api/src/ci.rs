//! `POST /v1/ci/runs`: a CI job for the daemon to run. The answer is the run's report, which
//! `kiln-ci` defines (it is also `kiln ci run --json` and the report file), with the run's id;
//! its output files are read with `GET /v1/ci/runs/{id}/files?path=`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// Body of `POST /v1/ci/runs`. Secrets stay in the daemon's memory. Paths are on the daemon's
/// host: a token may name a local `repo` beneath one of the daemon's `--repo-root` folders
/// only, and no `out` or `cache_keys` (those are the unix socket owner's); it sends
/// `cache_key_digests` instead, and the daemon keeps the outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiRunRequest {
    /// URL, or a local path on the daemon's host (for a token: beneath a `--repo-root`).
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
    /// Cache key files: paths on the daemon's host, from the unix socket's owner only.
    #[serde(default)]
    pub cache_keys: Vec<String>,
    /// Digests of the cache key files' contents (`sha256:` and 64 hex digits), computed by the
    /// caller; what a token sends instead of `cache_keys`.
    #[serde(default)]
    pub cache_key_digests: Vec<String>,
    /// May write the cache (needs the trusted or admin scope).
    #[serde(default)]
    pub trusted: bool,
    /// Matrix axes.
    #[serde(default)]
    pub matrix: BTreeMap<String, Vec<String>>,
    /// Artifact globs.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Output folder on the daemon's host, from the unix socket's owner only; absent, the
    /// daemon keeps the outputs in `$KILN_HOME/ci-runs/<run id>/`.
    #[serde(default)]
    pub out: Option<String>,
    /// Builds at once.
    #[serde(default)]
    pub parallel: Option<usize>,
    /// Builds of each cell to compare (`kiln ci run --rebuild N`, 2 to 16); absent: one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<usize>,
    /// Fail the run (exit code 3) when a cell's builds differ.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_reproducible: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
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
        json!({ "type": "object", "required": ["repo", "build"], "properties": {
            "repo": { "type": "string" }, "ref": { "type": "string" }, "build": { "type": "string" }, "setup": { "type": "string" },
            "timeout_seconds": { "type": "integer" }, "template": { "type": "string" },
            "secrets": { "type": "object", "additionalProperties": { "type": "string" } }, "setup_secrets": { "type": "boolean" },
            "allow": { "type": "array", "items": { "type": "string" } }, "cache_keys": { "type": "array", "items": { "type": "string" } },
            "cache_key_digests": { "type": "array", "items": { "type": "string", "pattern": "^sha256:[0-9a-f]{64}$" } },
            "trusted": { "type": "boolean" }, "matrix": { "type": "object", "additionalProperties": { "type": "array", "items": { "type": "string" } } },
            "artifacts": { "type": "array", "items": { "type": "string" } }, "out": { "type": "string", "nullable": true }, "parallel": { "type": "integer" },
            "rebuild": { "type": "integer", "minimum": 2, "maximum": 16 }, "require_reproducible": { "type": "boolean" } } })
    }
}
