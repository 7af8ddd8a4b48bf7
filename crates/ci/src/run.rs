//! `kiln ci run`: the whole job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kiln_core::sandbox::{ensure_snapshot, qemu_version};
use kiln_core::snapshot::Expected;
use kiln_provenance::BuildFacts;
use kiln_core::{ExecRequest, Output, Sandbox, SandboxError, SandboxOptions};
use kiln_fs::Dir;
use kiln_image::Home;
use serde::Serialize;

use crate::mask::Masker;
use crate::source::{self, Source};
use crate::{artifacts, CiError};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct CiConfig {
    /// A local path or a URL.
    pub repo: String,
    /// Branch, tag, commit or HEAD.
    pub git_ref: String,
    /// The build command (shell, run in /work/src).
    pub build: String,
    /// The setup command, cached by `cache_keys` (shell, run in /work/src).
    pub setup: Option<String>,
    /// Hard timeout of each step.
    pub timeout: Duration,
    /// Template.
    pub template: String,
    /// Secrets: (name, value), for the build step's environment only.
    pub secrets: Vec<(String, String)>,
    /// Give the secrets to the setup step too (then the setup is never cached).
    pub setup_secrets: bool,
    /// Egress allowlist entries.
    pub allow: Vec<String>,
    /// The upstream HTTP proxy allowed names are sent through (`--egress-upstream`); `None`:
    /// the egress proxy resolves them and connects itself.
    pub egress_upstream: Option<Arc<kiln_egress::Upstream>>,
    /// Files whose contents key the setup cache.
    pub cache_keys: Vec<PathBuf>,
    /// Digests (`sha256:<hex>`) of cache-key files a daemon's client read, keying it too.
    pub cache_key_digests: Vec<String>,
    /// A trusted run may write cache entries; an untrusted one only reads them.
    pub trusted: bool,
    /// Matrix axes.
    pub matrix: Vec<(String, Vec<String>)>,
    /// Artifact globs (relative to /work/src).
    pub artifacts: Vec<String>,
    /// Output folder (logs, artifacts, provenance, report).
    pub out: PathBuf,
    /// Builds run at once.
    pub parallel: usize,
    /// Builds of each cell, each in its own VM forked from the same setup, whose artifacts
    /// are compared (`--rebuild N`); 0 or 1: one build.
    pub rebuild: usize,
    /// Fail the run (exit [`NOT_REPRODUCIBLE`]) when a cell's builds differ.
    pub require_reproducible: bool,
}

/// The run's exit code when every build passed but some cell's builds differ and
/// `require_reproducible` was asked for.
pub const NOT_REPRODUCIBLE: i32 = 3;

/// The egress side the runner plugs into every VM.
pub trait Egress: Send + Sync {
    /// A handler for tunnelled connections of a VM.
    fn handler(&self) -> kiln_core::tunnel::Handler;
    /// Also allow this host:port (for cloning a URL), or stop allowing it (`None`).
    fn allow_extra(&self, entry: Option<String>);
    /// Every attempt so far, for the report.
    fn report(&self) -> serde_json::Value;
}

/// Writes a signed provenance file for a cell, returns its path.
/// (`builder_id` is the signer's to fill.)
pub type Signer = Arc<dyn Fn(&BuildFacts, &Dir) -> Result<PathBuf, String> + Send + Sync>;

/// Where the output of the build goes as it happens (cell label, masked bytes, is-stderr).
pub type Sink = Arc<dyn Fn(&str, &[u8], bool) + Send + Sync>;

/// One cell's result.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CellReport {
    /// "KEY=v,KEY2=w" or "default".
    pub name: String,
    /// Its matrix values.
    pub env: BTreeMap<String, String>,
    /// Exit code (124 timeout).
    pub exit_code: i32,
    /// Timed out.
    pub timed_out: bool,
    /// Build duration.
    pub duration_ms: u64,
    /// Masked log on the host.
    pub log: PathBuf,
    /// Artifacts copied out.
    pub artifacts: Vec<artifacts::Artifact>,
    /// Signed provenance, if any artifacts.
    pub provenance: Option<PathBuf>,
    /// What went wrong, if kiln itself failed for this cell.
    pub error: Option<String>,
    /// With `--rebuild N`: whether all N builds exited alike and made the same artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproducible: Option<bool>,
    /// With `--rebuild N`: the builds (this first one counted) that agree with this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreed: Option<u32>,
    /// With `--rebuild N`: the artifacts that are not the same in every build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<crate::reproduce::Difference>,
    /// With `--rebuild N`: builds 2 to N (this report's own fields are build 1's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebuilds: Vec<crate::reproduce::Build>,
}

