//! `kiln ci run`: an untrusted build in disposable microVMs, with scoped secrets, an egress
//! allowlist, a setup cache only trusted runs write, matrix fan-out, artifacts and signed
//! provenance.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use kiln_ci::{CiConfig, CiError, Report};
use kiln_egress::Policy;
use kiln_image::Home;

use crate::exit;

/// CI commands.
#[derive(Debug, Subcommand)]
pub enum CiCmd {
    /// Build a repository's ref in fresh microVMs and report logs, exit codes, artifacts and provenance.
    Run(RunArgs),
}

/// `kiln ci run`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  kiln ci run --repo . --ref HEAD --build 'make test' --matrix CC=gcc,clang --artifact 'dist/*' --out ci-out\n\nReproducibility:\n  kiln ci run --repo . --build 'make dist' --artifact 'dist/*' --rebuild 2 --require-reproducible\n  builds each cell twice in sibling VMs forked from the same setup (each with its own hostname, clock\n  and RNG), with SOURCE_DATE_EPOCH set to the commit's time, and compares every artifact by sha256.\n\nExit code: the build's (any failing cell or rebuild); 124 on timeout; 3 when the builds passed but\ndiffer and --require-reproducible was given; 125 when kiln itself failed; 2 for bad arguments.")]
pub struct RunArgs {
    /// A local repository path (sent as a git bundle) or a URL (cloned by the VM through the egress proxy).
    #[arg(long)]
    repo: String,
    /// Branch, tag, commit or HEAD.
    #[arg(long = "ref", default_value = "HEAD")]
    git_ref: String,
    /// The build command (run with sh in the checkout).
    #[arg(long)]
    build: String,
    /// A setup command run once before the build (cached with --cache-key).
    #[arg(long)]
    setup: Option<String>,
    /// Hard timeout of each step, seconds.
    #[arg(long, default_value = "1800", value_name = "SECS")]
    timeout: u64,
    /// Template.
    #[arg(long, default_value = "base")]
    template: String,
    /// A secret for the build step: NAME (from kiln's environment) or NAME=@FILE (repeatable).
    #[arg(long = "secret", value_name = "NAME[=@FILE]")]
    secrets: Vec<String>,
    /// Give the secrets to the setup step too (such a setup is never cached).
    #[arg(long)]
    setup_secrets: bool,
    /// Let the build reach HOST[:PORT] through the egress proxy (repeatable; default: nothing).
    #[arg(long = "allow", value_name = "HOST[:PORT]")]
    allow: Vec<String>,
    #[arg(long = "egress-upstream", value_name = "URL", help = crate::egress_upstream::HELP)]
    egress_upstream: Option<String>,
    /// A file whose contents key the setup cache (repeatable).
    #[arg(long = "cache-key", value_name = "FILE")]
    cache_keys: Vec<PathBuf>,
    /// This run may write the setup cache (only for trusted code, e.g. the default branch).
    #[arg(long)]
    trusted: bool,
    /// A matrix axis, KEY=V1,V2,… (repeatable; one VM per combination).
    #[arg(long = "matrix", value_name = "KEY=V1,V2")]
    matrix: Vec<String>,
    /// Files to copy out of the VM, a glob relative to the checkout (repeatable).
    #[arg(long = "artifact", value_name = "GLOB")]
    artifacts: Vec<String>,
    /// Output folder: logs, artifacts, provenance, report.json. It must not exist yet (or be
    /// empty) and not be a symlink; keep it outside the checkout.
    #[arg(long, default_value = "kiln-ci-out")]
    out: PathBuf,
    /// Cells built at once, 1 to 16 (default: the host's cores, at most 16). A matrix has at
    /// most 64 cells.
    #[arg(long)]
    parallel: Option<usize>,
    /// Build each cell N times (2 to 16), each in its own VM forked from the same setup, and
    /// compare every artifact by sha256 (needs --artifact). The builds get SOURCE_DATE_EPOCH,
    /// the commit's time. The report says per cell `reproducible` and what differs.
    #[arg(long, value_name = "N")]
    rebuild: Option<usize>,
    /// With --rebuild: fail the run (exit 3) when a cell's builds differ.
    #[arg(long)]
    require_reproducible: bool,
    /// Append a Markdown summary of the run (cells, exit codes, egress denials,
    /// reproducibility) to FILE, e.g. "$GITHUB_STEP_SUMMARY".
    #[arg(long, value_name = "FILE")]
    step_summary: Option<PathBuf>,
    /// Print the report as JSON on stdout (build output goes to stderr).
    #[arg(long)]
    json: bool,
    /// Run the job in `kiln serve` (KILN_HOST) instead of in this process. Over its unix socket
    /// the daemon writes --out itself (on its host); over TCP (with KILN_TOKEN) it keeps the
    /// outputs, and they are fetched into --out here, --cache-key files are sent as digests, and
    /// a local --repo must be beneath one of the daemon's --repo-root folders.
    #[arg(long)]
    daemon: bool,
}

