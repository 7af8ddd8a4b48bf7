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
    /// For templates made from an OCI image: which image, by manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageOrigin>,
}

/// The OCI image a template was made from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageOrigin {
    /// The reference as the template names it.
    pub reference: String,
    /// The digest of the linux/amd64 image manifest it resolved to.
    pub manifest: Digest,
}

fn record_path(home: &Home, name: &str) -> PathBuf {
    home.templates().join(format!("{name}.json"))
}

/// Where the build of template `name` from file `source` and image `manifest` is remembered,
/// so that an image digest is never built twice (a tag that moves back finds its old build).
fn image_record_path(home: &Home, name: &str, source: &Digest, manifest: &Digest) -> PathBuf {
    home.templates().join("images").join(format!("{name}-{}-{}.json", &source.hex()[..16], manifest.hex()))
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

    /// Saves the record (and, for an image's build, the record by image digest).
    pub fn save(&self, home: &Home) -> Result<()> {
        std::fs::create_dir_all(home.templates()).map_err(ImageError::io("create", home.templates()))?;
        let bytes = serde_json::to_vec_pretty(self).expect("record serializes");
        if let Some(img) = &self.image {
            let p = image_record_path(home, &self.name, &self.source_digest, &img.manifest);
            let dir = p.parent().expect("a folder");
            std::fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
            write_atomic(&p, &bytes)?;
        }
        write_atomic(&record_path(home, &self.name), &bytes)
    }

    /// The build of template `name` from file `source` and image `manifest`, if there was one
    /// and its image is still in the store.
    pub fn load_image_build(home: &Home, name: &str, source: &Digest, manifest: &Digest) -> Option<BuiltTemplate> {
        let t: BuiltTemplate = serde_json::from_slice(&std::fs::read(image_record_path(home, name, source, manifest)).ok()?).ok()?;
        (t.name == name && Store::new(home.store()).contains(&t.rootfs)).then_some(t)
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
        RootfsKind::Oci => "oci",
    }
}
