//! A sandbox: one microVM with its own kernel, a private copy-on-write disk, and an agent.
//! It is restored from its template's baked snapshot (or cold-booted on request), told who it
//! is, and dropping it (or [`Sandbox::destroy`]) kills the VM and removes every file it had on
//! the host.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_image::{Home, Progress};
use kiln_proto::Identity;
use kiln_vmm::driver::Memory;
use kiln_vmm::{default_driver, Accel, AccelChoice, Vm, VmError, VmSpec};

use crate::agent::{Agent, AgentInfo};
pub use crate::attach::guest_fate;
use crate::attach::{attach, Attached};
use crate::artifacts::{prepare, BootArtifacts};
use crate::error::SandboxError;
use crate::exec::{ExecOutcome, ExecRequest, Output};
use crate::snapshot::{self, create_overlay, Expected, Snapshot, Unusable};

/// How to create a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Template name or path to a template file.
    pub template: String,
    /// vCPUs (template default when `None`).
    pub cpus: Option<u32>,
    /// Memory in MiB (template default when `None`).
    pub memory_mib: Option<u32>,
    /// Accelerator choice.
    pub accel: AccelChoice,
    /// The sandbox's environment, given to every command.
    pub env: Vec<(String, String)>,
    /// How long the guest may take to boot (or a snapshot to load).
    pub boot_timeout: Duration,
    /// Cold-boot instead of restoring the template's snapshot.
    pub cold: bool,
    /// Keep guest RAM in a file of the sandbox's own (shared mapping), so that
    /// [`Sandbox::fork`] is a device-state save of tens of milliseconds.
    pub forkable: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            template: "tiny".into(),
            cpus: None,
            memory_mib: None,
            accel: AccelChoice::Auto,
            env: Vec::new(),
            boot_timeout: Duration::from_secs(60),
            cold: false,
            forkable: false,
        }
    }
}

/// How a sandbox came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateMode {
    /// Booted its kernel from scratch.
    Cold,
    /// Restored from a baked snapshot (its folder name).
    Restored(String),
    /// Forked from a running sandbox (its id).
    Forked(String),
    /// Restored from a baked snapshot (its folder name) ahead of time, kept paused in a warm
    /// pool, and handed out by a create (see [`crate::warm`]).
    Pooled(String),
}

/// Where the time of a create went.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateTimings {
    /// Preparing artifacts and checking the snapshot (near zero when cached).
    pub prepare: Duration,
    /// Spawning the VMM to the agent's first reply.
    pub boot: Duration,
    /// Setting the identity.
    pub identity: Duration,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub(crate) id: String,
    pub(crate) vm: Mutex<Option<Box<dyn Vm>>>,
    pub(crate) agent: Agent,
    pub(crate) info: AgentInfo,
    pub(crate) accel: Accel,
    pub(crate) died: Arc<Mutex<Option<String>>>,
    pub(crate) timings: CreateTimings,
    pub(crate) artifacts: BootArtifacts,
    pub(crate) mode: CreateMode,
    /// How the VM was launched (to restart it as a clone after a fork).
    pub(crate) spec: VmSpec,
    pub(crate) machine_id: String,
    pub(crate) env: Vec<(String, String)>,
    /// The fork snapshot this sandbox's disk (and, for clones, memory) rests on.
    pub(crate) base: Option<Arc<crate::fork_base::ForkBase>>,
    /// Timing of the last fork of this sandbox.
    pub(crate) fork_timing: Option<crate::fork_base::ForkTiming>,
}

fn check_shape(cpus: u32, memory_mib: u32) -> Result<(), SandboxError> {
    let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    if cpus == 0 || cpus > host_cpus.max(1) * 4 || cpus > 64 {
        return Err(SandboxError::Invalid(format!("--cpus must be between 1 and {}, not {cpus}", (host_cpus * 4).min(64))));
    }
    if !(64..=65536).contains(&memory_mib) {
        return Err(SandboxError::Invalid(format!("--memory must be between 64 and 65536 MiB, not {memory_mib}")));
    }
    Ok(())
}

/// The path of a forkable sandbox's own RAM file (in the home's tmpfs folder), named with the
/// owning process's pid so that a sweep can tell an orphan (see [`crate::cleanup`]).
pub(crate) fn own_memory(home: &Home, id: &str) -> Result<PathBuf, SandboxError> {
    home.ensure_shm().map_err(|source| SandboxError::Io { what: format!("prepare {}", home.shm().display()), source })?;
    Ok(home.shm().join(format!("{id}.{}.memory", std::process::id())))
}

