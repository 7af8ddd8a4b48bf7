//! Just enough of the qcow2 header to confine a VMM: the virtual size (which bounds how large an
//! overlay can grow) and the chain of backing files (which the VMM must be able to read).

use std::io::Read;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Longest backing-file name qcow2 allows.
const MAX_BACKING_NAME: u32 = 1023;
/// Deepest chain followed (forks of forks add one level each).
pub const MAX_CHAIN: usize = 64;

/// What a qcow2 header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The disk's size as the guest sees it.
    pub virtual_size: u64,
    /// The backing file, as recorded (absolute, or relative to the image's folder).
    pub backing: Option<PathBuf>,
}

/// Reads the header of a qcow2 image; `None` if `path` is not a qcow2 image (e.g. a raw one).
pub fn header(path: &Path) -> std::io::Result<Option<Header>> {
    // The overlay sits in a run folder the VMM can write: never follow what it planted there.
    let mut f = kiln_fs::open_regular_nofollow(path)?;
    let mut h = [0u8; 32];
    if f.read(&mut h)? < 32 || &h[..4] != MAGIC {
        return Ok(None);
    }
    let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let be32 = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let (offset, len, virtual_size) = (be64(8), be32(16), be64(24));
    if offset == 0 || len == 0 {
        return Ok(Some(Header { virtual_size, backing: None }));
    }
    if len > MAX_BACKING_NAME {
        return Err(std::io::Error::other(format!("{}: backing file name of {len} bytes", path.display())));
    }
    let mut name = vec![0u8; len as usize];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))?;
    f.read_exact(&mut name)?;
    let name = PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name));
    let backing = if name.is_absolute() { name } else { path.parent().unwrap_or(Path::new("/")).join(name) };
    Ok(Some(Header { virtual_size, backing: Some(backing) }))
}

/// The backing files under `disk`, nearest first (the last one is usually a raw image).
pub fn backing_chain(disk: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut chain = Vec::new();
    let mut at = disk.to_owned();
    while let Some(Header { backing: Some(next), .. }) = header(&at)? {
        if chain.len() == MAX_CHAIN || chain.contains(&next) {
            return Err(std::io::Error::other(format!("{}: backing chain deeper than {MAX_CHAIN} or circular", disk.display())));
        }
        chain.push(next.clone());
        at = next;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(path: &Path, size: u64, backing: Option<&str>) {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        if let Some(b) = backing {
            h[8..16].copy_from_slice(&128u64.to_be_bytes());
            h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
            h[128..128 + b.len()].copy_from_slice(b.as_bytes());
        }
        std::fs::write(path, h).unwrap();
    }

    #[test]
    fn follows_the_chain_to_a_raw_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("root.raw"), vec![0u8; 4096]).unwrap();
        image(&d.path().join("mid.qcow2"), 64 << 20, Some("root.raw"));
        let mid = d.path().join("mid.qcow2").display().to_string();
        image(&d.path().join("top.qcow2"), 64 << 20, Some(&mid));
        let chain = backing_chain(&d.path().join("top.qcow2")).unwrap();
        assert_eq!(chain, vec![d.path().join("mid.qcow2"), d.path().join("root.raw")]);
        assert_eq!(header(&d.path().join("top.qcow2")).unwrap().unwrap().virtual_size, 64 << 20);
        assert_eq!(header(&d.path().join("root.raw")).unwrap(), None);
    }

    #[test]
    fn a_loop_is_refused() {
        let d = tempfile::tempdir().unwrap();
        image(&d.path().join("a"), 1, Some("b"));
        image(&d.path().join("b"), 1, Some("a"));
        assert!(backing_chain(&d.path().join("a")).is_err());
    }
}
