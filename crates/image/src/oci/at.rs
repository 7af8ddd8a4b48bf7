//! `*at` calls on a single name in a folder opened by [`kiln_fs::Dir`]: none follows a symlink.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;

use kiln_fs::Dir;

/// What a name in a folder is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    /// A file, symlink or anything else that `unlinkat` removes.
    Other,
}

fn cname(name: &OsStr) -> io::Result<CString> {
    if name.is_empty() || name.as_bytes().contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a single name")));
    }
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name contains a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`: `None` if the name does not exist.
pub(crate) fn kind(dir: &Dir, name: &OsStr) -> io::Result<Option<Kind>> {
    let n = cname(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a directory descriptor that `dir` owns, a NUL-terminated name and a buffer of the
    // size fstatat writes.
    let r = unsafe { libc::fstatat(dir.as_fd().as_raw_fd(), n.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
    }
    // SAFETY: fstatat returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    Ok(Some(if st.st_mode & libc::S_IFMT == libc::S_IFDIR { Kind::Dir } else { Kind::Other }))
}

/// `unlinkat`, with `AT_REMOVEDIR` for an (empty) folder.
pub(crate) fn remove(dir: &Dir, name: &OsStr, kind: Kind) -> io::Result<()> {
    let n = cname(name)?;
    let flags = if kind == Kind::Dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: a directory descriptor that `dir` owns and a NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), n.as_ptr(), flags) })
}

/// `symlinkat`: a new symlink `name` holding `target` (stored as is, never resolved).
pub(crate) fn symlink(target: &[u8], dir: &Dir, name: &OsStr) -> io::Result<()> {
    let n = cname(name)?;
    let t = CString::new(target).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a symlink target contains a NUL byte"))?;
    // SAFETY: two NUL-terminated strings and a directory descriptor that `dir` owns.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_fd().as_raw_fd(), n.as_ptr()) })
}

/// `linkat` without `AT_SYMLINK_FOLLOW`: a symlink as the target is linked itself, not followed.
pub(crate) fn hard_link(from: &Dir, from_name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
    let (f, t) = (cname(from_name)?, cname(to_name)?);
    // SAFETY: two directory descriptors owned by `from` and `to`, two NUL-terminated names.
    check(unsafe { libc::linkat(from.as_fd().as_raw_fd(), f.as_ptr(), to.as_fd().as_raw_fd(), t.as_ptr(), 0) })
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`: the owner of a symlink itself.
pub(crate) fn lchown(dir: &Dir, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let n = cname(name)?;
    // SAFETY: a directory descriptor that `dir` owns and a NUL-terminated name.
    check(unsafe { libc::fchownat(dir.as_fd().as_raw_fd(), n.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)`: access and modification time of a symlink itself.
pub(crate) fn lutimes(dir: &Dir, name: &OsStr, secs: i64) -> io::Result<()> {
    let n = cname(name)?;
    let t = libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: 0 };
    let times = [t, t];
    // SAFETY: a directory descriptor that `dir` owns, a NUL-terminated name and an array of the
    // two timespecs utimensat reads.
    check(unsafe { libc::utimensat(dir.as_fd().as_raw_fd(), n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}
