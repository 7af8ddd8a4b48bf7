//! One layer's entries applied onto the tree, each through directory handles.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, FileTimes, Permissions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use kiln_fs::Dir;
use tar::EntryType;

use super::at::{self, Kind};
use super::{Limits, Meter, OciError, Usage};

/// The prefix of a whiteout's name, and the name of the opaque marker.
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// What the parser may read between two entries besides their 512-byte headers: a long name,
/// a long link name and a PAX record of ordinary size.
fn header_budget(limits: &Limits) -> u64 {
    2 * limits.max_path_len as u64 + (68 << 10)
}

/// Owner, mode and time of an entry, as recorded.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

pub(super) fn apply(root: &Path, stream: impl Read, meter: &Meter, limits: &Limits, usage: &mut Usage) -> Result<(), OciError> {
    let root = Dir::open(root).map_err(|e| OciError::Io { what: "open the root", path: root.to_owned(), source: e })?;
    let mut archive = tar::Archive::new(stream);
    let tar_error = |e: io::Error| {
        if meter.tripped.get() {
            OciError::TooManyBytes { max: limits.max_bytes }
        } else if meter.header_tripped.get() {
            OciError::HeaderTooLong { max: header_budget(limits) }
        } else {
            OciError::Tar(e)
        }
    };
    let mut entries = archive.entries().map_err(tar_error)?;
    let mut layer = Layer { root, ours: HashSet::new(), dir_times: Vec::new(), limits };
    loop {
        meter.header_budget.set(Some(header_budget(limits)));
        let next = entries.next();
        meter.header_budget.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(tar_error)?;
        usage.entries += 1;
        if usage.entries > limits.max_entries {
            return Err(OciError::TooManyEntries { max: limits.max_entries });
        }
        let left = limits.max_bytes.saturating_sub(usage.bytes + meter.read.get());
        if entry.size() > left {
            return Err(OciError::TooManyBytes { max: limits.max_bytes });
        }
        layer.entry(&mut entry).map_err(|e| match e {
            OciError::Io { .. } if meter.tripped.get() => OciError::TooManyBytes { max: limits.max_bytes },
            e => e,
        })?;
        // What an entry holds beyond what was used (a folder with data) is read here, so that
        // the parser reads only headers under its budget.
        io::copy(&mut entry, &mut io::sink()).map_err(tar_error)?;
    }
    layer.finish()
}

/// The state of one layer being applied.
struct Layer<'l> {
    root: Dir,
    /// Paths this layer made: whiteouts and opaque markers only remove what lower layers made.
    ours: HashSet<PathBuf>,
    /// Folders' times, set once the layer is done (entries made in a folder change its time).
    dir_times: Vec<(PathBuf, i64)>,
    limits: &'l Limits,
}

