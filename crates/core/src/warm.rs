//! Sandboxes restored ahead of time, for a warm pool: restored from the template's snapshot,
//! kiln's own paths warmed in them, then paused, and handed out by [`Warm::claim`], which
//! resumes the VM and only then gives it its identity.
//!
//! Nothing of a job's runs in a warm sandbox before it is claimed. What runs is kiln's own:
//! a placeholder identity (so the guest's identity code is translated once) and `true` (so
//! the job's first command does not pay for translating the exec path; under TCG that is most
//! of a first exec). The claim then sets everything a fresh sandbox gets: the clock, fresh
//! entropy and a forced reseed of the kernel RNG (so boot id, `/dev/urandom` and every later
//! random number differ from any other sandbox's), the hostname, a new machine id and the
//! caller's environment. A pooled sandbox is therefore as different from another as two
//! fresh ones are; the time it spent paused is not visible to the job (its clock is set on
//! claim, and a paused VM's virtual clock stands still).
//!
//! Paused rather than idle, by measurement (docs/snapshots.md): an idle TCG guest still wakes
//! for its timer ticks (55-60 ms of CPU a second on the 2-core machine kiln is developed on)
//! where a paused one costs nothing, and a paused one even answers its claim sooner (the
//! resume is overlapped with the identity; p50 10-14 ms over the API against 25 ms for a
//! pool whose next sandbox was left idle).

use std::time::{Duration, Instant};

use kiln_image::{Home, Progress};

use crate::error::SandboxError;
use crate::exec::ExecRequest;
use crate::sandbox::{CreateMode, Sandbox, SandboxOptions};

/// Identities and execs of `true` that warm those paths before a sandbox is paused.
const WARM_ROUNDS: usize = 3;

/// A sandbox restored ahead of time and paused, whose identity is not set yet.
#[derive(Debug)]
pub struct Warm {
    sandbox: Sandbox,
    since: Instant,
}

impl Warm {
    /// Restores a sandbox of `opts` (never cold, never forkable: a forkable sandbox has RAM of
    /// its own that a pool would have to copy ahead of time), warms it and pauses it. The
    /// template must be built: a pool never builds one (the snapshot is baked if it must be).
    pub async fn prepare(home: &Home, opts: &SandboxOptions, progress: Progress<'_>) -> Result<Warm, SandboxError> {
        if opts.cold || opts.forkable {
            return Err(SandboxError::Invalid("a pooled sandbox is restored from a snapshot, neither cold-booted nor forkable".into()));
        }
        crate::artifacts::prepare_built(home, &opts.template, progress)?;
        let opts = SandboxOptions { env: Vec::new(), ..opts.clone() };
        let mut sandbox = Sandbox::create_nameless(home, &opts, progress).await?;
        // kiln's own paths, before anything of a job's: the identity code and the exec path
        // (under TCG the first few runs of each are translated, and pay for it).
        for _ in 0..WARM_ROUNDS {
            sandbox.set_identity().await?;
            let o = sandbox.exec(ExecRequest::argv(["true"]).timeout(Duration::from_secs(30)), |_| {}).await?;
            if o.exit_code() != 0 {
                return Err(SandboxError::Protocol(format!("`true` exited {} while warming a pooled sandbox", o.exit_code())));
            }
        }
        {
            let vm = sandbox.vm.get_mut().unwrap_or_else(|e| e.into_inner());
            let vm = vm.as_mut().ok_or_else(|| SandboxError::Invalid("the sandbox was destroyed".into()))?;
            vm.pause().await?;
        }
        if let CreateMode::Restored(snap) = &sandbox.mode {
            sandbox.mode = CreateMode::Pooled(snap.clone());
        }
        Ok(Warm { sandbox, since: Instant::now() })
    }

    /// Resumes the VM and sets the identity a fresh sandbox gets, with `env`: from here it is
    /// the caller's sandbox. On error the VM is destroyed.
    pub async fn claim(mut self, env: Vec<(String, String)>) -> Result<Sandbox, SandboxError> {
        let t = Instant::now();
        let mut vm = self.sandbox.vm.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let Some(v) = vm.as_mut() else { return Err(SandboxError::Invalid("the sandbox was destroyed".into())) };
        let mut sandbox = self.sandbox;
        sandbox.env = env;
        sandbox.machine_id = crate::random::hex(16);
        // The identity waits in the channel until the guest runs again: the two round trips
        // overlap, and the guest's first instruction after the pause is for its identity.
        let (resumed, identity) = tokio::join!(v.resume(), sandbox.agent.set_identity(sandbox.identity()));
        *sandbox.vm.get_mut().unwrap_or_else(|e| e.into_inner()) = vm;
        resumed?;
        sandbox.map_err(identity).await?;
        sandbox.timings = crate::sandbox::CreateTimings { prepare: Duration::ZERO, boot: Duration::ZERO, identity: t.elapsed() };
        Ok(sandbox)
    }

    /// Whether its VM has exited while it waited.
    pub fn has_died(&self) -> bool {
        self.sandbox.has_died()
    }

    /// Its id (also the hostname it will have).
    pub fn id(&self) -> &str {
        self.sandbox.id()
    }

    /// vCPUs and MiB of memory.
    pub fn shape(&self) -> (u32, u32) {
        (self.sandbox.spec.cpus, self.sandbox.spec.memory_mib)
    }

    /// The VMM's process id.
    pub fn vmm_pid(&self) -> u32 {
        self.sandbox.vmm_pid()
    }

    /// How long it has waited.
    pub fn age(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Warm {
    /// The snapshot it was restored from (its folder name).
    pub fn snapshot(&self) -> &str {
        match &self.sandbox.mode {
            CreateMode::Pooled(s) | CreateMode::Restored(s) => s,
            _ => "",
        }
    }

    /// The accelerator it runs on.
    pub fn accel(&self) -> kiln_vmm::Accel {
        self.sandbox.accel
    }
}

/// The snapshot (its folder name) that a create of `template` in this shape would restore now,
/// if it is baked: a pooled sandbox restored from another is stale (the template, the agent
/// or QEMU changed since).
pub fn current_snapshot(home: &Home, template: &str, accel: kiln_vmm::Accel, cpus: u32, memory_mib: u32) -> Option<String> {
    let artifacts = crate::artifacts::prepare_built(home, template, &kiln_image::quiet).ok()?;
    let expected = crate::snapshot::Expected::new(&artifacts, crate::sandbox::qemu_version().ok()?, accel, cpus, memory_mib);
    let snap = crate::snapshot::find(home, &expected).ok()?;
    Some(snap.dir.file_name()?.to_string_lossy().into_owned())
}
