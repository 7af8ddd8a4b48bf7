//! Name resolution, injectable so tests never touch real DNS.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// The future [`Resolve::resolve`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Turns a host name into addresses. The proxy never calls it for a literal address, nor for a
/// name the policy does not allow.
pub trait Resolve: Send + Sync {
    /// All addresses of `host` (a name without brackets or port).
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

impl<T: Resolve + ?Sized> Resolve for std::sync::Arc<T> {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        (**self).resolve(host)
    }
}

/// The host's resolver, through `tokio::net::lookup_host`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let mut out: Vec<IpAddr> = Vec::new();
            for sa in tokio::net::lookup_host((host, 0u16)).await? {
                if !out.contains(&sa.ip()) {
                    out.push(sa.ip());
                }
            }
            Ok(out)
        })
    }
}

/// A fixed table of names (lower case, no trailing dot); any other name fails to resolve. For
/// tests, and for callers that pin names.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Adds (or replaces) `name`'s addresses.
    pub fn with(mut self, name: &str, addrs: &[IpAddr]) -> StaticResolver {
        self.names.insert(name.to_ascii_lowercase(), addrs.to_vec());
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        let key = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let found = self.names.get(&key).cloned();
        Box::pin(async move { found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no such host: {host}"))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_table() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let r = StaticResolver::new().with("Example.com", &[ip]);
        assert_eq!(r.resolve("example.COM.").await.unwrap(), vec![ip]);
        assert_eq!(r.resolve("other.com").await.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