/// The report of a run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    /// Repo.
    pub repo: String,
    /// Ref.
    pub git_ref: String,
    /// Commit built.
    pub commit: String,
    /// Template.
    pub template: String,
    /// Setup command.
    pub setup: Option<String>,
    /// Setup exit code (when it ran).
    pub setup_exit_code: Option<i32>,
    /// Build command.
    pub build: String,
    /// Cache: key, hit, written.
    pub cache: serde_json::Value,
    /// Cells.
    pub cells: Vec<CellReport>,
    /// Egress attempts.
    pub egress: serde_json::Value,
    /// The run's exit code.
    pub exit_code: i32,
    /// Wall time.
    pub duration_ms: u64,
    /// The daemon's id of the run (runs through `kiln serve` only): its output files are read
    /// with `GET /v1/ci/runs/{id}/files?path=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl Report {
    /// The output files the report names, as paths beneath the out folder `out` (relative when
    /// the report's paths are): `setup.log` when the setup ran, and each cell's log, artifacts
    /// and provenance.
    pub fn files(&self, out: &Path) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if self.setup_exit_code.is_some() {
            v.push(out.join("setup.log"));
        }
        let with_artifacts = |v: &mut Vec<PathBuf>, log: &Path, artifacts: &[artifacts::Artifact]| {
            v.push(log.to_owned());
            let dir = log.parent().unwrap_or(out);
            v.extend(artifacts.iter().map(|a| dir.join("artifacts").join(&a.path)));
        };
        for c in &self.cells {
            with_artifacts(&mut v, &c.log, &c.artifacts);
            v.extend(c.provenance.clone());
            for b in &c.rebuilds {
                with_artifacts(&mut v, &b.log, &b.artifacts);
            }
        }
        v
    }

    /// Moves the paths it names from beneath `from` to beneath `to` (`to` empty: relative).
    pub fn rebase(&mut self, from: &Path, to: &Path) {
        let move_path = |p: &mut PathBuf| {
            if let Ok(rel) = p.strip_prefix(from) {
                *p = to.join(rel);
            }
        };
        for c in &mut self.cells {
            move_path(&mut c.log);
            if let Some(p) = c.provenance.as_mut() {
                move_path(p);
            }
            for b in &mut c.rebuilds {
                move_path(&mut b.log);
            }
        }
    }
}

/// Most matrix cells one run may have: each is a forked VM, all alive at once.
pub const MAX_CELLS: usize = kiln_core::fork::MAX_FORK;
/// Most cells built at once.
pub const MAX_PARALLEL: usize = 16;

/// How many cells a matrix expands to, checked against [`MAX_CELLS`] before it is expanded
/// (30 two-value axes would be 2^30 cells).
pub fn cell_count<'a>(matrix: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>) -> Result<usize, CiError> {
    let mut n: usize = 1;
    for (k, values) in matrix {
        if values.is_empty() {
            return Err(CiError::Invalid(format!("--matrix {k}: no values")));
        }
        n = n.checked_mul(values.len()).filter(|n| *n <= MAX_CELLS).ok_or_else(|| {
            CiError::Invalid(format!("the matrix has more than {MAX_CELLS} cells (each cell is a VM, all alive at once); split the job"))
        })?;
    }
    Ok(n)
}

impl CiConfig {
    /// Checks the limits that do not need the source: the matrix's size, `parallel` and
    /// `rebuild`. Answers the number of cells.
    pub fn check_limits(&self) -> Result<usize, CiError> {
        if self.parallel == 0 || self.parallel > MAX_PARALLEL {
            return Err(CiError::Invalid(format!("parallel must be between 1 and {MAX_PARALLEL} (got {})", self.parallel)));
        }
        let cells = cell_count(self.matrix.iter().map(|(k, v)| (k, v)))?;
        check_rebuild(cells, self.rebuild, self.require_reproducible, &self.artifacts)?;
        Ok(cells)
    }

