//! The setup cache: the VM right after `--setup`, saved as a checkpoint keyed by the template's
//! snapshot, the setup command and the contents of the `--cache-key` files. Only trusted runs
//! write entries; untrusted runs restore private copy-on-write clones of them, so whatever they
//! change dies with their VM. Setup steps that were given secrets are never cached.

use std::path::PathBuf;

use kiln_core::fork::ForkBase;
use kiln_image::Home;
use kiln_vmm::VmSpec;

use crate::CiError;

/// Largest file a cache key is computed from.
pub const MAX_KEY_FILE: u64 = 64 << 20;

/// The key of a setup: digest of everything that determines it, the repository's identity
/// ([`crate::source::identity`]) first, so that two repositories on one host never share an
/// entry.
pub fn key(repo: &str, snapshot: &str, setup: &str, key_files: &[PathBuf]) -> Result<String, CiError> {
    let mut text = format!("kiln-ci-cache-v2\nrepo {repo}\nsnapshot {snapshot}\nsetup {setup}\n");
    for f in key_files {
        // The file is the pull request's: a symlink (to a host secret) or a FIFO is refused.
        let bytes = kiln_fs::read_head_nofollow(f, MAX_KEY_FILE + 1).map_err(|e| CiError::Invalid(format!("--cache-key {}: {e}; it must be a regular file of the checkout, not a link", f.display())))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(CiError::Invalid(format!("--cache-key {}: larger than {} MiB", f.display(), MAX_KEY_FILE >> 20)));
        }
        text.push_str(&format!("file {} {}\n", f.display(), crate::digest::sha256_hex(&bytes)));
    }
    Ok(crate::digest::sha256_hex(text.as_bytes()))
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
        let k = |repo: &str| key(repo, "snap", "npm ci", std::slice::from_ref(&lock)).unwrap();
        assert_ne!(k("path /a\norigin "), k("path /b\norigin "));
        assert_eq!(k("path /a\norigin "), k("path /a\norigin "));
        let secret = t.path().join("id_ed25519");
        std::fs::write(&secret, b"PRIVATE").unwrap();
        let planted = t.path().join("planted.json");
        std::os::unix::fs::symlink(&secret, &planted).unwrap();
        let e = key("r", "snap", "npm ci", &[planted]).unwrap_err().to_string();
        assert!(e.contains("not a link"), "{e}");
    }
}

