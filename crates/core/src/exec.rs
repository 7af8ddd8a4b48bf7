//! Running a command in the guest: output streamed as it comes, a hard timeout enforced by
//! the agent (which kills the command's whole process group and cgroup), and a backstop on
//! the host in case the agent itself stops answering.

use std::time::Duration;

use kiln_proto::{Command, ExecSpec, ExitStatus, GuestMsg, HostMsg, MAX_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::agent::{unexpected, Agent};
use crate::error::SandboxError;

/// How long after a command's timeout the host waits for the agent's report before it
/// declares the agent unresponsive (TCG guests under load can be slow to tear down).
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(20);

/// Output (stdout and stderr together) one command may produce by default; past it the rest
/// is dropped, and a marker says so.
pub const DEFAULT_MAX_OUTPUT: u64 = 256 << 20;

/// What replaces output past the cap (sent once, on stderr).
pub const TRUNCATION_MARKER: &str = "\n[kiln: output truncated: the command wrote more than its output limit; the rest was discarded]\n";

/// How long the agent may take to start a command (or to refuse it) before the host declares
/// it unresponsive, whatever the command's own timeout.
pub const START_GRACE: Duration = Duration::from_secs(60);

/// A command to run.
#[derive(Default)]
pub struct ExecRequest {
    /// argv, or a shell string.
    pub command: Option<Command>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Hard timeout.
    pub timeout: Option<Duration>,
    /// Bytes for the command's stdin; `None` gives it /dev/null.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Output cap; [`DEFAULT_MAX_OUTPUT`] when `None`.
    pub max_output: Option<u64>,
}

impl std::fmt::Debug for ExecRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecRequest")
            .field("command", &self.command)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("timeout", &self.timeout)
            .field("stdin", &self.stdin.is_some())
            .field("max_output", &self.max_output)
            .finish()
    }
}

impl ExecRequest {
    /// Runs `argv`.
    pub fn argv<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ExecRequest {
        ExecRequest { command: Some(Command::Argv(argv.into_iter().map(Into::into).collect())), ..Default::default() }
    }

    /// Runs `script` with `/bin/sh -c`.
    pub fn shell(script: impl Into<String>) -> ExecRequest {
        ExecRequest { command: Some(Command::Shell(script.into())), ..Default::default() }
    }

    /// Sets the timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Adds an environment entry.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Caps the output.
    pub fn max_output(mut self, bytes: u64) -> Self {
        self.max_output = Some(bytes);
        self
    }

    /// Feeds these bytes to stdin.
    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(Box::new(std::io::Cursor::new(bytes)));
        self
    }
}