fn env_name_ok(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !n.as_bytes()[0].is_ascii_digit()
}

fn parse(a: &RunArgs) -> Result<CiConfig, String> {
    let mut secrets = Vec::new();
    for s in &a.secrets {
        let (name, value) = match s.split_once("=@") {
            Some((n, file)) => (n.to_owned(), std::fs::read_to_string(file).map_err(|e| format!("--secret {n}: cannot read {file}: {e}"))?.trim_end_matches('\n').to_owned()),
            None => (s.clone(), std::env::var(s).map_err(|_| format!("--secret {s}: no such variable in kiln's environment (or use {s}=@FILE)"))?),
        };
        if !env_name_ok(&name) {
            return Err(format!("--secret {name}: not a variable name"));
        }
        if value.len() < 3 {
            return Err(format!("--secret {name}: too short to mask reliably (at least 3 characters)"));
        }
        secrets.push((name, value));
    }
    let mut matrix = Vec::new();
    for m in &a.matrix {
        let (k, vs) = m.split_once('=').ok_or_else(|| format!("--matrix {m}: expected KEY=V1,V2"))?;
        let values: Vec<String> = vs.split(',').map(str::to_owned).filter(|v| !v.is_empty()).collect();
        if !env_name_ok(k) || values.is_empty() {
            return Err(format!("--matrix {m}: expected KEY=V1,V2"));
        }
        matrix.push((k.to_owned(), values));
    }
    let cells = kiln_ci::run::cell_count(matrix.iter().map(|(k, v)| (k, v))).map_err(|e| e.to_string())?;
    kiln_ci::run::check_rebuild(cells, a.rebuild.unwrap_or(0), a.require_reproducible, &a.artifacts).map_err(|e| e.to_string())?;
    for g in &a.artifacts {
        if !kiln_ci::artifacts::valid_glob(g) {
            return Err(format!("--artifact {g:?}: use a relative glob of letters, digits and ._-/*?[]"));
        }
    }
    Policy::parse(&a.allow).map_err(|e| format!("--allow: {e}"))?;
    let upstream = if a.daemon {
        // The daemon's egress goes where `kiln serve --egress-upstream` sends it.
        match crate::egress_upstream::choose(a.egress_upstream.as_deref(), |_| None)? {
            Some(_) => return Err("--egress-upstream: with --daemon the daemon's own applies (kiln serve --egress-upstream URL)".into()),
            None => None,
        }
    } else {
        crate::egress_upstream::choose(a.egress_upstream.as_deref(), |k| std::env::var(k).ok())?
    };
    if a.timeout == 0 {
        return Err("--timeout must be positive".into());
    }
    if !kiln_ci::source::is_url(&a.repo) && !std::path::Path::new(&a.repo).exists() {
        return Err(format!("--repo {}: no such path (or give an http(s):// URL)", a.repo));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    Ok(CiConfig {
        repo: a.repo.clone(),
        git_ref: a.git_ref.clone(),
        build: a.build.clone(),
        setup: a.setup.clone(),
        timeout: Duration::from_secs(a.timeout),
        template: a.template.clone(),
        secrets,
        setup_secrets: a.setup_secrets,
        allow: a.allow.clone(),
        egress_upstream: upstream,
        cache_keys: a.cache_keys.clone(),
        cache_key_digests: Vec::new(),
        trusted: a.trusted,
        matrix,
        artifacts: a.artifacts.clone(),
        out: a.out.clone(),
        parallel: a.parallel.unwrap_or(cores.min(kiln_ci::run::MAX_PARALLEL)),
        rebuild: a.rebuild.unwrap_or(0),
        require_reproducible: a.require_reproducible,
    })
}

fn print_summary(r: &Report, to: &mut dyn Write) {
    let _ = writeln!(to, "\nkiln ci: {} @ {} ({})", r.repo, r.git_ref, if r.commit.is_empty() { "?" } else { &r.commit[..r.commit.len().min(12)] });
    if let Some(code) = r.setup_exit_code {
        let _ = writeln!(to, "  setup: exit {code}");
    }
    let _ = writeln!(to, "  {:<28} {:>6} {:>10} {:>9}  ARTIFACTS", "CELL", "EXIT", "TIME", "");
    for c in &r.cells {
        let _ = writeln!(
            to,
            "  {:<28} {:>6} {:>8.1}s {:>9}  {}{}",
            c.name,
            c.exit_code,
            c.duration_ms as f64 / 1000.0,
            if c.timed_out { "timed out" } else { "" },
            c.artifacts.len(),
            c.error.as_ref().map(|e| format!("  ({e})")).unwrap_or_default()
        );
        match (c.reproducible, c.agreed) {
            (Some(true), _) => {
                let _ = writeln!(to, "  {:<28} reproducible: {} builds, every artifact the same", "", c.rebuilds.len() + 1);
            }
            (Some(false), agreed) => {
                let _ = writeln!(to, "  {:<28} NOT reproducible: {} of {} builds agree", "", agreed.unwrap_or(0), c.rebuilds.len() + 1);
                for d in &c.differences {
                    let _ = writeln!(to, "  {:<30} {} differs{}", "", d.path, d.first_difference.as_ref().map(|f| format!(": {f}")).unwrap_or_default());
                }
            }
            _ => {}
        }
    }
    let denied = r.egress["attempts"].as_array().map(|a| a.iter().filter(|x| x["allowed"] == false).count()).unwrap_or(0);
    let via = r.egress["attempts"].as_array().map(|a| a.iter().filter(|x| x["via"].is_string()).count()).unwrap_or(0);
    let via = if via > 0 { format!(", {via} through the upstream proxy") } else { String::new() };
    let _ = writeln!(to, "  egress: {} attempts, {} denied{via}; cache: {}", r.egress["attempts"].as_array().map_or(0, Vec::len), denied, r.cache);
}

/// Runs a CI command.
pub async fn run(cmd: CiCmd) -> i32 {
    let CiCmd::Run(a) = cmd;
    let cfg = match parse(&a) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("kiln: {m}");
            return exit::USAGE;
        }
    };
    if let Some(u) = &cfg.egress_upstream {
        eprintln!("kiln: {}", crate::egress_upstream::describe(u));
    }
    let home = Home::from_env();
    kiln_core::cleanup::sweep(&home);
    let json = a.json;
    let sink: kiln_ci::Sink = Arc::new(move |label: &str, bytes: &[u8], is_err: bool| {
        if bytes.is_empty() {
            return;
        }
        let text = if label.is_empty() {
            bytes.to_vec()
        } else {
            // Prefix every line with its cell.
            let s = String::from_utf8_lossy(bytes);
            s.split_inclusive('\n').map(|l| format!("[{label}] {l}")).collect::<String>().into_bytes()
        };
        if is_err || json {
            let _ = std::io::stderr().write_all(&text);
        } else {
            let _ = std::io::stdout().write_all(&text);
            let _ = std::io::stdout().flush();
        }
    });
    let egress = Arc::new(kiln_ci::glue::ProxyEgress::for_config(&cfg));
    let progress = |m: &str| eprintln!("kiln: {m}");
    let result = if a.daemon {
        via_daemon(&cfg).await
    } else {
        kiln_ci::run(&home, &cfg, egress, kiln_ci::glue::host_signer(&home), sink, &progress).await
    };
    match result {
        Ok(report) => {
            let text = serde_json::to_string_pretty(&report).expect("json");
            // Through the out folder's handle: a link planted there is replaced, not followed.
            let path = match kiln_fs::Dir::open(&cfg.out).and_then(|d| d.replace("report.json", text.as_bytes())) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("kiln: cannot write the report into {}: {e}", cfg.out.display());
                    cfg.out.join("report.json")
                }
            };
            if let Some(file) = &a.step_summary {
                if let Err(e) = crate::step_summary::append(file, &report) {
                    eprintln!("kiln: cannot append the summary to {}: {e}", file.display());
                }
            }
            if json {
                println!("{text}");
            } else {
                print_summary(&report, &mut std::io::stdout());
                println!("  report: {}", path.display());
            }
            report.exit_code
        }
        Err(e) => {
            eprintln!("kiln: ci run failed: {}", e.with_causes());
            if e.is_user_error() {
                exit::USAGE
            } else {
                exit::KILN_FAILED
            }
        }
    }
}

