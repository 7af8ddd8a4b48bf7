//! What a fork rests on: the frozen RAM file, device state and disk overlay of a paused
//! sandbox, removed when the last sandbox on it is gone, or persisted as a checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_vmm::VmSpec;

/// Where the time of the last fork went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkTiming {
    /// From the start of the fork until every clone answered and had its identity.
    pub clones_answering: Duration,
    /// Until the parent was running again.
    pub parent_back: Duration,
}

/// A frozen fork base: `memory`, `state` and `disk.qcow2` in a folder of its own.
#[derive(Debug)]
pub struct ForkBase {
    pub(crate) dir: PathBuf,
    pub(crate) memory: PathBuf,
    /// Removed when the last sandbox on it is gone (fork bases); kept (persisted checkpoints).
    pub(crate) owned: bool,
    /// The base this one's disk rests on (a sandbox forked twice).
    pub(crate) _parent: Option<Arc<ForkBase>>,
}

impl ForkBase {
    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its frozen RAM file.
    pub fn memory(&self) -> &Path {
        &self.memory
    }
}

impl Drop for ForkBase {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(&self.memory);
        }
    }
}

/// Machine shape and command line of a persisted checkpoint (`spec.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CheckpointSpec {
    pub(crate) cmdline: String,
    pub(crate) cpus: u32,
    pub(crate) memory_mib: u32,
}

impl ForkBase {
    /// Keeps this base beyond its sandboxes: hard links (or copies, across filesystems) of its
    /// frozen files into `dir` (state, disk) and `memory` (RAM, in the tmpfs), plus `spec.json`.
    /// The disk's backing chain (the template snapshot) must stay where it is.
    pub fn persist(&self, like: &VmSpec, dir: &Path, memory: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let link = |from: &Path, to: &Path| -> std::io::Result<()> {
            let _ = std::fs::remove_file(to);
            std::fs::hard_link(from, to).or_else(|_| crate::sparse::copy(from, to).map(|_| ()))
        };
        link(&self.dir.join("state"), &dir.join("state"))?;
        link(&self.dir.join("disk.qcow2"), &dir.join("disk.qcow2"))?;
        link(&self.memory, memory)?;
        // Copies (across file systems) are frozen like the originals; links already are.
        for f in [dir.join("state"), dir.join("disk.qcow2"), memory.to_owned()] {
            crate::snapshot::freeze(&f)?;
        }
        let spec = CheckpointSpec { cmdline: like.cmdline.clone(), cpus: like.cpus, memory_mib: like.memory_mib };
        std::fs::write(dir.join("spec.json"), serde_json::to_vec(&spec).expect("json"))
    }
}

