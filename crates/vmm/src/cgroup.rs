//! One cgroup per VMM process, with CPU, memory and process-count limits.
//!
//! cgroup v2 is used when its `cpu`, `memory` and `pids` controllers are available; a host
//! that still binds them to cgroup v1 hierarchies (a "hybrid" host, such as the one kiln is
//! developed on) gets the same limits through v1. Either way the VMM cgroups live under a
//! `kiln` group below the cgroup kiln itself runs in (so a service manager's accounting of
//! kiln still covers its VMs), named `vmm-<kiln pid>-<run folder>` so a later kiln can remove
//! the ones a crashed kiln left behind.

use std::io;
use std::path::{Path, PathBuf};

use crate::hostops::HostOps;

/// The limits of one VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// vCPUs: the VMM may use this many CPUs' worth of time.
    pub cpus: u32,
    /// Bytes of memory (guest RAM plus the VMM's own overhead).
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u32,
}

/// Where the controllers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy: the `kiln` group in it.
    V2 {
        /// `<mount>/<kiln's own cgroup>/kiln`.
        parent: PathBuf,
    },
    /// Separate hierarchies per controller: the `kiln` group in each.
    V1 {
        /// `<memory mount>/<own>/kiln`.
        memory: PathBuf,
        /// `<cpu mount>/<own>/kiln`.
        cpu: PathBuf,
        /// `<pids mount>/<own>/kiln`.
        pids: PathBuf,
    },
}

/// A VMM's cgroup (one directory per hierarchy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    /// The cgroup directories.
    pub dirs: Vec<PathBuf>,
}

impl VmCgroup {
    /// The `cgroup.procs` files a process writes `0` to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the cgroup (its processes must have exited). Retries briefly: the last thread
    /// of a killed process can take a moment to leave.
    pub fn remove(&self, ops: &dyn HostOps) -> io::Result<()> {
        let mut last = Ok(());
        for d in &self.dirs {
            for attempt in 0..50 {
                match ops.rmdir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if attempt < 49 && e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(10)),
                    Err(e) => {
                        last = Err(io::Error::new(e.kind(), format!("remove cgroup {}: {e}", d.display())));
                        break;
                    }
                }
            }
        }
        last
    }
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    point: PathBuf,
    v2: bool,
    /// Super options (v1: the controllers bound to it).
    options: Vec<String>,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let point = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next().unwrap_or(""), r.next(), r.next().unwrap_or(""));
        if fstype == "cgroup" || fstype == "cgroup2" {
            out.push(CgroupMount {
                point: PathBuf::from(point.replace("\\040", " ")),
                v2: fstype == "cgroup2",
                options: opts.split(',').map(str::to_owned).collect(),
            });
        }
    }
    out
}

/// kiln's own cgroup per hierarchy, from `/proc/self/cgroup` ("0::/path" for v2,
/// "4:memory:/path" for v1).
fn own_cgroup(proc_cgroup: &str, controller: Option<&str>) -> String {
    for line in proc_cgroup.lines() {
        let mut p = line.splitn(3, ':');
        let (_, ctrls, path) = (p.next(), p.next().unwrap_or(""), p.next().unwrap_or("/"));
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        if hit {
            return path.to_owned();
        }
    }
    "/".to_owned()
}

fn under(mount: &Path, own: &str) -> PathBuf {
    mount.join(own.trim_start_matches('/')).join("kiln")
}