async fn via_daemon(cfg: &CiConfig) -> Result<Report, CiError> {
    let client = kiln_client::Client::from_env();
    if matches!(client.target(), kiln_client::Target::Unix(_)) {
        // The owner's socket: the daemon writes --out itself, as a run in this process would.
        let body = kiln_ci::glue::request(cfg).map_err(CiError::Invalid)?;
        let v = client.ci_run(&body).await.map_err(daemon_error)?;
        return serde_json::from_value(v).map_err(|e| CiError::Daemon(format!("bad report: {e}")));
    }
    // A TCP listener: no host paths but the repository's; the daemon keeps the outputs, and
    // the files the report names are fetched into --out (made first, as a local run does).
    let body = kiln_ci::glue::remote_request(cfg)?;
    let out = kiln_fs::Dir::create_out(&cfg.out).map_err(|e| CiError::Invalid(format!("--out: {e}")))?;
    let v = client.ci_run(&body).await.map_err(daemon_error)?;
    let mut report: Report = serde_json::from_value(v).map_err(|e| CiError::Daemon(format!("bad report: {e}")))?;
    let run_id = report.run_id.clone().ok_or_else(|| CiError::Daemon("the report has no run_id to fetch its files by".into()))?;
    for rel in report.files(Path::new("")) {
        fetch(&client, &run_id, &rel, &out).await?;
    }
    let local = std::path::absolute(&cfg.out).unwrap_or_else(|_| cfg.out.clone());
    report.rebase(Path::new(""), &local);
    Ok(report)
}

