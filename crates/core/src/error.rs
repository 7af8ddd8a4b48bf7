//! Errors of sandbox operations.

use kiln_proto::ErrorKind;

/// What went wrong with a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Preparing guest artifacts failed.
    #[error(transparent)]
    Image(#[from] kiln_image::ImageError),
    /// The VM driver failed.
    #[error(transparent)]
    Vm(#[from] kiln_vmm::VmError),
    /// The VM died under us.
    #[error("sandbox died: the VM exited ({status}){console}")]
    Died {
        /// How it exited.
        status: String,
        /// Tail of the guest console.
        console: String,
    },
    /// The guest did not boot in time.
    #[error("the guest did not answer within {secs}s of starting{console}")]
    BootTimeout {
        /// Seconds waited.
        secs: u64,
        /// Tail of the guest console.
        console: String,
    },
    /// The agent refused a request.
    #[error("{message}")]
    Guest {
        /// Kind reported by the agent.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
    /// The agent broke the protocol (an unexpected reply, a wrong version, more bytes than
    /// announced). Only for what the guest sent: host failures have variants of their own.
    #[error("the guest agent misbehaved: {0}")]
    Protocol(String),
    /// The agent did not finish a command long after its timeout.
    #[error("the guest agent stopped answering (nothing for {0}s past the command's deadline); the sandbox was destroyed")]
    Unresponsive(u64),
    /// Loading a saved VM state (a template snapshot or a fork base) into a new VMM failed.
    #[error("restoring {what} failed{}", vmm_said(vmm_log))]
    Restore {
        /// What was restored (e.g. "snapshot /path").
        what: String,
        /// What the VMM printed, if anything.
        vmm_log: String,
        /// The driver's error.
        #[source]
        source: kiln_vmm::VmError,
    },
    /// A host tool kiln runs (e.g. qemu-img) failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool and what it was asked to do.
        tool: String,
        /// What it printed.
        detail: String,
    },
    /// Something kiln checks of its own work was not so (a benchmark's sanity check).
    #[error("{0}")]
    Unexpected(String),
    /// Bad input from the caller.
    #[error("{0}")]
    Invalid(String),
    /// A per-sandbox limit is reached (e.g. concurrent execs); retry later.
    #[error("{0}")]
    Busy(String),
    /// A host I/O error.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn vmm_said(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (the VMM said: {log})")
    }
}

/// What kind of failure an error is: the one classification behind exit codes, HTTP statuses
/// and the daemon's decision to fail a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller's input was wrong (a bad option, an unknown template).
    Invalid,
    /// A limit is reached; retry later.
    Busy,
    /// The guest refused a request: something named does not exist.
    GuestNotFound,
    /// The guest refused a request: not permitted (e.g. not executable).
    GuestDenied,
    /// The guest refused a request: it already exists.
    GuestConflict,
    /// The guest refused a request for another reason.
    GuestRefused,
    /// The sandbox is lost: its VM died, hung, did not boot or broke the protocol. The
    /// daemon marks it failed; nothing more can be done with it.
    SandboxLost,
    /// kiln or the host failed (I/O, a host tool, preparing artifacts).
    Host,
}

impl Fault {
    /// Whether the failure lies with the caller's input rather than with kiln or the VM.
    pub fn is_user_error(self) -> bool {
        matches!(self, Fault::Invalid | Fault::Busy | Fault::GuestNotFound | Fault::GuestDenied | Fault::GuestConflict | Fault::GuestRefused)
    }
}

impl SandboxError {
    /// The kind of failure.
    pub fn fault(&self) -> Fault {
        use kiln_image::ImageError;
        match self {
            SandboxError::Invalid(_) | SandboxError::Image(ImageError::UnknownTemplate { .. } | ImageError::BadTemplate { .. }) => Fault::Invalid,
            SandboxError::Busy(_) => Fault::Busy,
            SandboxError::Guest { kind: ErrorKind::NotFound, .. } => Fault::GuestNotFound,
            SandboxError::Guest { kind: ErrorKind::PermissionDenied, .. } => Fault::GuestDenied,
            SandboxError::Guest { kind: ErrorKind::AlreadyExists, .. } => Fault::GuestConflict,
            SandboxError::Guest { .. } => Fault::GuestRefused,
            SandboxError::Died { .. }
            | SandboxError::BootTimeout { .. }
            | SandboxError::Protocol(_)
            | SandboxError::Unresponsive(_)
            | SandboxError::Restore { .. }
            | SandboxError::Vm(_) => Fault::SandboxLost,
            SandboxError::Image(_) | SandboxError::Io { .. } | SandboxError::Tool { .. } | SandboxError::Unexpected(_) => Fault::Host,
        }
    }

    /// Whether the failure lies with the caller's input rather than with kiln or the VM.
    pub fn is_user_error(&self) -> bool {
        self.fault().is_user_error()
    }

    /// The message with its causes, each once: `what: why: deeper why`.
    pub fn with_causes(&self) -> String {
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            let text = s.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            src = s.source();
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_failures_do_not_blame_the_guest() {
        let e = SandboxError::Tool { tool: "qemu-img create".into(), detail: "No space left on device".into() };
        assert_eq!(e.fault(), Fault::Host);
        assert!(!e.to_string().contains("guest"), "{e}");
        let source = kiln_vmm::VmError::Qmp { command: "migrate-incoming".into(), detail: "bad state".into() };
        let e = SandboxError::Restore { what: "snapshot /s".into(), vmm_log: "qemu: load failed".into(), source };
        assert_eq!(e.fault(), Fault::SandboxLost);
        assert!(!e.to_string().contains("guest agent"), "{e}");
        assert_eq!(e.with_causes(), "restoring snapshot /s failed (the VMM said: qemu: load failed): QMP migrate-incoming: bad state");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn classes() {
        assert_eq!(SandboxError::Invalid("x".into()).fault(), Fault::Invalid);
        assert_eq!(SandboxError::Guest { kind: ErrorKind::NotFound, message: "m".into() }.fault(), Fault::GuestNotFound);
        assert_eq!(SandboxError::Protocol("p".into()).fault(), Fault::SandboxLost);
        assert!(SandboxError::Busy("b".into()).is_user_error());
        assert!(!SandboxError::Unresponsive(3).is_user_error());
    }
}
