//! The setup cache: the VM right after `--setup`, saved as a checkpoint keyed by the template's
//! snapshot, the setup command and the contents of the `--cache-key` files (read here, or
//! digested by a daemon's client and sent as `sha256:` digests). Only trusted runs
//! write entries; untrusted runs restore private copy-on-write clones of them, so whatever they
//! change dies with their VM. Setup steps that were given secrets are never cached.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_core::fork::ForkBase;
use kiln_image::Home;
use kiln_vmm::VmSpec;

use crate::CiError;

/// Largest file a cache key is computed from.
pub const MAX_KEY_FILE: u64 = 64 << 20;

/// The key of a setup: digest of everything that determines it, the repository's identity
/// ([`crate::source::identity`]) first, so that two repositories on one host never share an
/// entry. `key_files` are read here; `key_digests` (`sha256:<hex>`, see [`file_digest`]) are
/// the digests of files a client read.
pub fn key(repo: &str, snapshot: &str, setup: &str, key_files: &[PathBuf], key_digests: &[String]) -> Result<String, CiError> {
    let mut text = format!("kiln-ci-cache-v2\nrepo {repo}\nsnapshot {snapshot}\nsetup {setup}\n");
    for f in key_files {
        text.push_str(&format!("file {} {}\n", f.display(), key_file_hex(f)?));
    }
    for d in key_digests {
        if !valid_digest(d) {
            return Err(CiError::Invalid(format!("cache key digest {d:?}: expected sha256: and 64 lowercase hex digits")));
        }
        text.push_str(&format!("digest {d}\n"));
    }
    Ok(crate::digest::sha256_hex(text.as_bytes()))
}

/// The sha256 (hex) of a cache-key file's contents.
fn key_file_hex(f: &Path) -> Result<String, CiError> {
    // The file is the pull request's: a symlink (to a host secret) or a FIFO is refused.
    let bytes = kiln_fs::read_head_nofollow(f, MAX_KEY_FILE + 1)
        .map_err(|e| CiError::Invalid(format!("--cache-key {}: {e}; it must be a regular file of the checkout, not a link", f.display())))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(CiError::Invalid(format!("--cache-key {}: larger than {} MiB", f.display(), MAX_KEY_FILE >> 20)));
    }
    Ok(crate::digest::sha256_hex(&bytes))
}

/// A cache-key file's digest as a client sends it to the daemon: `sha256:<hex>` (the same
/// rules as a key file read by a local run: a regular file, not a link, at most 64 MiB).
pub fn file_digest(f: &Path) -> Result<String, CiError> {
    Ok(format!("sha256:{}", key_file_hex(f)?))
}

/// Whether `d` is `sha256:` and 64 lowercase hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The files of an entry, each recorded with its sha256 and size when written.
const ENTRY_FILES: [&str; 4] = ["state", "disk.qcow2", "memory", "spec.json"];
/// Where they are recorded.
const DIGESTS: &str = "digests.json";

/// What identifies a file's content without reading it: inode, size, mtime and ctime.
type Fingerprint = (u64, u64, i64, i64, i64, i64);

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One cache entry's location.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Folder: `KILN_HOME/ci-cache/<key>` (state, disk.qcow2, spec.json).
    pub dir: PathBuf,
    /// RAM file, in the entry's folder (on disk: it outlives reboots, and no sweep of the
    /// shared tmpfs folder can mistake it for an orphan).
    pub memory: PathBuf,
    key: String,
}

impl Entry {
    /// The entry for `key`.
    pub fn new(home: &Home, key: &str) -> Entry {
        let dir = home.root().join("ci-cache").join(key);
        Entry { memory: dir.join("memory"), dir, key: key.to_owned() }
    }

    /// Short form of the key.
    pub fn key_short(&self) -> &str {
        &self.key[..12]
    }

    /// Whether a complete entry is there (its RAM file too: the tmpfs does not survive reboots).
    pub fn is_complete(&self) -> bool {
        self.dir.join("complete").is_file()
    }

