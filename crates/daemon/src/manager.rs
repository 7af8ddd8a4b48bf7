//! The daemon's view of sandboxes: a registry of live sandboxes with deadlines, limits on how
//! many and how much memory, the state store, and an audit trail. Every sandbox belongs to the
//! principal that created it: a call about a sandbox the caller may not see answers
//! [`ManagerError::NotFound`], as for one that does not exist, so ids do not leak. The HTTP
//! server translates requests into calls here; nothing here knows about HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_api::SandboxInfo;
use kiln_image::Home;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use kiln_core::error::{Fault, SandboxError};
use crate::access::{Principal, Scope};
use crate::lifecycle::{Lifecycle, State};
use crate::metrics::Metrics;
use kiln_core::sandbox::{CreateMode, Sandbox, SandboxOptions};
use crate::store::{now, SandboxRecord, Store, StoreError};

/// Limits the daemon enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most sandboxes alive at once.
    pub max_sandboxes: usize,
    /// Most guest memory (MiB) of all sandboxes together.
    pub max_memory_mib: u64,
    /// TTL when a request names none.
    pub default_ttl: Duration,
    /// Longest TTL a request may ask for.
    pub max_ttl: Duration,
    /// Image references (patterns with `*`) that any token may boot; others need the admin scope.
    pub images: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_sandboxes: 32, max_memory_mib: 16 * 1024, default_ttl: Duration::from_secs(600), max_ttl: Duration::from_secs(6 * 3600), images: Vec::new() }
    }
}

/// Why a manager call failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No live sandbox with that id that the caller may see.
    #[error("no sandbox {0} (it never existed, was deleted, its TTL expired, or another token created it)")]
    NotFound(String),
    /// Over a limit.
    #[error("{0}")]
    Limit(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The caller's scope does not allow it (the message names the scope needed).
    #[error("{0}")]
    Forbidden(String),
    /// The sandbox is in the wrong state.
    #[error("{0}")]
    Conflict(String),
    /// The sandbox (or creating it) failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request to create a sandbox.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Template name.
    pub template: String,
    /// Time to live; the default when `None`.
    pub ttl: Option<Duration>,
    /// vCPUs.
    pub cpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u32>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Keep RAM in a file so it can be forked cheaply.
    pub forkable: bool,
    /// Egress allowlist (`HOST[:PORT]` entries); empty: no egress at all.
    pub allow: Vec<String>,
    /// An OCI image to boot instead of `template`.
    pub image: Option<String>,
}

pub(crate) struct Entry {
    pub(crate) sandbox: Arc<RwLock<Sandbox>>,
    pub(crate) info: Mutex<SandboxInfo>,
    /// The principal that created it.
    owner: String,
    run_dir: String,
    /// The egress policy and log of this sandbox.
    egress: Arc<kiln_egress::ProxyContext>,
    /// The task serving its VM's egress tunnel (a new one when a fork restarts its VM).
    tunnel: Mutex<tokio::task::JoinHandle<String>>,
}

/// Serves a sandbox's egress tunnel with this proxy context.
fn attach_egress(sandbox: &Sandbox, ctx: Arc<kiln_egress::ProxyContext>) -> tokio::task::JoinHandle<String> {
    let socket = sandbox.net_socket();
    let handler: kiln_core::tunnel::Handler = Arc::new(move |stream| {
        let ctx = ctx.clone();
        Box::pin(async move {
            kiln_egress::serve_connection(stream, &ctx).await;
        })
    });
    tokio::spawn(async move { kiln_core::tunnel::serve(&socket, handler).await })
}

/// A proxy context for an allowlist, sending allowed names through `upstream` if there is one.
pub fn egress_context(allow: &[String], upstream: Option<Arc<kiln_egress::Upstream>>) -> Result<Arc<kiln_egress::ProxyContext>, ManagerError> {
    let policy = kiln_egress::Policy::parse(allow).map_err(|e| ManagerError::Invalid(format!("allow: {e}")))?;
    Ok(Arc::new(kiln_egress::ProxyContext::new(policy, Arc::new(kiln_egress::SystemResolver), kiln_egress::Limits::default()).with_upstream(upstream)))
}

/// A read lease on a running sandbox: exec and file requests run under it, concurrently.
pub type Lease = OwnedRwLockReadGuard<Sandbox>;

