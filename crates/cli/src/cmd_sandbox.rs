//! `kiln sandbox create|ls|exec|kill|fork|extend` and `kiln cp`: clients of the daemon.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_client::{Client, ClientError, CreateSandbox, ExecEvent, ExecRequest, Sandbox};

use crate::exit;

/// Sandbox commands (need `kiln serve`).
#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox; prints its id.
    Create(CreateArgs),
    /// List live sandboxes.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec(ExecArgs),
    /// Destroy a sandbox.
    Kill {
        /// Sandbox id.
        id: String,
    },
    /// Fork a forkable sandbox; prints the clones' ids.
    Fork {
        /// Sandbox id.
        id: String,
        /// Number of clones.
        #[arg(long, short = 'n', default_value = "1")]
        count: usize,
    },
    /// Set a sandbox's deadline to now + TTL.
    Extend {
        /// Sandbox id.
        id: String,
        /// Seconds from now.
        #[arg(long)]
        ttl: i64,
    },
}

/// `kiln sandbox create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Template.
    #[arg(long, short = 't', default_value = "tiny")]
    template: String,
    /// Boot this OCI image instead of a template (HOST[:PORT]/NAME:TAG): the daemon makes a
    /// template of it the first time. Needs a pattern of `kiln serve --images`, or an admin token.
    #[arg(long, value_name = "REF", conflicts_with = "template")]
    image: Option<String>,
    /// Seconds until the daemon destroys it (default: the daemon's).
    #[arg(long)]
    ttl: Option<i64>,
    /// vCPUs.
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long)]
    memory: Option<u32>,
    /// Environment for every command, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Keep RAM in a file so the sandbox can be forked cheaply.
    #[arg(long)]
    forkable: bool,
    /// Let the sandbox reach HOST[:PORT] through the egress proxy (repeatable; default: nothing).
    #[arg(long = "allow", value_name = "HOST[:PORT]")]
    allow: Vec<String>,
    /// Print the sandbox as JSON.
    #[arg(long)]
    json: bool,
}

/// `kiln sandbox exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox id.
    id: String,
    /// Kill the command and everything it started after SECS (exit 124).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Environment, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// The command (after `--`).
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn env_map(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    pairs.iter().map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("'{p}' is not KEY=VALUE"))).collect()
}

/// Prints a client error and returns its exit code.
pub fn report(e: &ClientError) -> i32 {
    eprintln!("kiln: {e}");
    match e {
        ClientError::Api { status: 400 | 404 | 409 | 413, .. } => exit::USAGE,
        _ => exit::KILN_FAILED,
    }
}

fn print_table(list: &[Sandbox]) {
    println!("{:<18} {:<10} {:<9} {:<9} {:>4} {:>7}  DEADLINE", "ID", "TEMPLATE", "STATE", "MODE", "CPUS", "MEMORY");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    for s in list {
        println!(
            "{:<18} {:<10} {:<9} {:<9} {:>4} {:>3} MiB  in {}s",
            s.id, s.template, s.state, s.mode, s.cpus, s.memory_mib, s.deadline - now
        );
    }
}

