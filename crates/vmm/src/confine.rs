//! Whether and how VMMs are confined: the host check (`kiln doctor`, `kiln serve` at start),
//! the policy (`KILN_CONFINE`), and turning a [`VmSpec`] into a jail and a cgroup.
//!
//! Confinement is required by default. When it cannot be set up (not root, no namespaces, no
//! cgroup controllers, a QEMU without seccomp) kiln refuses to start VMs and says why; the
//! user may opt out explicitly with `KILN_CONFINE=off`, which is for trusted code only.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::accel::Accel;
use crate::cgroup::{vm_cgroup_name, CgroupLimits, Layout, VmCgroup};
use crate::driver::{Memory, VmSpec};
use crate::error::VmError;
use crate::hostops::{HostOps, RealHost};
use crate::jail::{JailPlan, Prepared};

/// First uid of the range VMMs run as (one uid per VMM, from 65,536); their shared group is
/// this number. Overridden by `KILN_VMM_UID_BASE`.
pub const DEFAULT_UID_BASE: u32 = 1_900_000_000;
/// How many uids the range has.
pub const UID_RANGE: u32 = 65_536;
/// Memory a VMM may use beyond guest RAM under TCG (translated code, device state, I/O
/// buffers) and under KVM.
pub const OVERHEAD_TCG_MIB: u64 = 384;
/// See [`OVERHEAD_TCG_MIB`].
pub const OVERHEAD_KVM_MIB: u64 = 192;
/// Processes and threads per VMM (vCPU threads, the block-I/O thread pool, RCU, main loop).
pub const VMM_PIDS: u32 = 256;
/// Slack over the disk's virtual size for the files a VMM writes (qcow2 metadata, console).
pub const FILE_SLACK: u64 = 64 << 20;

/// The QEMU seccomp filter used for confined VMMs: no obsolete system calls, no privilege
/// changes, no process creation, no scheduler or memory-policy changes.
pub const SECCOMP: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// What `KILN_CONFINE` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Confine every VMM, refuse to start VMs otherwise (the default).
    Required,
    /// Run VMMs as kiln's own user with no jail (explicit opt-out; trusted code only).
    Off,
}

impl Policy {
    /// From `KILN_CONFINE` (`on`, the default, or `off`).
    pub fn from_env() -> Result<Policy, String> {
        match std::env::var("KILN_CONFINE").as_deref() {
            Err(_) | Ok("") | Ok("on") | Ok("required") => Ok(Policy::Required),
            Ok("off") => Ok(Policy::Off),
            Ok(other) => Err(format!("KILN_CONFINE={other} is not understood; use `on` (the default) or `off`")),
        }
    }
}

/// A host on which VMMs can be confined.
#[derive(Debug)]
pub struct Confinement {
    /// Where the cgroups go.
    pub layout: Layout,
    ops: Arc<dyn HostOps>,
    uid_base: u32,
    next: AtomicU32,
}

/// The outcome of the host check, cached per process.
pub fn host() -> Result<Arc<Confinement>, String> {
    static HOST: OnceLock<Result<Arc<Confinement>, String>> = OnceLock::new();
    HOST.get_or_init(|| Confinement::probe(Arc::new(RealHost)).map(Arc::new)).clone()
}

/// What the VMM driver should do: `Ok(Some)` confine, `Ok(None)` run unconfined (opted out),
/// `Err` refuse (confinement required but unavailable, with the reasons).
pub fn for_launch() -> Result<Option<Arc<Confinement>>, String> {
    match Policy::from_env()? {
        Policy::Off => Ok(None),
        Policy::Required => host().map(Some).map_err(|why| {
            format!("the VMM cannot be confined on this host: {why}. Run `kiln doctor` for details, or set KILN_CONFINE=off to run VMs unconfined (trusted code only)")
        }),
    }
}

/// The group a confined VMM joins to open `/dev/kvm`: the device's group when it may read and
/// write it, and it is not root's (joining group 0 would open far more than the device).
pub fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata("/dev/kvm").ok()?;
    (m.gid() != 0 && m.permissions().mode() & 0o060 == 0o060).then_some(m.gid())
}

/// Whether a confined VMM can open `/dev/kvm`; `Err` says why not.
pub fn kvm_reachable_when_confined() -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata("/dev/kvm").map_err(|e| format!("/dev/kvm: {e}"))?;
    if m.permissions().mode() & 0o006 == 0o006 || kvm_group().is_some() {
        return Ok(());
    }
    Err(format!(
        "/dev/kvm is {:o} {}:{}, so a VMM under its own uid cannot open it; make it 0660 with a group of its own (udev's `kvm` group does that), or VMs run under TCG",
        m.permissions().mode() & 0o777,
        m.uid(),
        m.gid()
    ))
}

