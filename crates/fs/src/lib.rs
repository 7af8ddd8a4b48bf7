//! The host's one way to touch files derived from a job (its out folder, logs, artifacts,
//! provenance, reports) and files a VMM could have touched (its run folder).
//!
//! A pull request can commit symlinks where kiln writes; a VMM that escaped its guest can plant
//! links, FIFOs or huge files in its run folder. So every such path is opened beneath a
//! directory handle with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no component may be
//! a symlink or lead out of the folder. New files are created with `O_EXCL`, reads are of
//! regular files only (checked with `fstat` on the descriptor, opened `O_NONBLOCK` so a FIFO
//! cannot block) and bounded.
#![warn(missing_docs)]

mod dir;
mod freeze;
mod read;

pub use dir::Dir;
pub use freeze::{freeze, freeze_file, link_regular};
pub use read::{open_regular_nofollow, read_head_nofollow, read_tail_nofollow};