impl Layer<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), OciError> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // PAX records for the whole archive (a comment, a default charset): nothing to apply.
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        self.check_len(&raw)?;
        let path = normalise(&raw)?;
        let meta = meta(entry.header(), &path)?;
        if let Some(name) = path.file_name().map(OsStr::as_bytes) {
            if name == OPAQUE {
                return self.opaque(parent_of(&path));
            }
            if let Some(target) = name.strip_prefix(WHITEOUT) {
                return self.whiteout(&path, target);
            }
        }
        match kind {
            EntryType::Directory => self.dir(&path, &meta),
            EntryType::Regular | EntryType::Continuous => self.file(&path, &meta, entry),
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                self.check_len(&target)?;
                self.symlink(&path, &target, &meta)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                self.check_len(&target)?;
                self.hard_link(&path, &target)
            }
            other => Err(OciError::Unsupported { path, kind: kind_name(other) }),
        }
    }

    fn check_len(&self, bytes: &[u8]) -> Result<(), OciError> {
        if bytes.len() > self.limits.max_path_len {
            let start = String::from_utf8_lossy(&bytes[..64.min(bytes.len())]).into_owned();
            return Err(OciError::PathTooLong { start, len: bytes.len(), max: self.limits.max_path_len });
        }
        Ok(())
    }

    /// The folder holding `path` (made, 0755 and root's, where missing), and its last name.
    fn parent(&self, path: &Path) -> Result<(Dir, OsString), OciError> {
        let Some(name) = path.file_name() else {
            return Err(OciError::BadEntry { path: path.to_owned(), why: "only a folder may name the root".into() });
        };
        let parent = parent_of(path);
        let dir = if parent.as_os_str().is_empty() { self.root.try_clone() } else { self.root.create_dirs(parent) };
        Ok((dir.map_err(|e| resolve_error(e, path, "open the folder of"))?, name.to_owned()))
    }

    /// Removes what is at `name`, unless it is a folder and `keep_dir`.
    fn clear(&self, dir: &Dir, path: &Path, name: &OsStr, keep_dir: bool) -> Result<(), OciError> {
        match at::kind(dir, name).map_err(io_error("inspect", path))? {
            None => Ok(()),
            Some(Kind::Dir) if keep_dir => Ok(()),
            Some(Kind::Dir) => self.remove_tree(path),
            Some(Kind::Other) => at::remove(dir, name, Kind::Other).map_err(io_error("replace", path)),
        }
    }

    fn dir(&mut self, path: &Path, meta: &Meta) -> Result<(), OciError> {
        let dir = if path.as_os_str().is_empty() {
            self.root.try_clone().map_err(io_error("open", path))?
        } else {
            let (parent, name) = self.parent(path)?;
            self.clear(&parent, path, &name, true)?;
            parent.create_dirs(Path::new(&name)).map_err(|e| resolve_error(e, path, "create"))?
        };
        let f = File::from(dir.as_fd().try_clone_to_owned().map_err(io_error("open", path))?);
        set_owner_mode(&f, path, meta)?;
        self.dir_times.push((path.to_owned(), meta.mtime));
        self.ours.insert(path.to_owned());
        Ok(())
    }

    fn file(&mut self, path: &Path, meta: &Meta, data: &mut impl Read) -> Result<(), OciError> {
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, path, &name, false)?;
        let mut f = parent.create(Path::new(&name), 0o600).map_err(|e| resolve_error(e, path, "create"))?;
        io::copy(data, &mut f).map_err(io_error("write", path))?;
        set_owner_mode(&f, path, meta)?;
        f.set_times(times(meta.mtime)).map_err(io_error("set the time of", path))?;
        self.ours.insert(path.to_owned());
        Ok(())
    }

    fn symlink(&mut self, path: &Path, target: &[u8], meta: &Meta) -> Result<(), OciError> {
        if target.is_empty() {
            return Err(OciError::BadEntry { path: path.to_owned(), why: "a symlink with an empty target".into() });
        }
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, path, &name, false)?;
        at::symlink(target, &parent, &name).map_err(io_error("create the symlink", path))?;
        at::lchown(&parent, &name, meta.uid, meta.gid).map_err(io_error("set the owner of", path))?;
        at::lutimes(&parent, &name, meta.mtime).map_err(io_error("set the time of", path))?;
        self.ours.insert(path.to_owned());
        Ok(())
    }

    fn hard_link(&mut self, path: &Path, raw_target: &[u8]) -> Result<(), OciError> {
        let shown = String::from_utf8_lossy(raw_target).into_owned();
        let refuse = |why| OciError::HardLink { path: path.to_owned(), target: shown.clone(), why };
        let target = normalise(raw_target)?;
        let Some(target_name) = target.file_name() else { return Err(refuse("the target is the root")) };
        if target == path {
            return Err(refuse("the link names itself"));
        }
        let target_parent = parent_of(&target);
        let from = if target_parent.as_os_str().is_empty() { self.root.try_clone() } else { self.root.open_dir(target_parent) };
        let from = from.map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => refuse("the target lies beneath a symlink"),
            io::ErrorKind::NotFound => refuse("the target is not in the tree"),
            _ => OciError::Io { what: "open the folder of the link target", path: target.clone(), source: e },
        })?;
        match at::kind(&from, target_name).map_err(io_error("inspect", &target))? {
            None => return Err(refuse("the target is not in the tree")),
            Some(Kind::Dir) => return Err(refuse("the target is a folder")),
            Some(Kind::Other) => {}
        }
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, path, &name, false)?;
        at::hard_link(&from, target_name, &parent, &name).map_err(io_error("hard-link", path))?;
        self.ours.insert(path.to_owned());
        Ok(())
    }

    /// `.wh.NAME`: removes `NAME` as lower layers left it.
    fn whiteout(&mut self, path: &Path, target: &[u8]) -> Result<(), OciError> {
        if target.is_empty() || target == b"." || target == b".." {
            return Err(OciError::BadEntry { path: path.to_owned(), why: "a whiteout that names no entry".into() });
        }
        let victim = parent_of(path).join(OsStr::from_bytes(target));
        if self.ours.contains(&victim) {
            return Ok(());
        }
        self.open_existing(parent_of(path), path)?.map_or(Ok(()), |_| self.prune(&victim))
    }

    /// `.wh..wh..opq`: removes from the folder everything lower layers put in it.
    fn opaque(&mut self, dir: &Path) -> Result<(), OciError> {
        let Some(d) = self.open_existing(dir, &dir.join(OsStr::from_bytes(OPAQUE)))? else { return Ok(()) };
        for name in d.entries().map_err(io_error("list", dir))? {
            self.prune(&dir.join(name))?;
        }
        Ok(())
    }

    /// The folder `rel`, or `None` if it is missing; beneath a symlink is an error.
    fn open_existing(&self, rel: &Path, entry: &Path) -> Result<Option<Dir>, OciError> {
        let dir = if rel.as_os_str().is_empty() { self.root.try_clone() } else { self.root.open_dir(rel) };
        match dir {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(resolve_error(e, entry, "open the folder of")),
        }
    }

    /// Removes what lower layers made at and below `rel`; what this layer made stays, with the
    /// folders that hold it.
    fn prune(&self, rel: &Path) -> Result<(), OciError> {
        let parent = self.open_existing(parent_of(rel), rel)?;
        let Some(name) = rel.file_name() else { return Ok(()) };
        let Some(kind) = parent.as_ref().map(|p| at::kind(p, name)).transpose().map_err(io_error("inspect", rel))?.flatten() else {
            return Ok(());
        };
        drop(parent);
        let mut empty = true;
        if kind == Kind::Dir {
            for child in self.list(rel)? {
                self.prune(&rel.join(child))?;
            }
            empty = self.list(rel)?.is_empty();
        }
        if !self.ours.contains(rel) && empty {
            let (parent, name) = self.parent(rel)?;
            at::remove(&parent, &name, kind).map_err(io_error("remove", rel))?;
        }
        Ok(())
    }

    /// Removes `rel` and everything below it (one descriptor open at a time, however deep).
    fn remove_tree(&self, rel: &Path) -> Result<(), OciError> {
        let (parent, name) = self.parent(rel)?;
        let Some(kind) = at::kind(&parent, &name).map_err(io_error("inspect", rel))? else { return Ok(()) };
        drop(parent);
        if kind == Kind::Dir {
            for child in self.list(rel)? {
                self.remove_tree(&rel.join(child))?;
            }
        }
        let (parent, name) = self.parent(rel)?;
        at::remove(&parent, &name, kind).map_err(io_error("remove", rel))
    }

    fn list(&self, rel: &Path) -> Result<Vec<OsString>, OciError> {
        let d = self.root.open_dir(rel).map_err(|e| resolve_error(e, rel, "open"))?;
        Ok(d.entries().map_err(io_error("list", rel))?.collect())
    }

    /// Sets the folders' times, innermost last made first.
    fn finish(self) -> Result<(), OciError> {
        for (rel, mtime) in self.dir_times.iter().rev() {
            let dir = if rel.as_os_str().is_empty() { self.root.try_clone() } else { self.root.open_dir(rel) };
            let dir = match dir {
                Ok(d) => d,
                // Removed or replaced later in the layer.
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::NotADirectory) => continue,
                Err(e) => return Err(io_error("open", rel)(e)),
            };
            let f = File::from(dir.as_fd().try_clone_to_owned().map_err(io_error("open", rel))?);
            f.set_times(times(*mtime)).map_err(io_error("set the time of", rel))?;
        }
        Ok(())
    }
}