/// Checks that a backing file is a frozen kiln image (a regular file, root's, read-only for
/// everyone). A qcow2 header names its backing file, and a VMM that got out of its guest could
/// rewrite its own overlay's header before that overlay is frozen for a fork: without this, the
/// clones' jail would bind whatever file it named (kiln's signing key, say).
fn frozen_image(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !m.file_type().is_file() {
        return Err("not a regular file".into());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me || m.mode() & 0o222 != 0 {
        return Err(format!("owned by uid {} with mode {:o}, not a frozen image (uid {me}, read-only)", m.uid(), m.mode() & 0o7777));
    }
    Ok(())
}

/// Where this host's cgroup controllers are, for this process (reads the mount table and
/// `/proc/self/cgroup`; creates and removes nothing).
pub fn detect_layout(ops: &dyn HostOps) -> Result<Layout, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Layout::detect(ops, &mountinfo, &own)
}

fn namespaces_work() -> Result<(), String> {
    crate::memo::remembered("namespaces", &crate::memo::this_boot(), || ask_namespaces().map(|()| "ok".to_owned())).map(|_| ())
}

fn ask_namespaces() -> Result<(), String> {
    let mut c = Command::new("/bin/true");
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: unshare is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match c.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("a test process in new namespaces exited with {s}")),
        Err(e) => Err(format!("cannot create mount/network/IPC/UTS namespaces: {e}")),
    }
}

fn qemu_has_seccomp(binary: &Path) -> Result<(), String> {
    match crate::memo::binary_identity(binary) {
        Some(id) => crate::memo::remembered("qemu-seccomp", &format!("{id} {SECCOMP}"), || ask_qemu_seccomp(binary).map(|()| "ok".to_owned())).map(|_| ()),
        None => ask_qemu_seccomp(binary),
    }
}

fn ask_qemu_seccomp(binary: &Path) -> Result<(), String> {
    let out = Command::new(binary).args(["-sandbox", SECCOMP, "-version"]).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("{} has no seccomp sandbox (-sandbox): {}", binary.display(), String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("cannot run {}: {e}", binary.display())),
    }
}

impl Confinement {
    /// Checks the host: root, namespaces, cgroup controllers, QEMU's seccomp support and its
    /// version (>= 8.2, for read-only frozen RAM). Creates
    /// the `kiln` cgroup(s) and removes those of dead kiln processes.
    pub fn probe(ops: Arc<dyn HostOps>) -> Result<Confinement, String> {
        let mut problems = Vec::new();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            problems.push("kiln is not running as root (it needs to create namespaces and cgroups and switch the VMM to its own uid)".to_owned());
        }
        if let Err(e) = namespaces_work() {
            problems.push(e);
        }
        let binary = crate::version::binary_from_env();
        if let Err(e) = qemu_has_seccomp(&binary) {
            problems.push(e);
        }
        match crate::version::of(&binary) {
            Ok(v) if !v.version.maps_frozen_ram_readonly() => problems.push(crate::version::old_qemu(v.version)),
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
        let layout = match detect_layout(ops.as_ref()) {
            Ok(l) => match l.prepare(ops.as_ref()) {
                Ok(()) => Some(l),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            Err(e) => {
                problems.push(e);
                None
            }
        };
        match (layout, problems.is_empty()) {
            (Some(layout), true) => {
                layout.sweep(ops.as_ref(), crate::spawn::pid_alive);
                let uid_base = std::env::var("KILN_VMM_UID_BASE").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_UID_BASE);
                let seed = (std::process::id().wrapping_mul(2_654_435_761)) % UID_RANGE;
                Ok(Confinement { layout, ops, uid_base, next: AtomicU32::new(seed) })
            }
            _ => Err(problems.join("; ")),
        }
    }

    /// The VMMs' shared group.
    pub fn gid(&self) -> u32 {
        self.uid_base
    }

    /// The cgroups of VMMs that exist now (for leak checks).
    pub fn cgroups(&self) -> Vec<std::path::PathBuf> {
        self.layout.list(self.ops.as_ref())
    }

    /// Removes the cgroups of dead kiln processes.
    pub fn sweep(&self) -> usize {
        self.layout.sweep(self.ops.as_ref(), crate::spawn::pid_alive)
    }

    fn next_uid(&self) -> u32 {
        self.uid_base + 1 + self.next.fetch_add(1, Ordering::Relaxed) % (UID_RANGE - 1)
    }

    /// The limits of a VMM for `spec`.
    pub fn limits(spec: &VmSpec) -> CgroupLimits {
        let overhead = if spec.accel == Accel::Kvm { OVERHEAD_KVM_MIB } else { OVERHEAD_TCG_MIB };
        CgroupLimits { cpus: spec.cpus, memory_bytes: (u64::from(spec.memory_mib) + overhead) << 20, pids: VMM_PIDS }
    }

