//! The API's request and response bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Id.
    pub id: String,
    /// Template.
    pub template: String,
    /// creating | running | paused | stopping | stopped | failed.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub deadline: i64,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// restored | cold | forked.
    pub mode: String,
    /// Forked from.
    pub parent: Option<String>,
}

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateSandbox {
    /// Template name.
    pub template: String,
    /// Time to live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// vCPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Forkable.
    pub forkable: bool,
    /// Egress allowlist (`HOST[:PORT]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

/// Body of the exec routes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExecRequest {
    /// Shell string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Or argv.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Hard timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    /// Stdin text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Output cap (stdout and stderr together); the daemon's default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// Result of a blocking exec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

/// End of a streamed exec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExecExit {
    /// Shell-style exit code.
    pub exit_code: i32,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Wall time in the guest.
    pub duration_ms: u64,
}

/// A piece of a streamed exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes of stdout.
    Stdout(Vec<u8>),
    /// Bytes of stderr.
    Stderr(Vec<u8>),
}

/// A file in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileInfo {
    /// Name (or path for stat).
    pub name: String,
    /// file | dir | symlink | other.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: i64,
}
