//! The file API: streamed writes and reads, mkdir, list, stat, remove.

use std::collections::HashMap;
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use kiln_proto::{ErrorKind, FileKind, FileStat, GuestMsg, RequestId, DEFAULT_MAX_FILE, MAX_CHUNK, MAX_ENTRIES, MAX_FRAME};

use crate::errors::{error, io_error};
use crate::outbox::Outbox;

/// Permission bits of a mode.
const PERM_MASK: u32 = 0o7777;

enum Upload {
    Open { file: File, path: String, written: u64 },
    /// Failed: later chunks and the end are ignored (the error was already sent).
    Failed,
}

/// Files being written (`FileWrite` … `FileChunk`* … `FileEnd`), by request id.
#[derive(Default)]
pub struct FileWrites {
    uploads: HashMap<RequestId, Upload>,
}

impl FileWrites {
    /// Starts a write; the reply when it failed.
    pub fn begin(&mut self, id: RequestId, path: &str, mode: u32, parents: bool) -> Option<GuestMsg> {
        if self.uploads.contains_key(&id) {
            return Some(error(id, ErrorKind::Protocol, format!("request id {id} is already in use")));
        }
        match create(Path::new(path), mode, parents) {
            Ok(file) => {
                self.uploads.insert(id, Upload::Open { file, path: path.to_string(), written: 0 });
                None
            }
            Err(e) => {
                self.uploads.insert(id, Upload::Failed);
                Some(io_error(id, "write", path, &e))
            }
        }
    }

    /// Appends a chunk; the reply when it failed.
    pub fn chunk(&mut self, id: RequestId, data: &[u8]) -> Option<GuestMsg> {
        let (reply, path) = match self.uploads.get_mut(&id) {
            None => return Some(error(id, ErrorKind::Protocol, format!("no file write in progress with id {id}"))),
            Some(Upload::Failed) => return None,
            Some(Upload::Open { file, path, written }) => {
                let total = *written + data.len() as u64;
                if total > DEFAULT_MAX_FILE {
                    let msg = format!("write {path}: file exceeds {DEFAULT_MAX_FILE} bytes");
                    (error(id, ErrorKind::InvalidInput, msg), path.clone())
                } else {
                    match file.write_all(data) {
                        Ok(()) => {
                            *written = total;
                            return None;
                        }
                        Err(e) => (io_error(id, "write", path, &e), path.clone()),
                    }
                }
            }
        };
        self.uploads.insert(id, Upload::Failed);
        discard(&path);
        Some(reply)
    }

    /// Finishes a write: `Done`, or nothing when it had already failed.
    pub fn end(&mut self, id: RequestId) -> Option<GuestMsg> {
        match self.uploads.remove(&id) {
            None => Some(error(id, ErrorKind::Protocol, format!("no file write in progress with id {id}"))),
            Some(Upload::Failed) => None,
            Some(Upload::Open { file, .. }) => {
                drop(file);
                Some(GuestMsg::Done { id })
            }
        }
    }

    /// Drops every unfinished write (its connection ended) and removes the partial files.
    pub fn abort_all(&mut self) {
        for (_, upload) in self.uploads.drain() {
            if let Upload::Open { file, path, .. } = upload {
                drop(file);
                discard(&path);
            }
        }
    }
}

/// Removes a partial file, so nobody mistakes it for a complete one.
fn discard(path: &str) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log!("remove partial file {path}: {e}");
        }
    }
}

fn create(path: &Path, mode: u32, parents: bool) -> io::Result<File> {
    if parents {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
    }
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode & PERM_MASK).open(path)?;
    // The umask applied at creation, and an existing file keeps its mode: set it exactly.
    file.set_permissions(Permissions::from_mode(mode & PERM_MASK))?;
    Ok(file)
}

/// Streams a file to the host: `FileInfo`, `FileChunk`s, `FileEnd` (or an `Error`). Sends at most
/// the size seen at open, even if the file grows meanwhile.
pub fn read(outbox: &Outbox, gen: u64, id: RequestId, path: &str, max_bytes: u64) {
    let send = |msg| outbox.send(gen, msg);
    // O_NONBLOCK: opening a FIFO must not hang; it is refused below anyway.
    let opened = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path);
    let (mut file, meta) = match opened.and_then(|f| f.metadata().map(|m| (f, m))) {
        Ok(x) => x,
        Err(e) => return send(io_error(id, "read", path, &e)),
    };
    if !meta.is_file() {
        return send(error(id, ErrorKind::InvalidInput, format!("read {path}: not a regular file")));
    }
    let size = meta.len();
    if size > max_bytes {
        let msg = format!("read {path}: file is {size} bytes, more than the limit of {max_bytes}");
        return send(error(id, ErrorKind::InvalidInput, msg));
    }
    send(GuestMsg::FileInfo { id, size, mode: meta.mode() & PERM_MASK });
    let mut left = size;
    let mut buf = vec![0u8; MAX_CHUNK];
    while left > 0 {
        if outbox.generation() != gen {
            return; // The host that asked is gone.
        }
        let want = left.min(MAX_CHUNK as u64) as usize;
        match file.read(&mut buf[..want]) {
            Ok(0) => break, // The file shrank.
            Ok(n) => {
                left -= n as u64;
                send(GuestMsg::FileChunk { id, data: buf[..n].to_vec() });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return send(io_error(id, "read", path, &e)),
        }
    }
    send(GuestMsg::FileEnd { id });
}