    /// Builds per cell.
    pub fn builds_per_cell(&self) -> usize {
        self.rebuild.max(1)
    }
}

/// Checks `--rebuild N` against the cells, the artifacts and `--require-reproducible`.
pub fn check_rebuild(cells: usize, rebuild: usize, require: bool, artifacts: &[String]) -> Result<(), CiError> {
    use crate::reproduce::MAX_REBUILDS;
    if rebuild == 0 {
        return if require { Err(CiError::Invalid("--require-reproducible needs --rebuild N (N ≥ 2 builds to compare)".into())) } else { Ok(()) };
    }
    if !(2..=MAX_REBUILDS).contains(&rebuild) {
        return Err(CiError::Invalid(format!("--rebuild must be between 2 and {MAX_REBUILDS} (got {rebuild})")));
    }
    if artifacts.is_empty() {
        return Err(CiError::Invalid("--rebuild compares the builds' artifacts: name them with --artifact GLOB".into()));
    }
    if cells * rebuild > MAX_CELLS {
        return Err(CiError::Invalid(format!(
            "{cells} cell(s) × {rebuild} builds is more than {MAX_CELLS} VMs (each build is a VM, all alive at once); fewer rebuilds or a smaller matrix"
        )));
    }
    Ok(())
}

fn cells(matrix: &[(String, Vec<String>)]) -> Vec<BTreeMap<String, String>> {
    let mut out = vec![BTreeMap::new()];
    for (k, values) in matrix {
        out = out.into_iter().flat_map(|c| values.iter().map(move |v| { let mut c = c.clone(); c.insert(k.clone(), v.clone()); c })).collect();
    }
    out
}

fn cell_name(env: &BTreeMap<String, String>) -> String {
    if env.is_empty() {
        return "default".into();
    }
    env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn proxy_env() -> Vec<(String, String)> {
    let p = format!("http://{}", kiln_proto::tunnel::GUEST_PROXY_ADDR);
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .iter()
        .map(|k| ((*k).to_owned(), p.clone()))
        .chain([("NO_PROXY".into(), "localhost,127.0.0.1".into()), ("no_proxy".into(), "localhost,127.0.0.1".into()), ("CI".into(), "true".into())])
        .collect()
}

/// Most of a step's log kept on the host (the terminal still gets all of it): a guest that
/// prints without end must not grow kiln's memory without end.
pub const MAX_LOG: usize = 64 << 20;
/// Most output kept of kiln's own helper commands in the guest (clone, update).
const MAX_QUIET: usize = 1 << 20;
const TRUNCATED: &[u8] = b"\n[kiln: log truncated]\n";

/// Appends `d` to `buf` up to `cap` bytes, then a single truncation marker.
fn push_capped(buf: &mut Vec<u8>, d: &[u8], cap: usize) {
    if buf.len() >= cap {
        return;
    }
    let room = cap - buf.len();
    if d.len() <= room {
        buf.extend_from_slice(d);
    } else {
        buf.extend_from_slice(&d[..room]);
        buf.extend_from_slice(TRUNCATED);
    }
}

/// Runs a command, masked output to `sink` and `log`; returns the outcome.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn step(sbx: &Sandbox, script: &str, cwd: &str, env: Vec<(String, String)>, timeout: Duration, label: &str, masker: &Mutex<(Masker, Masker)>, sink: &Sink, log: &mut Vec<u8>) -> Result<kiln_core::ExecOutcome, SandboxError> {
    let mut req = ExecRequest::shell(script).cwd(cwd).timeout(timeout);
    req.env = env;
    let r = sbx
        .exec(req, |o| {
            let mut m = masker.lock().unwrap_or_else(|e| e.into_inner());
            let (bytes, err) = match o {
                Output::Stdout(d) => (m.0.push(d), false),
                Output::Stderr(d) => (m.1.push(d), true),
            };
            push_capped(log, &bytes, MAX_LOG);
            sink(label, &bytes, err);
        })
        .await;
    let mut m = masker.lock().unwrap_or_else(|e| e.into_inner());
    let (o, e) = (m.0.finish(), m.1.finish());
    push_capped(log, &o, MAX_LOG);
    push_capped(log, &e, MAX_LOG);
    sink(label, &o, false);
    sink(label, &e, true);
    r
}

