//! The messages. Append new variants at the end only: postcard encodes the variant index.

use serde::{Deserialize, Serialize};

use crate::{MAX_ARGS, MAX_CHUNK, MAX_ENTRIES, MAX_ENTROPY, MAX_PATH, MAX_TEXT};

/// Identifies a request and everything the guest sends about it.
pub type RequestId = u32;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Run this program with these arguments; `argv[0]` is looked up in `PATH`.
    Argv(Vec<String>),
    /// Run this string with `/bin/sh -c`.
    Shell(String),
}

/// A request to run a command in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The command.
    pub command: Command,
    /// Environment entries added to (and overriding) the sandbox's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's default (`/root`, else `/`) when absent.
    pub cwd: Option<String>,
    /// Whether the host will send stdin; otherwise the command reads `/dev/null`.
    pub stdin: bool,
    /// Hard timeout in milliseconds. On expiry the agent kills every process the command
    /// started (its process group and its cgroup) and reports `timed_out`.
    pub timeout_ms: Option<u64>,
    /// Output (stdout and stderr together) the agent forwards; past it the agent keeps
    /// draining the pipes but sends nothing more. The host enforces its own cap regardless.
    pub max_output: Option<u64>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// The conventional shell exit code: the code itself, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Kinds of failure the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The path or program does not exist.
    NotFound,
    /// Permission denied, or the program is not executable.
    PermissionDenied,
    /// The request itself was invalid (bad path, limit exceeded, wrong version).
    InvalidInput,
    /// The target already exists.
    AlreadyExists,
    /// Any other I/O failure.
    Io,
    /// A request id already in use, or an unknown id.
    Protocol,
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// Metadata of one file in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Name (last path component) for listings; the full path for `Stat`.
    pub name: String,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// Who the guest is: sent after boot and after every restore from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Host wall clock, nanoseconds since the epoch.
    pub unix_time_ns: u128,
    /// Fresh host entropy, mixed into the kernel RNG (credited).
    pub entropy: Vec<u8>,
    /// Hostname.
    pub hostname: String,
    /// 32 hex digits for `/etc/machine-id`.
    pub machine_id: String,
    /// The sandbox's environment, applied to every later exec.
    pub env: Vec<(String, String)>,
}

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// First message on every connection.
    Hello {
        /// Request id.
        id: RequestId,
        /// [`crate::PROTOCOL_VERSION`].
        version: u32,
    },
    /// Liveness check; answered with [`GuestMsg::Pong`].
    Ping {
        /// Request id.
        id: RequestId,
    },
    /// Set clock, entropy, hostname, machine id and environment. Answered with `Done`.
    SetIdentity {
        /// Request id.
        id: RequestId,
        /// The identity.
        identity: Identity,
    },
    /// Start a command. Answered with `Started` (or `Error`), then output, then `Exited`.
    Exec {
        /// Request id.
        id: RequestId,
        /// What to run.
        spec: ExecSpec,
    },
    /// Bytes for the stdin of exec `id`.
    Stdin {
        /// Exec id.
        id: RequestId,
        /// At most [`MAX_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Close the stdin of exec `id`.
    StdinEof {
        /// Exec id.
        id: RequestId,
    },
    /// Send a signal to every process of exec `id`.
    Signal {
        /// Exec id.
        id: RequestId,
        /// Signal number.
        signal: i32,
    },
    /// Start writing a file; followed by `FileChunk`s and `FileEnd`. Answered with `Done`.
    FileWrite {
        /// Request id.
        id: RequestId,
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Create missing parent directories.
        parents: bool,
    },
    /// Contents for a `FileWrite`.
    FileChunk {
        /// Request id of the write.
        id: RequestId,
        /// At most [`MAX_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// End of a `FileWrite`.
    FileEnd {
        /// Request id of the write.
        id: RequestId,
    },
    /// Read a file: answered with `FileInfo`, `FileChunk`s and `FileEnd`, or `Error`.
    FileRead {
        /// Request id.
        id: RequestId,
        /// Absolute path.
        path: String,
        /// Refuse files larger than this.
        max_bytes: u64,
    },
    /// Create a directory. Answered with `Done`.
    Mkdir {
        /// Request id.
        id: RequestId,
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Create parents too, and succeed if it exists.
        parents: bool,
    },
    /// List a directory: answered with `Entries` (several, the last one with `last`).
    List {
        /// Request id.
        id: RequestId,
        /// Absolute path.
        path: String,
    },
    /// Metadata of a path (not following a final symlink). Answered with `Stat`.
    Stat {
        /// Request id.
        id: RequestId,
        /// Absolute path.
        path: String,
    },
    /// Remove a file or directory. Answered with `Done`.
    Remove {
        /// Request id.
        id: RequestId,
        /// Absolute path.
        path: String,
        /// Remove a directory and everything in it.
        recursive: bool,
    },
    /// Flush filesystems (before a snapshot). Answered with `Done`.
    Sync {
        /// Request id.
        id: RequestId,
    },
    /// Kill everything, sync, power off. Answered with `Done` just before.
    Shutdown {
        /// Request id.
        id: RequestId,
    },
}

/// Messages from the agent to the host. Untrusted: call [`GuestMsg::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// Answer to `Hello`.
    HelloAck {
        /// Request id.
        id: RequestId,
        /// The agent's protocol version.
        version: u32,
        /// The agent's build version.
        agent: String,
        /// The guest kernel release (`uname -r`).
        kernel: String,
    },
    /// Answer to `Ping`.
    Pong {
        /// Request id.
        id: RequestId,
    },
    /// A request succeeded with nothing more to say.
    Done {
        /// Request id.
        id: RequestId,
    },
    /// A request failed.
    Error {
        /// Request id (0 when no request is to blame).
        id: RequestId,
        /// Kind.
        kind: ErrorKind,
        /// Human-readable detail.
        message: String,
    },
    /// The command of exec `id` started.
    Started {
        /// Exec id.
        id: RequestId,
        /// Guest pid of the command.
        pid: u32,
    },
    /// Standard output of exec `id`.
    Stdout {
        /// Exec id.
        id: RequestId,
        /// At most [`MAX_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Standard error of exec `id`.
    Stderr {
        /// Exec id.
        id: RequestId,
        /// At most [`MAX_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Exec `id` ended; all its output was sent before this.
    Exited {
        /// Exec id.
        id: RequestId,
        /// How.
        status: ExitStatus,
        /// Killed because its timeout expired.
        timed_out: bool,
        /// Wall time from start to end, milliseconds.
        duration_ms: u64,
    },
    /// Start of a file read: size and mode.
    FileInfo {
        /// Request id.
        id: RequestId,
        /// Size in bytes.
        size: u64,
        /// Permission bits.
        mode: u32,
    },
    /// Contents of a file read.
    FileChunk {
        /// Request id.
        id: RequestId,
        /// At most [`MAX_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// End of a file read.
    FileEnd {
        /// Request id.
        id: RequestId,
    },
    /// Directory entries.
    Entries {
        /// Request id.
        id: RequestId,
        /// At most [`MAX_ENTRIES`] entries.
        entries: Vec<FileStat>,
        /// This is the last batch.
        last: bool,
    },
    /// Answer to `Stat`.
    Stat {
        /// Request id.
        id: RequestId,
        /// Metadata.
        stat: FileStat,
    },
}

/// A message from the guest broke a limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("guest message violates a limit: {0}")]
pub struct Invalid(pub &'static str);

fn check(ok: bool, what: &'static str) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid(what))
    }
}

fn check_stat(s: &FileStat) -> Result<(), Invalid> {
    check(s.name.len() <= MAX_PATH, "file name too long")?;
    check(s.mode <= 0o7777, "mode out of range")
}

impl GuestMsg {
    /// The request this message belongs to.
    pub fn id(&self) -> RequestId {
        match self {
            GuestMsg::HelloAck { id, .. }
            | GuestMsg::Pong { id }
            | GuestMsg::Done { id }
            | GuestMsg::Error { id, .. }
            | GuestMsg::Started { id, .. }
            | GuestMsg::Stdout { id, .. }
            | GuestMsg::Stderr { id, .. }
            | GuestMsg::Exited { id, .. }
            | GuestMsg::FileInfo { id, .. }
            | GuestMsg::FileChunk { id, .. }
            | GuestMsg::FileEnd { id }
            | GuestMsg::Entries { id, .. }
            | GuestMsg::Stat { id, .. } => *id,
        }
    }

    /// Checks every bound the host relies on. Call on every message before using it.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            GuestMsg::HelloAck { agent, kernel, .. } => {
                check(agent.len() <= MAX_TEXT && kernel.len() <= MAX_TEXT, "version text too long")
            }
            GuestMsg::Error { message, .. } => check(message.len() <= MAX_TEXT, "error text too long"),
            GuestMsg::Stdout { data, .. } | GuestMsg::Stderr { data, .. } | GuestMsg::FileChunk { data, .. } => {
                check(data.len() <= MAX_CHUNK, "data chunk too large")
            }
            GuestMsg::Exited { status, .. } => match status {
                ExitStatus::Code(c) => check((0..=255).contains(c), "exit code out of range"),
                ExitStatus::Signal(s) => check((1..=64).contains(s), "signal out of range"),
            },
            GuestMsg::FileInfo { mode, .. } => check(*mode <= 0o7777, "mode out of range"),
            GuestMsg::Entries { entries, .. } => {
                check(entries.len() <= MAX_ENTRIES, "too many entries")?;
                entries.iter().try_for_each(check_stat)
            }
            GuestMsg::Stat { stat, .. } => check_stat(stat),
            GuestMsg::Pong { .. } | GuestMsg::Done { .. } | GuestMsg::Started { .. } | GuestMsg::FileEnd { .. } => Ok(()),
        }
    }
}