/// `Mkdir`: one directory, or with `parents` the whole chain (and fine if it exists).
pub fn mkdir(path: &str, mode: u32, parents: bool) -> io::Result<()> {
    if parents {
        fs::create_dir_all(path)?;
    } else {
        fs::create_dir(path)?;
    }
    fs::set_permissions(path, Permissions::from_mode(mode & PERM_MASK))
}

/// `lstat` as a protocol `FileStat`.
pub fn stat(path: &str) -> io::Result<FileStat> {
    fs::symlink_metadata(path).map(|m| file_stat(path.to_string(), &m))
}

fn file_stat(name: String, m: &Metadata) -> FileStat {
    let t = m.file_type();
    let kind = if t.is_file() {
        FileKind::File
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    FileStat { name, kind, size: m.len(), mode: m.mode() & PERM_MASK, mtime: m.mtime() }
}

/// The entries of a directory (not `.` and `..`), sorted by name.
pub fn list(path: &str) -> io::Result<Vec<FileStat>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        // An entry removed since readdir is skipped.
        if let Ok(meta) = entry.path().symlink_metadata() {
            entries.push(file_stat(entry.file_name().to_string_lossy().into_owned(), &meta));
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Splits a listing into `Entries` replies: at most [`MAX_ENTRIES`] each and well under
/// [`MAX_FRAME`] bytes; always at least one, the last marked `last`.
pub fn batches(id: RequestId, entries: Vec<FileStat>) -> Vec<GuestMsg> {
    // Bytes of one entry in a frame: its name plus at most 32 for the other fields.
    const BUDGET: usize = MAX_FRAME / 2;
    let cost = |s: &FileStat| s.name.len() + 32;
    let mut out: Vec<Vec<FileStat>> = Vec::new();
    let mut batch = Vec::new();
    let mut used = 0;
    for entry in entries {
        let c = cost(&entry);
        if !batch.is_empty() && (batch.len() == MAX_ENTRIES || used + c > BUDGET) {
            out.push(std::mem::take(&mut batch));
            used = 0;
        }
        used += c;
        batch.push(entry);
    }
    out.push(batch);
    let n = out.len();
    out.into_iter().enumerate().map(|(i, entries)| GuestMsg::Entries { id, entries, last: i + 1 == n }).collect()
}

/// `Remove`: a file or symlink, an empty directory, or with `recursive` a whole tree; never `/`.
pub fn remove(path: &str, recursive: bool) -> io::Result<()> {
    if is_root(path) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to remove the root directory"));
    }
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        fs::remove_file(path)
    } else if recursive {
        fs::remove_dir_all(path)
    } else {
        fs::remove_dir(path)
    }
}

/// Whether an absolute path names `/` once `.` and `..` are resolved lexically.
fn is_root(path: &str) -> bool {
    let mut depth = 0usize;
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth = depth.saturating_sub(1),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    depth == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_recognised_in_any_spelling() {
        for p in ["/", "//", "/.", "/..", "/a/..", "/a/b/../../", "/./."] {
            assert!(is_root(p), "{p}");
        }
        for p in ["/a", "/a/b/..", "/.a", "/../a"] {
            assert!(!is_root(p), "{p}");
        }
    }

    fn entry(name: String) -> FileStat {
        FileStat { name, kind: FileKind::File, size: 0, mode: 0o644, mtime: 0 }
    }

    #[test]
    fn empty_listing_is_one_last_batch() {
        assert_eq!(batches(1, vec![]), vec![GuestMsg::Entries { id: 1, entries: vec![], last: true }]);
    }

    #[test]
    fn batches_respect_count_and_size() {
        let many: Vec<_> = (0..2500).map(|i| entry(format!("f{i}"))).collect();
        let b = batches(2, many);
        assert_eq!(b.len(), 3);
        let sizes: Vec<_> = b
            .iter()
            .map(|m| match m {
                GuestMsg::Entries { entries, last, .. } => (entries.len(), *last),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(sizes, [(1024, false), (1024, false), (452, true)]);

        // Long names: 1024 of them would not fit in one frame.
        let long: Vec<_> = (0..1024).map(|i| entry(format!("{i:0>255}"))).collect();
        let b = batches(3, long);
        assert!(b.len() > 1);
        for m in &b {
            assert!(kiln_proto::encode(m).len() <= MAX_FRAME);
        }
    }
}
