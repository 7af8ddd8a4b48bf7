//! Facts about the host that cost a process spawn each to learn (QEMU's version line, whether
//! its seccomp filter loads, whether namespaces can be made), remembered for this boot so that
//! a short-lived `kiln run` does not pay 25-40 ms per fact. Each fact is stored with what it
//! depends on (the binary's path, inode, size and times; the kernel and boot id) and is used
//! only while that still matches. The folder is under /run (a tmpfs: it ends with the boot),
//! root's and 0700; one that is a link or not ours is not used. Only successes are kept, so a
//! fixed host is noticed at once; a stale "ok" can only make a later step fail loudly (QEMU
//! refusing `-sandbox`, a namespace that cannot be made), never skip a check that would pass.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The folder, or `None` when there is none we may trust (not root, or it is not ours).
fn folder() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_FACTS_DIR") {
        Some(d) => PathBuf::from(d),
        // SAFETY: geteuid has no preconditions.
        None if unsafe { libc::geteuid() } == 0 => PathBuf::from("/run/kiln-facts"),
        None => return None,
    };
    trusted(dir)
}

/// `dir`, made 0700 if missing, if it is a folder of ours that no one else may write.
fn trusted(dir: PathBuf) -> Option<PathBuf> {
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let m = std::fs::symlink_metadata(&dir).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    (m.is_dir() && m.uid() == me && m.permissions().mode() & 0o077 == 0).then_some(dir)
}

/// What a binary is, cheaply: its resolved path (through `PATH` for a bare name), device,
/// inode, size, mtime and ctime. `None` if it cannot be found.
pub fn binary_identity(binary: &Path) -> Option<String> {
    let path = if binary.components().count() > 1 {
        binary.to_owned()
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(binary)).find(|p| p.is_file())?
    };
    let path = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&path).ok()?;
    Some(format!("{} {} {} {} {}.{} {}.{}", path.display(), m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

/// This boot and kernel (for facts about the kernel).
pub fn this_boot() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_owned();
    format!("{} {}", read("/proc/sys/kernel/osrelease"), read("/proc/sys/kernel/random/boot_id"))
}

/// The fact `name` for `key`: remembered, or computed (and remembered if it succeeded).
pub fn remembered<E>(name: &str, key: &str, compute: impl FnOnce() -> Result<String, E>) -> Result<String, E> {
    remembered_in(folder(), name, key, compute)
}

fn remembered_in<E>(dir: Option<PathBuf>, name: &str, key: &str, compute: impl FnOnce() -> Result<String, E>) -> Result<String, E> {
    if let Some(dir) = &dir {
        if let Ok(bytes) = kiln_fs::read_head_nofollow(&dir.join(name), 16 << 10) {
            let text = String::from_utf8_lossy(&bytes);
            if let Some(value) = text.strip_prefix(key).and_then(|r| r.strip_prefix('\n')) {
                return Ok(value.trim_end_matches('\n').to_owned());
            }
        }
    }
    let value = compute()?;
    if let Some(dir) = dir {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(format!("{key}\n{value}\n").as_bytes()));
        if written.is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(name));
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_kept_for_their_key_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("facts");
        let at = || trusted(dir.clone());
        let mut calls = 0;
        let mut get = |key: &str| remembered_in::<()>(at(), "f", key, || { calls += 1; Ok(format!("value of {key}")) }).unwrap();
        assert_eq!(get("k1"), "value of k1");
        assert_eq!(get("k1"), "value of k1");
        assert_eq!(get("k2"), "value of k2");
        assert_eq!(calls, 2);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // Failures are not kept.
        let mut tries = 0;
        for _ in 0..2 {
            let _ = remembered_in::<&str>(at(), "g", "k", || { tries += 1; Err("no") });
        }
        assert_eq!(tries, 2);
        // A folder others may write is not used.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(at().is_none());
        let mut again = 0;
        let _ = remembered_in::<()>(at(), "f", "k1", || { again += 1; Ok("x".into()) });
        assert_eq!(again, 1);
        assert!(binary_identity(Path::new("sh")).is_some_and(|i| i.starts_with('/')));
    }
}
