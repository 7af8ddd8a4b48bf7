//! The VMM's jail, set up in the child between `fork` and `exec` (like Firecracker's jailer,
//! without a separate binary): join its cgroup(s); new mount, network, IPC and UTS
//! namespaces; a read-only tmpfs root holding only the system's binaries and libraries, a
//! few device nodes, and the VM's own files, each bind-mounted at the path QEMU is given;
//! a cap on the size of files it writes; then an unprivileged uid and gid (which drops every
//! capability) and `no_new_privs`.
//!
//! [`JailPlan`] is plain data, built and checked by ordinary code (and unit-tested);
//! [`Prepared`] turns it into C strings beforehand so that [`Prepared::enter`], which runs in
//! the forked child, makes system calls only: no allocation, no locks.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A file or folder made visible inside the jail, at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Its path (on the host and in the jail).
    pub path: PathBuf,
    /// Writable in the jail (otherwise mounted read-only).
    pub writable: bool,
    /// A folder (otherwise a file or device node).
    pub dir: bool,
}

/// Everything the jail of one VMM consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    /// The VMM's user.
    pub uid: u32,
    /// The VMM's group.
    pub gid: u32,
    /// Supplementary groups (the group of `/dev/kvm` under KVM).
    pub groups: Vec<u32>,
    /// An empty folder the jail's root is mounted on (in the child's namespace only).
    pub root: PathBuf,
    /// What is visible, in mount order.
    pub binds: Vec<Bind>,
    /// Symbolic links recreated in the jail (`/lib -> usr/lib` on merged-/usr systems).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// `RLIMIT_FSIZE`: no file the VMM writes grows past this.
    pub max_file_bytes: u64,
    /// Working directory in the jail.
    pub cwd: PathBuf,
}

/// Top-level system paths QEMU needs (binaries, libraries, firmware), read-only.
const SYSTEM: [&str; 5] = ["/usr", "/bin", "/sbin", "/lib", "/lib64"];
/// Device nodes QEMU may open.
const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

impl JailPlan {
    /// The system part of a jail: the binaries and libraries (read-only), the loader cache,
    /// the harmless device nodes, and `/dev/kvm` when `kvm`.
    pub fn system(kvm: bool) -> (Vec<Bind>, Vec<(PathBuf, PathBuf)>) {
        let mut binds = Vec::new();
        let mut links = Vec::new();
        for p in SYSTEM {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(t) = std::fs::read_link(p) {
                        links.push((PathBuf::from(p), t));
                    }
                }
                Ok(m) if m.is_dir() => binds.push(Bind { path: p.into(), writable: false, dir: true }),
                _ => {}
            }
        }
        if Path::new("/etc/ld.so.cache").exists() {
            binds.push(Bind { path: "/etc/ld.so.cache".into(), writable: false, dir: false });
        }
        let kvm_dev = kvm.then_some("/dev/kvm");
        for d in DEVICES.iter().copied().chain(kvm_dev) {
            if Path::new(d).exists() {
                // Device nodes are opened read-write (/dev/null, /dev/kvm); the mount stays
                // writable but the nodes are the host's harmless ones.
                binds.push(Bind { path: d.into(), writable: true, dir: false });
            }
        }
        (binds, links)
    }

    /// Checks the plan: absolute, normal paths; nothing bound inside something bound (which
    /// would create mount points on the host through the outer bind).
    pub fn check(&self) -> Result<(), String> {
        let normal = |p: &Path| p.is_absolute() && p.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
        for b in &self.binds {
            if !normal(&b.path) {
                return Err(format!("jail path {} is not absolute and normal", b.path.display()));
            }
        }
        for (i, a) in self.binds.iter().enumerate() {
            for b in &self.binds[i + 1..] {
                if (a.dir && b.path.starts_with(&a.path)) || (b.dir && a.path.starts_with(&b.path)) {
                    return Err(format!("jail paths overlap: {} and {}", a.path.display(), b.path.display()));
                }
            }
        }
        if !normal(&self.root) || !normal(&self.cwd) {
            return Err("jail root and working folder must be absolute and normal".into());
        }
        Ok(())
    }

    /// Adds `path` unless something already bound covers it (a file inside a bound folder,
    /// e.g. the disk overlay inside the run folder); a writable need upgrades nothing, so a
    /// covered path that needs writing must be inside a writable folder.
    pub fn add(&mut self, path: &Path, writable: bool, dir: bool) -> Result<(), String> {
        if let Some(cover) = self.binds.iter().find(|b| b.dir && path.starts_with(&b.path)) {
            if writable && !cover.writable {
                return Err(format!("{} must be writable but is inside read-only {}", path.display(), cover.path.display()));
            }
            return Ok(());
        }
        if let Some(same) = self.binds.iter_mut().find(|b| b.path == path) {
            same.writable |= writable;
            return Ok(());
        }
        self.binds.push(Bind { path: path.to_owned(), writable, dir });
        Ok(())
    }

    /// Turns the plan into the child's steps.
    pub fn prepare(&self) -> io::Result<Prepared> {
        self.check().map_err(io::Error::other)?;
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other(format!("NUL in path {}", p.display())));
        let inside = |p: &Path| self.root.join(p.strip_prefix("/").unwrap_or(p));
        let mut steps = Vec::new();
        let mut made: Vec<PathBuf> = Vec::new();
        let mut mkdirs = |p: &Path, steps: &mut Vec<Step>| -> io::Result<()> {
            let mut at = self.root.clone();
            for comp in p.strip_prefix("/").unwrap_or(p).components() {
                at.push(comp);
                if !made.contains(&at) {
                    made.push(at.clone());
                    steps.push(Step::Mkdir(c(&at)?));
                }
            }
            Ok(())
        };
        for (link, target) in &self.symlinks {
            if let Some(parent) = link.parent() {
                mkdirs(parent, &mut steps)?;
            }
            steps.push(Step::Symlink { target: c(target)?, link: c(&inside(link))? });
        }
        for b in &self.binds {
            let dst = inside(&b.path);
            if b.dir {
                mkdirs(&b.path, &mut steps)?;
            } else {
                if let Some(parent) = b.path.parent() {
                    mkdirs(parent, &mut steps)?;
                }
                steps.push(Step::Touch(c(&dst)?));
            }
            steps.push(Step::Bind { src: c(&b.path)?, dst: c(&dst)?, writable: b.writable });
        }
        Ok(Prepared {
            root: c(&self.root)?,
            steps,
            procs: self.cgroup_procs.iter().map(|p| c(p)).collect::<io::Result<_>>()?,
            cwd: c(&self.cwd)?,
            uid: self.uid,
            gid: self.gid,
            groups: std::iter::once(self.gid).chain(self.groups.iter().copied()).collect(),
            max_file_bytes: self.max_file_bytes,
        })
    }
}