/// The registry.
pub struct Manager {
    pub(crate) home: Home,
    pub(crate) store: Store,
    pub(crate) limits: Limits,
    pub(crate) live: Mutex<HashMap<String, Arc<Entry>>>,
    /// (sandboxes, MiB) being created right now, counted against the limits.
    reserved: Mutex<(usize, u64)>,
    pub(crate) metrics: Metrics,
    /// Sandboxes restored ahead of time (see [`crate::pool`]).
    pub(crate) pool: crate::pool::Pool,
    /// The upstream HTTP proxy sandboxes' and CI runs' egress goes through (`kiln serve
    /// --egress-upstream`).
    egress_upstream: Mutex<Option<Arc<kiln_egress::Upstream>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("home", &self.home).field("limits", &self.limits).finish()
    }
}

/// Moves a sandbox to `to` if the lifecycle allows it; an impossible move is a bug, reported
/// on stderr and refused.
fn transition(info: &Mutex<SandboxInfo>, to: State) -> bool {
    let mut i = lock(info);
    if i.state.valid_transition(to) {
        i.state = to;
        true
    } else {
        eprintln!("kiln: refused state change of {} from {} to {}", i.id, i.state.as_str(), to.as_str());
        false
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn mode_name(m: &CreateMode) -> (String, Option<String>) {
    match m {
        CreateMode::Cold => ("cold".into(), None),
        CreateMode::Restored(_) => ("restored".into(), None),
        CreateMode::Forked(p) => ("forked".into(), Some(p.clone())),
        CreateMode::Pooled(_) => ("pooled".into(), None),
    }
}

impl Manager {
    /// Opens the state store in the home and reconciles it with reality (see
    /// [`Manager::reconcile`]).
    pub fn open(home: Home, limits: Limits) -> Result<Arc<Manager>, ManagerError> {
        std::fs::create_dir_all(home.root()).map_err(|source| SandboxError::Io { what: format!("create {}", home.root().display()), source })?;
        let store = Store::open(&home.root().join("kiln.db"))?;
        let m = Arc::new(Manager { home, store, limits, live: Mutex::new(HashMap::new()),
            reserved: Mutex::new((0, 0)),
            metrics: Metrics::default(),
            pool: crate::pool::Pool::default(),
            egress_upstream: Mutex::new(None),
        });
        m.reconcile()?;
        Ok(m)
    }

    /// Sends the egress of sandboxes created from now on (and of CI runs) through `upstream`
    /// (`None`: direct).
    pub fn set_egress_upstream(&self, upstream: Option<Arc<kiln_egress::Upstream>>) {
        *lock(&self.egress_upstream) = upstream;
    }

    /// The upstream HTTP proxy egress goes through, if any.
    pub fn egress_upstream(&self) -> Option<Arc<kiln_egress::Upstream>> {
        lock(&self.egress_upstream).clone()
    }

    /// After a restart: every sandbox the store thinks alive lost its VM with the previous
    /// daemon (a VMM cannot outlive the process that started it); any VMM still found is
    /// killed, the records are marked failed, and orphaned files are removed.
    pub fn reconcile(&self) -> Result<Vec<String>, ManagerError> {
        let mut lost = Vec::new();
        for r in self.store.live_sandboxes()? {
            let id = r.info.id;
            if lock(&self.live).contains_key(&id) {
                continue;
            }
            if kiln_core::cleanup::pid_alive(r.vmm_pid) {
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", r.vmm_pid)).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&r.run_dir) {
                    // SAFETY: kill has no memory effects; the pid was checked to be this VM's QEMU.
                    unsafe { libc::kill(r.vmm_pid as i32, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_dir_all(&r.run_dir);
            self.store.set_state(&id, State::Failed)?;
            let why = if r.info.deadline < now() { "lost with the previous daemon (and past its deadline)" } else { "lost with the previous daemon" };
            self.store.event(Some(&id), "lost", why, "kiln")?;
            lost.push(id);
        }
        kiln_core::cleanup::sweep(&self.home);
        Ok(lost)
    }

    /// The home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn check_ttl(&self, ttl: Option<Duration>) -> Result<Duration, ManagerError> {
        let ttl = ttl.unwrap_or(self.limits.default_ttl);
        if ttl.is_zero() || ttl > self.limits.max_ttl {
            return Err(ManagerError::Invalid(format!(
                "ttl_seconds must be between 1 and {}, not {}",
                self.limits.max_ttl.as_secs(),
                ttl.as_secs()
            )));
        }
        Ok(ttl)
    }

    /// Guest memory (MiB) of the live sandboxes and of those being created.
    pub(crate) fn memory_in_use(&self) -> u64 {
        let live: u64 = lock(&self.live).values().map(|e| u64::from(lock(&e.info).memory_mib)).sum();
        live + lock(&self.reserved).1
    }

    /// Reserves room for `n` sandboxes of `mib` MiB each, or says which limit is in the way.
    /// Pooled sandboxes count against the memory limit, not the count.
    fn reserve(&self, n: usize, mib: u64) -> Result<(), ManagerError> {
        let pooled = self.pool.memory_mib();
        let live = lock(&self.live);
        let (count, memory) = live.values().fold((0usize, pooled), |(c, m), e| (c + 1, m + u64::from(lock(&e.info).memory_mib)));
        let mut r = lock(&self.reserved);
        if count + r.0 + n > self.limits.max_sandboxes {
            self.metrics.limit_refusals.inc();
            return Err(ManagerError::Limit(format!(
                "{} sandboxes running or starting; the limit is {} (delete some, or raise --max-sandboxes)",
                count + r.0,
                self.limits.max_sandboxes
            )));
        }
        if memory + r.1 + mib * n as u64 > self.limits.max_memory_mib {
            self.metrics.limit_refusals.inc();
            return Err(ManagerError::Limit(format!(
                "{} MiB of guest memory in use, reserved or pooled, {} more requested; the limit is {} MiB (raise --max-memory, or pool fewer)",
                memory + r.1,
                mib * n as u64,
                self.limits.max_memory_mib
            )));
        }
        r.0 += n;
        r.1 += mib * n as u64;
        Ok(())
    }

    /// Room for `n` VMs of `mib` MiB that are not sandboxes of the registry (a CI run's setup
    /// VM and cells), held under the same limits until the [`Reservation`] is dropped.
    pub fn reserve_vms(self: &Arc<Self>, n: usize, mib: u64) -> Result<Reservation, ManagerError> {
        self.reserve(n, mib)?;
        Ok(Reservation { manager: self.clone(), n, mib })
    }

    fn release(&self, n: usize, mib: u64) {
        let mut r = lock(&self.reserved);
        r.0 = r.0.saturating_sub(n);
        r.1 = r.1.saturating_sub(mib * n as u64);
    }

    fn register(&self, sandbox: Sandbox, deadline: i64, template: &str, egress: Arc<kiln_egress::ProxyContext>, owner: &str) -> Result<SandboxInfo, ManagerError> {
        let (mode, parent) = mode_name(sandbox.mode());
        let info = SandboxInfo {
            id: sandbox.id().to_owned(),
            template: template.to_owned(),
            state: State::Running,
            created_at: now(),
            deadline,
            cpus: sandbox.vm_spec().cpus,
            memory_mib: sandbox.vm_spec().memory_mib,
            mode,
            parent,
        };
        let run_dir = sandbox.vm_spec().run_dir.display().to_string();
        self.store.put_sandbox(&SandboxRecord { info: info.clone(), run_dir: run_dir.clone(), vmm_pid: sandbox.vmm_pid(), owner: owner.to_owned() })?;
        let tunnel = attach_egress(&sandbox, egress.clone());
        let entry =
            Arc::new(Entry { sandbox: Arc::new(RwLock::new(sandbox)), info: Mutex::new(info.clone()), owner: owner.to_owned(), run_dir, egress, tunnel: Mutex::new(tunnel) });
        lock(&self.live).insert(info.id.clone(), entry);
        self.metrics.running.set(lock(&self.live).len() as i64);
        Ok(info)
    }

    /// The template a request names, from the daemon's template folders (or built in). A path
    /// is refused before anything is read. Only an admin may use one that is not built, or
    /// changed since it was built, since using it builds it (its `run` commands run as root).
    pub fn template(&self, name: &str, who: &Principal) -> Result<kiln_image::TemplateDef, ManagerError> {
        let name = crate::access::template_name(name).map_err(ManagerError::Invalid)?;
        let def = kiln_image::TemplateDef::find(name).map_err(SandboxError::from)?;
        if !who.may(Scope::Admin) {
            let built = kiln_image::BuiltTemplate::load(&self.home, &def.name);
            if built.is_none_or(|b| Some(&b.source_digest) != def.source_digest.as_ref()) {
                return Err(ManagerError::Invalid(format!(
                    "template {name} is not built (or changed since it was built), and building it needs the admin scope; \
                     ask an admin to run `kiln template build {name}`"
                )));
            }
        }
        Ok(def)
    }

    /// Creates a sandbox (restored from its template's snapshot), owned by `who`.
    pub async fn create(&self, req: CreateRequest, who: &Principal) -> Result<SandboxInfo, ManagerError> {
        let actor = who.name.as_str();
        if let Err(m) = crate::access::egress_reach(who, &req.allow, None) {
            let _ = self.store.event(None, "denied", &format!("create: {m}"), actor);
            return Err(ManagerError::Forbidden(m));
        }
        let (def, template) = match &req.image {
            None => (self.template(&req.template, who)?, req.template.clone()),
            Some(image) => {
                if !req.template.is_empty() {
                    return Err(ManagerError::Invalid("name a template or an image, not both".into()));
                }
                let path = self.image_template(image, who).await?;
                (kiln_image::TemplateDef::find(&path).map_err(SandboxError::from)?, path)
            }
        };
        let ttl = self.check_ttl(req.ttl)?;
        let egress = egress_context(&req.allow, self.egress_upstream())?;
        let mib = u64::from(req.memory_mib.unwrap_or(def.vm.memory_mib));
        let t0 = Instant::now();
        let shape = Self::shape_of(&def, req.cpus, req.memory_mib);
        let pooled = !req.forkable && self.pool.serves(&shape);
        let warm = if pooled { self.pool.take(&shape) } else { None };
        if let Err(e) = self.reserve(1, mib) {
            if let Some(w) = warm {
                self.pool.put_back(shape, w);
            }
            return Err(e);
        }
        match (pooled, warm.is_some()) {
            (true, true) => self.metrics.pool_hits.inc(),
            (true, false) => self.metrics.pool_misses.inc(),
            _ => {}
        }
        let opts = SandboxOptions {
            template,
            cpus: req.cpus,
            memory_mib: req.memory_mib,
            env: req.env,
            forkable: req.forkable,
            ..SandboxOptions::default()
        };
        let created = match warm {
            Some(w) => match w.claim(opts.env.clone()).await {
                Ok(s) => Ok(s),
                Err(e) => {
                    // The pooled VM is gone with the error; this create restores as on a miss.
                    self.metrics.failures.inc();
                    let _ = self.store.event(None, "pool_claim_failed", &format!("{shape}: {}", e.with_causes()), "kiln");
                    Sandbox::create(&self.home, &opts, &kiln_image::quiet).await
                }
            },
            None => Sandbox::create(&self.home, &opts, &kiln_image::quiet).await,
        };
        self.release(1, mib);
        let sandbox = match created {
            Ok(s) => s,
            Err(e) => {
                self.metrics.failures.inc();
                let _ = self.store.event(None, "create_failed", &format!("{}: {e}", def.name), actor);
                return Err(e.into());
            }
        };
        self.metrics.creates.inc();
        self.metrics.create_latency.observe(t0.elapsed().as_secs_f64());
        let deadline = now() + ttl.as_secs() as i64;
        let info = self.register(sandbox, deadline, &def.name, egress, actor)?;
        self.store.event(Some(&info.id), "created", &format!("template {} ({}), ttl {}s", info.template, info.mode, ttl.as_secs()), actor)?;
        Ok(info)
    }

    /// A live sandbox `who` may see: its own, or any for an admin. Another's is not found.
    fn entry(&self, id: &str, who: &Principal) -> Result<Arc<Entry>, ManagerError> {
        lock(&self.live).get(id).filter(|e| who.sees(&e.owner)).cloned().ok_or_else(|| ManagerError::NotFound(id.to_owned()))
    }

    /// One live sandbox.
    pub fn get(&self, id: &str, who: &Principal) -> Result<SandboxInfo, ManagerError> {
        let e = self.entry(id, who)?;
        let info = lock(&e.info).clone();
        Ok(info)
    }

    /// The live sandboxes `who` may see, oldest first.
    pub fn list(&self, who: &Principal) -> Vec<SandboxInfo> {
        let mut v: Vec<SandboxInfo> = lock(&self.live).values().filter(|e| who.sees(&e.owner)).map(|e| lock(&e.info).clone()).collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    /// Destroys a sandbox.
    pub async fn delete(&self, id: &str, who: &Principal) -> Result<(), ManagerError> {
        self.entry(id, who)?;
        self.finish(id, State::Stopped, "killed", "on request", &who.name).await
    }

    /// Removes a sandbox from the registry and destroys its VM, recording why.
    pub(crate) async fn finish(&self, id: &str, end: State, kind: &str, detail: &str, actor: &str) -> Result<(), ManagerError> {
        let entry = lock(&self.live).remove(id).ok_or_else(|| ManagerError::NotFound(id.to_owned()))?;
        self.metrics.running.set(lock(&self.live).len() as i64);
        transition(&entry.info, State::Stopping);
        let _ = self.store.set_state(id, State::Stopping);
        // Kill without waiting for running execs (they end with "sandbox destroyed").
        entry.sandbox.read().await.kill();
        lock(&entry.tunnel).abort();
        let _ = std::fs::remove_dir_all(&entry.run_dir);
        transition(&entry.info, end);
        self.store.set_state(id, end)?;
        self.store.event(Some(id), kind, detail, actor)?;
        Ok(())
    }

    /// Sets a sandbox's deadline to now + `ttl`.
    pub fn extend(&self, id: &str, ttl: Duration, who: &Principal) -> Result<SandboxInfo, ManagerError> {
        let e = self.entry(id, who)?;
        let ttl = self.check_ttl(Some(ttl))?;
        let actor = who.name.as_str();
        let deadline = now() + ttl.as_secs() as i64;
        lock(&e.info).deadline = deadline;
        self.store.set_deadline(id, deadline)?;
        self.store.event(Some(id), "extended", &format!("ttl {}s", ttl.as_secs()), actor)?;
        let info = lock(&e.info).clone();
        Ok(info)
    }

    /// A read lease on a running sandbox `who` may see, for exec and file requests.
    pub async fn lease(&self, id: &str, who: &Principal) -> Result<Lease, ManagerError> {
        let e = self.entry(id, who)?;
        let state = lock(&e.info).state;
        if !state.can_exec() {
            return Err(ManagerError::Conflict(format!("sandbox {id} is {}, not running", state.as_str())));
        }
        Ok(e.sandbox.clone().read_owned().await)
    }

    /// Records the outcome of a request run under a lease; a sandbox found dead is failed.
    pub async fn settle<T>(&self, id: &str, r: Result<T, SandboxError>) -> Result<T, ManagerError> {
        match r {
            Err(e) if e.fault() == Fault::SandboxLost => {
                self.metrics.failures.inc();
                let _ = self.finish(id, State::Failed, "failed", &e.to_string(), "kiln").await;
                Err(e.into())
            }
            other => other.map_err(Into::into),
        }
    }

    /// Records an exec and its end in the audit log and metrics.
    pub fn note_exec(&self, id: &str, command: &str, result: &Result<kiln_core::ExecOutcome, ManagerError>, actor: &str) {
        self.metrics.execs.inc();
        let detail = match result {
            Ok(o) if o.timed_out => format!("{command}: timed out after {} ms", o.duration.as_millis()),
            Ok(o) => format!("{command}: exit {} after {} ms", o.exit_code(), o.duration.as_millis()),
            Err(e) => format!("{command}: {e}"),
        };
        let _ = self.store.event(Some(id), "exec", &detail, actor);
    }

    /// Records a file request (`op` is read, write, remove, list, stat or mkdir) and how it
    /// ended in the audit log.
    pub fn note_files<T>(&self, id: &str, op: &str, path: &str, result: &Result<T, ManagerError>, actor: &str) {
        let detail = match result {
            Ok(_) => format!("{op} {path}"),
            Err(e) => format!("{op} {path}: {e}"),
        };
        let _ = self.store.event(Some(id), "files", &detail, actor);
    }

    /// Forks a running, forkable sandbox into `count` clones with the parent's deadline.
    /// The clones belong to `who`.
    pub async fn fork(&self, id: &str, count: usize, who: &Principal) -> Result<Vec<SandboxInfo>, ManagerError> {
        let e = self.entry(id, who)?;
        let actor = who.name.as_str();
        let (mib, deadline, template) = {
            let i = lock(&e.info);
            (u64::from(i.memory_mib), i.deadline, i.template.clone())
        };
        if count == 0 || count > kiln_core::fork::MAX_FORK {
            return Err(ManagerError::Invalid(format!("count must be between 1 and {}, not {count}", kiln_core::fork::MAX_FORK)));
        }
        self.reserve(count, mib)?;
        let mut guard = e.sandbox.write().await;
        if !guard.is_forkable() {
            self.release(count, mib);
            return Err(ManagerError::Conflict(format!("sandbox {id} was not created forkable (create it with \"forkable\": true)")));
        }
        transition(&e.info, State::Paused);
        let r = guard.fork(&self.home, count).await;
        transition(&e.info, State::Running);
        drop(guard);
        self.release(count, mib);
        let clones = match r {
            Ok(c) => c,
            Err(err) => {
                let _ = self.store.event(Some(id), "fork_failed", &err.to_string(), actor);
                return self.settle(id, Err(err)).await;
            }
        };
        let mut infos = Vec::new();
        // The parent restarted with a new VM: its tunnel too. Clones share its policy.
        let egress = e.egress.clone();
        {
            let parent = e.sandbox.read().await;
            // The old VM's tunnel ended with it; the entry keeps the new one, so destroying
            // the sandbox ends it (and its connections' tasks) at once.
            lock(&e.tunnel).abort();
            *lock(&e.tunnel) = attach_egress(&parent, egress.clone());
        }
        for c in clones {
            let info = self.register(c, deadline, &template, egress.clone(), actor)?;
            self.store.event(Some(&info.id), "created", &format!("forked from {id}"), actor)?;
            infos.push(info);
        }
        self.store.event(Some(id), "forked", &format!("{count} clones"), actor)?;
        Ok(infos)
    }

    /// One pass of the reaper: destroys sandboxes past their deadline and fails dead ones.
    pub async fn reap_once(&self) {
        let t = now();
        let entries: Vec<(String, Arc<Entry>)> = lock(&self.live).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (id, e) in entries {
            let deadline = lock(&e.info).deadline;
            if deadline <= t {
                self.metrics.reaps.inc();
                let _ = self.finish(&id, State::Stopped, "reaped", "TTL expired", "kiln").await;
                continue;
            }
            let dead = match e.sandbox.try_read() {
                Ok(s) => s.has_died(),
                Err(_) => false, // being forked; look again next pass
            };
            if dead {
                self.metrics.failures.inc();
                let _ = self.finish(&id, State::Failed, "failed", "the VM exited", "kiln").await;
            }
        }
    }

    /// Starts the reaper: a pass every `every`.
    pub fn spawn_reaper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let m = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(m) = m.upgrade() else { return };
                m.reap_once().await;
            }
        })
    }

    /// Destroys every sandbox, pooled ones first (daemon shutdown).
    pub async fn shutdown(&self) {
        self.pool.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        self.pool.clear();
        let ids: Vec<String> = lock(&self.live).keys().cloned().collect();
        for id in ids {
            let _ = self.finish(&id, State::Stopped, "killed", "daemon shutting down", "kiln").await;
        }
    }

    /// The egress attempts of a live sandbox.
    pub fn egress_log(&self, id: &str, who: &Principal) -> Result<kiln_egress::LogSnapshot, ManagerError> {
        Ok(self.entry(id, who)?.egress.log.snapshot())
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.metrics.running.set(lock(&self.live).len() as i64);
        self.metrics.render() + &self.pool_metrics()
    }
}


/// VMs counted against the daemon's limits while they run outside its registry; released
/// when dropped.
#[derive(Debug)]
pub struct Reservation {
    manager: Arc<Manager>,
    n: usize,
    mib: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.manager.release(self.n, self.mib);
    }
}

#[cfg(test)]
mod send_check {
    #[allow(dead_code)]
    fn futures_are_send(m: &super::Manager, h: &kiln_image::Home, a: &kiln_core::artifacts::BootArtifacts) {
        fn is_send<T: Send>(_: T) {}
        let who = crate::access::Principal::local();
        is_send(m.create(Default::default(), &who));
        is_send(m.fork("x", 1, &who));
        is_send(kiln_core::Sandbox::create(h, &Default::default(), &kiln_image::quiet));
        is_send(kiln_core::sandbox::ensure_snapshot(h, a, kiln_vmm::Accel::Tcg, 1, 1, std::time::Duration::ZERO, &kiln_image::quiet));
    }
}
