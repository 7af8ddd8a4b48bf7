//! Baked snapshots of templates, and their validation.
//!
//! A snapshot is a folder `KILN_HOME/snapshots/<template>-<key>/` and a RAM file:
//! - `memory` (in [`Home::shm`], a tmpfs, as `<template>-<key>.memory`): guest RAM, written
//!   through a shared mapping while the template VM ran, then frozen (mode 0444; kiln never
//!   opens it for writing; clones map it privately, copy-on-write). A tmpfs does not survive a
//!   reboot; the snapshot is then re-baked on first use;
//! - `state`: QEMU device state (`migrate` with `x-ignore-shared`, so RAM is not in it);
//! - `disk.qcow2`: the template VM's disk overlay over the read-only rootfs image, frozen; each
//!   clone writes to its own overlay on top of it;
//! - `snapshot.json`: [`SnapshotMeta`] plus a sha256 of it, with the digests of the three files
//!   and of everything they depend on (kernel, initramfs, rootfs), the QEMU version, machine
//!   shape and accelerator. A snapshot is restored only if all of that matches.
//! - `verified`: size, mtime and inode of each file when last fully hashed, so restores skip
//!   re-hashing 256 MiB unless a file changed.
//!
//! Nothing secret is ever in a snapshot: the template VM gets no identity, environment or
//! secret before it is saved.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_image::atomic::write_atomic;
use kiln_image::store::Digest;
use kiln_image::{Home, Progress};
use kiln_vmm::driver::Memory;
use kiln_vmm::{default_driver, Accel, VmSpec};
use serde::{Deserialize, Serialize};

use crate::artifacts::BootArtifacts;
use crate::error::SandboxError;

/// Version of the snapshot folder layout and metadata.
pub const SNAPSHOT_FORMAT: u32 = 3;

/// Execs of `true` in the guest before it is saved (see `bake_into`).
const WARM_EXECS: usize = 2;
/// The files of a snapshot that are checksummed.
pub const FILES: [&str; 3] = ["memory", "state", "disk.qcow2"];

/// What a snapshot was made from and of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// What it was made from: its fields sit at the top level of the JSON, as they always did.
    #[serde(flatten)]
    pub made_of: Expected,
    /// The exact kernel command line the template booted with.
    pub cmdline: String,
    /// kiln version.
    pub kiln: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Milliseconds the bake took (boot + save).
    pub bake_ms: u64,
    /// (file name, digest, size) of each file in [`FILES`].
    pub files: Vec<(String, Digest, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    /// sha256 of the JSON of `meta`.
    checksum: String,
}

/// What a snapshot must match to be restored in this environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// Template name.
    pub template: String,
    /// Template file digest.
    pub template_source: Digest,
    /// Kernel digest.
    pub kernel: Digest,
    /// Initramfs digest.
    pub initramfs: Digest,
    /// Rootfs digest.
    pub rootfs: Digest,
    /// For a template made from an OCI image: the image's manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Digest>,
    /// QEMU version line.
    pub qemu: String,
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
}

impl Expected {
    /// What a snapshot of these artifacts, on this QEMU and shape, must say.
    pub fn new(a: &BootArtifacts, qemu: String, accel: Accel, cpus: u32, memory_mib: u32) -> Expected {
        Expected {
            template: a.template.name.clone(),
            template_source: a.template.source_digest.clone(),
            kernel: a.kernel.vmlinuz.clone(),
            initramfs: a.initramfs.clone(),
            rootfs: a.template.rootfs.clone(),
            image: a.template.image.as_ref().map(|i| i.manifest.clone()),
            qemu,
            accel,
            cpus,
            memory_mib,
        }
    }

    /// The folder name: template name plus a digest of everything that must match.
    pub fn dir_name(&self) -> String {
        let key = format!(
            "{SNAPSHOT_FORMAT}|{}|{}|{}|{}|{}{}|{}|{}|{}|{}|{}",
            self.template,
            self.template_source.hex(),
            self.kernel.hex(),
            self.initramfs.hex(),
            self.rootfs.hex(),
            self.image.as_ref().map_or(String::new(), |d| format!("|image {}", d.hex())),
            self.qemu,
            self.accel,
            self.cpus,
            self.memory_mib,
            env!("CARGO_PKG_VERSION")
        );
        format!("{}-{}", self.template, &Digest::of_bytes(key.as_bytes()).hex()[..16])
    }