async fn quiet(sbx: &Sandbox, script: &str, env: Vec<(String, String)>) -> Result<(i32, String, String), SandboxError> {
    let mut req = ExecRequest::shell(script).timeout(Duration::from_secs(600));
    req.env = env;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let o = sbx
        .exec(req, |o| match o {
            Output::Stdout(d) => push_capped(&mut out, d, MAX_QUIET),
            Output::Stderr(d) => push_capped(&mut err, d, MAX_QUIET),
        })
        .await?;
    Ok((o.exit_code(), String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned()))
}

fn attach_egress(sbx: &Sandbox, egress: &Arc<dyn Egress>) -> tokio::task::JoinHandle<String> {
    let socket = sbx.net_socket();
    let handler = egress.handler();
    tokio::spawn(async move { kiln_core::tunnel::serve(&socket, handler).await })
}

/// Runs the job. Errors are kiln's own failures (exit 125); build failures are in the report.
/// An error's text passes the masker too: a secret in a guest's error message, a path or a
/// git message never reaches the caller's terminal or the API raw.
pub async fn run(home: &Home, cfg: &CiConfig, egress: Arc<dyn Egress>, sign: Signer, sink: Sink, progress: &(dyn Fn(&str) + Send + Sync)) -> Result<Report, CiError> {
    let secret_values: Vec<&str> = cfg.secrets.iter().map(|(_, v)| v.as_str()).collect();
    let masker = Masker::new(&secret_values);
    run_job(home, cfg, egress, sign, sink, progress).await.map_err(|e| e.masked(&masker))
}