/// Runs a sandbox command.
pub async fn run(cmd: SandboxCmd) -> i32 {
    let client = Client::from_env();
    let r: Result<i32, ClientError> = async {
        match cmd {
            SandboxCmd::Create(a) => {
                let env = match env_map(&a.env) {
                    Ok(e) => e,
                    Err(m) => {
                        eprintln!("kiln: {m}");
                        return Ok(exit::USAGE);
                    }
                };
                let req = CreateSandbox { template: if a.image.is_some() { String::new() } else { a.template }, image: a.image, ttl_seconds: a.ttl, cpus: a.cpus, memory_mib: a.memory, env, forkable: a.forkable, allow: a.allow };
                let s = client.create_sandbox(&req).await?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&s).expect("json"));
                } else {
                    println!("{}", s.id);
                }
                Ok(0)
            }
            SandboxCmd::Ls { json } => {
                let list = client.list_sandboxes().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list).expect("json"));
                } else {
                    print_table(&list);
                }
                Ok(0)
            }
            SandboxCmd::Exec(a) => {
                let env = match env_map(&a.env) {
                    Ok(e) => e,
                    Err(m) => {
                        eprintln!("kiln: {m}");
                        return Ok(exit::USAGE);
                    }
                };
                let req = ExecRequest { argv: Some(a.command), env, cwd: a.workdir, timeout_seconds: a.timeout, ..Default::default() };
                let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
                let exit = client
                    .exec_stream(&a.id, &req, |e| {
                        let _ = match e {
                            ExecEvent::Stdout(d) => out.write_all(&d).and_then(|_| out.flush()),
                            ExecEvent::Stderr(d) => err.write_all(&d).and_then(|_| err.flush()),
                        };
                    })
                    .await?;
                if exit.timed_out {
                    eprintln!("kiln: timed out; the command and every process it started were killed");
                }
                Ok(exit.exit_code)
            }
            SandboxCmd::Kill { id } => client.delete_sandbox(&id).await.map(|_| 0),
            SandboxCmd::Fork { id, count } => {
                for s in client.fork(&id, count).await? {
                    println!("{}", s.id);
                }
                Ok(0)
            }
            SandboxCmd::Extend { id, ttl } => {
                let s = client.extend(&id, ttl).await?;
                print_table(&[s]);
                Ok(0)
            }
        }
    }
    .await;
    r.unwrap_or_else(|e| report(&e))
}

/// `kiln cp SRC DST`: one side is `SANDBOX:/path`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  kiln cp ./build.sh sbx-0123456789ab:/root/build.sh\n  kiln cp sbx-0123456789ab:/src/out.tar.gz ./out.tar.gz")]
pub struct CpArgs {
    /// Source: a host path, or SANDBOX:/path.
    src: String,
    /// Destination: a host path, or SANDBOX:/path.
    dst: String,
    /// Mode of a file written into the sandbox (octal; default: the host file's).
    #[arg(long)]
    mode: Option<String>,
}

fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.starts_with("sbx-") && path.starts_with('/')).then_some((id, path))
}

/// Runs `kiln cp`.
pub async fn cp(a: CpArgs) -> i32 {
    let client = Client::from_env();
    let r = match (remote(&a.src), remote(&a.dst)) {
        (None, Some((id, path))) => {
            let host = PathBuf::from(&a.src);
            let file = match tokio::fs::File::open(&host).await {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("kiln: cannot read {}: {e}", host.display());
                    return exit::USAGE;
                }
            };
            use std::os::unix::fs::PermissionsExt;
            let host_mode = file.metadata().await.map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
            let mode = match a.mode.as_deref().map(|m| u32::from_str_radix(m, 8)) {
                None => host_mode,
                Some(Ok(m)) if m <= 0o7777 => m,
                Some(_) => {
                    eprintln!("kiln: --mode must be octal permission bits like 644");
                    return exit::USAGE;
                }
            };
            client.write_file(id, path, mode, file).await
        }
        (Some((id, path)), None) => {
            let tmp = PathBuf::from(format!("{}.kiln-partial", a.dst));
            let mut f = match tokio::fs::File::create(&tmp).await {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("kiln: cannot write {}: {e}", tmp.display());
                    return exit::USAGE;
                }
            };
            let r = client.read_file(id, path, &mut f).await.map(|_| ());
            drop(f);
            match &r {
                Ok(()) => {
                    if let Err(e) = std::fs::rename(&tmp, &a.dst) {
                        eprintln!("kiln: cannot write {}: {e}", a.dst);
                        return exit::KILN_FAILED;
                    }
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            r
        }
        _ => {
            eprintln!("kiln: exactly one of SRC and DST must be SANDBOX:/absolute/path (e.g. sbx-0123456789ab:/root/file)");
            return exit::USAGE;
        }
    };
    r.map(|_| 0).unwrap_or_else(|e| report(&e))
}
