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
    /// The agent broke the protocol (an unexpected reply, a wrong version).
    #[error("the guest agent misbehaved: {0}")]
    Protocol(String),
    /// The agent did not finish a command long after its timeout.
    #[error("the guest agent stopped answering (nothing for {0}s past the command's deadline); the sandbox was destroyed")]
    Unresponsive(u64),
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

impl SandboxError {
    /// Whether the failure lies with the caller's input rather than with kiln or the VM.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            SandboxError::Invalid(_)
                | SandboxError::Busy(_)
                | SandboxError::Image(kiln_image::ImageError::UnknownTemplate { .. } | kiln_image::ImageError::BadTemplate { .. })
                | SandboxError::Guest { .. }
        )
    }
}
