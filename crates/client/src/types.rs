//! The API's request and response bodies: `kiln-api`'s, the same types the daemon uses, and
//! the one shape of the client's own (an exec stream's output, decoded).

pub use kiln_api::{
    Baked, BuildTemplate, CiRunRequest, CreateSandbox, EgressAttempt, EgressLog, ErrorBody, ErrorDetail, ExecExit, ExecRequest, ExecResult,
    ExtendSandbox, FileInfo, FileKind, ForkSandbox, Forked, Health, OutputChunk, PoolShape, PoolStatus, PoolTarget, SandboxInfo, SandboxState, SetPool,
    TemplateInfo,
};

/// A sandbox as the API shows it (`kiln_api::SandboxInfo`).
pub type Sandbox = SandboxInfo;

/// A piece of a streamed exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes of stdout.
    Stdout(Vec<u8>),
    /// Bytes of stderr.
    Stderr(Vec<u8>),
}
