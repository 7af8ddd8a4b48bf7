//! The reaper: one thread collects every child that exits (as PID 1, or as a child subreaper in
//! `--stdio` mode, that includes orphans reparented to the agent) and hands the exit statuses of
//! registered exec processes to their exec threads.
//!
//! Nothing else may wait for children. The thread first *peeks* at an exited child
//! (`waitid(WNOWAIT)`), then takes the registry lock, and only then reaps it. Spawns hold that
//! lock from fork until the pid is registered, so a child that exits at once is never reaped
//! before its exec thread is registered, and the standard library's own `waitpid` on a child
//! whose `exec` failed never races with this thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::log::{lock, spawn};
use crate::sys;

/// How long the reaper sleeps when the agent has no children at all, unless a spawn wakes it.
const IDLE_WAIT: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Registry {
    /// Exec main processes: pid → write end of the pipe that receives its raw wait status.
    waiters: HashMap<libc::pid_t, File>,
    /// Spawns so far, to wake the reaper when it sleeps for lack of children.
    spawned: u64,
}

/// Shared handle to the reaper.
#[derive(Default)]
pub struct Reaper {
    registry: Mutex<Registry>,
    wake: Condvar,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        spawn("reaper".into(), move || loop {
            crate::log::guarded("reaping", || r.reap_loop());
        });
        reaper
    }

    /// Spawns `cmd` and registers its pid. The returned pipe yields the raw wait status (4 bytes,
    /// native endian) when the process has exited; before reaping it, the reaper SIGKILLs its
    /// process group (the command runs `setsid`), so leftover background jobs die with it while
    /// the group id cannot have been reused.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, File)> {
        let (status_rx, status_tx) = sys::pipe()?;
        let mut registry = lock(&self.registry);
        let child = cmd.spawn()?;
        registry.waiters.insert(child.id() as libc::pid_t, File::from(status_tx));
        registry.spawned += 1;
        drop(registry);
        self.wake.notify_all();
        Ok((child, File::from(status_rx)))
    }

    fn reap_loop(&self) {
        loop {
            let seen = lock(&self.registry).spawned;
            // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid siginfo_t for the kernel to fill.
            let ret = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if ret == -1 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::ECHILD) => {
                        let registry = lock(&self.registry);
                        if registry.spawned == seen {
                            let _ = self.wake.wait_timeout(registry, IDLE_WAIT);
                        }
                    }
                    _ => {
                        log!("waitid: {e}");
                        std::thread::sleep(IDLE_WAIT);
                    }
                }
                continue;
            }
            // SAFETY: waitid succeeded with WEXITED, so the kernel filled in si_pid.
            let pid = unsafe { info.si_pid() };
            if pid > 0 {
                self.reap(pid);
            }
        }
    }

    fn reap(&self, pid: libc::pid_t) {
        let mut registry = lock(&self.registry);
        let waiter = registry.waiters.remove(&pid);
        if waiter.is_some() {
            // Kill what the command left behind while its zombie still pins the group id.
            if let Err(e) = sys::killpg(pid, libc::SIGKILL) {
                log!("kill process group {pid}: {e}");
            }
        }
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid int for the kernel to fill.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match (ret == pid, waiter) {
            (true, Some(mut w)) => {
                if let Err(e) = w.write_all(&status.to_ne_bytes()) {
                    log!("hand over exit status of {pid}: {e}");
                }
            }
            (false, Some(w)) if ret == 0 => {
                // Not reapable after all (cannot happen for a peeked zombie); keep waiting.
                registry.waiters.insert(pid, w);
            }
            _ => {}
        }
        if ret == 0 {
            drop(registry);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
