//! Why a pull failed.

/// Failure to fetch an image from a registry: the registry could not be reached or refused,
/// or what it sent is not an image kiln takes (too big, wrong digest, unknown kind).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry could not be reached, or the connection broke.
    #[error("cannot reach {url}: {detail}")]
    Transport {
        /// What was asked for.
        url: String,
        /// Why.
        detail: String,
    },
    /// The registry answered with an error status.
    #[error("{url} answered {status}{}", hint(*status))]
    Status {
        /// What was asked for.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The registry asked for authentication in a way kiln cannot answer.
    #[error("{url}: {detail}")]
    Auth {
        /// What was asked for.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// A document or blob is larger than its cap.
    #[error("{what} is larger than the cap of {max} bytes")]
    TooBig {
        /// Which one.
        what: String,
        /// The cap.
        max: u64,
    },
    /// What arrived does not match its digest or declared size.
    #[error("{what}: {detail}")]
    Mismatch {
        /// Which blob or manifest.
        what: String,
        /// How it differs.
        detail: String,
    },
    /// A manifest, index or config that is not what kiln takes.
    #[error("{what}: {detail}")]
    Unsupported {
        /// Which document.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Writing a blob into the store failed.
    #[error("storing {what}: {source}")]
    Store {
        /// Which blob.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (not allowed: put credentials for the registry in the docker config file, $DOCKER_CONFIG/config.json or ~/.docker/config.json, e.g. with `docker login HOST`; or check the name)",
        404 => " (no such image or tag: check the reference)",
        429 => " (rate limited: try again later)",
        _ => "",
    }
}
