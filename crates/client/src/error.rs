//! What can go wrong talking to the daemon.

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon there.
    #[error("cannot reach the kiln daemon at {target}: {detail}; start it with `kiln serve` (or set KILN_HOST)")]
    Unreachable {
        /// Where we looked.
        target: String,
        /// What connect said.
        detail: String,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// A transport or decoding failure.
    #[error("talking to the daemon: {0}")]
    Transport(String),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}
