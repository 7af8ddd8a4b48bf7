//! The CI job behind `kiln ci run` and the GitLab custom executor: the source goes into the VM
//! (a `git bundle` of a local repository, or a clone through the egress proxy), an optional
//! setup step is cached as a snapshot that only trusted runs may write, the build runs in one
//! forked VM per matrix cell with scoped secrets and an egress allowlist, and artifacts come
//! back with digests and signed provenance.
#![warn(missing_docs)]

pub mod artifacts;
pub mod cache;
pub mod digest;
pub mod glue;
pub mod mask;
pub mod run;
pub mod source;

pub use run::{run, CiConfig, Egress, Report, Signer, Sink};

/// Why a CI run could not be carried out (kiln's failure, not the build's).
#[derive(Debug, thiserror::Error)]
pub enum CiError {
    /// The sandbox layer failed.
    #[error(transparent)]
    Sandbox(#[from] kiln_core::SandboxError),
    /// Getting the source failed.
    #[error("source: {0}")]
    Source(String),
    /// Collecting artifacts failed.
    #[error("artifacts: {0}")]
    Artifacts(String),
    /// A host file operation failed.
    #[error("{0}")]
    Io(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

/// `host:port` of a clone URL (for allowing it during the clone).
pub fn url_host(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    if authority.contains(':') && !authority.ends_with(']') {
        return Some(authority.to_owned());
    }
    let port = match scheme {
        "https" => 443,
        "http" => 80,
        "git" => 9418,
        "ssh" => 22,
        _ => return None,
    };
    Some(format!("{authority}:{port}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_hosts() {
        assert_eq!(super::url_host("https://example.com/a/b.git").as_deref(), Some("example.com:443"));
        assert_eq!(super::url_host("http://127.0.0.1:8080/r.git").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(super::url_host("https://user:pw@example.com/x").as_deref(), Some("example.com:443"));
        assert_eq!(super::url_host("file:///x"), None);
    }
}