/// A place among a sandbox's running execs, given back on drop.
struct ExecSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ExecSlot {
    fn take(running: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Result<ExecSlot, SandboxError> {
        use std::sync::atomic::Ordering;
        let max = crate::agent::MAX_CONCURRENT_EXECS;
        if running.fetch_add(1, Ordering::AcqRel) >= max {
            running.fetch_sub(1, Ordering::AcqRel);
            return Err(SandboxError::Busy(format!("{max} commands are already running in this sandbox; wait for one to end")));
        }
        Ok(ExecSlot(running.clone()))
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A piece of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'a> {
    /// From stdout.
    Stdout(&'a [u8]),
    /// From stderr.
    Stderr(&'a [u8]),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Exit code or signal.
    pub status: ExitStatus,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Wall time in the guest.
    pub duration: Duration,
    /// Output went past the cap and was cut (a marker was sent in its place).
    pub output_truncated: bool,
}

impl ExecOutcome {
    /// The shell-style exit code: 124 on timeout, 128+N for a signal, else the code.
    pub fn exit_code(&self) -> i32 {
        if self.timed_out {
            124
        } else {
            self.status.shell_code()
        }
    }
}

impl Agent {
    /// Runs a command, calling `on_output` for every chunk of output in arrival order.
    pub async fn exec(&self, req: ExecRequest, mut on_output: impl FnMut(Output<'_>)) -> Result<ExecOutcome, SandboxError> {
        let command = req.command.ok_or_else(|| SandboxError::Invalid("no command given".into()))?;
        if let Command::Argv(a) = &command {
            if a.is_empty() || a[0].is_empty() {
                return Err(SandboxError::Invalid("empty command".into()));
            }
        }
        let _slot = ExecSlot::take(&self.running)?;
        let timeout_ms = req.timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64);
        let cap = req.max_output.unwrap_or(DEFAULT_MAX_OUTPUT);
        // The agent is asked for one byte more than the cap, so that the host sees that the cap
        // was passed; the host enforces the cap itself whatever the guest sends.
        let spec = ExecSpec { command, env: req.env, cwd: req.cwd, stdin: req.stdin.is_some(), timeout_ms, max_output: Some(cap.saturating_add(1)) };
        let mut left = cap;
        let mut truncated = false;
        let mut emit = |o: Output<'_>| {
            let d = match o {
                Output::Stdout(d) | Output::Stderr(d) => d,
            };
            if truncated {
                return;
            }
            let n = d.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            left -= n as u64;
            match o {
                Output::Stdout(_) if n > 0 => on_output(Output::Stdout(&d[..n])),
                Output::Stderr(_) if n > 0 => on_output(Output::Stderr(&d[..n])),
                _ => {}
            }
            if n < d.len() {
                truncated = true;
                on_output(Output::Stderr(TRUNCATION_MARKER.as_bytes()));
            }
        };
        let mut replies = self.call(|id| HostMsg::Exec { id, spec }).await?;
        let id = replies.id();
        // A guest that does not even start the command is unresponsive too.
        let start_limit = req.timeout.map_or(START_GRACE, |t| (t + TIMEOUT_GRACE).min(START_GRACE));
        match tokio::time::timeout(start_limit, replies.next()).await {
            Ok(r) => match r? {
                GuestMsg::Started { .. } => {}
                other => return Err(unexpected(other)),
            },
            Err(_) => return Err(SandboxError::Unresponsive(start_limit.as_secs())),
        }
        let feeder = req.stdin.map(|mut input| {
            let ch = self.channel.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_CHUNK];
                loop {
                    match input.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if ch.send(&HostMsg::Stdin { id, data: buf[..n].to_vec() }).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = ch.send(&HostMsg::StdinEof { id }).await;
            })
        });
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t + TIMEOUT_GRACE);
        let result = loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, replies.next()).await {
                    Ok(r) => r,
                    Err(_) => break Err(SandboxError::Unresponsive(TIMEOUT_GRACE.as_secs())),
                },
                None => replies.next().await,
            };
            match next? {
                GuestMsg::Stdout { data, .. } => emit(Output::Stdout(&data)),
                GuestMsg::Stderr { data, .. } => emit(Output::Stderr(&data)),
                GuestMsg::Exited { status, timed_out, duration_ms, .. } => {
                    break Ok(ExecOutcome { status, timed_out, duration: Duration::from_millis(duration_ms), output_truncated: truncated })
                }
                other => break Err(unexpected(other)),
            }
        };
        if let Some(f) = feeder {
            f.abort();
        }
        result
    }

    /// Sends a signal to every process of a running exec.
    pub async fn signal(&self, exec_id: u32, signal: i32) -> Result<(), SandboxError> {
        self.channel.send(&HostMsg::Signal { id: exec_id, signal }).await.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let o = |status, timed_out| ExecOutcome { status, timed_out, duration: Duration::ZERO, output_truncated: false };
        assert_eq!(o(ExitStatus::Code(3), false).exit_code(), 3);
        assert_eq!(o(ExitStatus::Signal(9), false).exit_code(), 137);
        assert_eq!(o(ExitStatus::Signal(9), true).exit_code(), 124);
    }

    #[test]
    fn exec_slots_are_limited_and_given_back() {
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let slots: Vec<_> = (0..crate::agent::MAX_CONCURRENT_EXECS).map(|_| ExecSlot::take(&running).unwrap()).collect();
        assert!(matches!(ExecSlot::take(&running), Err(SandboxError::Busy(_))));
        drop(slots);
        assert!(ExecSlot::take(&running).is_ok());
    }
}