async fn run_job(home: &Home, cfg: &CiConfig, egress: Arc<dyn Egress>, sign: Signer, sink: Sink, progress: &(dyn Fn(&str) + Send + Sync)) -> Result<Report, CiError> {
    let t0 = Instant::now();
    let started = SystemTime::now();
    cfg.check_limits()?;
    // The out folder may sit in the pull request's checkout: it must be new (or empty), and
    // everything below it is written through its handle, never through a link.
    let out_dir = Dir::create_out(&cfg.out).map_err(|e| CiError::Invalid(format!("--out: {e}")))?;
    let secret_values: Vec<&str> = cfg.secrets.iter().map(|(_, v)| v.as_str()).collect();
    let masker = Masker::new(&secret_values);
    let work = tempdir_in(home)?;

    // Source.
    let source = if source::is_url(&cfg.repo) {
        Source::Url(cfg.repo.clone())
    } else {
        source::bundle(Path::new(&cfg.repo), &cfg.git_ref, work.path())?
    };

    // Template, snapshot and the cache key.
    let artifacts_boot = kiln_core::artifacts::prepare(home, &cfg.template, progress)?;
    let (accel, _) = kiln_core::accel::resolve(home, Default::default()).await?;
    let (cpus, mem) = (artifacts_boot.template.cpus, artifacts_boot.template.memory_mib);
    // Bake first if needed, so that the cache key names a snapshot that exists.
    ensure_snapshot(home, &artifacts_boot, accel, cpus, mem, Duration::from_secs(120), progress).await?;
    let snapshot_name = Expected::new(&artifacts_boot, qemu_version()?, accel, cpus, mem).dir_name();
    let cache_key = match &cfg.setup {
        Some(setup) if !cfg.setup_secrets => {
            Some(crate::cache::key(&source::identity(&cfg.repo), &snapshot_name, setup, &cfg.cache_keys, &cfg.cache_key_digests)?)
        }
        _ => None,
    };
    let cache = cache_key.as_ref().map(|k| crate::cache::Entry::new(home, k));
    // An entry is restored only once its files check out against the digests recorded when a
    // trusted run wrote it; a damaged one is a miss (and a trusted run rewrites it).
    let cache_hit = match &cache {
        Some(c) if c.is_complete() => match tokio::task::spawn_blocking({ let c = c.clone(); move || c.verify() }).await.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(()) => true,
            Err(why) => {
                progress(&format!("setup cache entry {} is not usable ({why}); running the setup", c.key_short()));
                false
            }
        },
        _ => false,
    };

    let base_env: Vec<(String, String)> = proxy_env();
    let build_env = |cell: &BTreeMap<String, String>| -> Vec<(String, String)> {
        let mut e = base_env.clone();
        e.extend(cell.iter().map(|(k, v)| (k.clone(), v.clone())));
        e.extend(cfg.secrets.iter().cloned());
        e
    };
    let mut commit = match &source {
        Source::Bundle { commit, .. } => commit.clone(),
        Source::Url(_) => String::new(),
    };
    let workdir = source.workdir();
    let workdir = workdir.as_str();
    let masks = Mutex::new((masker.clone(), masker.clone()));
    let mut setup_exit = None;
    let mut cache_written = false;
    let all_cells = cells(&cfg.matrix);
    let per_cell = cfg.builds_per_cell();
    let vms = all_cells.len() * per_cell;

    // The cell sandboxes.
    let mut sandboxes: Vec<Sandbox> = Vec::new();
    let mut tunnels = Vec::new();
    if cache_hit {
        let entry = cache.as_ref().expect("hit");
        progress(&format!("setup cache hit ({}): restoring {} build VM(s)", entry.key_short(), vms));
        for _ in 0..vms {
            let s = Sandbox::from_checkpoint(home, &entry.dir, &entry.memory, artifacts_boot.clone(), accel, Vec::new()).await?;
            tunnels.push(attach_egress(&s, &egress));
            if let Source::Bundle { bundle, .. } = &source {
                let f = tokio::fs::File::open(bundle).await.map_err(CiError::io(format!("open {}", bundle.display())))?;
                s.agent().write_file("/tmp/kiln-source.bundle", 0o644, true, f).await?;
            }
            let (code, out, err) = quiet(&s, &source::update_script(&commit), base_env.clone()).await?;
            if code != 0 {
                return Err(CiError::Source { what: "updating the cached checkout".into(), detail: err.trim().to_owned() });
            }
            commit = out.trim().to_owned();
            sandboxes.push(s);
        }
    } else {
        let opts = SandboxOptions { template: cfg.template.clone(), forkable: true, ..SandboxOptions::default() };
        let mut setup_vm = Sandbox::create(home, &opts, progress).await?;
        tunnels.push(attach_egress(&setup_vm, &egress));
        if let Source::Bundle { bundle, .. } = &source {
            let f = tokio::fs::File::open(bundle).await.map_err(CiError::io(format!("open {}", bundle.display())))?;
            setup_vm.agent().write_file("/tmp/kiln-source.bundle", 0o644, true, f).await?;
        } else if let Some(host) = crate::url_host(&cfg.repo) {
            egress.allow_extra(Some(host));
        }
        setup_vm.agent().mkdir("/work", 0o755, true).await?;
        let (code, out, err) = quiet(&setup_vm, &source::clone_script(&source, &cfg.git_ref), base_env.clone()).await?;
        egress.allow_extra(None);
        if code != 0 {
            return Err(CiError::Source { what: format!("cloning {} in the VM", cfg.repo), detail: masker.mask_str(err.trim()) });
        }
        commit = out.trim().lines().last().unwrap_or("").to_owned();
        let _ = setup_vm.agent().remove("/tmp/kiln-source.bundle", false).await;
        if let Some(setup) = &cfg.setup {
            progress(&format!("setup: {setup}"));
            let mut env = base_env.clone();
            if cfg.setup_secrets {
                env.extend(cfg.secrets.iter().cloned());
            }
            let mut log = Vec::new();
            let o = step(&setup_vm, setup, workdir, env, cfg.timeout, "setup", &masks, &sink, &mut log).await?;
            out_dir.write_new(Path::new("setup.log"), &log).map_err(CiError::io("write setup.log"))?;
            setup_exit = Some(o.exit_code());
            if o.exit_code() != 0 {
                let report = Report {
                    repo: cfg.repo.clone(), git_ref: cfg.git_ref.clone(), commit, template: cfg.template.clone(),
                    setup: cfg.setup.clone(), setup_exit_code: setup_exit, build: cfg.build.clone(),
                    cache: serde_json::json!({ "key": cache_key, "hit": false, "written": false }),
                    cells: vec![], egress: egress.report(), exit_code: o.exit_code(), duration_ms: t0.elapsed().as_millis() as u64,
                    run_id: None,
                };
                return Ok(report);
            }
        }
        // Fork one VM per build (the setup VM itself is not used for a build).
        let clones = setup_vm.fork(home, vms).await?;
        if let (Some(entry), true) = (&cache, cfg.trusted) {
            if let Some(base) = clones[0].fork_base() {
                match entry.write(base, setup_vm.vm_spec()) {
                    Ok(()) => {
                        cache_written = true;
                        progress(&format!("setup cached as {} (trusted run)", entry.key_short()));
                    }
                    Err(e) => progress(&format!("could not write the setup cache: {e}")),
                }
            }
        }
        setup_vm.destroy();
        for c in clones {
            tunnels.push(attach_egress(&c, &egress));
            sandboxes.push(c);
        }
    }

    // Rebuilds get the commit's time as SOURCE_DATE_EPOCH, so that honest builds can agree.
    let source_date_epoch = if per_cell > 1 { Some(commit_time(&sandboxes[0]).await?) } else { None };
    if let Some(t) = source_date_epoch {
        progress(&format!("building each cell {per_cell} times in sibling VMs (SOURCE_DATE_EPOCH={t}, the commit's time)"));
    }

    // The cells, at most `parallel` builds at once.
    let sem = tokio::sync::Semaphore::new(cfg.parallel.max(1));
    let invocation = kiln_core::random::hex(16);
    let shared = crate::cell::Shared { out_dir: &out_dir, masker: &masker, sink: &sink, sign: &sign, sem: &sem };
    let mut futs = Vec::new();
    for (cell, sbxs) in all_cells.iter().zip(sandboxes.chunks(per_cell)) {
        let mut env = build_env(cell);
        env.extend(source_date_epoch.map(|t| ("SOURCE_DATE_EPOCH".to_owned(), t.to_string())));
        let name = cell_name(cell);
        let dir_name = if all_cells.len() == 1 { "build".to_owned() } else { name.replace(['/', ' '], "_") };
        let facts = BuildFacts {
            repo: cfg.repo.clone(), git_ref: cfg.git_ref.clone(), commit: commit.clone(), build: cfg.build.clone(),
            setup: cfg.setup.clone(), matrix: cell.clone(), template: cfg.template.clone(),
            template_digest: artifacts_boot.template.rootfs.hex().to_owned(), snapshot_digest: Some(snapshot_name.clone()),
            builder_id: String::new(), invocation_id: invocation.clone(), started, finished: started, artifacts: vec![],
            reproduced: None,
        };
        let c = crate::cell::Cell {
            cfg, env: cell.clone(), build_env: env, label: if all_cells.len() == 1 { String::new() } else { name.clone() },
            name, dir_name, workdir: workdir.to_owned(), facts,
        };
        futs.push(crate::cell::run(c, sbxs, &shared));
    }
    let reports = futures_util::future::join_all(futs).await;
    drop(sandboxes);
    for t in tunnels {
        t.abort();
    }
    let exit_code = if reports.iter().all(|r| r.exit_code == 0 && r.error.is_none()) {
        if cfg.require_reproducible && reports.iter().any(|r| r.reproducible == Some(false)) { NOT_REPRODUCIBLE } else { 0 }
    } else if reports.iter().any(|r| r.timed_out) {
        124
    } else {
        reports.iter().map(|r| r.exit_code).find(|c| *c != 0).unwrap_or(125)
    };
    Ok(Report {
        repo: cfg.repo.clone(),
        git_ref: cfg.git_ref.clone(),
        commit,
        template: cfg.template.clone(),
        setup: cfg.setup.clone(),
        setup_exit_code: setup_exit,
        build: cfg.build.clone(),
        cache: serde_json::json!({ "key": cache_key, "hit": cache_hit, "written": cache_written }),
        cells: reports,
        egress: egress.report(),
        exit_code,
        duration_ms: t0.elapsed().as_millis() as u64,
        run_id: None,
    })
}

