//! A sandbox: one microVM with its own kernel, a private copy-on-write disk, and an agent.
//! Dropping it (or [`Sandbox::destroy`]) kills the VM and removes every file it had on the host.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_image::{Home, Progress};
use kiln_proto::Identity;
use kiln_vmm::driver::Memory;
use kiln_vmm::spawn::ExitWatch;
use kiln_vmm::{Accel, AccelChoice, AgentChannel, Driver, Qemu, QemuVm, Vm, VmError, VmSpec};

use crate::agent::{Agent, AgentInfo};
use crate::artifacts::{prepare, BootArtifacts};
use crate::error::SandboxError;
use crate::exec::{ExecOutcome, ExecRequest, Output};

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
    /// How long the guest may take to boot.
    pub boot_timeout: Duration,
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
        }
    }
}

/// Where the time of a create went.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateTimings {
    /// Preparing artifacts (near zero when cached).
    pub prepare: Duration,
    /// Spawning the VMM to the agent's first reply.
    pub boot: Duration,
    /// Setting the identity.
    pub identity: Duration,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    vm: Mutex<Option<QemuVm>>,
    agent: Agent,
    info: AgentInfo,
    accel: Accel,
    died: Arc<Mutex<Option<String>>>,
    timings: CreateTimings,
    artifacts: BootArtifacts,
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

/// Creates the VM's private qcow2 overlay over the read-only base image.
fn create_overlay(base: &Path, overlay: &Path) -> Result<(), SandboxError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .map_err(|source| SandboxError::Io { what: "run qemu-img (apt-get install qemu-utils)".into(), source })?;
    if !out.status.success() {
        return Err(SandboxError::Protocol(format!("qemu-img create failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

impl Sandbox {
    /// Boots a fresh sandbox from a template (cold boot).
    pub async fn create(home: &Home, opts: &SandboxOptions, progress: Progress<'_>) -> Result<Sandbox, SandboxError> {
        let t0 = Instant::now();
        let artifacts = prepare(home, &opts.template, progress)?;
        let cpus = opts.cpus.unwrap_or(artifacts.template.cpus);
        let memory_mib = opts.memory_mib.unwrap_or(artifacts.template.memory_mib);
        check_shape(cpus, memory_mib)?;
        let (accel, _why) = crate::accel::resolve(home, opts.accel).await?;
        let prepare_time = t0.elapsed();

        let id = format!("sbx-{}", crate::random::hex(6));
        let run_dir = home.run().join(&id);
        if run_dir.join("control.sock").as_os_str().len() > 100 {
            return Err(SandboxError::Invalid(format!(
                "run folder {} is too long for unix sockets; set KILN_RUN_DIR to a shorter path",
                run_dir.display()
            )));
        }
        std::fs::create_dir_all(&run_dir).map_err(|source| SandboxError::Io { what: format!("create {}", run_dir.display()), source })?;
        let overlay = run_dir.join("overlay.qcow2");
        if let Err(e) = create_overlay(&artifacts.rootfs_path, &overlay) {
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e);
        }
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
            run_dir: run_dir.clone(),
            memory: Memory::Anonymous,
            incoming: false,
        };
        let t_boot = Instant::now();
        let vm = Qemu::default().launch(spec).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&run_dir);
        })?;
        let (agent, info, died) = Self::attach(&vm, opts.boot_timeout).await?;
        let boot = t_boot.elapsed();
        let sandbox = Sandbox {
            id,
            vm: Mutex::new(Some(vm)),
            agent,
            info,
            accel,
            died,
            timings: CreateTimings { prepare: prepare_time, boot, identity: Duration::ZERO },
            artifacts,
        };
        let t_id = Instant::now();
        sandbox.set_identity(&opts.env).await?;
        let mut sandbox = sandbox;
        sandbox.timings.identity = t_id.elapsed();
        Ok(sandbox)
    }

    /// Connects to a just-started VM's agent, waits for its hello, and starts a watchdog that
    /// notices when the VMM dies. On failure the VM is killed (by dropping it).
    async fn attach(vm: &QemuVm, timeout: Duration) -> Result<(Agent, AgentInfo, Arc<Mutex<Option<String>>>), SandboxError> {
        let died = Arc::new(Mutex::new(None));
        let watch = ExitWatch::new(vm.pid()).map_err(|source| SandboxError::Io { what: "watch the VM process".into(), source })?;
        let channel = AgentChannel::connect(&vm.control_socket(), Duration::from_secs(10)).await?;
        {
            let died = died.clone();
            let ch = channel.clone();
            let console = vm.console_log();
            tokio::spawn(async move {
                watch.exited().await;
                let tail = kiln_vmm::driver::console_tail(&console);
                *died.lock().unwrap_or_else(|e| e.into_inner()) = Some(tail);
                ch.poison("the VM exited");
            });
        }
        let agent = Agent::new(channel);
        let hello = tokio::time::timeout(timeout, agent.hello()).await;
        let info = match hello {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(console) = died.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                    return Err(SandboxError::Died { status: "during boot".into(), console });
                }
                return Err(e);
            }
            Err(_) => return Err(SandboxError::BootTimeout { secs: timeout.as_secs(), console: vm.console_tail() }),
        };
        Ok((agent, info, died))
    }

    /// Sends the sandbox's identity: clock, fresh entropy, hostname, machine id, environment.
    pub async fn set_identity(&self, env: &[(String, String)]) -> Result<(), SandboxError> {
        let identity = Identity {
            unix_time_ns: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos(),
            entropy: crate::random::bytes(64),
            hostname: self.id.clone(),
            machine_id: crate::random::hex(16),
            env: env.to_vec(),
        };
        let r = self.agent.set_identity(identity).await;
        self.map_err(r).await
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
        self.vm.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(Vm::pid).unwrap_or(0)
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
                            .and_then(Vm::exit_status)
                            .unwrap_or_else(|| "killed".into());
                        return Err(SandboxError::Died { status, console });
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(SandboxError::Vm(VmError::Channel(why)))
            }
            other => other,
        }
    }

    /// Runs a command; see [`Agent::exec`]. If the agent stops answering, the VM is killed.
    pub async fn exec(&self, req: ExecRequest, on_output: impl FnMut(Output<'_>)) -> Result<ExecOutcome, SandboxError> {
        let r = self.agent.exec(req, on_output).await;
        if matches!(r, Err(SandboxError::Unresponsive(_))) {
            self.kill();
        }
        self.map_err(r).await
    }

    /// Kills the VM and removes its run folder (the overlay with it). Idempotent.
    pub fn kill(&self) {
        if let Some(mut vm) = self.vm.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.agent.channel.poison("the sandbox was destroyed");
            vm.kill();
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