/// A control file, its value, and whether failing to write it is an error.
type ControlWrite = (&'static str, String, bool);

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

impl Layout {
    /// Finds the controllers from the host's mount table and kiln's own cgroup membership.
    /// `Err` says what is missing.
    pub fn detect(ops: &dyn HostOps, mountinfo: &str, proc_cgroup: &str) -> Result<Layout, String> {
        let mounts = cgroup_mounts(mountinfo);
        let mut v2_note = "no cgroup2 file system is mounted".to_owned();
        if let Some(m) = mounts.iter().find(|m| m.v2) {
            let have = ops.read(&m.point.join("cgroup.controllers")).unwrap_or_default();
            let have: Vec<&str> = have.split_whitespace().collect();
            let missing: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| !have.contains(c)).collect();
            if missing.is_empty() {
                return Ok(Layout::V2 { parent: under(&m.point, &own_cgroup(proc_cgroup, None)) });
            }
            v2_note = format!("cgroup v2 at {} lacks the {} controller(s)", m.point.display(), missing.join(", "));
        }
        let v1 = |c: &str| mounts.iter().find(|m| !m.v2 && m.options.iter().any(|o| o == c)).map(|m| under(&m.point, &own_cgroup(proc_cgroup, Some(c))));
        match (v1("memory"), v1("cpu"), v1("pids")) {
            (Some(memory), Some(cpu), Some(pids)) => Ok(Layout::V1 { memory, cpu, pids }),
            _ => Err(format!("{v2_note}, and cgroup v1 does not have all of cpu, memory and pids mounted either")),
        }
    }

    /// Short name for messages: "cgroup v2" or "cgroup v1 (hybrid host)".
    pub fn describe(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "cgroup v2",
            Layout::V1 { .. } => "cgroup v1 (cpu, memory, pids are bound to v1 on this host)",
        }
    }

    /// The `kiln` parent group(s).
    pub fn parents(&self) -> Vec<&Path> {
        match self {
            Layout::V2 { parent } => vec![parent],
            Layout::V1 { memory, cpu, pids } => vec![memory, cpu, pids],
        }
    }

    /// Creates the `kiln` parent group(s) and, on v2, enables the controllers for its children.
    pub fn prepare(&self, ops: &dyn HostOps) -> io::Result<()> {
        for p in self.parents() {
            ops.mkdir(p).map_err(|e| io::Error::new(e.kind(), format!("create cgroup {}: {e}", p.display())))?;
        }
        if let Layout::V2 { parent } = self {
            let own = parent.parent().unwrap_or(parent);
            let enable = "+cpu +memory +pids";
            if let Err(e) = ops.write(&own.join("cgroup.subtree_control"), enable) {
                // "No internal processes": a group with processes cannot hand controllers to
                // its children. Move kiln itself into a leaf of its own, then retry.
                if e.raw_os_error() != Some(libc::EBUSY) {
                    return Err(io::Error::new(e.kind(), format!("enable controllers in {}: {e}", own.display())));
                }
                let leaf = own.join("kiln-supervisor");
                ops.mkdir(&leaf)?;
                ops.write(&leaf.join("cgroup.procs"), "0")?;
                ops.write(&own.join("cgroup.subtree_control"), enable)?;
            }
            ops.write(&parent.join("cgroup.subtree_control"), enable)
                .map_err(|e| io::Error::new(e.kind(), format!("enable controllers in {}: {e}", parent.display())))?;
        }
        Ok(())
    }

    /// Creates the cgroup `name` with `limits`. Nothing is left behind on failure.
    pub fn create(&self, ops: &dyn HostOps, name: &str, limits: CgroupLimits) -> io::Result<VmCgroup> {
        let quota = u64::from(limits.cpus.max(1)) * 100_000;
        let writes: Vec<(PathBuf, Vec<ControlWrite>)> = match self {
            Layout::V2 { parent } => vec![(
                parent.join(name),
                vec![
                    ("cpu.max", format!("{quota} 100000"), true),
                    ("memory.max", limits.memory_bytes.to_string(), true),
                    ("memory.swap.max", "0".into(), false),
                    ("pids.max", limits.pids.to_string(), true),
                ],
            )],
            Layout::V1 { memory, cpu, pids } => vec![
                (
                    memory.join(name),
                    vec![
                        ("memory.limit_in_bytes", limits.memory_bytes.to_string(), true),
                        ("memory.memsw.limit_in_bytes", limits.memory_bytes.to_string(), false),
                    ],
                ),
                (cpu.join(name), vec![("cpu.cfs_period_us", "100000".into(), true), ("cpu.cfs_quota_us", quota.to_string(), true)]),
                (pids.join(name), vec![("pids.max", limits.pids.to_string(), true)]),
            ],
        };
        let cg = VmCgroup { dirs: writes.iter().map(|(d, _)| d.clone()).collect() };
        let result = (|| {
            for (dir, files) in &writes {
                ops.mkdir(dir).map_err(|e| io::Error::new(e.kind(), format!("create cgroup {}: {e}", dir.display())))?;
                for (file, value, required) in files {
                    match ops.write(&dir.join(file), value) {
                        Err(e) if *required => {
                            return Err(io::Error::new(e.kind(), format!("set {} to {value}: {e}", dir.join(file).display())));
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(cg),
            Err(e) => {
                let _ = cg.remove(ops);
                Err(e)
            }
        }
    }

    /// The VMM cgroups that exist now (all hierarchies), for leak checks.
    pub fn list(&self, ops: &dyn HostOps) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in self.parents() {
            for n in ops.subdirs(p).unwrap_or_default() {
                if n.starts_with("vmm-") {
                    out.push(p.join(n));
                }
            }
        }
        out
    }

    /// Removes the cgroups of kiln processes that are no longer alive (`alive(pid)`); returns
    /// how many were removed.
    pub fn sweep(&self, ops: &dyn HostOps, alive: impl Fn(u32) -> bool) -> usize {
        let mut removed = 0;
        for dir in self.list(ops) {
            let owner = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("vmm-")).and_then(|n| n.split('-').next()).and_then(|p| p.parse().ok());
            if owner.is_some_and(|pid| !alive(pid)) && rmdir_when_empty(ops, &dir) {
                removed += 1;
            }
        }
        removed
    }
}

/// Removes a dead owner's cgroup. Its VMMs should have died with their owner; any still in it
/// (one still tearing down its address space, or one that escaped its death signal) is
/// killed, and the group removed once it is empty (up to 2 s).
fn rmdir_when_empty(ops: &dyn HostOps, dir: &Path) -> bool {
    for _ in 0..200 {
        match ops.rmdir(dir) {
            Ok(()) => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                for pid in ops.read(&dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()) {
                    let _ = ops.kill(pid);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
    false
}

/// The cgroup name of a VMM started by this process for run folder `run_dir`.
pub fn vm_cgroup_name(run_dir: &Path) -> String {
    let leaf = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let leaf: String = leaf.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("vmm-{}-{leaf}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostops::FakeHost;

    const HYBRID: &str = "\
33 25 0:28 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
34 33 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
36 33 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 33 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
42 33 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn hybrid_host_uses_v1_under_its_own_groups() {
        let ops = FakeHost::with(&[], &[("/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")]);
        let l = Layout::detect(&ops, HYBRID, "8:pids:/\n4:memory:/svc/abc\n1:cpu:/\n0::/\n").unwrap();
        assert_eq!(
            l,
            Layout::V1 {
                memory: "/sys/fs/cgroup/memory/svc/abc/kiln".into(),
                cpu: "/sys/fs/cgroup/cpu/kiln".into(),
                pids: "/sys/fs/cgroup/pids/kiln".into()
            }
        );
    }

    #[test]
    fn unified_host_uses_v2_and_says_what_is_missing() {
        let ops = FakeHost::with(&[], &[("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")]);
        let l = Layout::detect(&ops, UNIFIED, "0::/system.slice/kiln.service\n").unwrap();
        assert_eq!(l, Layout::V2 { parent: "/sys/fs/cgroup/system.slice/kiln.service/kiln".into() });
        let ops = FakeHost::with(&[], &[("/sys/fs/cgroup/cgroup.controllers", "cpu io\n")]);
        let e = Layout::detect(&ops, UNIFIED, "0::/\n").unwrap_err();
        assert!(e.contains("lacks the memory, pids controller(s)"), "{e}");
        assert!(Layout::detect(&ops, "", "").unwrap_err().contains("no cgroup2"));
    }

    #[test]
    fn v2_limits_and_a_leaf_for_kiln_when_its_group_has_processes() {
        let ops = FakeHost::with(&["/cg"], &[]);
        let l = Layout::V2 { parent: "/cg/kiln".into() };
        ops.refuse_writes_to("/cg/cgroup.subtree_control");
        // The first write is refused (EBUSY): kiln moves itself to a leaf, then retries, which
        // the fake also refuses, so prepare fails and says where.
        assert!(l.prepare(&ops).is_err());
        assert!(ops.log().contains(&"write /cg/kiln-supervisor/cgroup.procs = 0".to_owned()), "{:?}", ops.log());

        let ops = FakeHost::with(&["/cg"], &[]);
        l.prepare(&ops).unwrap();
        assert_eq!(ops.file("/cg/kiln/cgroup.subtree_control").as_deref(), Some("+cpu +memory +pids"));
        let cg = l.create(&ops, "vmm-1-sbx", CgroupLimits { cpus: 2, memory_bytes: 1 << 30, pids: 64 }).unwrap();
        assert_eq!(ops.file("/cg/kiln/vmm-1-sbx/cpu.max").as_deref(), Some("200000 100000"));
        assert_eq!(ops.file("/cg/kiln/vmm-1-sbx/memory.max").as_deref(), Some("1073741824"));
        assert_eq!(ops.file("/cg/kiln/vmm-1-sbx/memory.swap.max").as_deref(), Some("0"));
        assert_eq!(ops.file("/cg/kiln/vmm-1-sbx/pids.max").as_deref(), Some("64"));
        assert_eq!(cg.procs_files(), vec![PathBuf::from("/cg/kiln/vmm-1-sbx/cgroup.procs")]);
        cg.remove(&ops).unwrap();
        assert!(!ops.has_dir("/cg/kiln/vmm-1-sbx"));
    }

    #[test]
    fn v1_limits_and_cleanup_on_failure() {
        let ops = FakeHost::with(&["/m", "/c", "/p"], &[]);
        let l = Layout::V1 { memory: "/m/kiln".into(), cpu: "/c/kiln".into(), pids: "/p/kiln".into() };
        l.prepare(&ops).unwrap();
        l.create(&ops, "vmm-7-a", CgroupLimits { cpus: 1, memory_bytes: 5000, pids: 9 }).unwrap();
        assert_eq!(ops.file("/m/kiln/vmm-7-a/memory.limit_in_bytes").as_deref(), Some("5000"));
        assert_eq!(ops.file("/c/kiln/vmm-7-a/cpu.cfs_quota_us").as_deref(), Some("100000"));
        assert_eq!(ops.file("/p/kiln/vmm-7-a/pids.max").as_deref(), Some("9"));
        // A required write that fails removes what was created.
        ops.refuse_writes_to("/p/kiln/vmm-7-b/pids.max");
        let e = l.create(&ops, "vmm-7-b", CgroupLimits { cpus: 1, memory_bytes: 5000, pids: 9 }).unwrap_err();
        assert!(e.to_string().contains("pids.max"), "{e}");
        assert!(!ops.has_dir("/m/kiln/vmm-7-b") && !ops.has_dir("/c/kiln/vmm-7-b"));
        // Sweep removes the groups of dead owners only.
        l.create(&ops, "vmm-8-a", CgroupLimits { cpus: 1, memory_bytes: 5000, pids: 9 }).unwrap();
        assert_eq!(l.list(&ops).len(), 6);
        // A process left in a dead owner's group is killed, and the group goes.
        ops.write(std::path::Path::new("/p/kiln/vmm-7-a/cgroup.procs"), "4242\n").unwrap();
        assert_eq!(l.sweep(&ops, |pid| pid == 8), 3);
        assert!(ops.has_dir("/m/kiln/vmm-8-a") && !ops.has_dir("/m/kiln/vmm-7-a") && !ops.has_dir("/p/kiln/vmm-7-a"));
        assert!(ops.log().contains(&"kill 4242".to_owned()), "{:?}", ops.log());
        assert!(!ops.log().iter().any(|l| l.starts_with("kill") && l != "kill 4242"), "{:?}", ops.log());
    }
}
