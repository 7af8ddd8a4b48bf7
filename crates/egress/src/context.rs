//! What the proxy needs to serve one sandbox's connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{EgressLog, Policy, Resolve, Upstream};

/// Bounds on one sandbox's egress. Byte limits count both directions together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of request head (request line and headers) read from the sandbox: 16 KiB.
    pub max_head_bytes: usize,
    /// Time the sandbox has to send the whole request head: 10 s.
    pub head_timeout: Duration,
    /// Time allowed to resolve the name, and then to connect: 10 s each.
    pub connect_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed: 60 s.
    pub idle_timeout: Duration,
    /// Most bytes (up plus down) one connection may carry: 4 GiB.
    pub max_bytes_per_conn: u64,
    /// Most bytes (up plus down) all of a sandbox's connections together may carry: 16 GiB.
    pub max_bytes_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_bytes_per_conn: 4 << 30,
            max_bytes_total: 16 << 30,
        }
    }
}

/// Everything [`crate::serve_connection`] needs: one per sandbox, shared by its connections
/// (wrap it in an `Arc`).
pub struct ProxyContext {
    /// What the sandbox may reach.
    pub policy: Policy,
    /// How names are resolved ([`crate::SystemResolver`] in production).
    pub resolver: Arc<dyn Resolve>,
    /// Where attempts are recorded.
    pub log: Arc<EgressLog>,
    /// Bounds.
    pub limits: Limits,
    /// Bytes carried so far by all connections of this sandbox, checked against
    /// [`Limits::max_bytes_total`].
    pub bytes_total: Arc<AtomicU64>,
    /// The upstream HTTP proxy that names the policy allows are sent through, unresolved
    /// (see [`crate::upstream`]); `None`: kiln resolves them and connects itself.
    pub upstream: Option<Arc<Upstream>>,
}

impl ProxyContext {
    /// A context with an empty log and nothing carried yet.
    pub fn new(policy: Policy, resolver: Arc<dyn Resolve>, limits: Limits) -> ProxyContext {
        ProxyContext { policy, resolver, log: Arc::new(EgressLog::new()), limits, bytes_total: Arc::new(AtomicU64::new(0)), upstream: None }
    }

    /// The same context, sending allowed names through `upstream` (`None`: direct).
    pub fn with_upstream(mut self, upstream: Option<Arc<Upstream>>) -> ProxyContext {
        self.upstream = upstream;
        self
    }

    /// Bytes carried so far by all connections.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total.load(Ordering::Relaxed)
    }
}
