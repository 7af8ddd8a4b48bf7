//! `kiln gitlab config|prepare|run|cleanup`: a GitLab Runner custom executor driver. One VM per
//! job, held by `kiln serve` between the stages and destroyed in `cleanup`.
//!
//! GitLab's contract: `config` prints JSON on stdout; a failing build exits with
//! `BUILD_FAILURE_EXIT_CODE` (and writes the script's real exit code to `BUILD_EXIT_CODE_FILE`
//! when GitLab provides one); a failure of the executor itself exits with
//! `SYSTEM_FAILURE_EXIT_CODE`. Job variables arrive as `CUSTOM_ENV_*`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_client::{Client, ClientError, CreateSandbox, ExecEvent, ExecRequest};
use kiln_image::Home;

/// The four stages.
#[derive(Debug, Subcommand)]
pub enum GitlabCmd {
    /// Print the executor's configuration (JSON).
    Config,
    /// Create the job's VM.
    Prepare,
    /// Run one of GitLab's generated scripts in the job's VM.
    Run(RunArgs),
    /// Destroy the job's VM.
    Cleanup,
}

/// `kiln gitlab run SCRIPT STAGE`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The script GitLab Runner generated.
    script: PathBuf,
    /// The stage name (prepare_script, get_sources, build_script, ...).
    stage: String,
}

fn code(var: &str, default: i32) -> i32 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn system_failure(msg: impl std::fmt::Display) -> i32 {
    eprintln!("kiln: {msg}");
    code("SYSTEM_FAILURE_EXIT_CODE", 1)
}

fn job_file() -> Result<PathBuf, String> {
    let job = std::env::var("CUSTOM_ENV_CI_JOB_ID").map_err(|_| "CUSTOM_ENV_CI_JOB_ID is not set (run me as a GitLab custom executor)".to_owned())?;
    if job.is_empty() || !job.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("bad job id {job:?}"));
    }
    let dir = Home::from_env().root().join("gitlab");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir.join(format!("{job}.sandbox")))
}

fn sandbox_id() -> Result<(PathBuf, String), String> {
    let f = job_file()?;
    let id = std::fs::read_to_string(&f).map_err(|_| format!("no VM for this job ({} missing): did prepare run?", f.display()))?;
    Ok((f, id.trim().to_owned()))
}

/// The job's `image:` (`CUSTOM_ENV_CI_JOB_IMAGE`), if it names one and the runner's
/// `KILN_GITLAB_IMAGES` patterns (comma separated, `*` matches anything) allow it. A job without
/// an image gets `KILN_GITLAB_TEMPLATE`; an image that is not allowed fails the job.
fn job_image() -> Result<Option<String>, String> {
    let Some(image) = std::env::var("CUSTOM_ENV_CI_JOB_IMAGE").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let reference = kiln_image::oci::Reference::parse(&image).map_err(|e| format!("the job's image: {e}"))?;
    let canonical = reference.to_string();
    let patterns = std::env::var("KILN_GITLAB_IMAGES").unwrap_or_default();
    let patterns: Vec<&str> = patterns.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if !patterns.iter().any(|p| kiln_image::oci::pattern_matches(p, &canonical)) {
        return Err(format!(
            "the job's image {canonical} is not allowed on this runner: it matches none of KILN_GITLAB_IMAGES ({}); \
             add a pattern for it to KILN_GITLAB_IMAGES in the runner's environment, or drop `image:` from the job to use the default template",
            if patterns.is_empty() { "unset".to_owned() } else { patterns.join(", ") }
        ));
    }
    Ok(Some(canonical))
}