/// The VMM's version line (QEMU's `--version`), asked once per process.
pub fn qemu_version() -> Result<String, SandboxError> {
    static V: OnceLock<String> = OnceLock::new();
    if let Some(v) = V.get() {
        return Ok(v.clone());
    }
    let v = default_driver().version()?;
    Ok(V.get_or_init(|| v).clone())
}

impl Sandbox {
    /// A sandbox from a VM whose agent answered: a fresh machine id, no fork yet.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        id: String,
        vm: Box<dyn Vm>,
        (agent, info, died): Attached,
        spec: VmSpec,
        accel: Accel,
        timings: CreateTimings,
        artifacts: BootArtifacts,
        mode: CreateMode,
        env: Vec<(String, String)>,
        base: Option<Arc<crate::fork_base::ForkBase>>,
    ) -> Sandbox {
        Sandbox {
            id,
            vm: Mutex::new(Some(vm)),
            agent,
            info,
            accel,
            died,
            timings,
            artifacts,
            mode,
            spec,
            machine_id: crate::random::hex(16),
            env,
            base,
            fork_timing: None,
        }
    }

    /// Creates a sandbox: restored from the template's baked snapshot (baked on first use,
    /// re-baked if it is damaged or from another environment), or cold-booted with `cold`.
    pub async fn create(home: &Home, opts: &SandboxOptions, progress: Progress<'_>) -> Result<Sandbox, SandboxError> {
        Self::create_nameless(home, opts, progress).await?.finish().await
    }

    /// [`Sandbox::create`] without the identity: the guest still has its snapshot's clock,
    /// hostname, machine id and RNG state (which every clone of the snapshot shares).
    pub(crate) async fn create_nameless(home: &Home, opts: &SandboxOptions, progress: Progress<'_>) -> Result<Sandbox, SandboxError> {
        let t0 = Instant::now();
        let artifacts = prepare(home, &opts.template, progress)?;
        let cpus = opts.cpus.unwrap_or(artifacts.template.cpus);
        let memory_mib = opts.memory_mib.unwrap_or(artifacts.template.memory_mib);
        check_shape(cpus, memory_mib)?;
        let (accel, _why) = crate::accel::resolve(home, opts.accel).await?;
        if opts.cold {
            return Self::cold(home, opts, artifacts, accel, cpus, memory_mib, t0).await;
        }
        let snap = ensure_snapshot(home, &artifacts, accel, cpus, memory_mib, opts.boot_timeout, progress).await?;
        Self::restore(home, opts, artifacts, &snap, accel, t0).await
    }

    pub(crate) fn new_run_dir(home: &Home) -> Result<(String, PathBuf), SandboxError> {
        let id = format!("sbx-{}", crate::random::hex(6));
        let run_dir = home.run().join(&id);
        if run_dir.join("control.sock").as_os_str().len() > 100 {
            return Err(SandboxError::Invalid(format!(
                "run folder {} is too long for unix sockets; set KILN_RUN_DIR to a shorter path",
                run_dir.display()
            )));
        }
        crate::cleanup::make_owned_dir(&run_dir).map_err(|source| SandboxError::Io { what: format!("create {}", run_dir.display()), source })?;
        Ok((id, run_dir))
    }

    async fn cold(
        home: &Home,
        opts: &SandboxOptions,
        artifacts: BootArtifacts,
        accel: Accel,
        cpus: u32,
        memory_mib: u32,
        t0: Instant,
    ) -> Result<Sandbox, SandboxError> {
        let prepare_time = t0.elapsed();
        let (id, run_dir) = Self::new_run_dir(home)?;
        let overlay = run_dir.join("overlay.qcow2");
        let backing = match create_overlay(&artifacts.rootfs_path, "raw", &overlay) {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let extra = format!("kiln.root=/dev/vda kiln.hostname={id} kiln.time={}", now.as_secs());
        let spec = VmSpec {
            kernel: artifacts.kernel_path.clone(),
            initrd: artifacts.initrd_path.clone(),
            cmdline: artifacts.kernel.cmdline(kiln_image::kernel::host_tsc_khz(), &extra),
            cpus,
            memory_mib,
            accel,
            disk: Some(overlay),
            disk_backing: Some(backing),
            run_dir: run_dir.clone(),
            memory: if opts.forkable { Memory::File { path: own_memory(home, &id)?, shared: true } } else { Memory::Anonymous },
            incoming: false,
        };
        let t_boot = Instant::now();
        let vm = default_driver().launch(spec.clone()).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&run_dir);
        })?;
        let attached = attach(vm.as_ref(), opts.boot_timeout).await?;
        let timings = CreateTimings { prepare: prepare_time, boot: t_boot.elapsed(), identity: Duration::ZERO };
        Ok(Sandbox::assemble(id, vm, attached, spec, accel, timings, artifacts, CreateMode::Cold, opts.env.clone(), None))
    }

    async fn restore(
        home: &Home,
        opts: &SandboxOptions,
        artifacts: BootArtifacts,
        snap: &Snapshot,
        accel: Accel,
        t0: Instant,
    ) -> Result<Sandbox, SandboxError> {
        let prepare_time = t0.elapsed();
        let (id, run_dir) = Self::new_run_dir(home)?;
        let overlay = run_dir.join("overlay.qcow2");
        let backing = match create_overlay(&snap.disk(), "qcow2", &overlay) {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let memory = if opts.forkable {
            // A private, writable copy of the template's RAM that this sandbox maps shared.
            let own = own_memory(home, &id)?;
            if let Err(source) = crate::sparse::copy(&snap.memory(), &own) {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(SandboxError::Io { what: format!("copy {}", snap.memory().display()), source });
            }
            let _ = std::fs::set_permissions(&own, std::os::unix::fs::PermissionsExt::from_mode(0o600));
            Memory::File { path: own, shared: true }
        } else {
            Memory::File { path: snap.memory(), shared: false }
        };
        let spec = VmSpec {
            kernel: artifacts.kernel_path.clone(),
            initrd: artifacts.initrd_path.clone(),
            cmdline: snap.meta.cmdline.clone(),
            cpus: snap.meta.made_of.cpus,
            memory_mib: snap.meta.made_of.memory_mib,
            accel,
            disk: Some(overlay),
            disk_backing: Some(backing),
            run_dir: run_dir.clone(),
            memory,
            incoming: true,
        };
        let t_boot = Instant::now();
        let mut vm = default_driver().launch(spec.clone()).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&run_dir);
        })?;
        let loaded = tokio::time::timeout(opts.boot_timeout, async {
            vm.load_state(&snap.state()).await?;
            vm.resume().await
        })
        .await;
        let loaded = loaded.unwrap_or_else(|_| {
            Err(VmError::Timeout { what: "the snapshot to load", secs: opts.boot_timeout.as_secs_f64(), console: String::new() })
        });
        if let Err(source) = loaded {
            return Err(SandboxError::Restore { what: format!("snapshot {}", snap.dir.display()), vmm_log: vm.vmm_log(), source });
        }
        let attached = attach(vm.as_ref(), opts.boot_timeout).await?;
        let timings = CreateTimings { prepare: prepare_time, boot: t_boot.elapsed(), identity: Duration::ZERO };
        let mode = CreateMode::Restored(snap.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        Ok(Sandbox::assemble(id, vm, attached, spec, accel, timings, artifacts, mode, opts.env.clone(), None))
    }

    pub(crate) async fn finish(mut self) -> Result<Sandbox, SandboxError> {
        let t = Instant::now();
        self.set_identity().await?;
        self.timings.identity = t.elapsed();
        Ok(self)
    }

    /// How this sandbox was created.
    pub fn mode(&self) -> &CreateMode {
        &self.mode
    }

    /// Sends the sandbox's identity: clock, fresh entropy, hostname, machine id, environment.
    pub async fn set_identity(&self) -> Result<(), SandboxError> {
        let r = self.agent.set_identity(self.identity()).await;
        self.map_err(r).await
    }

    /// Sends the identity again with the guest's clock set `ahead` of the host's (and fresh
    /// entropy): sibling builds that should agree are run with clocks apart, so that one
    /// that embeds the time differs even when they run in the same second.
    pub async fn set_clock_ahead(&self, ahead: std::time::Duration) -> Result<(), SandboxError> {
        let mut identity = self.identity();
        identity.unix_time_ns += ahead.as_nanos();
        let r = self.agent.set_identity(identity).await;
        self.map_err(r).await
    }

    /// The identity to send now: the clock, fresh entropy, hostname, machine id, environment.
    pub(crate) fn identity(&self) -> Identity {
        Identity {
            unix_time_ns: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos(),
            entropy: crate::random::bytes(64),
            hostname: self.id.clone(),
            machine_id: self.machine_id.clone(),
            env: self.env.clone(),
        }
    }

    /// The unix socket of the VM's egress tunnel port (see [`crate::tunnel`]).
    pub fn net_socket(&self) -> PathBuf {
        self.spec.run_dir.join("net.sock")
    }

    /// Whether its VM has exited on its own.
    pub fn has_died(&self) -> bool {
        self.died.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The sandbox id (also the guest's hostname).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent, for file operations and more.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The guest kernel release.
    pub fn guest_kernel(&self) -> &str {
        &self.info.kernel
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Where creation time went.
    pub fn timings(&self) -> CreateTimings {
        self.timings
    }

    /// The artifacts it booted from.
    pub fn artifacts(&self) -> &BootArtifacts {
        &self.artifacts
    }

    /// The VMM's process id (0 once destroyed).
    pub fn vmm_pid(&self) -> u32 {
        self.vm.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|v| v.pid()).unwrap_or(0)
    }

    /// The run folder on the host.
    pub fn run_dir(&self) -> Option<std::path::PathBuf> {
        self.vm.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|v| v.run_dir().to_path_buf())
    }

    /// Turns a channel failure into "the sandbox died" when the VM is gone.
    pub async fn map_err<T>(&self, r: Result<T, SandboxError>) -> Result<T, SandboxError> {
        match r {
            Err(SandboxError::Vm(VmError::Channel(why))) => {
                for _ in 0..20 {
                    if let Some(console) = self.died.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                        let status = self
                            .vm
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .as_mut()
                            .and_then(|v| v.exit_status())
                            .unwrap_or_else(|| "killed".into());
                        let status = match guest_fate(&console) {
                            Some(fate) => format!("{fate}; {status}"),
                            None => status,
                        };
                        return Err(SandboxError::Died { status, console });
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                // The VM lives but its channel is broken: the guest sent what the host refuses.
                // The channel cannot be trusted again, so neither can the sandbox.
                self.kill();
                Err(SandboxError::Protocol(format!("{why}; the sandbox was destroyed")))
            }
            Err(SandboxError::Protocol(why)) => {
                self.kill();
                Err(SandboxError::Protocol(format!("{why}; the sandbox was destroyed")))
            }
            other => other,
        }
    }

    /// Runs a command; see [`Agent::exec`]. If the agent stops answering, the VM is killed.
    pub async fn exec(&self, req: ExecRequest, on_output: impl FnMut(Output<'_>)) -> Result<ExecOutcome, SandboxError> {
        let r = self.agent.exec(req, on_output).await;
        if matches!(r, Err(SandboxError::Unresponsive(_))) {
            // A guest that halted (or panicked without rebooting) says so on its console.
            let console = kiln_vmm::driver::console_tail(&self.spec.run_dir.join("console.log"));
            self.kill();
            if let Some(fate) = guest_fate(&console) {
                return Err(SandboxError::Died { status: fate.into(), console });
            }
        }
        self.map_err(r).await
    }

    /// Kills the VM and removes its run folder (the overlay with it). Idempotent.
    pub fn kill(&self) {
        if let Some(mut vm) = self.vm.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.agent.channel.poison("the sandbox was destroyed");
            vm.kill();
        }
        // A forkable sandbox's RAM file is its own (fork bases hold their own link to it).
        if let Memory::File { path, shared: true } = &self.spec.memory {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Destroys the sandbox.
    pub fn destroy(self) {
        self.kill();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The snapshot for these artifacts and shape: the baked one if valid, else a fresh bake
/// (first use, or the old one is damaged or from another QEMU, shape or accelerator).
pub async fn ensure_snapshot(
    home: &Home,
    artifacts: &BootArtifacts,
    accel: Accel,
    cpus: u32,
    memory_mib: u32,
    boot_timeout: Duration,
    progress: Progress<'_>,
) -> Result<Snapshot, SandboxError> {
    let expected = Expected::new(artifacts, qemu_version()?, accel, cpus, memory_mib);
    match snapshot::find(home, &expected) {
        Ok(s) => Ok(s),
        Err(Unusable::Missing) => {
            progress(&format!("template {} has no snapshot for this shape yet: baking one (once)", expected.template));
            snapshot::bake(home, artifacts, &expected, boot_timeout, progress).await
        }
        Err(Unusable::Invalid(why)) => {
            progress(&format!("snapshot of template {} is unusable: {why}; re-baking it", expected.template));
            snapshot::bake(home, artifacts, &expected, boot_timeout, progress).await
        }
    }
}
