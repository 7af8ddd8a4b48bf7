//! kiln's egress proxy. A sandbox has no network device; every TCP connection a guest process
//! makes to its HTTP proxy reaches the host as a byte stream, and [`serve_connection`] decides
//! what happens to it:
//!
//! * `CONNECT host:port` (HTTPS and anything else) and absolute-form plain HTTP
//!   (`GET http://host[:port]/path`) are understood; everything else gets `400`.
//! * The target must match the sandbox's [`Policy`] (default deny) *before* its name is
//!   resolved, so a guest cannot use the host's resolver to leak data through DNS queries.
//! * Every address the name resolves to must be public (not loopback, private, link-local,
//!   metadata, ...) unless that exact address was allowed; the proxy then connects to the vetted
//!   address and never resolves again, which defeats DNS rebinding.
//! * Every attempt, allowed or not, lands in the sandbox's [`EgressLog`].
//! * Behind a corporate proxy ([`Upstream`], `--egress-upstream`), names the policy allows
//!   are not resolved on the host but sent through the upstream as `CONNECT host:port`; IP
//!   literals and `localhost` still go direct, with the checks above.
//!
//! The mechanism that carries connections (virtio-serial tunnel, QEMU guestfwd relay, a TCP
//! listener for debugging: [`listen_tcp`]) is not this crate's business.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod context;
pub mod listen;
pub mod log;
pub mod policy;
pub mod proxy;
mod relay;
mod request;
pub mod resolve;
pub mod upstream;

pub use context::{Limits, ProxyContext};
pub use listen::{listen_tcp, serve_listener};
pub use log::{Attempt, EgressLog, LogSnapshot};
pub use policy::{Decision, Denied, Policy, PolicyError};
pub use proxy::{serve_connection, ConnSummary};
pub use resolve::{Resolve, ResolveFuture, StaticResolver, SystemResolver};
pub use upstream::{Upstream, UpstreamError};
