//! The QEMU backend: `qemu-system-x86_64 -M microvm` with a virtio-serial control port, a
//! virtio-blk root disk, the serial console to a log file and a QMP socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use std::sync::Arc;

use crate::cgroup::VmCgroup;
use crate::confine::Confinement;
use crate::driver::{Driver, Memory, Vm, VmFuture, VmSpec};
use crate::error::VmError;
use crate::qmp::Qmp;
use crate::spawn::{spawn_supervised, ExitWatch};

/// The QEMU driver.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// The binary, `qemu-system-x86_64` unless `KILN_QEMU` says otherwise.
    pub binary: PathBuf,
    /// How VMMs are confined: `Ok(None)` when the user opted out, `Err` (why) when
    /// confinement is required but this host cannot provide it.
    pub confine: Result<Option<Arc<Confinement>>, String>,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu { binary: crate::version::binary_from_env(), confine: crate::confine::for_launch() }
    }
}

impl Qemu {
    /// `qemu-system-x86_64 --version`, first line (e.g. "QEMU emulator version 10.0.2 ...").
    pub fn version(&self) -> Result<String, VmError> {
        Ok(crate::version::of(&self.binary)?.line)
    }

    /// The release number of this QEMU (asked once per process).
    pub fn release(&self) -> Result<crate::version::QemuVersion, VmError> {
        Ok(crate::version::of(&self.binary)?.version)
    }

    /// The full argument list for a spec; `confined` adds the seccomp filter; `readonly_ram`
    /// (QEMU >= 8.2) opens a private RAM file read-only.
    pub fn args(spec: &VmSpec, confined: bool, readonly_ram: bool) -> Vec<String> {
        let run = |f: &str| spec.run_dir.join(f).display().to_string();
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| (*s).to_owned()));
        let machine = match &spec.memory {
            // dump-guest-core=off: a VMM crash dump never carries guest RAM (the jail also sets
            // RLIMIT_CORE to 0).
            Memory::Anonymous => "microvm,x-option-roms=off,isa-serial=on,rtc=on,dump-guest-core=off".to_owned(),
            Memory::File { .. } => "microvm,x-option-roms=off,isa-serial=on,rtc=on,dump-guest-core=off,memory-backend=mem".to_owned(),
        };
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        // qboot, which loads the kernel itself (no option ROMs). QEMU 7.2 also names it
        // `bios-microvm.bin`; Debian's QEMU 10 gives that name to SeaBIOS instead.
        push(&["-bios", "qboot.rom"]);
        if confined {
            push(&["-sandbox", crate::confine::SECCOMP]);
        }
        push(&["-M", &machine]);
        push(&spec.accel.qemu_args());
        push(&["-smp", &spec.cpus.to_string(), "-m", &format!("{}M", spec.memory_mib)]);
        if let Memory::File { path, shared } = &spec.memory {
            // A private mapping is a frozen template or fork base: opened read-only, so the VMM
            // cannot change what later clones start from (rom=off: the guest still sees RAM).
            let mode = match (*shared, readonly_ram) {
                (true, _) => "share=on",
                (false, true) => "share=off,readonly=on,rom=off",
                (false, false) => "share=off",
            };
            let obj = format!("memory-backend-file,id=mem,size={}M,mem-path={},{mode}", spec.memory_mib, path.display());
            push(&["-object", &obj]);
        }
        push(&["-kernel", &spec.kernel.display().to_string(), "-initrd", &spec.initrd.display().to_string()]);
        push(&["-append", &spec.cmdline]);
        push(&["-chardev", &format!("file,id=con,path={}", run("console.log")), "-serial", "chardev:con"]);
        push(&["-device", "virtio-serial-device"]);
        push(&["-chardev", &format!("socket,id=ctl,path={},server=on,wait=off", run("control.sock"))]);
        push(&["-device", &format!("virtserialport,chardev=ctl,name={}", kiln_proto::CONTROL_PORT)]);
        // The egress tunnel: always present, so every VM (and every snapshot) has the same
        // device layout; nothing flows unless kiln attaches a proxy to it.
        push(&["-chardev", &format!("socket,id=net,path={},server=on,wait=off", run("net.sock"))]);
        push(&["-device", &format!("virtserialport,chardev=net,name={}", kiln_proto::tunnel::NET_PORT)]);
        if let Some(disk) = &spec.disk {
            push(&["-drive", &format!("file={},if=none,id=d0,format=qcow2,cache=unsafe,discard=unmap,werror=report,rerror=report", disk.display())]);
            push(&["-device", "virtio-blk-device,drive=d0"]);
        }
        push(&["-qmp", &format!("unix:{},server=on,wait=off", run("qmp.sock"))]);
        if spec.incoming {
            push(&["-incoming", "defer"]);
        }
        a
    }
}

