//! Forking a running sandbox into N clones.
//!
//! A forkable sandbox keeps its RAM in a file of its own, mapped shared. To fork it: sync the
//! guest, pause it, save its device state (`x-ignore-shared`: RAM stays in the file, so the
//! save takes tens of milliseconds), and freeze its RAM file and disk overlay as a fork base
//! (hard links in a folder of the fork's own, mode 0444, never written again). Then every clone
//! — and the parent itself, since its RAM file is now frozen — is restored from that base: the
//! clones map the RAM file privately (copy-on-write), the parent on a fresh copy it maps shared
//! so it can be forked again. Each gets its own disk overlay over the frozen one, and the
//! clones get identities of their own (hostname, machine id, RNG reseed, clock). The base folder
//! is removed when the last sandbox resting on it is gone.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_image::Home;
use kiln_vmm::driver::Memory;
use kiln_vmm::{default_driver, Vm, VmError, VmSpec};

use crate::agent::{Agent, AgentInfo};
use crate::error::SandboxError;
use crate::attach::attach;
pub use crate::fork_base::{ForkBase, ForkTiming};
use crate::fork_base::CheckpointSpec;
use crate::sandbox::{CreateMode, CreateTimings, Sandbox};
use crate::snapshot::create_overlay;

/// Most clones one fork may make.
pub const MAX_FORK: usize = 64;

fn io(what: String) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

type Restored = (Box<dyn Vm>, Agent, AgentInfo, Arc<Mutex<Option<String>>>, VmSpec, Duration);

/// Restores from `base` into a new run folder (removed again on failure).
async fn restore_new(home: &Home, base: &ForkBase, like: &VmSpec, memory: Memory, timeout: Duration) -> Result<(String, Restored), SandboxError> {
    let (id, run_dir) = Sandbox::new_run_dir(home)?;
    match restore_from(base, like, &run_dir, memory, timeout).await {
        Ok(r) => Ok((id, r)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            Err(e)
        }
    }
}

/// Starts a VM in `run_dir` from the fork base with the given memory backing, loads the saved
/// state and waits for the agent.
async fn restore_from(base: &ForkBase, like: &VmSpec, run_dir: &Path, memory: Memory, timeout: Duration) -> Result<Restored, SandboxError> {
    let t0 = Instant::now();
    let overlay = run_dir.join("overlay.qcow2");
    let backing = create_overlay(&base.dir.join("disk.qcow2"), "qcow2", &overlay)?;
    let spec = VmSpec { run_dir: run_dir.to_owned(), disk: Some(overlay), disk_backing: Some(backing), memory, incoming: true, ..like.clone() };
    let mut vm = default_driver().launch(spec.clone())?;
    let loaded = tokio::time::timeout(timeout, async {
        vm.load_state(&base.dir.join("state")).await?;
        vm.resume().await
    })
    .await
    .unwrap_or_else(|_| Err(VmError::Timeout { what: "the fork state to load", secs: timeout.as_secs_f64(), console: String::new() }));
    if let Err(source) = loaded {
        return Err(SandboxError::Restore { what: format!("fork base {}", base.dir.display()), vmm_log: vm.vmm_log(), source });
    }
    let (agent, info, died) = attach(vm.as_ref(), timeout).await?;
    Ok((vm, agent, info, died, spec, t0.elapsed()))
}

impl Sandbox {
    /// The fork base this sandbox rests on, if it was forked (or restored from a checkpoint).
    pub fn fork_base(&self) -> Option<&Arc<ForkBase>> {
        self.base.as_ref()
    }

    /// The launch spec (to persist a checkpoint with).
    pub fn vm_spec(&self) -> &VmSpec {
        &self.spec
    }

