//! Copying build outputs out of the VM. The list of matching files comes from the guest and is
//! untrusted: every path is checked (relative, inside the destination, no `..`), and the count,
//! each size and the total are capped.

use std::path::{Component, Path};

use kiln_core::Sandbox;
use kiln_fs::Dir;
use serde::Serialize;

use crate::CiError;

/// Most files one cell may return.
pub const MAX_FILES: usize = 1000;
/// Largest single artifact.
pub const MAX_FILE: u64 = 1 << 30;
/// Most bytes of artifacts per cell.
pub const MAX_TOTAL: u64 = 4 << 30;

/// An artifact copied out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Artifact {
    /// Path relative to the source folder (and to the cell's artifacts folder on the host).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, hex.
    pub sha256: String,
}

/// Whether a glob is made only of harmless characters (it is expanded by the guest's shell).
pub fn valid_glob(g: &str) -> bool {
    !g.is_empty()
        && !g.starts_with('/')
        && !g.split('/').any(|c| c == "..")
        && g.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/*?[]+@=,".contains(&b))
}

fn safe_rel(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.contains('\0')
        && Path::new(p).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Copies the files matching `globs` (relative to `workdir` in the guest) into `artifacts/`
/// of the cell's folder: every folder and file is made beneath its handle, new, and no link
/// (a checkout's, or one the VM named) is followed.
/// A name that holds a secret (`masker` finds one in it) is refused without being shown.
pub async fn collect(sbx: &Sandbox, workdir: &str, globs: &[String], cell: &Dir, masker: &crate::mask::Masker) -> Result<Vec<Artifact>, CiError> {
    if globs.is_empty() {
        return Ok(Vec::new());
    }
    let script = format!(
        "cd '{workdir}' || exit 1; for f in {}; do [ -f \"$f\" ] && [ ! -L \"$f\" ] && printf '%s\\n' \"$f\"; done; true",
        globs.join(" ")
    );
    let mut listing = Vec::new();
    let o = sbx
        .exec(kiln_core::ExecRequest::shell(script).timeout(std::time::Duration::from_secs(60)), |o| {
            if let kiln_core::Output::Stdout(d) = o {
                if listing.len() < 4 << 20 {
                    listing.extend_from_slice(d);
                }
            }
        })
        .await?;
    if o.exit_code() != 0 {
        return Err(CiError::Artifacts("could not list artifacts in the VM".into()));
    }
    let text = String::from_utf8_lossy(&listing);
    let mut paths: Vec<String> = Vec::new();
    for line in text.lines() {
        let p = line.trim_start_matches("./").to_owned();
        if masker.mask_str(&p) != p {
            return Err(CiError::Artifacts("an artifact's name holds a secret; no artifact was collected".into()));
        }
        if !safe_rel(&p) {
            return Err(CiError::Artifacts(format!("the VM named an unsafe artifact path {p:?}")));
        }
        if !paths.contains(&p) {
            paths.push(p);
        }
        if paths.len() > MAX_FILES {
            return Err(CiError::Artifacts(format!("more than {MAX_FILES} artifacts")));
        }
    }
    let mut out = Vec::new();
    let mut total = 0u64;
    let dest = cell.create_dirs(Path::new("artifacts")).map_err(CiError::io("create artifacts/"))?;
    for p in paths {
        let rel = Path::new(&p);
        let host = dest.path().join(rel);
        let (parent, name) = match (rel.parent().filter(|d| !d.as_os_str().is_empty()), rel.file_name()) {
            (Some(d), Some(n)) => (dest.create_dirs(d).map_err(CiError::io(format!("create {}", dest.path().join(d).display())))?, Path::new(n)),
            (None, Some(n)) => (dest.try_clone().map_err(CiError::io("open artifacts/"))?, Path::new(n)),
            _ => return Err(CiError::Artifacts(format!("the VM named an unsafe artifact path {p:?}"))),
        };
        let file = parent.create(name, 0o644).map_err(CiError::io(format!("create {}", host.display())))?;
        let mut file = tokio::fs::File::from_std(file);
        let (size, _) = sbx.agent().read_file(&format!("{workdir}/{p}"), MAX_FILE, &mut file).await?;
        drop(file);
        total += size;
        if total > MAX_TOTAL {
            return Err(CiError::Artifacts(format!("artifacts exceed {MAX_TOTAL} bytes")));
        }
        let sha256 = kiln_image::store::Digest::of_file(&host).map_err(|e| CiError::Sandbox(e.into()))?.hex().to_owned();
        out.push(Artifact { path: p, size, sha256 });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_paths() {
        assert!(valid_glob("dist/*.tar.gz"));
        assert!(valid_glob("out/app-[0-9]*"));
        assert!(!valid_glob("../x"));
        assert!(!valid_glob("/etc/passwd"));
        assert!(!valid_glob("$(reboot)"));
        assert!(!valid_glob("a b"));
        assert!(safe_rel("dist/a.tar.gz"));
        assert!(!safe_rel("../../etc/passwd"));
        assert!(!safe_rel("/abs"));
        assert!(!safe_rel("a/../../b"));
    }
}