    /// Checks the entry before it is restored: every file is a regular file (not a link),
    /// frozen (no write bits; root's when kiln runs as root), of the size and sha256 recorded
    /// when it was written. Hashes are skipped for a file whose fingerprint (inode, size,
    /// mtime, ctime: a chmod or write changes them) matches the last verification.
    pub fn verify(&self) -> Result<(), String> {
        if !self.is_complete() {
            return Err("incomplete".into());
        }
        let record = kiln_fs::read_head_nofollow(&self.dir.join(DIGESTS), 64 << 10).map_err(|e| format!("{DIGESTS}: {e}"))?;
        let record: Vec<(String, String, u64)> = serde_json::from_slice(&record).map_err(|e| format!("{DIGESTS}: {e}"))?;
        let verified_path = self.dir.join("verified.json");
        let verified: Vec<(String, Fingerprint)> =
            kiln_fs::read_head_nofollow(&verified_path, 64 << 10).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let mut now = Vec::new();
        for name in ENTRY_FILES {
            let Some((_, sha, size)) = record.iter().find(|(n, _, _)| n == name) else { return Err(format!("{DIGESTS} lists no {name}")) };
            let path = self.file(name);
            let m = std::fs::symlink_metadata(&path).map_err(|e| format!("{name}: {e}"))?;
            if !m.is_file() {
                return Err(format!("{name} is not a regular file"));
            }
            if m.mode() & 0o222 != 0 || (running_as_root() && m.uid() != 0) {
                return Err(format!("{name} is not frozen (mode {:o}, uid {})", m.mode() & 0o7777, m.uid()));
            }
            if m.len() != *size {
                return Err(format!("{name} is {} bytes, {size} were written", m.len()));
            }
            let fp = (m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
            if !verified.iter().any(|(n, f)| n == name && *f == fp) {
                let have = kiln_image::store::Digest::of_file(&path).map_err(|e| e.to_string())?;
                if have.hex() != sha {
                    return Err(format!("{name} fails its checksum"));
                }
            }
            now.push((name.to_owned(), fp));
        }
        if now != verified {
            let _ = kiln_image::atomic::write_atomic(&verified_path, &serde_json::to_vec(&now).expect("json"));
        }
        Ok(())
    }

    fn file(&self, name: &str) -> PathBuf {
        if name == "memory" {
            self.memory.clone()
        } else {
            self.dir.join(name)
        }
    }

    /// Writes the entry from a fork base (atomically: the digests of its files, then a
    /// `complete` marker, go last).
    pub fn write(&self, base: &ForkBase, like: &VmSpec) -> Result<(), CiError> {
        let tmp = self.dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        base.persist(like, &tmp, &tmp.join("memory")).map_err(CiError::io(format!("persist the fork base into {}", tmp.display())))?;
        kiln_fs::freeze(&tmp.join("spec.json")).map_err(CiError::io(format!("freeze {}/spec.json", tmp.display())))?;
        let mut record = Vec::new();
        for name in ENTRY_FILES {
            let path = tmp.join(name);
            let digest = kiln_image::store::Digest::of_file(&path).map_err(|e| CiError::Sandbox(e.into()))?;
            let size = std::fs::metadata(&path).map_err(CiError::io(format!("stat {}", path.display())))?.len();
            record.push((name.to_owned(), digest.hex().to_owned(), size));
        }
        std::fs::write(tmp.join(DIGESTS), serde_json::to_vec(&record).expect("json")).map_err(CiError::io(format!("write {}/{DIGESTS}", tmp.display())))?;
        kiln_fs::freeze(&tmp.join(DIGESTS)).map_err(CiError::io(format!("freeze {}/{DIGESTS}", tmp.display())))?;
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::rename(&tmp, &self.dir).map_err(CiError::io(format!("rename {} to {}", tmp.display(), self.dir.display())))?;
        std::fs::write(self.dir.join("complete"), b"").map_err(CiError::io(format!("mark {} complete", self.dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry made by hand as `write` makes one: frozen files and their digests.
    fn entry(t: &std::path::Path) -> Entry {
        let home = Home::at(t, t.join("run"));
        let e = Entry::new(&home, &"k".repeat(64));
        std::fs::create_dir_all(&e.dir).unwrap();
        let mut record = Vec::new();
        for name in ENTRY_FILES {
            let bytes = format!("{name} bytes");
            std::fs::write(e.file(name), &bytes).unwrap();
            kiln_fs::freeze(&e.file(name)).unwrap();
            record.push((name.to_owned(), crate::digest::sha256_hex(bytes.as_bytes()), bytes.len() as u64));
        }
        std::fs::write(e.dir.join(DIGESTS), serde_json::to_vec(&record).unwrap()).unwrap();
        std::fs::write(e.dir.join("complete"), b"").unwrap();
        e
    }

    #[test]
    fn entries_are_verified_before_a_restore() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let e = entry(t.path());
        e.verify().unwrap();
        e.verify().unwrap(); // from the fingerprints
        // Same size, other bytes, frozen again: the ctime moved, so it is hashed again.
        let state = e.file("state");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(e.verify().unwrap_err().contains("not frozen"));
        std::fs::write(&state, "STATE BYTES").unwrap();
        kiln_fs::freeze(&state).unwrap();
        assert!(e.verify().unwrap_err().contains("fails its checksum"));
        // A link where a file was.
        let e = entry(&t.path().join("b"));
        std::fs::remove_file(e.file("spec.json")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", e.file("spec.json")).unwrap();
        assert!(e.verify().unwrap_err().contains("not a regular file"));
        let e = entry(&t.path().join("c"));
        std::fs::remove_file(e.dir.join("complete")).unwrap();
        assert!(e.verify().is_err());
    }

    #[test]
    fn keys_name_the_repository_and_refuse_links() {
        let t = tempfile::tempdir().unwrap();
        let lock = t.path().join("package-lock.json");
        std::fs::write(&lock, b"{}").unwrap();
        let k = |repo: &str| key(repo, "snap", "npm ci", std::slice::from_ref(&lock), &[]).unwrap();
        assert_ne!(k("path /a\norigin "), k("path /b\norigin "));
        assert_eq!(k("path /a\norigin "), k("path /a\norigin "));
        let secret = t.path().join("id_ed25519");
        std::fs::write(&secret, b"PRIVATE").unwrap();
        let planted = t.path().join("planted.json");
        std::os::unix::fs::symlink(&secret, &planted).unwrap();
        let e = key("r", "snap", "npm ci", std::slice::from_ref(&planted), &[]).unwrap_err().to_string();
        assert!(e.contains("not a link"), "{e}");
        assert!(file_digest(&planted).unwrap_err().to_string().contains("not a link"));
    }

    #[test]
    fn digests_from_a_client_key_the_cache_too() {
        let t = tempfile::tempdir().unwrap();
        let lock = t.path().join("Cargo.lock");
        std::fs::write(&lock, b"v1").unwrap();
        let d = file_digest(&lock).unwrap();
        assert!(valid_digest(&d), "{d}");
        let k = |ds: &[String]| key("r", "snap", "make", &[], ds).unwrap();
        assert_eq!(k(std::slice::from_ref(&d)), k(std::slice::from_ref(&d)));
        assert_ne!(k(std::slice::from_ref(&d)), k(&[]));
        std::fs::write(&lock, b"v2").unwrap();
        assert_ne!(k(&[file_digest(&lock).unwrap()]), k(&[d]));
        for bad in ["/etc/passwd", "sha256:xyz", "md5:00", &format!("sha256:{}", "A".repeat(64))] {
            assert!(!valid_digest(bad), "{bad}");
            assert!(key("r", "s", "m", &[], &[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}

