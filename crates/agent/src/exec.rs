//! Running one command: spawn it isolated (own session and process group, own cgroup), stream
//! its output, enforce its timeout, kill everything it left behind, and report how it ended.
//!
//! Order on the wire: `Started` (or `Error` instead), output chunks, then exactly one `Exited`
//! after all output. Each exec runs on its own thread; stdin is fed by one more.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_proto::{ExecSpec, ExitStatus, GuestMsg, RequestId, MAX_CHUNK};

use crate::cgroup::Cgroup;
use crate::command;
use crate::execs::{Execs, StdinMsg};
use crate::log::spawn;
use crate::outbox::Outbox;
use crate::reaper::Reaper;
use crate::sys;

/// After the main process exits, how long to wait for its output pipes to close (an escaped
/// process could hold them open forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// What an exec thread needs from the server.
#[derive(Clone)]
pub struct ExecCtx {
    /// Replies.
    pub outbox: Outbox,
    /// The running execs.
    pub execs: Arc<Execs>,
    /// Exit statuses.
    pub reaper: Arc<Reaper>,
}

/// One exec request, as dispatched.
pub struct Job {
    /// Connection generation.
    pub gen: u64,
    /// Request id.
    pub id: RequestId,
    /// What to run.
    pub spec: ExecSpec,
    /// The composed environment.
    pub env: Vec<(String, String)>,
    /// The stdin queue, when the host sends stdin.
    pub stdin: Option<Receiver<StdinMsg>>,
}

/// Runs `job` to completion on the calling thread. The exec's table entry must exist; it is
/// removed before `Exited` is sent.
pub fn run(ctx: &ExecCtx, job: Job) {
    let Job { gen, id, spec, env, stdin } = job;
    let reply = |msg| ctx.outbox.send(gen, msg);
    let cwd = match command::resolve_cwd(id, spec.cwd.as_deref()) {
        Ok(cwd) => cwd,
        Err(msg) => {
            ctx.execs.remove(gen, id);
            return reply(msg);
        }
    };
    let cgroup = Cgroup::create().map(Arc::new);
    let mut cmd = command::build(&spec.command, &env, &cwd, stdin.is_some());
    isolate(&mut cmd, cgroup.as_ref().and_then(|c| c.procs_path()));
    let (mut child, status_pipe) = match ctx.reaper.spawn(&mut cmd) {
        Ok(spawned) => spawned,
        Err(e) => {
            ctx.execs.remove(gen, id);
            reply(command::spawn_error(id, &spec.command, &e));
            release(cgroup);
            return;
        }
    };
    let start = Instant::now();
    let pid = child.id() as libc::pid_t;
    ctx.execs.started(gen, id, pid, cgroup.clone());
    reply(GuestMsg::Started { id, pid: pid as u32 });
    if let (Some(pipe), Some(rx)) = (child.stdin.take(), stdin) {
        spawn(format!("stdin-{id}"), move || feed_stdin(pipe, rx));
    }
    let out = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
    let err = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
    // Never waited for: the reaper owns every exit status.
    drop(child);

    let kill = || {
        let _ = sys::killpg(pid, libc::SIGKILL);
        if let Some(cgroup) = &cgroup {
            cgroup.kill();
        }
    };
    let deadline = spec.timeout_ms.and_then(|ms| start.checked_add(Duration::from_millis(ms)));
    let mut pump = Pump { id, gen, ctx, streams: [out, err, Some(status_pipe)], budget: spec.max_output.unwrap_or(u64::MAX) };
    let end = pump.run(deadline, &kill, || {
        // The reaper already killed the process group; the cgroup also holds what left it.
        if let Some(cgroup) = &cgroup {
            cgroup.kill();
        }
    });
    ctx.execs.remove(gen, id);
    reply(GuestMsg::Exited {
        id,
        status: exit_status(end.status),
        timed_out: end.timed_out,
        duration_ms: end.exited_at.duration_since(start).as_millis() as u64,
    });
    release(cgroup);
}

/// Hands an exec's cgroup back once the exec's table entry (its other holder) is gone.
fn release(cgroup: Option<Arc<Cgroup>>) {
    match cgroup.map(Arc::try_unwrap) {
        Some(Ok(c)) => c.release(),
        // Still held a moment (a signal being sent): not reused.
        Some(Err(c)) => c.remove(),
        None => {}
    }
}

