//! A directory handle: every path is resolved beneath it, no symlink followed.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// No symlink in any component, nothing outside the folder, no /proc magic links.
const RESOLVE: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// A folder opened once, by which files beneath it are opened.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{} contains a NUL byte", p.display())))
}

/// A relative path of normal components only (no `..`, no root, not empty).
fn relative(rel: &Path) -> io::Result<&Path> {
    let ok = rel.components().next().is_some() && rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(rel)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a plain relative path", rel.display())))
    }
}

fn openat2(dir: BorrowedFd<'_>, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let name = cstr(rel)?;
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: mode as u64, resolve: RESOLVE };
    loop {
        // SAFETY: openat2 reads `how` (of the size passed) and the NUL-terminated name; both
        // outlive the call. It returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), name.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "a symlink, or a path leading out of the folder, was refused"))
            }
            Some(libc::ENOSYS) => return Err(io::Error::new(io::ErrorKind::Unsupported, "openat2 is missing (Linux >= 5.6 is required)")),
            _ => return Err(e),
        }
    }
}

impl Dir {
    /// Opens a folder whose path kiln chose (its home, a run folder it made), refusing a
    /// symlink as the last component.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let p = cstr(path)?;
        // SAFETY: a NUL-terminated path; returns a new descriptor or -1.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY) };
        if fd < 0 {
            return Err(with_path(io::Error::last_os_error(), path));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_owned() })
    }

    /// A job's out folder: created (with missing parents) if absent; if it exists it must be
    /// an empty folder, not a symlink, so nothing in it was planted before the job.
    pub fn create_out(path: &Path) -> io::Result<Dir> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is a symlink; name a folder that does not exist yet", path.display())))
            }
            Ok(m) if !m.is_dir() => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists and is not a folder; name a folder that does not exist yet", path.display())))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
                }
                match std::fs::create_dir(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(with_path(e, path)),
                }
            }
            Err(e) => return Err(with_path(e, path)),
        }
        let dir = Dir::open(path)?;
        if dir.entries()?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is not empty; name a new folder (outside the checkout), or remove it first", path.display()),
            ));
        }
        Ok(dir)
    }

    /// A second handle on the same folder.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir { fd: self.fd.try_clone()?, path: self.path.clone() })
    }

    /// The path it was opened by (for messages and reports).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names in the folder.
    pub fn entries(&self) -> io::Result<impl Iterator<Item = std::ffi::OsString>> {
        // Listing through /proc/self/fd names this very descriptor, not a path that could change.
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).map_err(|e| with_path(e, &self.path))?;
        Ok(listing.flatten().map(|e| e.file_name()))
    }

    /// An existing folder beneath this one.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Dir> {
        let fd = openat2(self.fd.as_fd(), relative(rel)?, libc::O_DIRECTORY | libc::O_RDONLY, 0).map_err(|e| with_path(e, &self.path.join(rel)))?;
        Ok(Dir { fd, path: self.path.join(rel) })
    }

    /// A folder beneath this one, with missing components created (mode 0755), none of them
    /// a symlink.
    pub fn create_dirs(&self, rel: &Path) -> io::Result<Dir> {
        let mut dir = self.try_clone()?;
        for c in relative(rel)?.components() {
            let Component::Normal(name) = c else { continue };
            let n = cstr(Path::new(name))?;
            // SAFETY: a directory descriptor we own and a NUL-terminated single name.
            let r = unsafe { libc::mkdirat(dir.fd.as_raw_fd(), n.as_ptr(), 0o755) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(with_path(e, &dir.path.join(name)));
                }
            }
            dir = dir.open_dir(Path::new(name))?;
        }
        Ok(dir)
    }

    /// A new file beneath this folder (its parent must exist): `O_EXCL`, so nothing that was
    /// there, link or file, is written through.
    pub fn create(&self, rel: &Path, mode: u32) -> io::Result<File> {
        let fd = openat2(self.fd.as_fd(), relative(rel)?, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode).map_err(|e| with_path(e, &self.path.join(rel)))?;
        Ok(File::from(fd))
    }

    /// Writes a new file whole (0644).
    pub fn write_new(&self, rel: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
        let mut f = self.create(rel, 0o644)?;
        f.write_all(bytes).map_err(|e| with_path(e, &self.path.join(rel)))?;
        Ok(self.path.join(rel))
    }

    /// Replaces `name` (a file directly in this folder) whole: a new temporary file, renamed
    /// over it. A symlink that was there is replaced, never followed.
    pub fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        if name.contains('/') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a file name")));
        }
        let tmp = format!(".{name}.tmp{}", std::process::id());
        let _ = self.remove_file(&tmp);
        self.write_new(Path::new(&tmp), bytes)?;
        let (from, to) = (cstr(Path::new(&tmp))?, cstr(Path::new(name))?);
        // SAFETY: one directory descriptor we own, two NUL-terminated single names.
        let r = unsafe { libc::renameat(self.fd.as_raw_fd(), from.as_ptr(), self.fd.as_raw_fd(), to.as_ptr()) };
        if r != 0 {
            let e = io::Error::last_os_error();
            let _ = self.remove_file(&tmp);
            return Err(with_path(e, &self.path.join(name)));
        }
        Ok(self.path.join(name))
    }

    /// Removes a file directly in this folder (a symlink is removed, not followed).
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        let n = cstr(Path::new(name))?;
        // SAFETY: a directory descriptor we own and a NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), n.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Opens a regular file beneath this folder for reading: not a symlink, FIFO or device.
    pub fn open_regular(&self, rel: &Path) -> io::Result<File> {
        let fd = openat2(self.fd.as_fd(), relative(rel)?, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0).map_err(|e| with_path(e, &self.path.join(rel)))?;
        let f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a regular file", self.path.join(rel).display())));
        }
        Ok(f)
    }

    /// Reads at most `max` bytes of a regular file beneath this folder; more is an error.
    pub fn read_bounded(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        let f = self.open_regular(rel)?;
        let mut bytes = Vec::new();
        f.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is larger than {max} bytes", self.path.join(rel).display())));
        }
        Ok(bytes)
    }
}

