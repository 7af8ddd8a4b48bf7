//! The HTTP API of `kiln serve`: one routing table ([`routes::ROUTES`]), whose entries carry
//! their handlers and the `kiln-api` types they take and answer, from which the router, the
//! OpenAPI document and the fuzz targets are built; handlers that translate HTTP into
//! [`kiln_daemon::manager::Manager`] calls, errors mapped to statuses in one place, and
//! bearer-token auth for TCP listeners, each token with a scope ([`kiln_daemon::Scope`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod ci;
pub mod ci_rules;
pub mod error;
pub mod exec;
pub mod files;
pub mod fuzzing;
pub mod meta;
pub mod openapi;
pub mod pool;
pub mod route;
pub mod routes;
pub mod sandboxes;
pub mod templates;

use std::path::PathBuf;
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
    /// Folders (canonical) beneath which a token may name a local repository for a CI run
    /// (`kiln serve --repo-root`); none: tokens give URLs only.
    pub repo_roots: Arc<Vec<PathBuf>>,
}

impl AppState {
    /// The state of a listener: the unix socket's (`require_token` false: its peer is the
    /// owner) or a TCP one's. No repository roots.
    pub fn new(manager: Arc<Manager>, require_token: bool) -> AppState {
        AppState { manager, require_token, repo_roots: Arc::new(Vec::new()) }
    }

    /// With these repository roots (canonicalized by the caller).
    pub fn with_repo_roots(self, roots: Vec<PathBuf>) -> AppState {
        AppState { repo_roots: Arc::new(roots), ..self }
    }
}

/// Who made a request: a token (its name and scope), or `local`, the owner on the unix socket.
pub type Actor = kiln_daemon::Principal;
