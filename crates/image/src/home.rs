//! Where kiln keeps things: `KILN_HOME` (artifacts, templates, state) and `KILN_RUN_DIR`
//! (per-VM run folders with sockets, which must have short paths).

use std::path::{Path, PathBuf};

/// The folders kiln uses on this host.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
    run: PathBuf,
}

impl Home {
    /// From the environment: `KILN_HOME`, else `$XDG_DATA_HOME/kiln`, else
    /// `$HOME/.local/share/kiln`; `KILN_RUN_DIR`, else `/run/kiln` for root, else
    /// `$XDG_RUNTIME_DIR/kiln`, else `/tmp/kiln-<uid>`.
    pub fn from_env() -> Home {
        let root = if let Some(h) = std::env::var_os("KILN_HOME") {
            PathBuf::from(h)
        } else if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
            PathBuf::from(x).join("kiln")
        } else {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".local/share/kiln")
        };
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let run = if let Some(r) = std::env::var_os("KILN_RUN_DIR") {
            PathBuf::from(r)
        } else if uid == 0 && Path::new("/run").is_dir() {
            PathBuf::from("/run/kiln")
        } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
            PathBuf::from(x).join("kiln")
        } else {
            PathBuf::from(format!("/tmp/kiln-{uid}"))
        };
        Home { root, run }
    }

    /// Explicit folders (tests).
    pub fn at(root: impl Into<PathBuf>, run: impl Into<PathBuf>) -> Home {
        Home { root: root.into(), run: run.into() }
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
    /// Per-VM run folders.
    pub fn run(&self) -> &Path {
        &self.run
    }
}