/// One step of building the jail's file tree.
#[derive(Debug)]
enum Step {
    Mkdir(CString),
    Touch(CString),
    Symlink { target: CString, link: CString },
    Bind { src: CString, dst: CString, writable: bool },
}

/// A plan ready to be entered in a forked child.
#[derive(Debug)]
pub struct Prepared {
    root: CString,
    steps: Vec<Step>,
    procs: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    /// `gid` first, then the supplementary groups.
    groups: Vec<libc::gid_t>,
    max_file_bytes: u64,
}

/// Writes "kiln jail: <what> failed" to stderr (the VMM's stderr file) without allocating.
fn fail(what: &'static [u8]) -> io::Error {
    let err = io::Error::last_os_error();
    // SAFETY: write(2) on fd 2 with valid buffers; its result is irrelevant.
    unsafe {
        libc::write(2, b"kiln jail: ".as_ptr().cast(), 11);
        libc::write(2, what.as_ptr().cast(), what.len());
        libc::write(2, b" failed\n".as_ptr().cast(), 8);
    }
    err
}

fn check(r: libc::c_int, what: &'static [u8]) -> io::Result<()> {
    if r < 0 {
        Err(fail(what))
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Enters the jail. Runs in the child after `fork`: system calls only.
    ///
    /// # Safety
    /// Call only in a freshly forked child that is about to `exec`.
    pub unsafe fn enter(&self) -> io::Result<()> {
        // SAFETY: every pointer is to a NUL-terminated string owned by `self`, which
        // outlives the calls; the calls neither allocate nor take locks.
        unsafe {
            use libc::*;
            let null = std::ptr::null::<c_char>();
            for p in &self.procs {
                let fd = open(p.as_ptr(), O_WRONLY | O_CLOEXEC);
                check(fd, b"opening cgroup.procs")?;
                let n = write(fd, b"0".as_ptr().cast(), 1);
                close(fd);
                if n != 1 {
                    return Err(fail(b"joining the cgroup"));
                }
            }
            check(unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), b"unshare")?;
            check(mount(null, c"/".as_ptr(), null, MS_REC | MS_PRIVATE, std::ptr::null()), b"making mounts private")?;
            check(
                mount(c"kiln-jail".as_ptr(), self.root.as_ptr(), c"tmpfs".as_ptr(), MS_NOSUID, c"mode=0755,size=1m".as_ptr().cast()),
                b"mounting the jail root",
            )?;
            for s in &self.steps {
                match s {
                    Step::Mkdir(p) => {
                        if mkdir(p.as_ptr(), 0o755) < 0 && *__errno_location() != EEXIST {
                            return Err(fail(b"mkdir in the jail"));
                        }
                    }
                    Step::Touch(p) => {
                        let fd = open(p.as_ptr(), O_CREAT | O_WRONLY | O_CLOEXEC, 0o644);
                        check(fd, b"creating a mount point")?;
                        close(fd);
                    }
                    Step::Symlink { target, link } => check(symlink(target.as_ptr(), link.as_ptr()), b"symlink in the jail")?,
                    Step::Bind { src, dst, writable } => {
                        check(mount(src.as_ptr(), dst.as_ptr(), null, MS_BIND, std::ptr::null()), b"bind mount")?;
                        let ro = if *writable { 0 } else { MS_RDONLY };
                        check(
                            mount(null, dst.as_ptr(), null, MS_BIND | MS_REMOUNT | MS_NOSUID | ro, std::ptr::null()),
                            b"remounting a bind mount",
                        )?;
                    }
                }
            }
            check(chdir(self.root.as_ptr()), b"chdir to the jail root")?;
            check(syscall(SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int, b"pivot_root")?;
            check(umount2(c".".as_ptr(), MNT_DETACH), b"detaching the old root")?;
            check(chdir(c"/".as_ptr()), b"chdir /")?;
            check(mount(null, c"/".as_ptr(), null, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, std::ptr::null()), b"making the jail root read-only")?;
            check(chdir(self.cwd.as_ptr()), b"chdir to the run folder")?;
            let lim = rlimit { rlim_cur: self.max_file_bytes, rlim_max: self.max_file_bytes };
            check(setrlimit(RLIMIT_FSIZE, &lim), b"setrlimit")?;
            // No core dump: it would hold guest RAM, and the secrets in it.
            let none = rlimit { rlim_cur: 0, rlim_max: 0 };
            check(setrlimit(RLIMIT_CORE, &none), b"setrlimit core")?;
            // Past the limit writes fail with EFBIG instead of killing the VMM.
            signal(SIGXFSZ, SIG_IGN);
            check(setgroups(self.groups.len(), self.groups.as_ptr()), b"setgroups")?;
            check(setresgid(self.gid, self.gid, self.gid), b"setresgid")?;
            // Leaving uid 0 clears the permitted, effective and ambient capabilities.
            check(setresuid(self.uid, self.uid, self.uid), b"setresuid")?;
            check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), b"no_new_privs")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> JailPlan {
        JailPlan {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
            root: "/run/k/sbx/.jail".into(),
            binds: vec![Bind { path: "/usr".into(), writable: false, dir: true }, Bind { path: "/run/k/sbx".into(), writable: true, dir: true }],
            symlinks: vec![("/lib".into(), "usr/lib".into())],
            cgroup_procs: vec!["/cg/kiln/vmm-1/cgroup.procs".into()],
            max_file_bytes: 1 << 30,
            cwd: "/run/k/sbx".into(),
        }
    }

    #[test]
    fn covered_files_are_not_bound_twice() {
        let mut p = plan();
        p.add(Path::new("/run/k/sbx/overlay.qcow2"), true, false).unwrap();
        p.add(Path::new("/store/kernel"), false, false).unwrap();
        p.add(Path::new("/store/kernel"), false, false).unwrap();
        assert_eq!(p.binds.len(), 3);
        let e = p.add(Path::new("/usr/x"), true, false).unwrap_err();
        assert!(e.contains("read-only /usr"), "{e}");
    }

    #[test]
    fn overlapping_and_relative_paths_are_refused() {
        let mut p = plan();
        p.binds.push(Bind { path: "/run/k/sbx/inner".into(), writable: false, dir: true });
        assert!(p.check().unwrap_err().contains("overlap"));
        let mut p = plan();
        p.binds.push(Bind { path: "/a/../etc/shadow".into(), writable: false, dir: false });
        assert!(p.check().is_err());
    }

    #[test]
    fn steps_create_each_mount_point_once_under_the_root() {
        let mut p = plan();
        p.add(Path::new("/store/kernel"), false, false).unwrap();
        p.add(Path::new("/store/initrd"), false, false).unwrap();
        let s = format!("{:?}", p.prepare().unwrap().steps);
        assert_eq!(s.matches("Mkdir(\"/run/k/sbx/.jail/store\")").count(), 1, "{s}");
        assert!(s.contains("Touch(\"/run/k/sbx/.jail/store/kernel\")"), "{s}");
        assert!(s.contains("Bind { src: \"/usr\", dst: \"/run/k/sbx/.jail/usr\", writable: false }"), "{s}");
        assert!(s.contains("Symlink { target: \"usr/lib\", link: \"/run/k/sbx/.jail/lib\" }"), "{s}");
    }
}
