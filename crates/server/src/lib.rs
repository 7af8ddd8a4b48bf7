//! The HTTP API of `kiln serve`: one routing table ([`routes::ROUTES`]), whose entries carry
//! their handlers and the `kiln-api` types they take and answer, from which the router, the
//! OpenAPI document and the fuzz targets are built; handlers that translate HTTP into
//! [`kiln_daemon::manager::Manager`] calls, errors mapped to statuses in one place, and
//! bearer-token auth for TCP listeners.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod ci;
pub mod error;
pub mod exec;
pub mod files;
pub mod fuzzing;
pub mod meta;
pub mod openapi;
pub mod route;
pub mod routes;
pub mod sandboxes;
pub mod templates;

use std::sync::Arc;

use kiln_daemon::manager::Manager;

pub use routes::app;

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The sandbox registry.
    pub manager: Arc<Manager>,
    /// Whether requests must carry a bearer token (TCP listeners).
    pub require_token: bool,
}

/// Who made a request: a token's name, or "local" on the owner-only unix socket.
#[derive(Clone, Debug)]
pub struct Actor(pub String);