    /// Restores a new sandbox (a private copy-on-write clone) from a checkpoint persisted with
    /// [`ForkBase::persist`]. The checkpoint's files are never written.
    pub async fn from_checkpoint(home: &Home, dir: &Path, memory: &Path, artifacts: crate::artifacts::BootArtifacts, accel: kiln_vmm::Accel, env: Vec<(String, String)>) -> Result<Sandbox, SandboxError> {
        let spec: CheckpointSpec = serde_json::from_slice(&std::fs::read(dir.join("spec.json")).map_err(io(format!("read {}/spec.json", dir.display())))?)
            .map_err(|e| SandboxError::Invalid(format!("checkpoint {}: {e}", dir.display())))?;
        let base = Arc::new(ForkBase { dir: dir.to_owned(), memory: memory.to_owned(), owned: false, _parent: None });
        let like = VmSpec {
            kernel: artifacts.kernel_path.clone(),
            initrd: artifacts.initrd_path.clone(),
            cmdline: spec.cmdline,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            accel,
            disk: None,
            disk_backing: None,
            run_dir: home.run().to_owned(),
            memory: Memory::Anonymous,
            incoming: true,
        };
        let memory = Memory::File { path: memory.to_owned(), shared: false };
        let (id, (vm, agent, info, died, spec, boot)) = restore_new(home, &base, &like, memory, Duration::from_secs(60)).await?;
        let timings = CreateTimings { prepare: Duration::ZERO, boot, identity: Duration::ZERO };
        let mode = CreateMode::Restored(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let sandbox = Sandbox::assemble(id, vm, (agent, info, died), spec, accel, timings, artifacts, mode, env, Some(base));
        sandbox.set_identity().await?;
        Ok(sandbox)
    }

    /// Timing of this sandbox's last fork.
    pub fn last_fork_timing(&self) -> Option<ForkTiming> {
        self.fork_timing
    }

    /// Whether [`Sandbox::fork`] can be used (created with `forkable`).
    pub fn is_forkable(&self) -> bool {
        matches!(self.spec.memory, Memory::File { shared: true, .. })
    }

    /// Forks this sandbox into `count` independent clones, returned in order. The parent keeps
    /// running (its processes and files intact) after a pause of a few hundred milliseconds.
    pub async fn fork(&mut self, home: &Home, count: usize) -> Result<Vec<Sandbox>, SandboxError> {
        if count == 0 || count > MAX_FORK {
            return Err(SandboxError::Invalid(format!("fork count must be between 1 and {MAX_FORK}, not {count}")));
        }
        let Memory::File { path: memory, shared: true } = self.spec.memory.clone() else {
            return Err(SandboxError::Invalid("this sandbox was not created forkable (create it with forkable=true)".into()));
        };
        let disk = self.spec.disk.clone().ok_or_else(|| SandboxError::Invalid("sandbox has no disk".into()))?;
        let timeout = Duration::from_secs(60);

        let t_fork = Instant::now();
        // 1. Quiesce and save the parent.
        let r = self.agent.sync().await;
        self.map_err(r).await?;
        let name = format!("fork-{}", crate::random::hex(6));
        let dir = home.run().join(&name);
        crate::cleanup::make_owned_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
        let base = Arc::new(ForkBase {
            dir,
            memory: home.shm().join(format!("{name}.{}.memory", std::process::id())),
            owned: true,
            _parent: self.base.clone(),
        });
        {
            let vm = self.vm.get_mut().unwrap_or_else(|e| e.into_inner());
            let vm = vm.as_mut().ok_or_else(|| SandboxError::Invalid("the sandbox was destroyed".into()))?;
            vm.pause().await?;
            vm.save_state(&base.dir.join("state")).await?;
        }
        // 2. Its RAM file and disk overlay become the base (same inodes, new names). The
        //    parent's old VMM ends first, so that no process still holds them writable when they
        //    are frozen; its run folder is recreated for the restarted one, which runs on a copy
        //    of the frozen RAM (made while the clones start) so it stays forkable.
        //    Both names sit where the VMM could write: each is opened once without following
        //    links, linked from that descriptor, and frozen through it.
        let mut linked = Vec::new();
        for (from, to) in [(&memory, base.memory.clone()), (&disk, base.dir.join("disk.qcow2"))] {
            linked.push(kiln_fs::link_regular(from, &to).map_err(io(format!("link {} into the fork", from.display())))?);
        }
        self.kill();
        // The overlay's header names its backing file, and the VMM could write it: the base
        // keeps the chain kiln made, or there is no fork.
        let named = kiln_vmm::qcow2::header(&base.dir.join("disk.qcow2")).ok().flatten().and_then(|h| h.backing);
        if self.spec.disk_backing.is_some() && named != self.spec.disk_backing {
            return Err(SandboxError::Protocol(format!(
                "the disk's header was rewritten to name {} (kiln made it over {}); the sandbox was destroyed",
                named.map(|p| p.display().to_string()).unwrap_or_else(|| "no backing file".into()),
                self.spec.disk_backing.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            )));
        }
        for f in &linked {
            kiln_fs::freeze_file(f).map_err(io(format!("freeze the fork base in {}", base.dir.display())))?;
        }
        let state = base.dir.join("state");
        crate::snapshot::freeze(&state).map_err(io(format!("freeze {}", state.display())))?;
        let run_dir = self.spec.run_dir.clone();
        crate::cleanup::make_owned_dir(&run_dir).map_err(io(format!("create {}", run_dir.display())))?;
        let own = crate::sandbox::own_memory(home, &self.id)?;

        // 4. Restart the parent and start the clones, all at once; each clone is told who it is
        //    as soon as it answers.
        let like = self.spec.clone();
        let parent = async {
            let (from, to) = (base.memory.clone(), own.clone());
            tokio::task::spawn_blocking(move || {
                crate::sparse::copy(&from, &to)?;
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            })
            .await
            .expect("copy task")
            .map_err(io(format!("copy the fork's memory to {}", own.display())))?;
            restore_from(&base, &like, &run_dir, Memory::File { path: own.clone(), shared: true }, timeout).await
        };
        let (accel, artifacts, env, parent_id) = (self.accel, self.artifacts.clone(), self.env.clone(), self.id.clone());
        let children = futures_util::future::join_all((0..count).map(|_| {
            let (base, like, artifacts, env, parent_id) = (base.clone(), like.clone(), artifacts.clone(), env.clone(), parent_id.clone());
            async move {
                let memory = Memory::File { path: base.memory.clone(), shared: false };
                let (id, (vm, agent, info, died, spec, boot)) = restore_new(home, &base, &like, memory, timeout).await?;
                let timings = CreateTimings { prepare: Duration::ZERO, boot, identity: Duration::ZERO };
                let mode = CreateMode::Forked(parent_id);
                let clone = Sandbox::assemble(id, vm, (agent, info, died), spec, accel, timings, artifacts, mode, env, Some(base.clone()));
                let t = Instant::now();
                clone.set_identity().await?;
                let mut clone = clone;
                clone.timings.identity = t.elapsed();
                Ok(clone)
            }
        }));
        // The clones first (they are what the caller waits for), then the parent: on a
        // loaded host the VMs compete for the same cores.
        let children = children.await;
        let answered = Instant::now();
        let parent = parent.await;
        self.fork_timing = Some(ForkTiming { clones_answering: answered - t_fork, parent_back: t_fork.elapsed() });

        let (vm, agent, info, died, spec, _boot) = parent?;
        *self.vm.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(vm);
        self.agent = agent;
        self.info = info;
        self.died = died;
        self.spec = spec;
        self.base = Some(base.clone());
        self.set_identity().await?;

        // A failed clone fails the fork; the clones that did start are dropped, and so killed.
        children.into_iter().collect()
    }
}
