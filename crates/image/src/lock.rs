//! Advisory file locks, so two kiln processes never build the same artifact at once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{ImageError, Result};

/// An exclusive lock held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(ImageError::io("create lock folder", dir))?;
    }
    OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(ImageError::io("open lock", path))
}

impl FileLock {
    /// Takes the lock at `path` if nobody holds it; `None` if somebody does.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let file = open(path)?;
        // SAFETY: flock on a valid open descriptor; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(FileLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(ImageError::io("lock", path)(err))
    }

    /// Blocks until the lock at `path` is ours.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let file = open(path)?;
        loop {
            // SAFETY: flock on a valid open descriptor; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(ImageError::io("lock", path)(err));
            }
        }
    }
}
