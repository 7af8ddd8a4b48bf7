//! The daemon's state, for `kiln serve`: a registry of live sandboxes with deadlines and a
//! reaper, limits, who may do what (token scopes, the owner of each sandbox), the lifecycle of
//! each sandbox, a warm pool of sandboxes restored ahead of time, the SQLite store (sandboxes, templates, snapshots, hashed tokens, CI runs,
//! audit events), metrics, and the egress proxy each sandbox's tunnel is served by. It knows
//! nothing of HTTP (that is `kiln-server`), and `kiln-core` knows nothing of it.
#![warn(missing_docs)]

pub mod access;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod pool;
mod images;
mod pool_manager;
pub mod store;
pub mod tokens;

pub use access::{Principal, Scope};
pub use manager::{Limits, Manager, ManagerError};
