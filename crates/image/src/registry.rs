//! Records of built templates: `templates/<name>.json` under kiln's home.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};
use crate::atomic::write_atomic;
use crate::store::{Digest, Store};
use crate::template::RootfsKind;
use crate::Home;

/// A built template: its root filesystem image and defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuiltTemplate {
    /// Name.
    pub name: String,
    /// One line.
    pub description: String,
    /// Digest of the template file it was built from.
    pub source_digest: Digest,
    /// The ext4 image in the store.
    pub rootfs: Digest,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Seconds since the epoch.
    pub built_at: u64,
    /// Default vCPUs.
    pub cpus: u32,
    /// Default memory in MiB.
    pub memory_mib: u32,
}

fn record_path(home: &Home, name: &str) -> PathBuf {
    home.templates().join(format!("{name}.json"))
}

impl BuiltTemplate {
    /// The record of template `name`, if it was built and its image is still in the store.
    pub fn load(home: &Home, name: &str) -> Option<BuiltTemplate> {
        let t: BuiltTemplate = serde_json::from_slice(&std::fs::read(record_path(home, name)).ok()?).ok()?;
        Store::new(home.store()).contains(&t.rootfs).then_some(t)
    }

    /// Every built template, by name.
    pub fn list(home: &Home) -> Vec<BuiltTemplate> {
        let mut v: Vec<BuiltTemplate> = std::fs::read_dir(home.templates())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                if p.extension()? != "json" {
                    return None;
                }
                Self::load(home, &p.file_stem()?.to_string_lossy())
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Saves the record.
    pub fn save(&self, home: &Home) -> Result<()> {
        std::fs::create_dir_all(home.templates()).map_err(ImageError::io("create", home.templates()))?;
        write_atomic(&record_path(home, &self.name), &serde_json::to_vec_pretty(self).expect("record serializes"))
    }

    /// Now, in seconds since the epoch.
    pub fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// Kind is recorded for display only.
pub fn kind_name(k: RootfsKind) -> &'static str {
    match k {
        RootfsKind::Busybox => "busybox",
        RootfsKind::Debian => "debian",
    }
}
