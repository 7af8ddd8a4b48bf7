//! The backend-neutral driver interface. QEMU is the first backend ([`crate::Qemu`]); a
//! Firecracker backend would implement the same traits. Callers hold `&dyn Driver` and
//! `Box<dyn Vm>`: nothing outside this crate names the backend to drive a VM.

use std::future::Future;
use std::pin::Pin;
use std::path::{Path, PathBuf};

use crate::accel::Accel;
use crate::error::VmError;

/// How guest RAM is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Anonymous memory of the VMM process.
    Anonymous,
    /// A file (in /dev/shm). `shared`: writes go to the file (a template being baked);
    /// otherwise the mapping is private and copy-on-write (a clone of a snapshot).
    File {
        /// The memory file.
        path: PathBuf,
        /// Shared (`share=on`) or private (`share=off`).
        shared: bool,
    },
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Kernel image (bzImage).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Accelerator.
    pub accel: Accel,
    /// The VM's writable root disk (a qcow2 overlay over a read-only base), if any.
    pub disk: Option<PathBuf>,
    /// The file kiln made `disk` over, as its header recorded it then. The header lives in a
    /// file the VMM writes, so it is checked against this before a VMM is shown the chain.
    pub disk_backing: Option<PathBuf>,
    /// Folder for sockets and logs, created by the driver and removed when the VM ends.
    pub run_dir: PathBuf,
    /// RAM backing.
    pub memory: Memory,
    /// Start paused, waiting for a saved state to be loaded (restore).
    pub incoming: bool,
}

/// A future returned by a [`Vm`] operation.
pub type VmFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, VmError>> + Send + 'a>>;

/// A VM driver: starts VMs of one backend. Object safe, so a caller holds a `&dyn Driver`
/// and never names the backend.
pub trait Driver: Send + Sync {
    /// The backend's name and version (e.g. QEMU's `--version` line); snapshots record it,
    /// and one taken by another version is not restored.
    fn version(&self) -> Result<String, VmError>;
    /// Starts a VM. It is running (or, with `incoming`, waiting for its state) on return.
    fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmError>;
}

/// The driver kiln uses: QEMU, configured from the environment as it is now (`KILN_QEMU`,
/// `KILN_CONFINE`).
pub fn default_driver() -> Box<dyn Driver> {
    Box::new(crate::Qemu::default())
}

/// A running VM. Dropping it kills the VMM and removes its run folder.
pub trait Vm: Send + Sync + std::fmt::Debug {
    /// Process id of the VMM.
    fn pid(&self) -> u32;
    /// The run folder.
    fn run_dir(&self) -> &Path;
    /// The unix socket bridged to the guest agent's control port.
    fn control_socket(&self) -> PathBuf {
        self.run_dir().join("control.sock")
    }
    /// The unix socket bridged to the guest's egress tunnel port.
    fn net_socket(&self) -> PathBuf {
        self.run_dir().join("net.sock")
    }
    /// The serial console log.
    fn console_log(&self) -> PathBuf {
        self.run_dir().join("console.log")
    }
    /// Resolves when the VMM process has exited.
    fn exited(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// A future of its own (it outlives this borrow) that resolves when the VMM has exited:
    /// for a watchdog task.
    fn exit_watch(&self) -> Result<Pin<Box<dyn Future<Output = ()> + Send + 'static>>, VmError>;
    /// How the VMM exited, if it has (reaps it).
    fn exit_status(&mut self) -> Option<String>;
    /// Kills the VMM now and removes the run folder. Idempotent.
    fn kill(&mut self);
    /// The last lines of the serial console, for error messages.
    fn console_tail(&self) -> String {
        console_tail(&self.console_log())
    }
    /// What the VMM itself printed (bounded), for error messages; empty if nothing.
    fn vmm_log(&self) -> String;
    /// Pauses the vCPUs (the VMM drains and flushes the disks).
    fn pause(&mut self) -> VmFuture<'_, ()>;
    /// Resumes the vCPUs.
    fn resume(&mut self) -> VmFuture<'_, ()>;
    /// Saves device state (not RAM, which lives in a memory file) to a new file `state`.
    /// The VM must be paused.
    fn save_state<'a>(&'a mut self, state: &'a Path) -> VmFuture<'a, ()>;
    /// Loads device state saved by [`Vm::save_state`] into a VM started with `incoming` and
    /// the same machine shape; it stays paused until [`Vm::resume`].
    fn load_state<'a>(&'a mut self, state: &'a Path) -> VmFuture<'a, ()>;
    /// Asks the VMM to exit, and waits a little for it.
    fn quit(&mut self) -> VmFuture<'_, ()>;
}

/// Console lines that say what became of the guest; kept in the tail even when older.
const KEY_LINES: [&str; 2] = ["Kernel panic", "reboot: "];

/// The last 15 lines (at most 2 KiB) of a console log, prefixed for display; empty if none.
/// A kernel panic or halt line among the last 16 KiB is kept too, first: a panic's stack
/// trace is longer than the tail.
pub fn console_tail(path: &Path) -> String {
    // The VMM writes this file and can replace it: a link, a FIFO or a huge file is not read.
    let Ok(bytes) = kiln_fs::read_tail_nofollow(path, 16 << 10) else { return String::new() };
    let window = String::from_utf8_lossy(&bytes);
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(2048)..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() {
        return String::new();
    }
    let key: Vec<&str> = window.lines().filter(|l| KEY_LINES.iter().any(|k| l.contains(k)) && !tail.contains(l)).take(3).collect();
    let shown: Vec<&str> = key.iter().chain(if key.is_empty() { [].iter() } else { [" ..."].iter() }).chain(tail.iter()).copied().collect();
    // The guest wrote these lines: no terminal control sequences, no line longer than 200.
    let clean: Vec<String> = shown.iter().map(|l| l.chars().take(200).map(|c| if c.is_control() && c != '\t' { '?' } else { c }).collect()).collect();
    format!("; guest console ({}):\n  {}", path.display(), clean.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_panic_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut text = String::from("boot\n[ 2.4] Kernel panic - not syncing: sysrq triggered crash\n");
        for i in 0..40 {
            text.push_str(&format!("[ 2.5] trace line {i}\n"));
        }
        std::fs::write(&p, text).unwrap();
        let t = console_tail(&p);
        assert!(t.contains("Kernel panic - not syncing"), "{t}");
        assert!(t.contains("trace line 39") && !t.contains("trace line 10\n"), "{t}");
        assert!(!t.contains("boot"), "{t}");
        std::fs::write(&p, format!("ok\n\x1b]0;pwned\x07{}\n", "x".repeat(5000))).unwrap();
        let t = console_tail(&p);
        assert!(!t.contains('\x1b') && !t.contains('\x07') && t.len() < 400, "{t}");
    }
}