/// In the child, before exec: a new session (so its process group id is its pid) and, when
/// there is one, its own cgroup.
fn isolate(cmd: &mut Command, cgroup_procs: Option<CString>) {
    let hook = move || {
        // SAFETY: setsid takes no arguments and is async-signal-safe.
        if unsafe { libc::setsid() } == -1 {
            return Err(io::Error::last_os_error());
        }
        if let Some(procs) = &cgroup_procs {
            // SAFETY: `procs` is a NUL-terminated path allocated before the fork; open, write
            // and close are async-signal-safe. Failure leaves the child in the agent's cgroup,
            // still contained by its process group.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and makes only async-signal-safe system
    // calls, allocating nothing (`io::Error::last_os_error` holds just the errno).
    unsafe { cmd.pre_exec(hook) };
}

fn feed_stdin(mut pipe: ChildStdin, rx: Receiver<StdinMsg>) {
    for msg in rx {
        match msg {
            StdinMsg::Data(data) => {
                if pipe.write_all(&data).is_err() {
                    // The command closed its stdin or died; dropping `rx` makes senders fail fast.
                    break;
                }
            }
            StdinMsg::Eof => break,
        }
    }
}

/// How the main process ended.
struct End {
    status: libc::c_int,
    timed_out: bool,
    exited_at: Instant,
}

const STDOUT: usize = 0;
const STDERR: usize = 1;
const STATUS: usize = 2;

/// Streams stdout and stderr until both are closed and the exit status has arrived.
struct Pump<'a> {
    id: RequestId,
    gen: u64,
    ctx: &'a ExecCtx,
    /// stdout, stderr, and the pipe on which the reaper delivers the exit status.
    streams: [Option<File>; 3],
    /// Output bytes still to forward (the request's `max_output`); the rest is read and dropped.
    budget: u64,
}

impl Pump<'_> {
    fn run(&mut self, deadline: Option<Instant>, kill: &dyn Fn(), on_exit: impl Fn()) -> End {
        let mut status: Option<(libc::c_int, Instant)> = None;
        let mut timed_out = false;
        let mut drain_until: Option<Instant> = None;
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            if let Some((status, exited_at)) = status {
                if self.streams.iter().all(Option::is_none) {
                    return End { status, timed_out, exited_at };
                }
            }
            let now = Instant::now();
            if let (Some(until), Some((status, exited_at))) = (drain_until, status) {
                if now >= until {
                    log!("exec {}: output still open {DRAIN_LIMIT:?} after exit; not waiting for it", self.id);
                    return End { status, timed_out, exited_at };
                }
            }
            let running = status.is_none() && !timed_out;
            if running && deadline.is_some_and(|d| now >= d) {
                timed_out = true;
                kill();
            }
            let wake = if status.is_none() && !timed_out { deadline } else { drain_until };
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
            let mut which: Vec<usize> = Vec::with_capacity(3);
            for (i, s) in self.streams.iter().enumerate() {
                if let Some(f) = s {
                    fds.push(libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                    which.push(i);
                }
            }
            if let Err(e) = sys::poll(&mut fds, wake.map(|w| w.saturating_duration_since(now))) {
                log!("exec {}: poll: {e}", self.id);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for (pfd, &i) in fds.iter().zip(&which) {
                if pfd.revents == 0 {
                    continue;
                }
                if i == STATUS {
                    let raw = self.read_status();
                    status = Some((raw, Instant::now()));
                    self.ctx.execs.exited(self.gen, self.id);
                    on_exit();
                    drain_until = Some(Instant::now() + DRAIN_LIMIT);
                } else {
                    self.forward(i, &mut buf);
                }
            }
        }
    }

    /// Reads one chunk of stdout or stderr and sends it; closes the stream at its end.
    fn forward(&mut self, i: usize, buf: &mut [u8]) {
        let Some(f) = &mut self.streams[i] else { return };
        match f.read(buf) {
            Ok(0) => self.streams[i] = None,
            Ok(n) => {
                let n = n.min(usize::try_from(self.budget).unwrap_or(usize::MAX));
                if n == 0 {
                    return;
                }
                self.budget -= n as u64;
                let data = buf[..n].to_vec();
                let msg = if i == STDOUT {
                    GuestMsg::Stdout { id: self.id, data }
                } else {
                    debug_assert_eq!(i, STDERR);
                    GuestMsg::Stderr { id: self.id, data }
                };
                self.ctx.outbox.send(self.gen, msg);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
            Err(e) => {
                log!("exec {}: read output: {e}", self.id);
                self.streams[i] = None;
            }
        }
    }

    /// Takes the raw wait status the reaper wrote.
    fn read_status(&mut self) -> libc::c_int {
        let mut raw = [0u8; 4];
        let got = self.streams[STATUS].take().map(|mut f| f.read_exact(&mut raw));
        match got {
            Some(Ok(())) => libc::c_int::from_ne_bytes(raw),
            _ => {
                log!("exec {}: exit status lost; reporting SIGKILL", self.id);
                libc::SIGKILL
            }
        }
    }
}

/// The protocol's form of a raw wait status.
fn exit_status(raw: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(raw) {
        ExitStatus::Code(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        ExitStatus::Signal(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Code(255)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(exit_status(0), ExitStatus::Code(0));
        assert_eq!(exit_status(3 << 8), ExitStatus::Code(3));
        assert_eq!(exit_status(255 << 8), ExitStatus::Code(255));
        assert_eq!(exit_status(libc::SIGKILL), ExitStatus::Signal(9));
        assert_eq!(exit_status(0x80 | libc::SIGSEGV), ExitStatus::Signal(11));
    }
}
