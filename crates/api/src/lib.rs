//! The wire shapes of kiln's HTTP API (`kiln serve`, see `docs/api.md`): every JSON request
//! body, answer, exec-stream event and error body, defined once. The server (`kiln-server`)
//! parses and answers with these types, the Rust client (`kiln-client`) sends and reads them,
//! and the daemon keeps its sandboxes' state in [`SandboxInfo`]. Each type also gives its JSON
//! schema ([`Schema`]) for the OpenAPI document.
//!
//! Only serde: nothing here knows HTTP, VMs or the rest of kiln.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ci;
pub mod egress;
pub mod error;
pub mod exec;
pub mod files;
pub mod meta;
pub mod pool;
pub mod sandbox;
pub mod schema;
pub mod templates;

#[cfg(test)]
mod wire_tests;

pub use ci::CiRunRequest;
pub use egress::{EgressAttempt, EgressLog};
pub use error::{ErrorBody, ErrorDetail};
pub use exec::{ExecExit, ExecRequest, ExecResult, OutputChunk};
pub use files::{FileInfo, FileKind};
pub use meta::Health;
pub use pool::{PoolShape, PoolStatus, PoolTarget, SetPool};
pub use sandbox::{CreateSandbox, ExtendSandbox, ForkSandbox, Forked, SandboxInfo, SandboxState};
pub use schema::Schema;
pub use templates::{Baked, BuildTemplate, TemplateInfo};
