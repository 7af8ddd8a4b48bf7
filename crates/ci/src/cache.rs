//! The setup cache: the VM right after `--setup`, saved as a checkpoint keyed by the template's
//! snapshot, the setup command and the contents of the `--cache-key` files (read here, or
//! digested by a daemon's client and sent as `sha256:` digests). Only trusted runs
//! write entries; untrusted runs restore private copy-on-write clones of them, so whatever they
//! change dies with their VM. Setup steps that were given secrets are never cached.

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
    pub fn is_valid(&self) -> bool {
        ["state", "disk.qcow2", "spec.json", "complete"].iter().all(|f| self.dir.join(f).is_file()) && self.memory.is_file()
    }

    /// Writes the entry from a fork base (atomically: a `complete` marker goes last).
    pub fn write(&self, base: &ForkBase, like: &VmSpec) -> Result<(), CiError> {
        let tmp = self.dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        base.persist(like, &tmp, &tmp.join("memory")).map_err(CiError::io(format!("persist the fork base into {}", tmp.display())))?;
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::rename(&tmp, &self.dir).map_err(CiError::io(format!("rename {} to {}", tmp.display(), self.dir.display())))?;
        std::fs::write(self.dir.join("complete"), b"").map_err(CiError::io(format!("mark {} complete", self.dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

