//! Copying a host file or folder into the guest through the file API (no shared folder, no
//! guest tool needed). Symbolic links and special files are skipped and counted.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::agent::Agent;
use crate::error::SandboxError;

/// Most files one copy may carry.
pub const MAX_FILES: usize = 20_000;

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files written.
    pub files: usize,
    /// Folders created.
    pub dirs: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Links and special files skipped.
    pub skipped: usize,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

impl Agent {
    /// Copies `host` (file or folder) to `guest` (an absolute path, created with parents).
    pub async fn copy_in(&self, host: &Path, guest: &str) -> Result<CopyStats, SandboxError> {
        let meta = std::fs::symlink_metadata(host).map_err(io(format!("read {}", host.display())))?;
        let mut stats = CopyStats::default();
        if meta.is_file() {
            self.copy_file(host, guest, meta.permissions().mode() & 0o7777, &mut stats).await?;
            return Ok(stats);
        }
        if !meta.is_dir() {
            return Err(SandboxError::Invalid(format!("{} is neither a file nor a folder", host.display())));
        }
        let mut stack = vec![(host.to_path_buf(), guest.trim_end_matches('/').to_owned())];
        while let Some((dir, gdir)) = stack.pop() {
            let gdir = if gdir.is_empty() { "/".to_owned() } else { gdir };
            let mode = std::fs::metadata(&dir).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o755);
            self.mkdir(&gdir, mode | 0o700, true).await?;
            stats.dirs += 1;
            let mut entries: Vec<_> = std::fs::read_dir(&dir).map_err(io(format!("list {}", dir.display())))?.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                let gpath = if gdir == "/" { format!("/{name}") } else { format!("{gdir}/{name}") };
                let ft = e.file_type().map_err(io(format!("stat {}", e.path().display())))?;
                if ft.is_dir() {
                    stack.push((e.path(), gpath));
                } else if ft.is_file() {
                    if stats.files >= MAX_FILES {
                        return Err(SandboxError::Invalid(format!("{} has more than {MAX_FILES} files", host.display())));
                    }
                    let mode = e.metadata().map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
                    self.copy_file(&e.path(), &gpath, mode, &mut stats).await?;
                } else {
                    stats.skipped += 1;
                }
            }
        }
        Ok(stats)
    }

    async fn copy_file(&self, host: &Path, guest: &str, mode: u32, stats: &mut CopyStats) -> Result<(), SandboxError> {
        let f = tokio::fs::File::open(host).await.map_err(io(format!("open {}", host.display())))?;
        stats.bytes += self.write_file(guest, mode, true, f).await?;
        stats.files += 1;
        Ok(())
    }
}
