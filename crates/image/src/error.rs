//! Errors of artifact operations.

use std::path::PathBuf;

/// Failure to fetch, build or find a guest artifact.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host tool failed or is missing.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The program.
        tool: String,
        /// What it said, or how to install it.
        detail: String,
    },
    /// No template of that name.
    #[error("unknown template '{name}' (known: {known}); copy templates/tiny.toml to templates/{name}.toml to make one")]
    UnknownTemplate {
        /// Requested name.
        name: String,
        /// Names that exist.
        known: String,
    },
    /// A template file is invalid.
    #[error("template {}: {detail}", path.display())]
    BadTemplate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The template was never built.
    #[error("template '{0}' is not built; run `kiln template build {0}`")]
    NotBuilt(String),
    /// A stored artifact is missing or does not match its digest.
    #[error("artifact {0} is missing or damaged in the store; rebuild it (`kiln template build --force`)")]
    Damaged(String),
    /// An OCI image could not be pulled.
    #[error("image {reference}: {source}")]
    Pull {
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: crate::oci::remote::PullError,
    },
    /// An OCI image's layers were refused or could not be applied.
    #[error("image {reference}: {source}")]
    Layers {
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: crate::oci::OciError,
    },
    /// The agent binary could not be found.
    #[error("the guest agent binary was not found (looked in: {0}); build it with `make build` or set KILN_AGENT")]
    NoAgent(String),
}

impl ImageError {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { what, path, source }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ImageError>;
