//! `kiln run`: one command in one fresh microVM.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use kiln_core::sandbox::CreateMode;
use kiln_core::{ExecRequest, Output, Sandbox, SandboxError, SandboxOptions};
use kiln_image::Home;
use kiln_proto::ErrorKind;
use kiln_vmm::AccelChoice;

use crate::exit;

/// Arguments of `kiln run`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  kiln run -- uname -a\n  kiln run --template base --timeout 600 -- sh -c 'make && make test'\n  echo data | kiln run -i -- wc -c")]
pub struct RunArgs {
    /// Template name, or a path to a template file.
    #[arg(long, short = 't', default_value = "tiny", env = "KILN_TEMPLATE")]
    template: String,
    /// Kill the command and everything it started after this many seconds (exit 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Output (stdout and stderr together) passed on; past it the rest is discarded and a
    /// marker is printed on stderr. Default 256 MiB.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_output: Option<u64>,
    /// Environment for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory in the guest (absolute).
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// vCPUs (default: the template's).
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest memory in MiB (default: the template's).
    #[arg(long, value_name = "MiB")]
    memory: Option<u32>,
    /// Accelerator: auto (KVM if a guest boots on it, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto", env = "KILN_ACCEL")]
    accel: AccelChoice,
    /// Copy a host file or folder into the guest before the command runs (repeatable).
    #[arg(long = "copy", value_name = "HOST:GUEST", value_parser = parse_copy)]
    copy: Vec<(std::path::PathBuf, String)>,
    /// Forward this terminal's stdin to the command (otherwise it reads /dev/null).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Say on stderr what kiln is doing and how long it took.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Cold-boot the kernel instead of restoring the template's snapshot.
    #[arg(long)]
    cold: bool,
    /// How long the guest may take to boot, in seconds.
    #[arg(long, default_value = "60", value_name = "SECS")]
    boot_timeout: u64,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 7.0 * 86400.0) {
        return Err(format!("timeout must be between 0 and 604800 seconds, not {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_copy(s: &str) -> Result<(std::path::PathBuf, String), String> {
    let (h, g) = s.rsplit_once(':').ok_or_else(|| format!("'{s}' is not HOST_PATH:GUEST_PATH"))?;
    if !g.starts_with('/') {
        return Err(format!("guest path '{g}' must be absolute"));
    }
    let host = std::path::PathBuf::from(h);
    if !host.exists() {
        return Err(format!("host path '{h}' does not exist"));
    }
    Ok((host, g.to_owned()))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || k.as_bytes()[0].is_ascii_digit() {
        return Err(format!("'{k}' is not a valid environment variable name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Runs `kiln run`.
pub async fn run(a: RunArgs) -> i32 {
    let home = Home::from_env();
    // What kiln processes killed with -9 left behind (their VMs died with them).
    kiln_core::cleanup::sweep(&home);
    let verbose = a.verbose;
    let progress = move |m: &str| eprintln!("kiln: {m}");
    let opts = SandboxOptions {
        template: a.template.clone(),
        cpus: a.cpus,
        memory_mib: a.memory,
        accel: a.accel,
        env: Vec::new(),
        boot_timeout: Duration::from_secs(a.boot_timeout.max(1)),
        cold: a.cold,
        forkable: false,
    };
    let create = Sandbox::create(&home, &opts, &progress);
    let sandbox = tokio::select! {
        r = create => match r {
            Ok(s) => s,
            Err(e) => return exit::report(&e),
        },
        _ = interrupted() => {
            eprintln!("kiln: interrupted during boot; the VM was destroyed");
            return exit::INTERRUPTED;
        }
    };
    if verbose {
        let t = sandbox.timings();
        eprintln!(
            "kiln: sandbox {} from template {} by {} on {} (guest kernel {}): boot {:.0} ms, identity {:.0} ms, prepare {:.0} ms",
            sandbox.id(),
            sandbox.artifacts().template.name,
            match sandbox.mode() {
                CreateMode::Cold => "cold boot".to_owned(),
                CreateMode::Restored(s) => format!("restore from snapshot {s}"),
                CreateMode::Forked(p) => format!("fork of {p}"),
                CreateMode::Pooled(s) => format!("warm pool (restored from snapshot {s} ahead of time)"),
            },
            sandbox.accel(),
            sandbox.guest_kernel(),
            t.boot.as_secs_f64() * 1e3,
            t.identity.as_secs_f64() * 1e3,
            t.prepare.as_secs_f64() * 1e3,
        );
    }
    for (host, guest) in &a.copy {
        match sandbox.agent().copy_in(host, guest).await {
            Ok(st) if verbose => eprintln!("kiln: copied {} into {guest}: {} files, {} KiB", host.display(), st.files, st.bytes >> 10),
            Ok(_) => {}
            Err(e) => {
                let e = sandbox.map_err::<()>(Err(e)).await.unwrap_err();
                sandbox.destroy();
                return exit::report(&e);
            }
        }
    }
    let mut req = ExecRequest::argv(a.command.clone());
    req.env = a.env;
    req.cwd = a.workdir;
    req.timeout = a.timeout;
    req.max_output = a.max_output;
    if a.interactive {
        req.stdin = Some(Box::new(tokio::io::stdin()));
    }
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let on_output = |o: Output<'_>| {
        // A closed stdout (e.g. `| head`) must not stop the command or leak the VM.
        let _ = match o {
            Output::Stdout(d) => out.write_all(d).and_then(|_| out.flush()),
            Output::Stderr(d) => err.write_all(d).and_then(|_| err.flush()),
        };
    };
    let result = tokio::select! {
        r = sandbox.exec(req, on_output) => r,
        _ = interrupted() => {
            sandbox.destroy();
            eprintln!("kiln: interrupted; the VM was destroyed");
            return exit::INTERRUPTED;
        }
    };
    let code = match result {
        Ok(o) => {
            if o.timed_out {
                eprintln!(
                    "kiln: timed out after {:.1}s; the command and every process it started were killed",
                    a.timeout.map(|t| t.as_secs_f64()).unwrap_or_default()
                );
            } else if verbose {
                eprintln!("kiln: command ended with {:?} after {} ms", o.status, o.duration.as_millis());
            }
            o.exit_code()
        }
        Err(SandboxError::Guest { kind: ErrorKind::NotFound, message }) => {
            eprintln!(
                "kiln: {message} in template '{}'; add it to the template (templates/*.toml) or use another template (--template base)",
                a.template
            );
            exit::NOT_FOUND
        }
        Err(e) => exit::report(&e),
    };
    sandbox.destroy();
    code
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
        _ = hup.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_timeout_parsing() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("1A=x").is_err());
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("abc").is_err());
        assert_eq!(parse_timeout("1.5").unwrap(), Duration::from_millis(1500));
    }
}
