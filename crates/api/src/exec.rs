//! Running commands: the request, the blocking form's result, and the stream's events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// Body of `POST /v1/sandboxes/{id}/exec` and `.../exec/stream`: exactly one of `cmd` and
/// `argv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell string, run with `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Or an argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Hard timeout: kills the command's whole process group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    /// Stdin text; otherwise stdin is `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Output cap (stdout and stderr together); the daemon's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

impl ExecRequest {
    /// A shell command.
    pub fn shell(cmd: impl Into<String>) -> ExecRequest {
        ExecRequest { cmd: Some(cmd.into()), ..Default::default() }
    }
    /// An argv command.
    pub fn argv(argv: Vec<String>) -> ExecRequest {
        ExecRequest { argv: Some(argv), ..Default::default() }
    }
    /// Sets the timeout in seconds.
    pub fn timeout(mut self, secs: f64) -> ExecRequest {
        self.timeout_seconds = Some(secs);
        self
    }
}

/// Answer of the blocking exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Standard output (UTF-8, lossy).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Shell-style exit code (124 timeout, 128+N signal, 127 not found).
    pub exit_code: i32,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Wall time in the guest.
    pub duration_ms: u64,
    /// stdout was cut at the cap.
    #[serde(default)]
    pub stdout_truncated: bool,
    /// stderr was cut at the cap.
    #[serde(default)]
    pub stderr_truncated: bool,
}

/// The exec stream's last event, `exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    /// Shell-style exit code.
    pub exit_code: i32,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Wall time in the guest.
    pub duration_ms: u64,
}

/// The exec stream's `stdout` and `stderr` events: a chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The bytes, base64 (standard alphabet, padded).
    pub b64: String,
}

impl Schema for ExecRequest {
    const NAME: &'static str = "ExecRequest";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "cmd": { "type": "string" }, "argv": { "type": "array", "items": { "type": "string" } },
            "env": { "type": "object", "additionalProperties": { "type": "string" } },
            "cwd": { "type": "string" }, "timeout_seconds": { "type": "number" }, "stdin": { "type": "string" }, "max_output_bytes": { "type": "integer", "minimum": 1 } } })
    }
}

impl Schema for ExecResult {
    const NAME: &'static str = "ExecResult";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "stdout": { "type": "string" }, "stderr": { "type": "string" }, "exit_code": { "type": "integer" },
            "timed_out": { "type": "boolean" }, "duration_ms": { "type": "integer" },
            "stdout_truncated": { "type": "boolean" }, "stderr_truncated": { "type": "boolean" } } })
    }
}

impl Schema for ExecExit {
    const NAME: &'static str = "ExecExit";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "exit_code": { "type": "integer" }, "timed_out": { "type": "boolean" }, "duration_ms": { "type": "integer" } } })
    }
}

impl Schema for OutputChunk {
    const NAME: &'static str = "OutputChunk";
    fn schema() -> Value {
        json!({ "type": "object", "properties": { "b64": { "type": "string", "format": "byte" } } })
    }
}
