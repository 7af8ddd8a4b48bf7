//! Sandboxes: a fresh microVM per job, booted from a template's artifacts, told who it is,
//! driven through the agent, and destroyed without a trace.
#![warn(missing_docs)]

pub mod accel;
pub mod agent;
pub mod artifacts;
mod attach;
pub mod cleanup;
pub mod copy;
pub mod error;
pub mod exec;
pub mod files;
pub mod fork;
pub mod fork_base;
pub mod leaks;
pub mod random;
pub mod sandbox;
pub mod snapshot;
pub mod sparse;
pub mod tunnel;
pub mod warm;

pub use agent::Agent;
pub use error::{Fault, SandboxError};
pub use exec::{ExecOutcome, ExecRequest, Output};
pub use sandbox::{Sandbox, SandboxOptions};