impl Driver for Qemu {
    fn version(&self) -> Result<String, VmError> {
        Qemu::version(self)
    }

    fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmError> {
        self.start(spec).map(|vm| Box::new(vm) as Box<dyn Vm>)
    }
}

impl Qemu {
    /// Starts QEMU for a spec.
    pub fn start(&self, spec: VmSpec) -> Result<QemuVm, VmError> {
        let confine = self.confine.clone().map_err(VmError::Confine)?;
        let release = self.release()?;
        let readonly_ram = release.maps_frozen_ram_readonly();
        if confine.is_some() && !readonly_ram && matches!(spec.memory, Memory::File { shared: false, .. }) {
            return Err(VmError::Unsupported(crate::version::old_qemu(release)));
        }
        std::fs::create_dir_all(&spec.run_dir).map_err(VmError::io("create run folder", &spec.run_dir))?;
        let stderr_path = spec.run_dir.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(VmError::io("create", &stderr_path))?;
        let (jail, cgroup) = match &confine {
            Some(c) => {
                let (jail, cgroup) = c.jail(&spec).inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&spec.run_dir);
                })?;
                (Some(jail), Some((c.clone(), cgroup)))
            }
            None => (None, None),
        };
        let mut cmd = Command::new(&self.binary);
        cmd.args(Self::args(&spec, confine.is_some(), readonly_ram)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).current_dir(&spec.run_dir);
        let child = spawn_supervised(cmd, jail).map_err(|source| {
            if let Some((c, cg)) = &cgroup {
                c.release(cg);
            }
            let detail = String::from_utf8_lossy(&kiln_fs::read_head_nofollow(&stderr_path, 4096).unwrap_or_default()).into_owned();
            let _ = std::fs::remove_dir_all(&spec.run_dir);
            match detail.lines().find(|l| l.starts_with("kiln jail:")) {
                Some(step) => VmError::Confine(format!("{step}: {source}")),
                None => VmError::Spawn { binary: self.binary.display().to_string(), source },
            }
        })?;
        let watch = ExitWatch::new(child.id()).map_err(VmError::io("pidfd_open", &spec.run_dir))?;
        Ok(QemuVm { child: Some(child), watch, run_dir: spec.run_dir, qmp: None, status: None, cgroup })
    }
}

/// A running QEMU process.
#[derive(Debug)]
pub struct QemuVm {
    child: Option<Child>,
    watch: ExitWatch,
    run_dir: PathBuf,
    qmp: Option<Qmp>,
    status: Option<String>,
    /// The VMM's cgroup, removed once it has exited.
    cgroup: Option<(Arc<Confinement>, VmCgroup)>,
}

impl QemuVm {
    /// The QMP session, connected on first use.
    pub async fn qmp(&mut self) -> Result<&mut Qmp, VmError> {
        if self.qmp.is_none() {
            self.qmp = Some(Qmp::connect(&self.run_dir.join("qmp.sock"), Duration::from_secs(10)).await?);
        }
        Ok(self.qmp.as_mut().expect("just set"))
    }

    async fn execute(&mut self, command: &str) -> Result<(), VmError> {
        self.qmp().await?.execute(command, None).await.map(|_| ())
    }

    /// Saves device state to a new file handed to QEMU as a descriptor (QEMU spawns nothing).
    async fn save(&mut self, state: &Path) -> Result<(), VmError> {
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(state).map_err(VmError::io("create", state))?;
        let qmp = self.qmp().await?;
        set_ignore_shared(qmp).await?;
        qmp.send_fd("kiln-state", std::os::fd::AsFd::as_fd(&file)).await?;
        qmp.execute("migrate", Some(json!({ "uri": "fd:kiln-state" }))).await?;
        qmp.wait_migration(Duration::from_secs(120)).await?;
        file.sync_all().map_err(VmError::io("sync", state))
    }

    async fn load(&mut self, state: &Path) -> Result<(), VmError> {
        let file = std::fs::File::open(state).map_err(VmError::io("open", state))?;
        let qmp = self.qmp().await?;
        set_ignore_shared(qmp).await?;
        qmp.send_fd("kiln-state", std::os::fd::AsFd::as_fd(&file)).await?;
        qmp.execute("migrate-incoming", Some(json!({ "uri": "fd:kiln-state" }))).await?;
        qmp.wait_migration(Duration::from_secs(120)).await.map(|_| ())
    }

