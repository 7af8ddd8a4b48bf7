//! Applying OCI image layers (tar streams, plain, gzip or zstd) in order onto a folder, as an
//! image unpacker does: the first step of templates made from OCI images.
//!
//! What is applied: regular files, directories, symlinks and hard links, with their modes
//! (setuid, setgid and sticky bits included), owners as recorded (so kiln must run as root) and
//! modification times (a folder's once its layer is done); an entry replaces what a lower layer
//! left at its path (a folder over a folder only takes the new owner, mode and time). The
//! whiteouts of the OCI layer format: `.wh.NAME` removes `NAME` as lower layers left it,
//! `.wh..wh..opq` empties its folder of what lower layers put there and keeps the entries of its
//! own layer, before or after the marker.
//!
//! A layer is untrusted input, so what is refused, each with its own [`OciError`] naming the
//! path and why: a path that climbs out of the root with `..` (a leading `/` is only dropped);
//! any entry, whiteout or hard-link target beneath a symlink in the tree (every path is opened
//! beneath a [`kiln_fs::Dir`] handle with no symlink followed, so a layer that plants
//! `a -> /etc` and then writes `a/passwd` stops there; layers made by diffing a tree name real
//! paths); a hard link whose target climbs out, is missing or is a folder; device nodes, FIFOs
//! and sparse or unknown entry kinds (tar has no sockets). The [`Limits`] cap, over all layers
//! of an image as [`Usage`] adds up, the uncompressed bytes read (counted as the stream is
//! decompressed, so a gzip or zstd bomb stops at the same cap), the entries, and the length of
//! paths and link targets, which also bounds the long-name and PAX records the tar parser holds
//! in memory. The tar crate only parses: its own `unpack` follows symlinks, so every write here
//! is done through directory handles.

mod at;
mod error;
mod layers;
mod reference;
pub mod remote;
#[cfg(test)]
mod tests;
mod zstd;

use std::cell::Cell;
use std::io::{self, Read};
use std::path::Path;

pub use error::OciError;
pub use reference::{pattern_matches, BadReference, Reference};

/// How a layer's tar stream is compressed (from its media type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar`.
    None,
    /// `application/vnd.oci.image.layer.v1.tar+gzip` (concatenated gzip members are read too).
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd` (frames one after another are read too).
    Zstd,
}

/// Caps for a whole image, checked as its layers are applied.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most uncompressed tar bytes read over all layers (headers and file contents; what is
    /// written is part of it).
    pub max_bytes: u64,
    /// The most tar entries over all layers (whiteouts and folders count).
    pub max_entries: u64,
    /// The longest path or link target, in bytes.
    pub max_path_len: usize,
}

impl Default for Limits {
    /// 16 GiB, a million entries, paths of 4096 bytes.
    fn default() -> Self {
        Limits { max_bytes: 16 << 30, max_entries: 1_000_000, max_path_len: 4096 }
    }
}

/// What the layers applied so far used, to be checked against [`Limits`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Uncompressed tar bytes read.
    pub bytes: u64,
    /// Tar entries applied.
    pub entries: u64,
}

/// Applies one layer onto the folder `root` (which must exist and not be a symlink), adding
/// what it used to `usage`. On an error the tree is left part-applied: unpack into a fresh
/// folder and throw it away if this fails.
pub fn apply_layer(root: &Path, layer: impl Read, compression: Compression, limits: &Limits, usage: &mut Usage) -> Result<(), OciError> {
    let meter = Meter {
        read: Cell::new(0),
        cap: limits.max_bytes.saturating_sub(usage.bytes),
        tripped: Cell::new(false),
        header_budget: Cell::new(None),
        header_tripped: Cell::new(false),
    };
    let result = match compression {
        Compression::None => layers::apply(root, Counted { inner: layer, meter: &meter }, &meter, limits, usage),
        Compression::Gzip => layers::apply(root, Counted { inner: flate2::read::MultiGzDecoder::new(layer), meter: &meter }, &meter, limits, usage),
        Compression::Zstd => layers::apply(root, Counted { inner: zstd::Frames::new(layer), meter: &meter }, &meter, limits, usage),
    };
    usage.bytes += meter.read.get();
    result
}

/// Applies layers in order (lowest first) onto `root` and returns what they used.
pub fn apply_layers<R: Read>(root: &Path, layers: impl IntoIterator<Item = (R, Compression)>, limits: &Limits) -> Result<Usage, OciError> {
    let mut usage = Usage::default();
    for (layer, compression) in layers {
        apply_layer(root, layer, compression, limits, &mut usage)?;
    }
    Ok(usage)
}

/// Counts the uncompressed bytes of one layer against what the cap leaves, and bounds what
/// the tar parser reads between two entries (long names and PAX records, which it holds in
/// memory).
struct Meter {
    read: Cell<u64>,
    cap: u64,
    tripped: Cell<bool>,
    header_budget: Cell<Option<u64>>,
    header_tripped: Cell<bool>,
}

/// A reader of uncompressed bytes that fails once the meter's cap is passed.
struct Counted<'m, R> {
    inner: R,
    meter: &'m Meter,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = self.meter.read.get() + n as u64;
        self.meter.read.set(read);
        if read > self.meter.cap {
            self.meter.tripped.set(true);
            return Err(io::Error::other("the byte cap was reached"));
        }
        if let Some(left) = self.meter.header_budget.get() {
            let Some(left) = left.checked_sub(n as u64) else {
                self.meter.header_tripped.set(true);
                return Err(io::Error::other("the headers of one entry are too long"));
            };
            self.meter.header_budget.set(Some(left));
        }
        Ok(n)
    }
}
