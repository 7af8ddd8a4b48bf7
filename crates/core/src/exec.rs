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
}

impl std::fmt::Debug for ExecRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecRequest")
            .field("command", &self.command)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("timeout", &self.timeout)
            .field("stdin", &self.stdin.is_some())
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

    /// Feeds these bytes to stdin.
    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(Box::new(std::io::Cursor::new(bytes)));
        self
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
        let timeout_ms = req.timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64);
        let spec = ExecSpec { command, env: req.env, cwd: req.cwd, stdin: req.stdin.is_some(), timeout_ms };
        let mut replies = self.call(|id| HostMsg::Exec { id, spec }).await?;
        let id = replies.id();
        match replies.next().await? {
            GuestMsg::Started { .. } => {}
            other => return Err(unexpected(other)),
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
                GuestMsg::Stdout { data, .. } => on_output(Output::Stdout(&data)),
                GuestMsg::Stderr { data, .. } => on_output(Output::Stderr(&data)),
                GuestMsg::Exited { status, timed_out, duration_ms, .. } => {
                    break Ok(ExecOutcome { status, timed_out, duration: Duration::from_millis(duration_ms) })
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
        let o = |status, timed_out| ExecOutcome { status, timed_out, duration: Duration::ZERO };
        assert_eq!(o(ExitStatus::Code(3), false).exit_code(), 3);
        assert_eq!(o(ExitStatus::Signal(9), false).exit_code(), 137);
        assert_eq!(o(ExitStatus::Signal(9), true).exit_code(), 124);
    }
}
