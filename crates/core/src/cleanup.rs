//! Finding and removing what dead kiln processes left behind: run folders (sockets, disk
//! overlays), fork bases, half-done bakes, RAM files in the tmpfs. Every folder kiln makes for a
//! VM carries `owner.pid`; a folder whose owner is gone is garbage. QEMU itself cannot outlive
//! its kiln process (it gets SIGKILL when its parent dies), so only files are left.

use std::path::{Path, PathBuf};

use kiln_image::Home;

/// Creates `dir` (and parents) and records this process as its owner.
pub fn make_owned_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("owner.pid"), format!("{}\n", std::process::id()))
}

pub use kiln_vmm::spawn::pid_alive;

fn owner_alive(dir: &Path) -> bool {
    // A VMM can write into its run folder: a link or FIFO planted as owner.pid is not followed.
    match kiln_fs::read_head_nofollow(&dir.join("owner.pid"), 32) {
        Ok(b) => String::from_utf8_lossy(&b).trim().parse().map(pid_alive).unwrap_or(false),
        // No owner file: a folder being made this instant, or one from before owner files.
        // Keep it if it is young.
        Err(_) => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() < 600),
    }
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Folders removed.
    pub dirs: Vec<PathBuf>,
    /// Files removed.
    pub files: Vec<PathBuf>,
}

/// Removes run folders and RAM files whose owning process is gone, and bakes that never
/// finished. Safe to run while other kiln processes work: it only touches what is orphaned.
pub fn sweep(home: &Home) -> Swept {
    let mut swept = Swept::default();
    for e in std::fs::read_dir(home.run()).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !owner_alive(&p) && std::fs::remove_dir_all(&p).is_ok() {
            swept.dirs.push(p);
        }
    }
    for e in std::fs::read_dir(home.snapshots()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `.bake-<snapshot>-<pid>` and `.old-<snapshot>-<hex>`.
        let dead_bake = name.starts_with(".bake-") && name.rsplit('-').next().and_then(|p| p.parse().ok()).is_some_and(|p| !pid_alive(p));
        if (dead_bake || name.starts_with(".old-")) && std::fs::remove_dir_all(e.path()).is_ok() {
            swept.dirs.push(e.path());
        }
    }
    for e in std::fs::read_dir(home.shm()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".memory") else { continue };
        let orphan = if stem.starts_with("sbx-") || stem.starts_with("fork-") {
            // `<sandbox or fork id>.<owner pid>`
            stem.rsplit('.').next().and_then(|p| p.parse().ok()).is_none_or(|p| !pid_alive(p))
        } else if let Some(rest) = stem.strip_prefix(".bake-") {
            rest.rsplit('-').next().and_then(|p| p.parse().ok()).is_some_and(|p| !pid_alive(p))
        } else {
            // A snapshot's RAM: orphaned when its snapshot folder is gone.
            !home.snapshots().join(stem).exists()
        };
        if orphan && std::fs::remove_file(e.path()).is_ok() {
            swept.files.push(e.path());
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_orphans() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path(), t.path().join("run"));
        let mine = home.run().join("sbx-mine");
        make_owned_dir(&mine).unwrap();
        let dead = home.run().join("sbx-dead");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("owner.pid"), "999999999\n").unwrap();
        std::fs::create_dir_all(home.shm()).unwrap();
        let me = std::process::id();
        std::fs::write(home.shm().join(format!("sbx-mine.{me}.memory")), b"").unwrap();
        std::fs::write(home.shm().join("sbx-dead.999999999.memory"), b"").unwrap();
        std::fs::write(home.shm().join("tiny-0123.memory"), b"").unwrap();
        let swept = sweep(&home);
        assert_eq!(swept.dirs, std::slice::from_ref(&dead));
        assert!(mine.exists());
        assert!(home.shm().join(format!("sbx-mine.{me}.memory")).exists());
        assert!(!home.shm().join("sbx-dead.999999999.memory").exists());
        assert!(!home.shm().join("tiny-0123.memory").exists(), "snapshot RAM without its folder");
        std::fs::remove_dir_all(home.shm()).unwrap();
    }
}