    /// Every way `meta` differs from what is expected, as sentences.
    pub fn mismatches(&self, meta: &SnapshotMeta) -> Vec<String> {
        let mut v = Vec::new();
        let kiln = meta.kiln.clone();
        let mut cmp = |what: &str, have: String, want: String| {
            if have != want {
                v.push(format!("{what} is {have}, this host has {want}"));
            }
        };
        cmp("format", meta.format.to_string(), SNAPSHOT_FORMAT.to_string());
        let meta = &meta.made_of;
        cmp("QEMU version", meta.qemu.clone(), self.qemu.clone());
        cmp("accelerator", meta.accel.to_string(), self.accel.to_string());
        cmp("machine shape", format!("{} vCPU/{} MiB", meta.cpus, meta.memory_mib), format!("{} vCPU/{} MiB", self.cpus, self.memory_mib));
        cmp("template", meta.template.clone(), self.template.clone());
        cmp("template file", meta.template_source.to_string(), self.template_source.to_string());
        cmp("kernel", meta.kernel.to_string(), self.kernel.to_string());
        cmp("initramfs", meta.initramfs.to_string(), self.initramfs.to_string());
        cmp("rootfs", meta.rootfs.to_string(), self.rootfs.to_string());
        cmp("kiln version", kiln, env!("CARGO_PKG_VERSION").to_owned());
        v
    }
}

/// A snapshot that passed validation.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its folder.
    pub dir: PathBuf,
    /// Its RAM file.
    pub memory: PathBuf,
    /// Its metadata.
    pub meta: SnapshotMeta,
}

impl Snapshot {
    /// The memory file.
    pub fn memory(&self) -> PathBuf {
        self.memory.clone()
    }
    /// One of [`FILES`] by name.
    pub fn file(&self, name: &str) -> PathBuf {
        file_path(&self.dir, &self.memory, name)
    }
    /// The device state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The frozen disk overlay.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
}

/// Why a snapshot cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// None was baked for this template and environment.
    Missing,
    /// It is there but damaged or from another environment.
    Invalid(String),
}