/// The commit's time (seconds since the epoch, from the checkout in the guest: the value is
/// checked to be a plain number).
async fn commit_time(sbx: &Sandbox) -> Result<u64, CiError> {
    let (code, out, err) = quiet(sbx, "git -C /work/src log -1 --format=%ct HEAD", Vec::new()).await?;
    let t = out.trim();
    match t.parse::<u64>() {
        Ok(n) if code == 0 && t.bytes().all(|b| b.is_ascii_digit()) && n < 1 << 40 => Ok(n),
        _ => Err(CiError::Source { what: "reading the commit's time for SOURCE_DATE_EPOCH".into(), detail: format!("{} {}", &t[..t.len().min(80)], err.trim()) }),
    }
}

/// A scratch folder under the home, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir_in(home: &Home) -> Result<Scratch, CiError> {
    let p = home.run().join(format!("ci-{}", kiln_core::random::hex(6)));
    kiln_core::cleanup::make_owned_dir(&p).map_err(CiError::io(format!("create {}", p.display())))?;
    Ok(Scratch(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_capped() {
        let mut b = Vec::new();
        push_capped(&mut b, b"12345", 8);
        push_capped(&mut b, b"6789", 8);
        push_capped(&mut b, b"more", 8);
        assert_eq!(b, [&b"12345678"[..], TRUNCATED].concat());
    }

    #[test]
    fn matrix_limits_are_checked_before_expansion() {
        let axis = |k: usize| (format!("A{k}"), vec!["0".to_owned(), "1".to_owned()]);
        let huge: Vec<_> = (0..30).map(axis).collect();
        let t = Instant::now();
        let e = cell_count(huge.iter().map(|(k, v)| (k, v))).unwrap_err().to_string();
        assert!(e.contains("more than 64 cells"), "{e}");
        assert!(t.elapsed() < Duration::from_millis(100));
        let overflow: Vec<_> = (0..200).map(axis).collect();
        assert!(cell_count(overflow.iter().map(|(k, v)| (k, v))).is_err());
        assert_eq!(cell_count((0..6).map(axis).collect::<Vec<_>>().iter().map(|(k, v)| (k, v))).unwrap(), 64);
        assert!(cell_count([(&"A".to_owned(), &Vec::new())]).is_err());
    }

    #[test]
    fn matrix_cells() {
        let m = vec![("A".into(), vec!["1".into(), "2".into()]), ("B".into(), vec!["x".into()])];
        let c = cells(&m);
        assert_eq!(c.len(), 2);
        assert_eq!(cell_name(&c[0]), "A=1,B=x");
        assert_eq!(cell_name(&cells(&[])[0]), "default");
    }

    #[test]
    fn a_reports_files_move_between_out_folders() {
        let cell = |dir: &str, artifacts: &[&str], signed: bool| CellReport {
            name: dir.into(), env: BTreeMap::new(), exit_code: 0, timed_out: false, duration_ms: 1,
            log: PathBuf::from(format!("/daemon/ci-runs/ci-1/{dir}/build.log")),
            artifacts: artifacts.iter().map(|p| artifacts::Artifact { path: (*p).into(), size: 1, sha256: "00".into() }).collect(),
            provenance: signed.then(|| PathBuf::from(format!("/daemon/ci-runs/ci-1/{dir}/provenance.intoto.json"))),
            error: None, reproducible: None, agreed: None, differences: vec![], rebuilds: vec![],
        };
        let mut r = Report {
            repo: "r".into(), git_ref: "HEAD".into(), commit: "c".into(), template: "base".into(), setup: Some("s".into()),
            setup_exit_code: Some(0), build: "b".into(), cache: serde_json::Value::Null,
            cells: vec![cell("V=1", &["dist/a"], true), cell("V=2", &[], false)], egress: serde_json::Value::Null, exit_code: 0,
            duration_ms: 1, run_id: Some("ci-1".into()),
        };
        r.rebase(Path::new("/daemon/ci-runs/ci-1"), Path::new(""));
        let rel: Vec<PathBuf> = ["setup.log", "V=1/build.log", "V=1/artifacts/dist/a", "V=1/provenance.intoto.json", "V=2/build.log"].map(PathBuf::from).into();
        assert_eq!(r.files(Path::new("")), rel);
        r.rebase(Path::new(""), Path::new("/home/me/out"));
        assert_eq!(r.files(Path::new("/home/me/out")), rel.iter().map(|p| Path::new("/home/me/out").join(p)).collect::<Vec<_>>());
        // A local run's report has no run id, and its JSON says nothing of one.
        r.run_id = None;
        assert!(serde_json::to_value(&r).unwrap().get("run_id").is_none());
    }
}
