//! Supervised child processes that never outlive kiln.
//!
//! Every VMM is forked from one long-lived thread, with `PR_SET_PDEATHSIG = SIGKILL` (the
//! signal fires when the *thread* that forked the child ends, so forking from a short-lived
//! worker thread would kill the VM early) and in a process group of its own (so a Ctrl-C at
//! the terminal reaches kiln, which then tears the VM down in order). Exit is observed
//! through a pidfd, without a thread per child.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::OnceLock;

use tokio::io::unix::AsyncFd;

use crate::jail::Prepared;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static std::sync::Mutex<mpsc::Sender<SpawnRequest>> {
    static TX: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kiln-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the spawner thread");
        std::sync::Mutex::new(tx)
    })
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Spawns `cmd` so that it dies with this process, inside `jail` if given.
pub fn spawn_supervised(mut cmd: Command, jail: Option<Prepared>) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (the jail's system calls, prctl, getppid, setpgid, _exit) without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(j) = &jail {
                j.enter()?;
            }
            // After the jail: changing uid clears the parent-death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner().lock().unwrap_or_else(|e| e.into_inner()).send((cmd, tx)).map_err(|_| io::Error::other("spawner thread gone"))?;
    rx.recv().map_err(|_| io::Error::other("spawner thread gone"))?
}

/// Waits asynchronously for a child to exit, through a pidfd.
#[derive(Debug)]
pub struct ExitWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    /// Watches process `pid` (must be our child and not yet reaped).
    pub fn new(pid: u32) -> io::Result<ExitWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is dropped,
        // after being deregistered.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(ExitWatch { fd })
    }

    /// Resolves when the process has exited (it is not reaped here).
    pub async fn exited(&self) {
        loop {
            match self.fd.readable().await {
                Ok(_guard) => return,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_sees_exit() {
        let mut c = Command::new("sleep");
        c.arg("0.1");
        let mut child = spawn_supervised(c, None).unwrap();
        let w = ExitWatch::new(child.id()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.exited()).await.unwrap();
        assert!(child.try_wait().unwrap().is_some());
    }
}