fn fingerprint(path: &Path) -> Option<(u64, i64, i64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

fn file_path(dir: &Path, memory: &Path, name: &str) -> PathBuf {
    if name == "memory" {
        memory.to_owned()
    } else {
        dir.join(name)
    }
}

/// Loads and validates the snapshot at `dir` (RAM file `memory`) against `expected`.
pub fn load(dir: &Path, memory: &Path, expected: &Expected) -> Result<Snapshot, Unusable> {
    let record_path = dir.join("snapshot.json");
    let bytes = match std::fs::read(&record_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => return Err(Unusable::Missing),
        Err(e) => return Err(Unusable::Invalid(format!("cannot read {}: {e}", record_path.display()))),
    };
    if bytes.len() > 1 << 20 {
        return Err(Unusable::Invalid("snapshot.json is implausibly large".into()));
    }
    let record: SnapshotRecord =
        serde_json::from_slice(&bytes).map_err(|e| Unusable::Invalid(format!("snapshot.json is not valid: {e}")))?;
    let sum = meta_checksum(&record.meta);
    if sum.hex() != record.checksum {
        return Err(Unusable::Invalid("snapshot.json fails its checksum".into()));
    }
    let mismatches = expected.mismatches(&record.meta);
    if !mismatches.is_empty() {
        return Err(Unusable::Invalid(format!("snapshot does not match: {}", mismatches.join("; "))));
    }
    // Sizes always; full hashes when a file's fingerprint changed since it was last verified.
    let verified_path = dir.join("verified");
    let verified: Vec<(String, (u64, i64, i64, u64))> =
        std::fs::read(&verified_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut all_current = true;
    let mut now = Vec::new();
    for name in FILES {
        let Some((_, digest, size)) = record.meta.files.iter().find(|(n, _, _)| n == name) else {
            return Err(Unusable::Invalid(format!("snapshot.json lists no {name}")));
        };
        let path = file_path(dir, memory, name);
        let fp = fingerprint(&path).ok_or_else(|| Unusable::Invalid(format!("{name} is missing")))?;
        // Frozen files are root's (see `freeze`); one that still belongs to the uid of the VMM
        // that made it could have been changed by a later VMM given that uid again. (The RAM
        // file is given to the VMMs' group at each start, by design.)
        if name != "memory" && running_as_root() {
            let owner = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0);
            if owner != 0 {
                return Err(Unusable::Invalid(format!("{name} belongs to uid {owner}, not root")));
            }
        }
        if fp.0 != *size {
            return Err(Unusable::Invalid(format!("{name} is {} bytes, expected {size} (truncated?)", fp.0)));
        }
        if !verified.iter().any(|(n, f)| n == name && *f == fp) {
            all_current = false;
            let have = Digest::of_file(&path).map_err(|e| Unusable::Invalid(e.to_string()))?;
            if have != *digest {
                return Err(Unusable::Invalid(format!("{name} fails its checksum (damaged)")));
            }
        }
        now.push((name.to_owned(), fp));
    }
    // The disk's backing file is named by path inside the qcow2: it must still be there, and
    // be the rootfs image this snapshot was made from (a wrong disk corrupts silently).
    match kiln_vmm::qcow2::header(&dir.join("disk.qcow2")).ok().flatten().and_then(|h| h.backing) {
        Some(b) if !b.is_file() => return Err(Unusable::Invalid(format!("disk.qcow2's backing file {} is gone", b.display()))),
        Some(b) if b.file_name().and_then(|n| n.to_str()) != Some(expected.rootfs.hex()) => {
            return Err(Unusable::Invalid(format!("disk.qcow2 rests on {}, not on rootfs {}", b.display(), expected.rootfs)))
        }
        Some(_) => {}
        None => return Err(Unusable::Invalid("disk.qcow2 names no backing file".into())),
    }
    if !all_current {
        let _ = write_atomic(&verified_path, &serde_json::to_vec(&now).expect("json"));
    }
    Ok(Snapshot { dir: dir.to_owned(), memory: memory.to_owned(), meta: record.meta })
}

/// sha256 of the metadata's canonical JSON (keys sorted), as stored in `snapshot.json`.
pub fn meta_checksum(meta: &SnapshotMeta) -> Digest {
    let value = serde_json::to_value(meta).expect("json");
    Digest::of_bytes(&serde_json::to_vec(&value).expect("json"))
}

/// Finds the snapshot for `expected`.
pub fn find(home: &Home, expected: &Expected) -> Result<Snapshot, Unusable> {
    load(&home.snapshots().join(expected.dir_name()), &memory_path(home, expected), expected)
}

/// Where the RAM file of the snapshot for `expected` lives.
pub fn memory_path(home: &Home, expected: &Expected) -> PathBuf {
    home.shm().join(format!("{}.memory", expected.dir_name()))
}

/// Creates a qcow2 overlay over `base` (format `base_format`). qcow2 records the backing file's
/// path, so it is recorded with symbolic links resolved: an overlay made through a linked folder
/// must not depend on the link (or the folder holding it) staying around.
/// Returns the backing file as recorded.
pub fn create_overlay(base: &Path, base_format: &str, overlay: &Path) -> Result<PathBuf, SandboxError> {
    let base = &std::fs::canonicalize(base).map_err(|source| SandboxError::Io { what: format!("resolve {}", base.display()), source })?;
    // Written here rather than by `qemu-img create` (a process start on every create); the
    // image is the same (see `kiln_vmm::overlay`).
    let size = match base_format {
        "qcow2" => kiln_vmm::qcow2::header(base).ok().flatten().map(|h| h.virtual_size),
        _ => std::fs::metadata(base).ok().map(|m| m.len()),
    }
    .ok_or_else(|| SandboxError::Tool { tool: "qcow2 overlay".into(), detail: format!("cannot read the size of {}", base.display()) })?;
    kiln_vmm::overlay::create_overlay(overlay, base, base_format, size).map_err(|source| SandboxError::Io { what: format!("create {}", overlay.display()), source })?;
    Ok(base.clone())
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

/// Cold-boots the template once, syncs, pauses, and saves it as a snapshot; publishes the
/// folder atomically (a half-written bake is never found). Replaces an invalid snapshot.
pub async fn bake(
    home: &Home,
    artifacts: &BootArtifacts,
    expected: &Expected,
    boot_timeout: Duration,
    progress: Progress<'_>,
) -> Result<Snapshot, SandboxError> {
    let _lock = kiln_image::lock::FileLock::acquire(&home.locks().join(format!("bake-{}.lock", expected.dir_name())))?;
    let final_dir = home.snapshots().join(expected.dir_name());
    let final_mem = memory_path(home, expected);
    if let Ok(s) = load(&final_dir, &final_mem, expected) {
        return Ok(s); // baked by someone else while we waited
    }
    let t0 = Instant::now();
    progress(&format!("baking a snapshot of template {} ({} vCPU, {} MiB, {})", expected.template, expected.cpus, expected.memory_mib, expected.accel));
    // Unique even for two bakes in one process (homes that share a snapshots folder); the pid
    // comes last so a sweep can tell an abandoned bake.
    let tag = format!("{}-{}-{}", expected.dir_name(), crate::random::hex(3), std::process::id());
    let tmp = home.snapshots().join(format!(".bake-{tag}"));
    let tmp_mem = home.shm().join(format!(".bake-{tag}.memory"));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp_mem);
    std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    home.ensure_shm().map_err(io(format!("create {}", home.shm().display())))?;
    let need = u64::from(expected.memory_mib) << 20;
    if let Some(free) = free_bytes(home.shm()).filter(|f| *f < need) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(SandboxError::Io {
            what: format!(
                "not enough space to bake a snapshot of template {}: its RAM file needs {} MiB in {} and only {} MiB are free; free some, or set KILN_SHM_DIR to a larger tmpfs",
                expected.template,
                need >> 20,
                home.shm().display(),
                free >> 20
            ),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
    }
    let result = bake_into(home, artifacts, expected, &tmp, &tmp_mem, boot_timeout).await.map_err(|e| disk_full(home, &expected.template, e));
    let meta = match result {
        Ok(mut meta) => {
            meta.bake_ms = t0.elapsed().as_millis() as u64;
            meta
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_file(&tmp_mem);
            return Err(e);
        }
    };
    let checksum = meta_checksum(&meta).hex().to_owned();
    let record = SnapshotRecord { meta, checksum };
    let publish = (|| -> Result<(), SandboxError> {
        write_atomic(&tmp.join("snapshot.json"), &serde_json::to_vec_pretty(&record).expect("json"))?;
        // The RAM file moves first: a folder without its RAM file is never used.
        std::fs::rename(&tmp_mem, &final_mem).map_err(io(format!("publish {}", final_mem.display())))?;
        let verified: Vec<(String, (u64, i64, i64, u64))> =
            FILES.iter().filter_map(|n| Some(((*n).to_owned(), fingerprint(&file_path(&tmp, &final_mem, n))?))).collect();
        write_atomic(&tmp.join("verified"), &serde_json::to_vec(&verified).expect("json"))?;
        if final_dir.exists() {
            // An invalid snapshot: move it aside first; running clones keep their open files.
            let old = home.snapshots().join(format!(".old-{}-{}", expected.dir_name(), crate::random::hex(4)));
            std::fs::rename(&final_dir, &old).map_err(io(format!("move aside {}", final_dir.display())))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(format!("publish {}", final_dir.display())))
    })();
    if let Err(e) = publish {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(&tmp_mem);
        return Err(e);
    }
    prune(home, expected);
    progress(&format!("snapshot {} baked in {:.1}s", expected.dir_name(), t0.elapsed().as_secs_f64()));
    Ok(Snapshot { dir: final_dir, memory: final_mem, meta: record.meta })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes a file that clones will share read-only and root's: while a VM ran, it belonged to
/// that VM's uid, which a later VMM may be given again. By descriptor, never through a link
/// the VMM could have planted (see [`kiln_fs::freeze`]).
pub(crate) fn freeze(path: &Path) -> std::io::Result<()> {
    kiln_fs::freeze(path)
}

/// Free bytes for an unprivileged writer in the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A bake that failed while a folder it writes to is (nearly) full failed because of that:
/// say so, with the free space, instead of QEMU's or the guest's view of it.
fn disk_full(home: &Home, template: &str, e: SandboxError) -> SandboxError {
    const NEARLY_FULL: u64 = 4 << 20;
    let full: Vec<String> = [home.snapshots(), home.shm().to_path_buf()]
        .iter()
        .filter_map(|d| free_bytes(d).filter(|f| *f < NEARLY_FULL).map(|f| format!("{} ({} KiB free)", d.display(), f >> 10)))
        .collect();
    if full.is_empty() {
        return e;
    }
    SandboxError::Io {
        what: format!("baking a snapshot of template {template} failed: the disk is full: {}; nothing was kept (cause: {e})", full.join(", ")),
        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
    }
}

/// Removes older snapshots of the same template and machine shape (made from other artifacts
/// or another QEMU): they can never be used again. Running clones keep their open files.
fn prune(home: &Home, expected: &Expected) {
    let keep = expected.dir_name();
    let prefix = format!("{}-", expected.template);
    for e in std::fs::read_dir(home.snapshots()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == keep || !name.starts_with(&prefix) || name[prefix.len()..].contains('-') {
            continue;
        }
        let Some(meta) = std::fs::read(e.path().join("snapshot.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<SnapshotRecord>(&b).ok())
            .map(|r| r.meta)
        else {
            continue;
        };
        let m = &meta.made_of;
        if m.cpus == expected.cpus && m.memory_mib == expected.memory_mib && m.accel == expected.accel {
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_file(home.shm().join(format!("{name}.memory")));
        }
    }
}

async fn bake_into(
    home: &Home,
    a: &BootArtifacts,
    expected: &Expected,
    dir: &Path,
    memory: &Path,
    boot_timeout: Duration,
) -> Result<SnapshotMeta, SandboxError> {
    let disk = dir.join("disk.qcow2");
    let backing = create_overlay(&a.rootfs_path, "raw", &disk)?;
    let memory = memory.to_owned();
    let cmdline = a.kernel.cmdline(kiln_image::kernel::host_tsc_khz(), "kiln.root=/dev/vda kiln.hostname=kiln-template");
    let run_dir = home.run().join(format!("bake-{}", crate::random::hex(4)));
    crate::cleanup::make_owned_dir(&run_dir).map_err(io(format!("create {}", run_dir.display())))?;
    let spec = VmSpec {
        kernel: a.kernel_path.clone(),
        initrd: a.initrd_path.clone(),
        cmdline: cmdline.clone(),
        cpus: expected.cpus,
        memory_mib: expected.memory_mib,
        accel: expected.accel,
        disk: Some(disk.clone()),
        disk_backing: Some(backing),
        run_dir,
        memory: Memory::File { path: memory.clone(), shared: true },
        incoming: false,
    };
    let mut vm = default_driver().launch(spec)?;
    let (agent, _info, _died) = crate::attach::attach(vm.as_ref(), boot_timeout).await?;
    // The exec path once, so that the guest state it leaves (the agent's and the command's
    // pages mapped and cached, the kernel's caches of processes filled) is in the snapshot
    // and a sandbox's first command does not make it afresh. Nothing of a job's: kiln's own
    // `true`, before any identity or secret exists.
    for _ in 0..WARM_EXECS {
        let o = agent.exec(crate::exec::ExecRequest::argv(["true"]).timeout(boot_timeout), |_| {}).await?;
        if o.exit_code() != 0 {
            return Err(SandboxError::Protocol(format!("`true` exited {} while baking the snapshot", o.exit_code())));
        }
    }
    // Flush the guest's dirty pages now, or every clone would inherit and rewrite them.
    agent.sync().await?;
    vm.pause().await?;
    vm.save_state(&dir.join("state")).await?;
    vm.quit().await.ok();
    vm.kill();
    let mut files = Vec::new();
    for name in FILES {
        let p = file_path(dir, &memory, name);
        freeze(&p).map_err(io(format!("freeze {}", p.display())))?;
        let size = std::fs::metadata(&p).map_err(io(format!("stat {}", p.display())))?.len();
        files.push((name.to_owned(), Digest::of_file(&p)?, size));
    }
    Ok(SnapshotMeta {
        format: SNAPSHOT_FORMAT,
        made_of: expected.clone(),
        cmdline,
        kiln: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: kiln_image::BuiltTemplate::now(),
        bake_ms: 0,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        let d = Digest::of_bytes(b"x");
        Expected {
            template: "tiny".into(),
            template_source: d.clone(),
            kernel: d.clone(),
            initramfs: d.clone(),
            rootfs: d,
            image: None,
            qemu: "QEMU 7.2".into(),
            accel: Accel::Tcg,
            cpus: 1,
            memory_mib: 256,
        }
    }

    fn meta_for(e: &Expected) -> SnapshotMeta {
        SnapshotMeta {
            format: SNAPSHOT_FORMAT,
            made_of: e.clone(),
            cmdline: String::new(),
            kiln: env!("CARGO_PKG_VERSION").into(),
            created_at: 0,
            bake_ms: 0,
            files: vec![],
        }
    }

    /// snapshot.json as kiln wrote it before `made_of` was flattened in: it must still load,
    /// serialize back to the same JSON, and so keep its checksum.
    #[test]
    fn snapshot_json_layout_is_unchanged() {
        let d = Digest::of_bytes(b"x").hex().to_owned();
        let text = format!(
            r#"{{"format":2,"template":"tiny","template_source":"{d}","kernel":"{d}","initramfs":"{d}","rootfs":"{d}","qemu":"QEMU 7.2","accel":"tcg","cpus":1,"memory_mib":256,"cmdline":"console=ttyS0","kiln":"0.1.0","created_at":7,"bake_ms":9,"files":[["memory","{d}",4096]]}}"#
        );
        let old: serde_json::Value = serde_json::from_str(&text).unwrap();
        let meta: SnapshotMeta = serde_json::from_str(&text).unwrap();
        assert_eq!(meta.made_of, expected());
        assert_eq!((meta.cmdline.as_str(), meta.bake_ms, meta.files.len()), ("console=ttyS0", 9, 1));
        assert_eq!(serde_json::to_value(&meta).unwrap(), old);
        assert_eq!(meta_checksum(&meta), Digest::of_bytes(&serde_json::to_vec(&old).unwrap()));
    }

    #[test]
    fn mismatches_are_named() {
        let e = expected();
        assert!(e.mismatches(&meta_for(&e)).is_empty());
        let mut m = meta_for(&e);
        m.made_of.qemu = "QEMU 8.0".into();
        m.made_of.memory_mib = 512;
        let v = e.mismatches(&m);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("QEMU version is QEMU 8.0"), "{v:?}");
        assert!(v[1].contains("512 MiB"), "{v:?}");
    }

    #[test]
    #[ignore = "needs QEMU: run `make test`, or `cargo test -- --include-ignored` once `make deps` installed it"]
    fn overlays_record_the_resolved_backing_path() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("base.img"), vec![0u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let overlay = t.path().join("o.qcow2");
        create_overlay(&t.path().join("link/base.img"), "raw", &overlay).unwrap();
        let backing = |p: &Path| kiln_vmm::qcow2::header(p).unwrap().and_then(|h| h.backing);
        assert_eq!(backing(&overlay).unwrap(), std::fs::canonicalize(real.join("base.img")).unwrap());
        assert_eq!(backing(&real.join("base.img")), None);
    }

    #[test]
    fn dir_name_depends_on_shape() {
        let e = expected();
        let mut e2 = e.clone();
        e2.cpus = 2;
        assert_ne!(e.dir_name(), e2.dir_name());
        assert!(e.dir_name().starts_with("tiny-"));
    }

    #[test]
    fn missing_and_damaged_records() {
        let t = tempfile::tempdir().unwrap();
        let e = expected();
        let mem = t.path().join("m");
        assert_eq!(load(&t.path().join("none"), &mem, &e).unwrap_err(), Unusable::Missing);
        std::fs::write(t.path().join("snapshot.json"), b"{not json").unwrap();
        assert!(matches!(load(t.path(), &mem, &e), Err(Unusable::Invalid(m)) if m.contains("not valid")));
        let record = SnapshotRecord { meta: meta_for(&e), checksum: "0".repeat(64) };
        std::fs::write(t.path().join("snapshot.json"), serde_json::to_vec(&record).unwrap()).unwrap();
        assert!(matches!(load(t.path(), &mem, &e), Err(Unusable::Invalid(m)) if m.contains("checksum")));
    }
}
