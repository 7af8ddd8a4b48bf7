//! Turning files a VMM wrote into frozen ones, by descriptor: a name the VMM could have swapped
//! for a symlink is resolved once, with `O_NOFOLLOW`, and everything after acts on that file.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Hard-links the regular file at `from` (a symlink, FIFO or device is refused) to the new
/// name `to`, and returns the file opened. The link is made from the descriptor, so what is
/// linked is the file that was checked.
pub fn link_regular(from: &Path, to: &Path) -> io::Result<File> {
    let f = crate::open_regular_nofollow(from)?;
    let src = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("no NUL");
    let dst = CString::new(to.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: two NUL-terminated paths; AT_SYMLINK_FOLLOW resolves the /proc magic link to the
    // open file (and only that: `to` is created, never followed).
    if unsafe { libc::linkat(libc::AT_FDCWD, src.as_ptr(), libc::AT_FDCWD, dst.as_ptr(), libc::AT_SYMLINK_FOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Freezes the regular file at `path` (never followed if it is a symlink): root's when kiln
/// runs as root, mode 0444, both set on the descriptor.
pub fn freeze(path: &Path) -> io::Result<()> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    freeze_file(&f)
}

/// Freezes an open regular file: root's when kiln runs as root, mode 0444.
pub fn freeze_file(f: &File) -> io::Result<()> {
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::fchown(f, Some(0), Some(0))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(0o444))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_planted_symlink_is_neither_linked_nor_frozen() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("shadow");
        std::fs::write(&victim, b"hash").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let planted = t.path().join("overlay.qcow2");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(link_regular(&planted, &t.path().join("base-disk")).is_err());
        assert!(!t.path().join("base-disk").exists());
        assert!(freeze(&planted).is_err());
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_regular_file_is_linked_and_frozen() {
        let t = tempfile::tempdir().unwrap();
        let from = t.path().join("overlay.qcow2");
        std::fs::write(&from, b"QFI").unwrap();
        let f = link_regular(&from, &t.path().join("disk.qcow2")).unwrap();
        freeze_file(&f).unwrap();
        let m = std::fs::metadata(t.path().join("disk.qcow2")).unwrap();
        assert_eq!((m.ino(), m.nlink(), m.mode() & 0o777), (std::fs::metadata(&from).unwrap().ino(), 2, 0o444));
    }
}
