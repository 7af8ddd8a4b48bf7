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

    /// Per-VM run folders.
    pub fn run(&self) -> &Path {
        &self.run
    }
}

fn default_shm(root: &Path) -> PathBuf {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/dev/shm/kiln-{}", &hex::encode(d)[..12]))
}
