//! Bounded reads of files in a folder kiln made but a VMM can write into (its run folder): the
//! last component is never followed if it is a symlink, a FIFO or device is refused without
//! blocking, and no more than asked is read.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens a regular file for reading: a symlink as the last component, a FIFO or a device is
/// refused (without blocking).
pub fn open_regular_nofollow(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a regular file", path.display())));
    }
    Ok(f)
}

/// The first `max` bytes of a regular file (fewer if it is shorter).
pub fn read_head_nofollow(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular_nofollow(path)?.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The last `max` bytes of a regular file (fewer if it is shorter).
pub fn read_tail_nofollow(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut f = open_regular_nofollow(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_size_are_handled() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("signing.key");
        std::fs::write(&secret, b"SECRET").unwrap();
        std::os::unix::fs::symlink(&secret, t.path().join("qemu.stderr")).unwrap();
        assert!(read_head_nofollow(&t.path().join("qemu.stderr"), 100).is_err());
        assert!(read_tail_nofollow(&t.path().join("qemu.stderr"), 100).is_err());
        let log = t.path().join("console.log");
        std::fs::write(&log, b"0123456789").unwrap();
        assert_eq!(read_head_nofollow(&log, 4).unwrap(), b"0123");
        assert_eq!(read_tail_nofollow(&log, 4).unwrap(), b"6789");
        let fifo = std::ffi::CString::new(t.path().join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(read_head_nofollow(&t.path().join("fifo"), 4).is_err());
    }
}
