//! Errors of the VM driver.

use std::path::PathBuf;

/// Failure to start, drive or talk to a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The VMM binary could not be started.
    #[error("cannot start {binary} (install it: apt-get install qemu-system-x86)")]
    Spawn {
        /// Which binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A filesystem operation in the run folder failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before or while it was needed.
    #[error("the VM exited ({status}){console}")]
    Exited {
        /// Exit status text.
        status: String,
        /// The tail of the serial console, if any.
        console: String,
    },
    /// Waiting for something took too long.
    #[error("timed out after {secs:.1}s waiting for {what}{console}")]
    Timeout {
        /// What we waited for.
        what: &'static str,
        /// How long.
        secs: f64,
        /// The tail of the serial console, if any.
        console: String,
    },
    /// A QMP command failed.
    #[error("QMP {command}: {detail}")]
    Qmp {
        /// Command.
        command: String,
        /// Error text from QEMU.
        detail: String,
    },
    /// The agent channel broke: the guest sent something invalid, or the connection ended.
    #[error("guest channel failed: {0}")]
    Channel(String),
    /// The VMM could not be confined (or confinement is required and unavailable).
    #[error("{0}")]
    Confine(String),
    /// This QEMU cannot do what kiln needs (too old, or not a QEMU).
    #[error("{0}")]
    Unsupported(String),
    /// The requested accelerator is not usable here.
    #[error("accelerator {0} is not usable on this host: {1}")]
    Accel(String, String),
}

impl VmError {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.into();
        move |source| VmError::Io { what, path, source }
    }
}
