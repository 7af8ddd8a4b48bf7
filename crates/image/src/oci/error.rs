//! Why a layer was refused or could not be applied.

use std::path::PathBuf;

/// Failure to apply an OCI layer: a hostile or malformed entry (named with its path and why),
/// a cap that was reached, or an I/O error on the tree.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A filesystem operation on the tree failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which entry (relative to the root).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The layer is not a readable tar stream (or its compression is damaged).
    #[error("the layer is not a valid tar stream: {0}")]
    Tar(#[source] std::io::Error),
    /// A path or hard-link target climbs out of the root with `..`.
    #[error("{path:?} climbs out of the root with '..'; refused")]
    Escape {
        /// The path as recorded in the layer.
        path: String,
    },
    /// An entry would be written, or a whiteout applied, beneath a symlink.
    #[error("{path:?} lies beneath a symlink in the tree; entries are never written through a symlink")]
    BeneathSymlink {
        /// The entry's path.
        path: PathBuf,
    },
    /// A hard link whose target is not a non-directory entry already in the tree.
    #[error("hard link {path:?} -> {target:?}: {why}")]
    HardLink {
        /// The link's path.
        path: PathBuf,
        /// Its target as recorded in the layer.
        target: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// An entry of a kind an image tree must not hold (device node, FIFO, sparse file…).
    #[error("{path:?} is a {kind}; only files, directories, symlinks and hard links are unpacked")]
    Unsupported {
        /// The entry's path.
        path: PathBuf,
        /// What it is.
        kind: String,
    },
    /// A header field that cannot be applied (ownership out of range, empty symlink target…).
    #[error("{path:?}: {why}")]
    BadEntry {
        /// The entry's path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The image's uncompressed bytes reached [`Limits::max_bytes`](super::Limits).
    #[error("the image is larger than the cap of {max} uncompressed bytes")]
    TooManyBytes {
        /// The cap.
        max: u64,
    },
    /// The image's entries reached [`Limits::max_entries`](super::Limits).
    #[error("the image has more than the cap of {max} entries")]
    TooManyEntries {
        /// The cap.
        max: u64,
    },
    /// A path, link target or long-name header is longer than [`Limits::max_path_len`](super::Limits).
    #[error("a path or link target of {len} bytes (starting {start:?}) is longer than the cap of {max}")]
    PathTooLong {
        /// Its first bytes.
        start: String,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The long-name and PAX records of one entry are longer than its paths may be (the tar
    /// parser holds them in memory, so they are cut off as they are read).
    #[error("the long-name or PAX records of an entry are longer than {max} bytes")]
    HeaderTooLong {
        /// What they may hold, from [`Limits::max_path_len`](super::Limits).
        max: u64,
    },
}
