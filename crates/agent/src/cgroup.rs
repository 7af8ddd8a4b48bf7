//! One cgroup v2 per running exec (`/sys/fs/cgroup/kiln/exec-<n>`), so every process a command
//! starts can be killed at once (`cgroup.kill`), even one that left the process group.
//!
//! Making and removing a cgroup costs the guest kernel more than starting the command (under
//! TCG about 6 ms each, against 7 ms for a fork and exec), so an emptied cgroup is kept for the
//! next exec instead of removed: at most [`MAX_FREE`] of them, each reused only once nothing
//! is left in it. One is made at boot, so it is in every snapshot.
//!
//! Used only when `/sys/fs/cgroup` is a cgroup2 mount the agent may write to; otherwise
//! (e.g. `--stdio` on a host with cgroup v1) execs rely on their process group alone.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::sys;

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "/sys/fs/cgroup/kiln";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How long removal waits for the last processes of a killed cgroup to exit.
const REMOVE_WAIT: Duration = Duration::from_secs(1);
/// Emptied cgroups kept for the next execs.
pub const MAX_FREE: usize = 8;

/// Emptied cgroups, ready for an exec.
static FREE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Names of new cgroups.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn free() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    FREE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Guest memory the commands can never take from the agent and the kernel: at least this,
/// or an eighth of the guest's memory if that is more.
const RESERVE_KIB: u64 = 40 * 1024;
/// Processes and threads all running commands may have together (a fork bomb stops here), at
/// most: never more than three quarters of the kernel's `threads-max` (which small guests
/// set low: about 1,900 with 256 MiB), so the agent can always start a thread.
pub const PIDS_MAX: u64 = 4096;

fn mem_total_kib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Caps the memory and process count of all commands together (the `kiln` group), so that a
/// command that eats all memory or forks without end meets the guest's OOM killer or EAGAIN
/// inside its group while the agent keeps answering. In the real guest only (PID 1).
fn limit_parent() {
    if let Err(e) = fs::write(Path::new(ROOT).join("cgroup.subtree_control"), "+memory +pids") {
        log!("enabling the memory and pids controllers: {e}; commands are not limited");
        return;
    }
    if let Some(total) = mem_total_kib() {
        let max = total.saturating_sub(RESERVE_KIB.max(total / 8)) * 1024;
        if let Err(e) = fs::write(Path::new(PARENT).join("memory.max"), max.to_string()) {
            log!("memory.max: {e}");
        }
    }
    let threads_max: u64 = fs::read_to_string("/proc/sys/kernel/threads-max").ok().and_then(|t| t.trim().parse().ok()).unwrap_or(PIDS_MAX);
    let pids = PIDS_MAX.min(threads_max * 3 / 4).max(64);
    if let Err(e) = fs::write(Path::new(PARENT).join("pids.max"), pids.to_string()) {
        log!("pids.max: {e}");
    }
}

/// An exec's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if !sys::fs_magic_is(Path::new(ROOT), CGROUP2_SUPER_MAGIC) {
            return false;
        }
        match fs::create_dir(PARENT) {
            Ok(()) => {
                if std::process::id() == 1 {
                    limit_parent();
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
            Err(e) => {
                log!("cgroups unavailable, execs are contained by process group only: mkdir {PARENT}: {e}");
                false
            }
        }
    })
}

impl Cgroup {
    /// An empty cgroup for an exec: one emptied by an earlier exec, or a new one; `None` when
    /// cgroups are unavailable.
    pub fn create() -> Option<Cgroup> {
        if !available() {
            return None;
        }
        if let Some(dir) = free().pop() {
            return Some(Cgroup { dir });
        }
        Self::make()
    }

    /// A new cgroup. An agent that is not PID 1 (`--stdio`, of which several may run at once)
    /// adds its pid to the name so agents never share a cgroup.
    fn make() -> Option<Cgroup> {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = if pid == 1 { format!("exec-{n}") } else { format!("exec-{n}-{pid}") };
        let dir = Path::new(PARENT).join(name);
        match fs::create_dir(&dir) {
            Ok(()) => Some(Cgroup { dir }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Some(Cgroup { dir }),
            Err(e) => {
                log!("mkdir {}: {e}", dir.display());
                None
            }
        }
    }

    /// Path of `cgroup.procs`, for the child to write `0` into before it execs.
    pub fn procs_path(&self) -> Option<CString> {
        sys::cpath(&self.dir.join("cgroup.procs")).ok()
    }

    /// SIGKILLs every process in the cgroup.
    pub fn kill(&self) {
        match fs::write(self.dir.join("cgroup.kill"), "1") {
            Ok(()) => {}
            // Kernels before 5.14 have no cgroup.kill: kill the members one by one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                for pid in self.pids() {
                    let _ = sys::kill(pid, libc::SIGKILL);
                }
            }
            Err(e) => log!("kill cgroup {}: {e}", self.dir.display()),
        }
    }

    fn pids(&self) -> Vec<libc::pid_t> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Makes the cgroup the first exec after boot (or after a restore) uses.
    pub fn prepare() {
        if available() && free().is_empty() {
            if let Some(c) = Self::make() {
                free().push(c.dir);
            }
        }
    }

    /// Whether no process is left in it.
    fn is_empty(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l.trim() == "populated 0"))
    }

    /// Done with: kills what is left, waits briefly for it to go, and keeps the emptied cgroup
    /// for a later exec (or removes it when enough are kept or it does not empty).
    pub fn release(self) {
        let deadline = Instant::now() + REMOVE_WAIT;
        while !self.is_empty() && Instant::now() < deadline {
            self.kill();
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.is_empty() {
            let mut f = free();
            if f.len() < MAX_FREE {
                f.push(self.dir);
                return;
            }
        }
        self.remove();
    }

    /// Kills what is left and removes the cgroup, retrying briefly while it is still busy.
    pub fn remove(&self) {
        let deadline = Instant::now() + REMOVE_WAIT;
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    log!("rmdir {}: {e}", self.dir.display());
                    return;
                }
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}