/// The path made relative and plain: empty and `.` components dropped (so a leading `/` is
/// too), `..` taking back the component before it; a `..` with nothing to take back climbs out
/// of the root and is refused. The empty path is the root.
fn normalise(raw: &[u8]) -> Result<PathBuf, OciError> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(OciError::Escape { path: String::from_utf8_lossy(raw).into_owned() });
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.iter().map(|c| OsStr::from_bytes(c)).collect())
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

fn meta(h: &tar::Header, path: &Path) -> Result<Meta, OciError> {
    let bad = |what: &str, e: io::Error| OciError::BadEntry { path: path.to_owned(), why: format!("{what}: {e}") };
    let id = |v: u64, what: &str| u32::try_from(v).map_err(|_| OciError::BadEntry { path: path.to_owned(), why: format!("{what} {v} is out of range") });
    let uid = id(h.uid().map_err(|e| bad("uid", e))?, "uid")?;
    let gid = id(h.gid().map_err(|e| bad("gid", e))?, "gid")?;
    let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let mtime = i64::try_from(h.mtime().map_err(|e| bad("mtime", e))?).unwrap_or(i64::MAX);
    Ok(Meta { uid, gid, mode, mtime })
}

/// Owner first, then mode: a change of owner clears setuid and setgid.
fn set_owner_mode(f: &File, path: &Path, meta: &Meta) -> Result<(), OciError> {
    std::os::unix::fs::fchown(f, Some(meta.uid), Some(meta.gid)).map_err(io_error("set the owner of", path))?;
    f.set_permissions(Permissions::from_mode(meta.mode)).map_err(io_error("set the mode of", path))
}

fn times(mtime: i64) -> FileTimes {
    let t = UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
    FileTimes::new().set_accessed(t).set_modified(t)
}

fn kind_name(t: EntryType) -> String {
    match t {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::GNUSparse => "GNU sparse file".into(),
        other => format!("entry of unknown type {:?}", other.as_byte() as char),
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OciError {
    let path = path.to_owned();
    move |source| OciError::Io { what, path, source }
}

/// An error from resolving a path beneath the root: a symlink on the way is named as such.
fn resolve_error(e: io::Error, path: &Path, what: &'static str) -> OciError {
    if e.kind() == io::ErrorKind::PermissionDenied {
        OciError::BeneathSymlink { path: path.to_owned() }
    } else {
        OciError::Io { what, path: path.to_owned(), source: e }
    }
}
