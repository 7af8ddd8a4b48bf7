//! What can go wrong making or checking provenance.

use std::path::PathBuf;

/// An error making or verifying provenance. The messages say which check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create", ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The private key file can be read or written by group or others.
    #[error("private key {} has mode {mode:03o}, which gives group or others access; refusing to use it (run: chmod 600 {})", path.display(), path.display())]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file could not be parsed.
    #[error("bad key file {}: {reason}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system random number generator failed.
    #[error("cannot get random bytes for a new key: {0}")]
    Random(String),
    /// The provenance file is larger than we are willing to parse.
    #[error("provenance file is {size} bytes; refusing more than {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The envelope is not valid DSSE JSON.
    #[error("not a DSSE envelope: {0}")]
    Envelope(String),
    /// The envelope's payload type is not in-toto.
    #[error("envelope payloadType is {found:?}, expected {expected:?}")]
    PayloadType {
        /// The type in the envelope.
        found: String,
        /// The type we accept.
        expected: &'static str,
    },
    /// No signature in the envelope verifies with the key.
    #[error("signature does not verify with key {keyid}")]
    BadSignature {
        /// The key's id.
        keyid: String,
    },
    /// The signed payload is not an in-toto statement we understand.
    #[error("signed payload is not a valid statement: {0}")]
    Statement(String),
    /// The statement's `_type` is wrong.
    #[error("statement _type is {found:?}, expected {expected:?}")]
    StatementType {
        /// The type found.
        found: String,
        /// The type we accept.
        expected: &'static str,
    },
    /// The statement's `predicateType` is wrong.
    #[error("statement predicateType is {found:?}, expected {expected:?}")]
    PredicateType {
        /// The type found.
        found: String,
        /// The type we accept.
        expected: &'static str,
    },
    /// The artifact's digest is not among the statement's subjects.
    #[error("artifact digest sha256:{digest} is not a subject of this provenance (subjects: {subjects})")]
    NotASubject {
        /// The artifact's sha256, hex.
        digest: String,
        /// The subjects, as `name sha256:hex`, comma separated.
        subjects: String,
    },
    /// Fewer independent builds agreed than were asked for.
    #[error("not reproduced by {wanted} builds: {detail}")]
    NotReproduced {
        /// How many were asked for.
        wanted: u32,
        /// What the provenance records.
        detail: String,
    },
}

impl ProvenanceError {
    /// A closure mapping an I/O error on `path` during `op`.
    pub(crate) fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ProvenanceError {
        let path = path.to_path_buf();
        move |source| ProvenanceError::Io { op, path, source }
    }
}
