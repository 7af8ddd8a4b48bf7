//! `kiln`: run untrusted commands in disposable microVMs. Thin: argument parsing, output, and
//! mapping errors to documented exit codes; the work is in the libraries.
#![forbid(unsafe_code)]

mod bench_common;
mod bench_daemon;
mod cmd_bench;
mod cmd_bench_load;
mod cmd_bench_tti;
mod cmd_ci;
mod cmd_doctor;
mod cmd_gitlab;
mod cmd_run;
mod cmd_sandbox;
mod cmd_serve;
mod cmd_template;
mod cmd_token;
mod cmd_verify;
mod egress_upstream;
mod exit;
mod smaps;
mod step_summary;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  N        the command's own exit code (kiln run)
  124      the command hit its --timeout and was killed (with all its processes)
  125      kiln itself failed (VM did not boot, artifacts missing, sandbox died)
  126      the command exists in the guest but could not be executed
  127      the command was not found in the guest
  128+N    the command was killed by signal N
  2        bad usage or input (unknown flag or template, malformed value)
  130      interrupted (Ctrl-C); the VM was destroyed
  1        kiln verify: the provenance does not verify

Environment:
  KILN_HOME           state, templates, snapshots, keys (default ~/.local/share/kiln)
  KILN_CONFINE        on (default): every VMM runs jailed (own uid, namespaces, cgroup,
                      seccomp), and kiln refuses to start VMs where it cannot; off: no jail
                      (trusted code only)
  KILN_VMM_UID_BASE   first of the 65,536 uids VMMs run as (default 1900000000)";

/// Run untrusted build steps in disposable microVMs.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot a fresh microVM from a template, run one command in it, destroy the VM.
    Run(cmd_run::RunArgs),
    /// Build and list templates (guest root filesystems).
    #[command(subcommand)]
    Template(cmd_template::TemplateCmd),
    /// Check that this host can run kiln, and say what to fix.
    Doctor(cmd_doctor::DoctorArgs),
    /// CI: build a repository's ref in fresh microVMs (`kiln ci run`).
    #[command(subcommand)]
    Ci(cmd_ci::CiCmd),
    /// GitLab Runner custom executor driver: config, prepare, run, cleanup (needs `kiln serve`).
    #[command(subcommand)]
    Gitlab(cmd_gitlab::GitlabCmd),
    /// Check an artifact against its signed provenance (signature and sha256); exit 1 if not.
    Verify(cmd_verify::VerifyArgs),
    /// Run the daemon: the HTTP API over a unix socket (and TCP on request).
    Serve(cmd_serve::ServeArgs),
    /// Create, list, run commands in, fork, extend and kill sandboxes (talks to `kiln serve`).
    #[command(subcommand)]
    Sandbox(cmd_sandbox::SandboxCmd),
    /// Copy a file between the host and a sandbox (talks to `kiln serve`).
    Cp(cmd_sandbox::CpArgs),
    /// Manage bearer tokens for the daemon's TCP listener.
    #[command(subcommand)]
    Token(cmd_token::TokenCmd),
    /// Measure create, fork, exec and load against baselines taken in the same run.
    #[command(subcommand)]
    Bench(cmd_bench::BenchCmd),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        match cli.command {
            Cmd::Run(a) => cmd_run::run(a).await,
            Cmd::Template(t) => cmd_template::run(t).await,
            Cmd::Doctor(a) => cmd_doctor::run(a).await,
            Cmd::Bench(b) => cmd_bench::run(b).await,
            Cmd::Serve(a) => cmd_serve::run(a).await,
            Cmd::Ci(c) => cmd_ci::run(c).await,
            Cmd::Gitlab(g) => cmd_gitlab::run(g).await,
            Cmd::Verify(a) => cmd_verify::run(a),
            Cmd::Sandbox(c) => cmd_sandbox::run(c).await,
            Cmd::Cp(a) => cmd_sandbox::cp(a).await,
            Cmd::Token(t) => cmd_token::run(t),
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}