/// Copies output file `rel` of run `run_id` from the daemon to beneath `out`, through its
/// handle (no link followed, nothing overwritten). A file the daemon does not have (a cell
/// that failed before writing its log) is skipped with a warning.
async fn fetch(client: &kiln_client::Client, run_id: &str, rel: &Path, out: &kiln_fs::Dir) -> Result<(), CiError> {
    let bad = || CiError::Daemon(format!("the report names {}, which is not a file name beneath the out folder", rel.display()));
    let (name, text) = (rel.file_name().ok_or_else(bad)?, rel.to_str().ok_or_else(bad)?);
    let dir = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => out.create_dirs(p),
        None => out.try_clone(),
    }
    .map_err(CiError::io(format!("create the folder of {}", out.path().join(rel).display())))?;
    let file = dir.create(Path::new(name), 0o644).map_err(CiError::io(format!("create {}", out.path().join(rel).display())))?;
    let mut file = tokio::fs::File::from_std(file);
    match client.ci_run_file(run_id, text, &mut file).await {
        Ok(_) => Ok(()),
        Err(kiln_client::ClientError::Api { status: 404, message, .. }) => {
            drop(file);
            let _ = dir.remove_file(&name.to_string_lossy());
            eprintln!("kiln: {text}: not fetched: {message}");
            Ok(())
        }
        Err(e) => Err(daemon_error(e)),
    }
}

/// A refusal (4xx) is the caller's to fix, said in the daemon's words; anything else is the
/// daemon's failure.
fn daemon_error(e: kiln_client::ClientError) -> CiError {
    match e {
        kiln_client::ClientError::Api { status: 400..=499, message, .. } => CiError::Invalid(format!("the daemon refused the run: {message}")),
        e => CiError::Daemon(e.to_string()),
    }
}
