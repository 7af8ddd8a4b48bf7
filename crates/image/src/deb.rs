//! Fetching Debian packages with the host's own apt configuration (`apt-get download`) and
//! unpacking them without installing (`dpkg -x`). No mirror address is ever named here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{ImageError, Result};

/// Runs a host tool, turning a missing binary or a failure into a clear error.
pub fn run_tool(cmd: &mut Command, install_hint: &str) -> Result<String> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| ImageError::Tool {
        tool: prog.clone(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            format!("not installed; {install_hint}")
        } else {
            e.to_string()
        },
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("W: ")).collect();
        return Err(ImageError::Tool { tool: prog, detail: format!("{} ({})", detail.join(" / ").trim(), out.status) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The concrete package a meta-package depends on first whose name starts with `prefix`
/// (`linux-image-cloud-amd64` -> `linux-image-6.1.0-57-cloud-amd64`).
pub fn resolve_dependency(meta: &str, prefix: &str) -> Result<String> {
    let out = run_tool(Command::new("apt-cache").args(["depends", meta]), "install apt")?;
    parse_depends(&out, prefix).ok_or_else(|| ImageError::Tool {
        tool: "apt-cache".into(),
        detail: format!("no package '{meta}' known to apt; run `apt-get update` first"),
    })
}

fn parse_depends(out: &str, prefix: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
        .find(|p| p.starts_with(prefix))
}

/// The version apt would download for `package`.
pub fn candidate_version(package: &str) -> Result<String> {
    let out = run_tool(Command::new("apt-cache").args(["policy", package]), "install apt")?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::to_owned)
        .find(|v| v != "(none)")
        .ok_or_else(|| ImageError::Tool {
            tool: "apt-cache".into(),
            detail: format!("no candidate version of '{package}'; run `apt-get update` first"),
        })
}

/// Downloads `package` into `dir` and unpacks it into `dir/root`; returns that folder.
pub fn fetch_and_unpack(package: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
    run_tool(
        Command::new("apt-get").args(["download", "-q", package]).current_dir(dir),
        "kiln needs apt (Debian or Ubuntu host)",
    )?;
    let deb = std::fs::read_dir(dir)
        .map_err(ImageError::io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| ImageError::Tool { tool: "apt-get download".into(), detail: format!("no .deb for {package} appeared") })?;
    let root = dir.join("root");
    run_tool(Command::new("dpkg").arg("-x").arg(&deb).arg(&root), "install dpkg")?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n  Depends: <other>\n";
        assert_eq!(parse_depends(out, "linux-image-").as_deref(), Some("linux-image-6.1.0-57-cloud-amd64"));
        assert_eq!(parse_depends(out, "nope"), None);
    }
}