    async fn quit_and_wait(&mut self) -> Result<(), VmError> {
        let r = self.execute("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.watch.exited()).await;
        r
    }
}

async fn set_ignore_shared(qmp: &mut Qmp) -> Result<(), VmError> {
    let caps = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
    qmp.execute("migrate-set-capabilities", Some(caps)).await.map(|_| ())
}

impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn exited(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.watch.exited())
    }

    fn exit_watch(&self) -> Result<Pin<Box<dyn Future<Output = ()> + Send + 'static>>, VmError> {
        let watch = ExitWatch::new(self.pid()).map_err(VmError::io("watch the VMM process", &self.run_dir))?;
        Ok(Box::pin(async move { watch.exited().await }))
    }

    fn exit_status(&mut self) -> Option<String> {
        if self.status.is_none() {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let err = self.vmm_log();
                self.status = Some(if err.is_empty() { st.to_string() } else { format!("{st}: {err}") });
            }
        }
        self.status.clone()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((c, cg)) = self.cgroup.take() {
            c.release(&cg);
        }
        self.qmp = None;
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }

    /// What QEMU printed on stderr (at most 4 KiB).
    fn vmm_log(&self) -> String {
        // The VMM can replace this file: a link, a FIFO or a huge file is not read.
        let bytes = kiln_fs::read_head_nofollow(&self.run_dir.join("qemu.stderr"), 4096).unwrap_or_default();
        let text: String = String::from_utf8_lossy(&bytes).chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '?' } else { c }).collect();
        text.trim().to_owned()
    }

    fn pause(&mut self) -> VmFuture<'_, ()> {
        Box::pin(self.execute("stop"))
    }

    fn resume(&mut self) -> VmFuture<'_, ()> {
        Box::pin(self.execute("cont"))
    }

    /// Device state only: RAM lives in a memory file and is skipped (`x-ignore-shared`).
    fn save_state<'a>(&'a mut self, state: &'a Path) -> VmFuture<'a, ()> {
        Box::pin(self.save(state))
    }

    fn load_state<'a>(&'a mut self, state: &'a Path) -> VmFuture<'a, ()> {
        Box::pin(self.load(state))
    }

    fn quit(&mut self) -> VmFuture<'_, ()> {
        Box::pin(self.quit_and_wait())
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            cpus: 2,
            memory_mib: 256,
            accel: Accel::Tcg,
            disk: Some("/r/overlay.qcow2".into()),
            disk_backing: None,
            run_dir: "/r".into(),
            memory: Memory::Anonymous,
            incoming: false,
        }
    }

    #[test]
    fn command_line_shape() {
        let a = Qemu::args(&spec(), false, true).join(" ");
        assert!(!a.contains("-sandbox"), "{a}");
        assert!(a.contains("-bios qboot.rom"), "{a}");
        assert!(Qemu::args(&spec(), true, true).join(" ").contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"));
        assert!(a.contains("-M microvm,") && a.contains("dump-guest-core=off"), "{a}");
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("-smp 2 -m 256M"), "{a}");
        assert!(a.contains("virtserialport,chardev=ctl,name=kiln "), "{a}");
        assert!(a.contains("virtserialport,chardev=net,name=kiln.net"), "{a}");
        assert!(a.contains("file=/r/overlay.qcow2,if=none,id=d0,format=qcow2"), "{a}");
        assert!(a.contains("werror=report,rerror=report"), "a full disk is an I/O error in the guest, not a paused VM: {a}");
        assert!(!a.contains("-incoming"), "{a}");
        let mut s = spec();
        s.memory = Memory::File { path: "/dev/shm/x".into(), shared: false };
        s.incoming = true;
        let a = Qemu::args(&s, false, true).join(" ");
        assert!(a.contains("memory-backend=mem"), "{a}");
        assert!(a.contains("mem-path=/dev/shm/x,share=off,readonly=on,rom=off "), "a frozen RAM file is opened read-only: {a}");
        assert!(a.ends_with("-incoming defer"), "{a}");
        let a = Qemu::args(&s, false, false).join(" ");
        assert!(a.contains("mem-path=/dev/shm/x,share=off ") && !a.contains("readonly"), "QEMU < 8.2 has no rom=off: {a}");
        s.memory = Memory::File { path: "/dev/shm/x".into(), shared: true };
        let a = Qemu::args(&s, false, true).join(" ");
        assert!(a.contains("mem-path=/dev/shm/x,share=on ") && !a.contains("readonly"), "{a}");
    }
}
