//! Copying a sparse file (guest RAM) by its data extents only: holes stay holes, so a 256 MiB
//! memory file of which the guest touched half is copied in half the time.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

fn seek(fd: i32, off: i64, whence: i32) -> io::Result<Option<i64>> {
    // SAFETY: lseek on a valid descriptor; no memory is passed.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r >= 0 {
        return Ok(Some(r));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None) // no more data after `off`
    } else {
        Err(e)
    }
}

/// Copies `from` to a new file `to` with the same length, writing only data extents.
pub fn copy(from: &Path, to: &Path) -> io::Result<u64> {
    let src = File::open(from)?;
    let len = src.metadata()?.len();
    let dst = OpenOptions::new().write(true).create_new(true).open(to)?;
    dst.set_len(len)?;
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut copied = 0u64;
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let Some(data) = seek(sfd, pos, libc::SEEK_DATA)? else { break };
        let hole = seek(sfd, data, libc::SEEK_HOLE)?.unwrap_or(len as i64);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = (hole - off_in) as usize;
            // SAFETY: both descriptors are valid and the offsets point at our own i64s.
            let n = unsafe { libc::copy_file_range(sfd, &mut off_in, dfd, &mut off_out, want, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) {
                    // Across filesystems (tmpfs to disk): plain reads and writes of the extent.
                    copied += copy_range(&src, &dst, off_in as u64, (hole - off_in) as u64)?;
                    break;
                }
                return Err(e);
            }
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
        pos = hole;
    }
    Ok(copied)
}

fn copy_range(src: &File, dst: &File, mut off: u64, mut len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let total = len;
    while len > 0 {
        let want = len.min(buf.len() as u64) as usize;
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
        len -= n as u64;
    }
    Ok(total - len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn keeps_data_and_length() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let mut f = File::create(&a).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"head").unwrap();
        drop(f);
        let b = t.path().join("b");
        let n = copy(&a, &b).unwrap();
        assert!(n < 8 << 20, "copied {n}");
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(copy(&a, &b).is_err(), "refuses to overwrite");
        // Across filesystems (the tmpfs and the disk).
        if std::path::Path::new("/dev/shm").is_dir() {
            let c = std::path::PathBuf::from(format!("/dev/shm/kiln-sparse-test-{}", std::process::id()));
            let _ = std::fs::remove_file(&c);
            copy(&a, &c).unwrap();
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
            std::fs::remove_file(&c).unwrap();
        }
    }
}
