//! A typed, async client for the kiln daemon (`kiln serve`). It speaks HTTP/1.1 over the
//! daemon's unix socket or over TCP with a bearer token; see `docs/api.md`.
//! The bodies it sends and reads are `kiln-api`'s, the types the daemon itself uses, so the
//! two cannot drift apart.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln_client::ClientError> {
//! use kiln_client::{Client, CreateSandbox, ExecRequest};
//! let client = Client::from_env();
//! let sbx = client.create_sandbox(&CreateSandbox { template: "base".into(), ttl_seconds: Some(300), ..Default::default() }).await?;
//! let r = client.exec(&sbx.id, &ExecRequest::shell("make test").timeout(600.0)).await?;
//! println!("{} exited {}", sbx.id, r.exit_code);
//! client.delete_sandbox(&sbx.id).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod http;
mod sse;
mod types;

pub use error::ClientError;
pub use http::{Client, Target};
pub use types::*;
