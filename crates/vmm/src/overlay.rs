//! Writing an empty qcow2 overlay over a backing file, without spawning `qemu-img` (which
//! costs a process start on every create). The image is what `qemu-img create -f qcow2 -F FMT
//! -b BACKING` makes: version 3, 64 KiB clusters, 16-bit refcounts, the backing file's format in
//! a header extension, and four clusters (header, refcount table, refcount block, L1 table)
//! whose refcounts are 1; every L1 entry is empty, so all reads go to the backing file.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Header length (version 3, with the compression-type field, padded to 8).
const HEADER_LEN: u32 = 112;
/// The backing file format header extension.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// The bytes of an overlay of `virtual_size` bytes over `backing` (an absolute path) of format
/// `format` ("raw" or "qcow2").
pub fn overlay_bytes(backing: &Path, format: &str, virtual_size: u64) -> std::io::Result<Vec<u8>> {
    let name = backing.as_os_str().as_bytes();
    if !backing.is_absolute() || name.is_empty() || name.len() > 1023 || name.contains(&0) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("backing file {}: an absolute path of at most 1023 bytes", backing.display())));
    }
    if !matches!(format, "raw" | "qcow2") {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("backing format {format:?}")));
    }
    // Each L2 table (one cluster of 8-byte entries) maps CLUSTER/8 clusters.
    let per_l2 = CLUSTER * (CLUSTER / 8);
    let l1_size = virtual_size.div_ceil(per_l2).max(1);
    if l1_size * 8 > CLUSTER {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("virtual size {virtual_size} is too large for one L1 cluster")));
    }
    let (reftable, refblock, l1) = (CLUSTER, 2 * CLUSTER, 3 * CLUSTER);
    let mut ext = Vec::new();
    ext.extend(EXT_BACKING_FORMAT.to_be_bytes());
    ext.extend((format.len() as u32).to_be_bytes());
    ext.extend(format.as_bytes());
    ext.resize(ext.len().next_multiple_of(8), 0);
    ext.extend([0u8; 8]); // end of extensions
    let backing_offset = u64::from(HEADER_LEN) + ext.len() as u64;
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend(b"QFI\xfb");
    h.extend(3u32.to_be_bytes()); // version
    h.extend(backing_offset.to_be_bytes());
    h.extend((name.len() as u32).to_be_bytes());
    h.extend(CLUSTER_BITS.to_be_bytes());
    h.extend(virtual_size.to_be_bytes());
    h.extend(0u32.to_be_bytes()); // no encryption
    h.extend((l1_size as u32).to_be_bytes());
    h.extend(l1.to_be_bytes());
    h.extend(reftable.to_be_bytes());
    h.extend(1u32.to_be_bytes()); // refcount table clusters
    h.extend(0u32.to_be_bytes()); // snapshots
    h.extend(0u64.to_be_bytes()); // snapshots offset
    h.extend(0u64.to_be_bytes()); // incompatible features
    h.extend(0u64.to_be_bytes()); // compatible features
    h.extend(0u64.to_be_bytes()); // autoclear features
    h.extend(4u32.to_be_bytes()); // refcount order: 16 bits
    h.extend(HEADER_LEN.to_be_bytes());
    h.push(0); // compression type: zlib
    h.resize(HEADER_LEN as usize, 0);
    let mut img = vec![0u8; (l1 + l1_size * 8) as usize];
    img[..h.len()].copy_from_slice(&h);
    img[h.len()..h.len() + ext.len()].copy_from_slice(&ext);
    img[backing_offset as usize..backing_offset as usize + name.len()].copy_from_slice(name);
    img[reftable as usize..reftable as usize + 8].copy_from_slice(&refblock.to_be_bytes());
    for i in 0..4 {
        let at = refblock as usize + 2 * i;
        img[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(img)
}

/// Creates the overlay file `path` (it must not exist; mode 0644) over `backing`.
pub fn create_overlay(path: &Path, backing: &Path, format: &str, virtual_size: u64) -> std::io::Result<()> {
    let bytes = overlay_bytes(backing, format, virtual_size)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(path)?;
    f.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_refusals() {
        let b = Path::new("/images/root.img");
        let img = overlay_bytes(b, "raw", 64 << 20).unwrap();
        assert_eq!(img.len(), 3 * 65536 + 8);
        assert_eq!(overlay_bytes(b, "raw", 2 << 30).unwrap().len(), 3 * 65536 + 4 * 8);
        let h = {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("o.qcow2");
            create_overlay(&p, b, "raw", 64 << 20).unwrap();
            assert!(create_overlay(&p, b, "raw", 64 << 20).is_err(), "never over an existing file");
            crate::qcow2::header(&p).unwrap().unwrap()
        };
        assert_eq!((h.virtual_size, h.backing.as_deref()), (64 << 20, Some(b)));
        assert!(overlay_bytes(Path::new("relative.img"), "raw", 1).is_err());
        assert!(overlay_bytes(b, "vmdk", 1).is_err());
    }

    /// What `qemu-img` itself says of the image: `check` finds nothing, `info` reports the same
    /// as for the image `qemu-img create` makes, and the two read the same bytes. Over a raw
    /// and over a qcow2 backing file, for a small and a multi-L2 size.
    #[test]
    #[ignore = "needs QEMU: run `make test`, or `cargo test -- --include-ignored` once `make deps` installed it"]
    fn qemu_img_agrees() {
        let d = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let o = std::process::Command::new("qemu-img").args(args).output().unwrap();
            assert!(o.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let raw = d.path().join("root.raw");
        std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
        std::fs::OpenOptions::new().write(true).open(&raw).unwrap().set_len(3 << 30).unwrap();
        let mid = d.path().join("mid.qcow2");
        run(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", raw.to_str().unwrap(), mid.to_str().unwrap()]);
        for (backing, format, size) in [(&raw, "raw", 3u64 << 30), (&mid, "qcow2", 3 << 30), (&raw, "raw", 64 << 20)] {
            let ours = d.path().join(format!("ours-{format}-{size}.qcow2"));
            let theirs = d.path().join(format!("theirs-{format}-{size}.qcow2"));
            create_overlay(&ours, backing, format, size).unwrap();
            run(&["create", "-q", "-f", "qcow2", "-F", format, "-b", backing.to_str().unwrap(), theirs.to_str().unwrap(), &size.to_string()]);
            run(&["check", "-q", ours.to_str().unwrap()]);
            let info = |p: &Path| {
                let v: serde_json::Value = serde_json::from_str(&run(&["info", "--output=json", p.to_str().unwrap()])).unwrap();
                let spec = &v["format-specific"]["data"];
                (v["virtual-size"].clone(), v["backing-filename"].clone(), v["backing-filename-format"].clone(), v["cluster-size"].clone(), spec["compat"].clone(), spec["refcount-bits"].clone(), spec["lazy-refcounts"].clone(), spec["compression-type"].clone())
            };
            assert_eq!(info(&ours), info(&theirs), "{format} {size}");
            run(&["compare", "-q", ours.to_str().unwrap(), theirs.to_str().unwrap()]);
            // Writable: qemu-io writes a cluster, and it reads back.
            let io = |cmd: &str| std::process::Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd, ours.to_str().unwrap()]).output().map(|o| o.status.success());
            if io("write -P 0x5a 65536 65536").unwrap_or(false) {
                assert!(io("read -P 0x5a 65536 65536").unwrap());
                run(&["check", "-q", ours.to_str().unwrap()]);
            }
        }
    }
}

