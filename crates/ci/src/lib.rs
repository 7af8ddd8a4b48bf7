//! The CI job behind `kiln ci run` and the GitLab custom executor: the source goes into the VM
//! (a `git bundle` of a local repository, or a clone through the egress proxy), an optional
//! setup step is cached as a snapshot that only trusted runs may write, the build runs in one
//! forked VM per matrix cell with scoped secrets and an egress allowlist, and artifacts come
//! back with digests and signed provenance.
#![warn(missing_docs)]

pub mod artifacts;
pub mod cache;
mod cell;
pub mod digest;
pub mod glue;
pub mod mask;
pub mod reproduce;
pub mod run;
pub mod source;

pub use run::{run, CiConfig, Egress, Report, Signer, Sink};

/// Why a CI run could not be carried out (kiln's failure, not the build's).
#[derive(Debug, thiserror::Error)]
pub enum CiError {
    /// The sandbox layer failed.
    #[error(transparent)]
    Sandbox(#[from] kiln_core::SandboxError),
    /// Getting the source failed: git (on the host, or in the VM) refused.
    #[error("source: {what}: {detail}")]
    Source {
        /// What was being done (e.g. "ref main", "cloning URL in the VM").
        what: String,
        /// What git printed.
        detail: String,
    },
    /// The VM's artifacts broke a rule (an unsafe name, too many, too large).
    #[error("artifacts: {0}")]
    Artifacts(String),
    /// A host file operation (or starting a host program) failed.
    #[error("{what}")]
    Io {
        /// What was being done, to which path.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Bad input: an option, a path or a ref that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The daemon that was asked to run the job failed or answered something unusable.
    #[error("the daemon: {0}")]
    Daemon(String),
    /// An error whose text held a secret: the text with the secret masked.
    #[error("{message}")]
    Masked {
        /// The masked text, causes included.
        message: String,
        /// Whether the original was the caller's error.
        user_error: bool,
    },
}

impl CiError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CiError {
        let what = what.into();
        move |source| CiError::Io { what, source }
    }

    /// Whether the failure lies with the caller's input rather than with kiln, the host or the VM.
    pub fn is_user_error(&self) -> bool {
        match self {
            CiError::Invalid(_) => true,
            CiError::Sandbox(s) => s.is_user_error(),
            CiError::Masked { user_error, .. } => *user_error,
            _ => false,
        }
    }

    /// This error, or its text with every secret `masker` knows masked if it held one.
    pub fn masked(self, masker: &mask::Masker) -> CiError {
        let text = self.with_causes();
        let masked = masker.mask_str(&text);
        if masked == text {
            return self;
        }
        CiError::Masked { message: masked, user_error: self.is_user_error() }
    }

    /// The message with its causes, each once.
    pub fn with_causes(&self) -> String {
        match self {
            CiError::Sandbox(s) => s.with_causes(),
            CiError::Io { what, source } => format!("{what}: {source}"),
            other => other.to_string(),
        }
    }
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
    use super::*;

    #[test]
    fn errors_pass_the_masker() {
        let m = mask::Masker::new(&["hunter2-secret-value"]);
        let e = CiError::Source { what: "cloning".into(), detail: "fatal: auth hunter2-secret-value refused".into() }.masked(&m);
        assert!(!e.to_string().contains("hunter2") && e.to_string().contains("cloning"), "{e}");
        assert!(!e.is_user_error());
        let e = CiError::Invalid("bad ref hunter2-secret-value".into()).masked(&m);
        assert!(e.is_user_error() && !e.with_causes().contains("hunter2"));
        let clean = CiError::Invalid("bad ref main".into()).masked(&m);
        assert!(matches!(clean, CiError::Invalid(_)));
    }

    #[test]
    fn url_hosts() {
        assert_eq!(super::url_host("https://example.com/a/b.git").as_deref(), Some("example.com:443"));
        assert_eq!(super::url_host("http://127.0.0.1:8080/r.git").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(super::url_host("https://user:pw@example.com/x").as_deref(), Some("example.com:443"));
        assert_eq!(super::url_host("file:///x"), None);
    }
}