/// Runs a stage.
pub async fn run(cmd: GitlabCmd) -> i32 {
    let client = Client::from_env();
    match cmd {
        GitlabCmd::Config => {
            let cfg = serde_json::json!({
                "builds_dir": "/builds",
                "cache_dir": "/cache",
                "builds_dir_is_shared": false,
                "hostname": "kiln",
                "driver": { "name": "kiln", "version": env!("CARGO_PKG_VERSION") },
            });
            println!("{cfg}");
            0
        }
        GitlabCmd::Prepare => {
            let f = match job_file() {
                Ok(f) => f,
                Err(m) => return system_failure(m),
            };
            let (template, image) = match job_image() {
                Ok(Some(image)) => (String::new(), Some(image)),
                Ok(None) => (std::env::var("KILN_GITLAB_TEMPLATE").unwrap_or_else(|_| "base".into()), None),
                Err(m) => return system_failure(m),
            };
            let ttl = std::env::var("CUSTOM_ENV_CI_JOB_TIMEOUT").ok().and_then(|v| v.parse::<i64>().ok()).unwrap_or(3600) + 300;
            let allow: Vec<String> = std::env::var("KILN_GITLAB_ALLOW").unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if let Some(i) = &image {
                eprintln!("kiln: job image {i}: building its template the first time (pull and unpack), reusing it after");
            }
            let req = CreateSandbox { template, image, ttl_seconds: Some(ttl), allow, ..Default::default() };
            match client.create_sandbox(&req).await {
                Ok(s) => {
                    if let Err(e) = std::fs::write(&f, &s.id) {
                        let _ = client.delete_sandbox(&s.id).await;
                        return system_failure(format!("write {}: {e}", f.display()));
                    }
                    eprintln!("kiln: job VM {} ({}, {})", s.id, s.template, s.mode);
                    0
                }
                Err(e) => system_failure(e),
            }
        }
        GitlabCmd::Run(a) => {
            let (_, id) = match sandbox_id() {
                Ok(x) => x,
                Err(m) => return system_failure(m),
            };
            let script = match tokio::fs::File::open(&a.script).await {
                Ok(f) => f,
                Err(e) => return system_failure(format!("read {}: {e}", a.script.display())),
            };
            let stage: String = a.stage.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let guest = format!("/tmp/kiln-gitlab-{stage}.sh");
            if let Err(e) = client.write_file(&id, &guest, 0o700, script).await {
                return system_failure(e);
            }
            let proxy = format!("http://{}", kiln_proto::tunnel::GUEST_PROXY_ADDR);
            // bash when the image has it, else sh (as GitLab's docker executor does).
            let pick = "if command -v bash >/dev/null 2>&1; then exec bash \"$0\"; else exec sh \"$0\"; fi";
            let mut req = ExecRequest::argv(vec!["/bin/sh".into(), "-c".into(), pick.into(), guest]);
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                req.env.insert(k.into(), proxy.clone());
            }
            req.env.insert("NO_PROXY".into(), "localhost,127.0.0.1".into());
            use std::io::Write;
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            let r = client
                .exec_stream(&id, &req, |e| {
                    let _ = match e {
                        ExecEvent::Stdout(d) => out.write_all(&d).and_then(|_| out.flush()),
                        ExecEvent::Stderr(d) => err.write_all(&d).and_then(|_| err.flush()),
                    };
                })
                .await;
            match r {
                Ok(exit) if exit.exit_code == 0 => 0,
                Ok(exit) => {
                    if let Ok(file) = std::env::var("BUILD_EXIT_CODE_FILE") {
                        let _ = std::fs::write(file, exit.exit_code.to_string());
                    }
                    code("BUILD_FAILURE_EXIT_CODE", 1)
                }
                Err(e @ ClientError::Api { .. }) | Err(e @ ClientError::Transport(_)) | Err(e @ ClientError::Unreachable { .. }) | Err(e @ ClientError::Config(_)) => system_failure(e),
            }
        }
        GitlabCmd::Cleanup => {
            // Never fails the job: a VM already gone is fine.
            if let Ok((f, id)) = sandbox_id() {
                match client.delete_sandbox(&id).await {
                    Ok(()) | Err(ClientError::Api { status: 404, .. }) => {}
                    Err(e) => eprintln!("kiln: cleanup of {id}: {e} (its TTL will reap it)"),
                }
                let _ = std::fs::remove_file(f);
            }
            0
        }
    }
}