impl HostMsg {
    /// Checks the bounds the agent relies on.
    pub fn validate(&self) -> Result<(), Invalid> {
        let path_ok = |p: &String| check(p.len() <= MAX_PATH && p.starts_with('/') && !p.contains('\0'), "bad path");
        match self {
            HostMsg::Exec { spec, .. } => {
                let n = match &spec.command {
                    Command::Argv(a) => {
                        check(!a.is_empty(), "empty argv")?;
                        a.len()
                    }
                    Command::Shell(_) => 1,
                };
                check(n + spec.env.len() <= MAX_ARGS, "too many arguments")?;
                if let Some(cwd) = &spec.cwd {
                    path_ok(cwd)?;
                }
                Ok(())
            }
            HostMsg::Stdin { data, .. } | HostMsg::FileChunk { data, .. } => check(data.len() <= MAX_CHUNK, "chunk too large"),
            HostMsg::SetIdentity { identity, .. } => {
                check(identity.entropy.len() <= MAX_ENTROPY, "too much entropy")?;
                check(identity.hostname.len() <= 64, "hostname too long")?;
                check(identity.env.len() <= MAX_ARGS, "too many environment entries")
            }
            HostMsg::FileWrite { path, .. }
            | HostMsg::FileRead { path, .. }
            | HostMsg::Mkdir { path, .. }
            | HostMsg::List { path, .. }
            | HostMsg::Stat { path, .. }
            | HostMsg::Remove { path, .. } => path_ok(path),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_validation_bounds_fields() {
        let big = vec![0u8; MAX_CHUNK + 1];
        assert!(GuestMsg::Stdout { id: 1, data: big }.validate().is_err());
        assert!(GuestMsg::Stdout { id: 1, data: vec![0; MAX_CHUNK] }.validate().is_ok());
        let exited = |status| GuestMsg::Exited { id: 1, status, timed_out: false, duration_ms: 0 };
        assert!(exited(ExitStatus::Code(256)).validate().is_err());
        assert!(exited(ExitStatus::Code(-1)).validate().is_err());
        assert!(exited(ExitStatus::Signal(0)).validate().is_err());
        assert!(exited(ExitStatus::Signal(9)).validate().is_ok());
        assert!(GuestMsg::Error { id: 1, kind: ErrorKind::Io, message: "x".repeat(MAX_TEXT + 1) }.validate().is_err());
    }

    #[test]
    fn host_validation_rejects_relative_paths() {
        assert!(HostMsg::Stat { id: 1, path: "etc/passwd".into() }.validate().is_err());
        assert!(HostMsg::Stat { id: 1, path: "/etc/passwd".into() }.validate().is_ok());
        let exec = |command| HostMsg::Exec {
            id: 1,
            spec: ExecSpec { command, env: vec![], cwd: None, stdin: false, timeout_ms: None, max_output: None },
        };
        assert!(exec(Command::Argv(vec![])).validate().is_err());
        assert!(exec(Command::Shell("true".into())).validate().is_ok());
    }

    #[test]
    fn shell_code_of_signal() {
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
    }
}