impl AsFd for Dir {
    /// The folder's descriptor, for `*at` calls on single names in it (a caller that resolves
    /// a name itself must not follow a symlink: use `AT_SYMLINK_NOFOLLOW` or its equivalent).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let d = Dir::open(&out).unwrap();
        symlink(outside.join("victim"), out.join("report.json")).unwrap();
        symlink(&outside, out.join("cell")).unwrap();
        assert!(d.write_new(Path::new("report.json"), b"x").is_err());
        assert!(d.create_dirs(Path::new("cell/artifacts")).is_err());
        assert!(d.write_new(Path::new("cell/build.log"), b"x").is_err());
        assert!(d.read_bounded(Path::new("report.json"), 100).is_err());
        assert!(d.open_dir(Path::new("../outside")).is_err());
        // Replacing swaps the link itself for a file.
        d.replace("report.json", b"new").unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read(out.join("report.json")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(out.join("report.json")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn files_and_folders_are_made_beneath() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::create_out(&t.path().join("a/b/out")).unwrap();
        let cell = d.create_dirs(Path::new("V=1/artifacts/dist")).unwrap();
        cell.write_new(Path::new("hello"), b"hi").unwrap();
        assert!(cell.write_new(Path::new("hello"), b"again").is_err(), "O_EXCL");
        assert_eq!(d.read_bounded(Path::new("V=1/artifacts/dist/hello"), 2).unwrap(), b"hi");
        assert!(d.read_bounded(Path::new("V=1/artifacts/dist/hello"), 1).is_err());
        assert!(d.create_dirs(Path::new("/etc")).is_err() && d.create_dirs(Path::new("x/../..")).is_err());
    }

    #[test]
    fn the_out_folder_must_be_new_or_empty() {
        let t = tempfile::tempdir().unwrap();
        let full = t.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("planted"), b"").unwrap();
        let e = Dir::create_out(&full).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        symlink(t.path(), t.path().join("link")).unwrap();
        assert!(Dir::create_out(&t.path().join("link")).unwrap_err().to_string().contains("symlink"));
        std::fs::create_dir(t.path().join("empty")).unwrap();
        assert!(Dir::create_out(&t.path().join("empty")).is_ok());
    }

    #[test]
    fn fifos_do_not_block_and_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = cstr(&t.path().join("fifo")).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o600) }, 0);
        let d = Dir::open(t.path()).unwrap();
        let e = d.read_bounded(Path::new("fifo"), 10).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
