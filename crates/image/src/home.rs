//! Where kiln keeps things: `KILN_HOME` (artifacts, templates, state) and `KILN_RUN_DIR`
//! (per-VM run folders with sockets, which must have short paths, and disk overlays).

use std::path::{Path, PathBuf};

/// The folders kiln uses on this host.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
    run: PathBuf,
    shm: PathBuf,
}

impl Home {
    /// From the environment: `KILN_HOME`, else `$XDG_DATA_HOME/kiln`, else
    /// `$HOME/.local/share/kiln`; run folders in `KILN_RUN_DIR`, else `<home>/run`. Run
    /// folders hold the VM's disk overlay, so they belong on a disk, not in a tmpfs.
    pub fn from_env() -> Home {
        let root = if let Some(h) = std::env::var_os("KILN_HOME") {
            PathBuf::from(h)
        } else if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
            PathBuf::from(x).join("kiln")
        } else {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".local/share/kiln")
        };
        let run = std::env::var_os("KILN_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("run"));
        let shm = std::env::var_os("KILN_SHM_DIR").map(PathBuf::from).unwrap_or_else(|| default_shm(&root));
        Home { root, run, shm }
    }

    /// Explicit folders (tests).
    pub fn at(root: impl Into<PathBuf>, run: impl Into<PathBuf>) -> Home {
        let root = root.into();
        let shm = default_shm(&root);
        Home { root, run: run.into(), shm }
    }

    /// The same home with RAM files in `shm`.
    pub fn with_shm(mut self, shm: impl Into<PathBuf>) -> Home {
        self.shm = shm.into();
        self
    }

    /// The root of the persistent folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Content-addressed blobs.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    /// Records of fetched kernels.
    pub fn kernels(&self) -> PathBuf {
        self.root.join("kernels")
    }
    /// Records of built templates.
    pub fn templates(&self) -> PathBuf {
        self.root.join("templates")
    }
    /// Baked snapshots.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// Lock files.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Scratch space for builds (same filesystem as the store, so renames are atomic).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Guest RAM files (snapshots, forkable sandboxes, fork bases): in a tmpfs, where the
    /// host cannot page them out behind kiln's back the way it can reclaim page cache.
    /// `KILN_SHM_DIR`, else `/dev/shm/kiln-<digest of the home path>`.
    pub fn shm(&self) -> &Path {
        &self.shm
    }

    /// [`Home::shm`], created owner-only, or checked when it is there: a real folder (not a
    /// link) of this user's, closed to others. Its name is predictable and `/dev/shm` is
    /// world-writable, so a folder planted there by someone else would receive guest RAM, and
    /// the secrets in it.
    pub fn ensure_shm(&self) -> std::io::Result<&Path> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        if let Some(parent) = self.shm.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.shm) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let m = std::fs::symlink_metadata(&self.shm)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !m.file_type().is_dir() || m.uid() != me {
            let what = if m.file_type().is_symlink() { "a symbolic link" } else if m.file_type().is_dir() { "a folder" } else { "a file" };
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is {what} of uid {}, not kiln's own folder (uid {me}); someone else may have made it: remove it, or set KILN_SHM_DIR", self.shm.display(), m.uid()),
            ));
        }
        if m.mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.shm, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(&self.shm)
    }

    /// Per-VM run folders.
    pub fn run(&self) -> &Path {
        &self.run
    }

    /// A home of its own at `root` (an existing, empty folder): its own state database,
    /// socket and run folder (`root/run`), sharing this home's artifacts (blobs, kernels,
    /// templates, snapshots and their locks, through links) and its RAM folder. For a second
    /// daemon on one host (tests, `kiln bench`), which must not see the first one's state.
    pub fn sharing_artifacts(&self, root: &Path) -> std::io::Result<Home> {
        for sub in ["store", "kernels", "templates", "snapshots", "locks"] {
            std::fs::create_dir_all(self.root.join(sub))?;
            std::os::unix::fs::symlink(self.root.join(sub), root.join(sub))?;
        }
        if let Err(e) = std::fs::copy(self.root.join("accel-probe.json"), root.join("accel-probe.json")) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        let run = root.join("run");
        std::fs::create_dir_all(&run)?;
        Ok(Home::at(root, run).with_shm(&self.shm))
    }
}

fn default_shm(root: &Path) -> PathBuf {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/dev/shm/kiln-{}", &hex::encode(d)[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_ram_folder_is_kilns_own_and_closed() {
        let d = tempfile::tempdir().unwrap();
        let shm = d.path().join("shm");
        let home = Home::at(d.path(), d.path().join("run")).with_shm(&shm);
        home.ensure_shm().unwrap();
        assert_eq!(std::fs::metadata(&shm).unwrap().permissions().mode() & 0o777, 0o700);
        // Left open by an older kiln: closed again.
        std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o755)).unwrap();
        home.ensure_shm().unwrap();
        assert_eq!(std::fs::metadata(&shm).unwrap().permissions().mode() & 0o777, 0o700);
        // A link planted where the folder would be: refused.
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let planted = d.path().join("planted");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        let err = Home::at(d.path(), d.path().join("run")).with_shm(&planted).ensure_shm().unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        // Someone else's folder (as root, a test can make one): refused.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = d.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(12345), Some(12345)).unwrap();
            let err = Home::at(d.path(), d.path().join("run")).with_shm(&theirs).ensure_shm().unwrap_err();
            assert!(err.to_string().contains("uid 12345"), "{err}");
        }
    }
}