    /// Gives the VM's files to a fresh uid, creates its cgroup and plans its jail.
    pub fn jail(&self, spec: &VmSpec) -> Result<(Prepared, VmCgroup), VmError> {
        let (uid, gid) = (self.next_uid(), self.gid());
        let ops = self.ops.as_ref();
        let fail = |what: String| move |e: std::io::Error| VmError::Confine(format!("{what}: {e}"));
        let run = &spec.run_dir;
        ops.chown(run, uid, gid).map_err(fail(format!("chown {}", run.display())))?;
        ops.chmod(run, 0o700).map_err(fail(format!("chmod {}", run.display())))?;
        let root = run.join(".jail");
        std::fs::create_dir(&root).map_err(fail(format!("create {}", root.display())))?;

        let (binds, symlinks) = JailPlan::system(spec.accel == Accel::Kvm);
        // /dev/kvm is usually 0660 root:kvm: the VMM joins its group (and gets nothing else).
        let groups = if spec.accel == Accel::Kvm {
            kvm_group().into_iter().collect()
        } else {
            Vec::new()
        };
        let mut plan = JailPlan { uid, gid, groups, root, binds, symlinks, cgroup_procs: Vec::new(), max_file_bytes: FILE_SLACK, cwd: run.clone() };
        let bad = |e: String| VmError::Confine(e);
        plan.add(run, true, true).map_err(bad)?;
        plan.add(&spec.kernel, false, false).map_err(bad)?;
        plan.add(&spec.initrd, false, false).map_err(bad)?;
        if let Some(disk) = &spec.disk {
            ops.chown(disk, uid, gid).map_err(fail(format!("chown {}", disk.display())))?;
            let header = crate::qcow2::header(disk).map_err(fail(format!("read {}", disk.display())))?;
            if let Some(expected) = &spec.disk_backing {
                let named = header.as_ref().and_then(|h| h.backing.clone());
                if named.as_deref() != Some(expected.as_path()) {
                    return Err(VmError::Confine(format!(
                        "{} names {} as its backing file, but kiln made it over {}: its header was rewritten; refusing to show the chain to the VMM",
                        disk.display(),
                        named.map(|p| p.display().to_string()).unwrap_or_else(|| "nothing".into()),
                        expected.display()
                    )));
                }
            }
            plan.max_file_bytes = header.map(|h| h.virtual_size).unwrap_or(0).saturating_add(FILE_SLACK);
            for b in crate::qcow2::backing_chain(disk).map_err(fail(format!("read the backing chain of {}", disk.display())))? {
                frozen_image(&b).map_err(|why| VmError::Confine(format!("the disk chain of {} names {}: {why}; refusing to show it to the VMM", disk.display(), b.display())))?;
                plan.add(&b, false, false).map_err(bad)?;
            }
            plan.add(disk, true, false).map_err(bad)?;
        }
        if let Memory::File { path, shared } = &spec.memory {
            if *shared {
                // The VM's own RAM: its uid's alone. Sized here so QEMU neither creates nor
                // grows it (file writes are capped by RLIMIT_FSIZE).
                if !path.exists() {
                    let f = std::fs::File::create(path).map_err(fail(format!("create {}", path.display())))?;
                    f.set_len(u64::from(spec.memory_mib) << 20).map_err(fail(format!("size {}", path.display())))?;
                }
                ops.chown(path, uid, gid).map_err(fail(format!("chown {}", path.display())))?;
                ops.chmod(path, 0o600).map_err(fail(format!("chmod {}", path.display())))?;
                plan.add(path, true, false).map_err(bad)?;
            } else {
                // A frozen template or fork base, mapped private (copy-on-write) and opened
                // read-only (QEMU >= 8.2, `readonly=on,rom=off`): it must be root's and
                // read-only for everyone, and the VMM sees it on a read-only mount.
                frozen_image(path).map_err(|why| {
                    VmError::Confine(format!("the frozen RAM file {} is {why}; refusing to map it into a VMM", path.display()))
                })?;
                plan.add(path, false, false).map_err(bad)?;
            }
        }
        plan.check().map_err(bad)?;
        let cgroup = self.layout.create(ops, &vm_cgroup_name(run), Self::limits(spec)).map_err(|e| VmError::Confine(e.to_string()))?;
        plan.cgroup_procs = cgroup.procs_files();
        let prepared = plan.prepare().map_err(|e| {
            let _ = cgroup.remove(ops);
            VmError::Confine(e.to_string())
        })?;
        Ok((prepared, cgroup))
    }

    /// Removes a VMM's cgroup after its process has exited.
    pub fn release(&self, cgroup: &VmCgroup) {
        let _ = cgroup.remove(self.ops.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_frozen_images_may_back_a_disk() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::write(&img, b"x").unwrap();
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(frozen_image(&img), Ok(()));
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(frozen_image(&img).unwrap_err().contains("mode 600"));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        assert!(frozen_image(&link).unwrap_err().contains("regular file"));
        assert!(frozen_image(d.path()).is_err());
        assert!(frozen_image(&d.path().join("missing")).is_err());
    }
}
