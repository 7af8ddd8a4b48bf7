//! The privileged host operations kiln performs to confine a VMM (cgroup files, ownership of
//! the VM's files), behind a trait so the logic that decides them is tested without root
//! against [`FakeHost`]; [`RealHost`] performs them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File-system operations that need privileges on a real host.
pub trait HostOps: Send + Sync + Debug {
    /// Creates a directory; succeeds if it exists.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Removes an (empty) directory.
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Writes `text` to an existing file (a cgroup control file).
    fn write(&self, path: &Path, text: &str) -> io::Result<()>;
    /// Reads a file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// The names of the directories in `path`.
    fn subdirs(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Changes a file's owner and group.
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Changes a file's mode.
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Sends SIGKILL to a process.
    fn kill(&self, pid: u32) -> io::Result<()>;
}

/// The real host.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

impl HostOps for RealHost {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn write(&self, path: &Path, text: &str) -> io::Result<()> {
        use std::io::Write;
        // One write(2) of the whole value: cgroup files parse each write separately.
        std::fs::OpenOptions::new().write(true).open(path)?.write_all(text.as_bytes())
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
    }
    fn kill(&self, pid: u32) -> io::Result<()> {
        let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// An in-memory host for tests: directories, files, and a log of every operation.
#[derive(Debug, Default)]
pub struct FakeHost {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    dirs: Vec<PathBuf>,
    files: BTreeMap<PathBuf, String>,
    log: Vec<String>,
    refuse: Vec<PathBuf>,
}

impl FakeHost {
    /// A fake host with these directories and files.
    pub fn with(dirs: &[&str], files: &[(&str, &str)]) -> FakeHost {
        let h = FakeHost::default();
        {
            let mut s = h.state.lock().expect("fake lock");
            s.dirs = dirs.iter().map(PathBuf::from).collect();
            s.files = files.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_owned())).collect();
        }
        h
    }
    /// Makes writes to `path` fail with EBUSY.
    pub fn refuse_writes_to(&self, path: &str) {
        self.state.lock().expect("fake lock").refuse.push(path.into());
    }
    /// Every operation so far, as text ("write /x = y").
    pub fn log(&self) -> Vec<String> {
        self.state.lock().expect("fake lock").log.clone()
    }
    /// The current text of a file.
    pub fn file(&self, path: &str) -> Option<String> {
        self.state.lock().expect("fake lock").files.get(Path::new(path)).cloned()
    }
    /// Whether a directory exists.
    pub fn has_dir(&self, path: &str) -> bool {
        self.state.lock().expect("fake lock").dirs.iter().any(|d| d == Path::new(path))
    }
}

fn missing(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))
}

impl HostOps for FakeHost {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock().expect("fake lock");
        s.log.push(format!("mkdir {}", path.display()));
        if !s.dirs.iter().any(|d| Some(d.as_path()) == path.parent()) {
            return Err(missing(path.parent().unwrap_or(path)));
        }
        if !s.dirs.iter().any(|d| d == path) {
            s.dirs.push(path.to_owned());
            // Like cgroupfs: a new group comes with its control files.
            for f in ["cgroup.procs", "cgroup.subtree_control"] {
                s.files.insert(path.join(f), String::new());
            }
        }
        Ok(())
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock().expect("fake lock");
        s.log.push(format!("rmdir {}", path.display()));
        if s.files.get(&path.join("cgroup.procs")).is_some_and(|p| !p.trim().is_empty()) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        let before = s.dirs.len();
        s.dirs.retain(|d| d != path);
        if s.dirs.len() == before {
            return Err(missing(path));
        }
        s.files.retain(|f, _| f.parent() != Some(path));
        Ok(())
    }
    fn write(&self, path: &Path, text: &str) -> io::Result<()> {
        let mut s = self.state.lock().expect("fake lock");
        s.log.push(format!("write {} = {text}", path.display()));
        if s.refuse.iter().any(|r| r == path) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        if !s.dirs.iter().any(|d| Some(d.as_path()) == path.parent()) {
            return Err(missing(path));
        }
        s.files.insert(path.to_owned(), text.to_owned());
        Ok(())
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        self.state.lock().expect("fake lock").files.get(path).cloned().ok_or_else(|| missing(path))
    }
    fn subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let s = self.state.lock().expect("fake lock");
        Ok(s.dirs.iter().filter(|d| d.parent() == Some(path)).filter_map(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).collect())
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.state.lock().expect("fake lock").log.push(format!("chown {} {uid}:{gid}", path.display()));
        Ok(())
    }
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.state.lock().expect("fake lock").log.push(format!("chmod {} {mode:o}", path.display()));
        Ok(())
    }
    fn kill(&self, pid: u32) -> io::Result<()> {
        // The process leaves every group it was in.
        let mut s = self.state.lock().expect("fake lock");
        s.log.push(format!("kill {pid}"));
        for (_, text) in s.files.iter_mut().filter(|(f, _)| f.ends_with("cgroup.procs")) {
            *text = text.lines().filter(|l| l.trim() != pid.to_string()).map(|l| format!("{l}\n")).collect();
        }
        Ok(())
    }
}
