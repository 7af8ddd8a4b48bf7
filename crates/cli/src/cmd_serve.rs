//! `kiln serve`: the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kiln_daemon::manager::{Limits, Manager};
use kiln_image::lock::FileLock;
use kiln_image::Home;
use kiln_server::AppState;

use crate::exit;

/// Arguments of `kiln serve`.
#[derive(Debug, Args)]
#[command(after_help = "The unix socket (mode 0600) is the owner's admin door: no token. TCP listeners need bearer tokens: `kiln token create NAME [--scope untrusted|trusted|admin]`.\nClients find the daemon with KILN_HOST (unix:///path or http://host:port) and KILN_TOKEN.")]
pub struct ServeArgs {
    /// Unix socket to listen on (default: $KILN_HOME/kiln.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also listen on TCP, e.g. 127.0.0.1:7777 (bearer tokens required).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// A folder beneath which tokens may name local repositories for CI runs (repeatable;
    /// links are resolved before the check). Without it tokens give repository URLs only.
    #[arg(long = "repo-root", value_name = "DIR")]
    repo_roots: Vec<PathBuf>,
    /// Most sandboxes alive at once (over it: 429).
    #[arg(long, default_value = "32")]
    max_sandboxes: usize,
    /// Most guest memory of all sandboxes together, MiB (over it: 429).
    #[arg(long, default_value = "16384", value_name = "MiB")]
    max_memory: u64,
    /// TTL of a sandbox whose request names none, seconds.
    #[arg(long, default_value = "600", value_name = "SECS")]
    default_ttl: u64,
    /// Longest TTL a request may ask for, seconds.
    #[arg(long, default_value = "21600", value_name = "SECS")]
    max_ttl: u64,
    /// Keep sandboxes restored ahead of time, paused, for creates to take: TEMPLATE=N, comma
    /// separated (e.g. tiny=4,base=2; TEMPLATE:CPUSxMIB=N for another shape). They count
    /// against --max-memory. An admin can change it: PUT /v1/pool.
    #[arg(long, value_name = "SPEC")]
    pool: Option<String>,
    /// OCI images any token may boot (a create with "image" instead of "template"), as
    /// patterns where `*` matches anything, e.g. '127.0.0.1:5000/ci/*'. Repeatable. Other
    /// images need the admin scope. The first create of an image digest pulls and builds it.
    #[arg(long = "images", value_name = "PATTERN")]
    images: Vec<String>,
    #[arg(long = "egress-upstream", value_name = "URL", help = crate::egress_upstream::HELP)]
    egress_upstream: Option<String>,
}

/// Runs the daemon until SIGINT or SIGTERM; then destroys every sandbox.
pub async fn run(a: ServeArgs) -> i32 {
    let upstream = match crate::egress_upstream::choose(a.egress_upstream.as_deref(), |k| std::env::var(k).ok()) {
        Ok(u) => u,
        Err(m) => {
            eprintln!("kiln: {m}");
            return exit::USAGE;
        }
    };
    let home = Home::from_env();
    if let Err(e) = std::fs::create_dir_all(home.root()) {
        eprintln!("kiln: cannot create {}: {e}", home.root().display());
        return exit::KILN_FAILED;
    }
    let _lock = match FileLock::try_acquire(&home.root().join("daemon.lock")) {
        Ok(Some(l)) => l,
        Ok(None) => {
            eprintln!("kiln: another `kiln serve` is running on {}; stop it first", home.root().display());
            return exit::KILN_FAILED;
        }
        Err(e) => return exit::report(&e.into()),
    };
    match kiln_vmm::confine::for_launch() {
        Ok(Some(c)) => eprintln!("kiln: VMMs are confined (own uid, namespaces, {}, seccomp)", c.layout.describe()),
        Ok(None) => eprintln!("kiln: WARNING: KILN_CONFINE=off: VMMs run unconfined as kiln's own user; do not run untrusted code"),
        Err(e) => {
            eprintln!("kiln: refusing to start: {e}");
            return exit::KILN_FAILED;
        }
    }
    let mut repo_roots = Vec::new();
    for r in &a.repo_roots {
        match std::fs::canonicalize(r) {
            Ok(p) if p.is_dir() => repo_roots.push(p),
            Ok(p) => {
                eprintln!("kiln: --repo-root {}: {} is not a folder", r.display(), p.display());
                return exit::USAGE;
            }
            Err(e) => {
                eprintln!("kiln: --repo-root {}: {e}", r.display());
                return exit::USAGE;
            }
        }
    }
    let limits = Limits {
        max_sandboxes: a.max_sandboxes,
        max_memory_mib: a.max_memory,
        default_ttl: Duration::from_secs(a.default_ttl.max(1)),
        max_ttl: Duration::from_secs(a.max_ttl.max(1)),
        images: a.images.clone(),
    };
    let manager = match Manager::open(home.clone(), limits) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kiln: cannot open the state store: {e}");
            return exit::KILN_FAILED;
        }
    };
    if let Some(u) = &upstream {
        eprintln!("kiln: {}", crate::egress_upstream::describe(u));
    }
    manager.set_egress_upstream(upstream);
    let _reaper = manager.spawn_reaper(Duration::from_millis(500));
    if let Some(spec) = &a.pool {
        let entries = match kiln_daemon::pool::parse_spec(spec) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("kiln: --pool {e}");
                return exit::USAGE;
            }
        };
        let targets: Vec<kiln_api::PoolTarget> =
            entries.iter().map(|e| kiln_api::PoolTarget { template: e.template.clone(), cpus: e.cpus, memory_mib: e.memory_mib, size: e.size }).collect();
        match manager.set_pool(&targets, &kiln_daemon::Principal::local()) {
            Ok(status) => {
                for p in status.pools {
                    eprintln!("kiln: warm pool: {} x {} ({} vCPU, {} MiB), filling in the background", p.size, p.template, p.cpus, p.memory_mib);
                }
            }
            Err(e) => {
                eprintln!("kiln: --pool: {e}");
                return exit::USAGE;
            }
        }
    }
    let _pool = manager.spawn_pool();
    let socket = a.socket.unwrap_or_else(|| home.root().join("kiln.sock"));
    let _ = std::fs::remove_file(&socket); // stale: the lock says no daemon owns it
    let unix = match bind_owner_only(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kiln: cannot listen on {}: {e}", socket.display());
            return exit::KILN_FAILED;
        }
    };
    eprintln!("kiln: serving on unix://{}", socket.display());
    let local = kiln_server::app(AppState::new(manager.clone(), false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = vec![tokio::spawn({
        let w = wait(stop_rx.clone());
        async move { axum::serve(unix, local).with_graceful_shutdown(w).await }
    })];
    if let Some(addr) = a.listen {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => {
                eprintln!("kiln: serving on http://{addr} (bearer tokens required)");
                for r in &repo_roots {
                    eprintln!("kiln: tokens may name repositories beneath {}", r.display());
                }
                let remote = kiln_server::app(AppState::new(manager.clone(), true).with_repo_roots(repo_roots.clone()));
                let w = wait(stop_rx.clone());
                tasks.push(tokio::spawn(async move { axum::serve(l, remote).with_graceful_shutdown(w).await }));
            }
            Err(e) => {
                eprintln!("kiln: cannot listen on {addr}: {e}");
                let _ = std::fs::remove_file(&socket);
                return exit::KILN_FAILED;
            }
        }
    }
    shutdown_signal().await;
    eprintln!("kiln: shutting down: destroying every sandbox");
    let _ = stop_tx.send(true);
    manager.shutdown().await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = std::fs::remove_file(&socket);
    0
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
}

/// Listens on `socket`, which is the owner's admin door: bound inside a fresh owner-only
/// folder beside it, made 0600, and only then renamed into place, so that no one else can
/// connect in between.
fn bind_owner_only(socket: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = socket.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let private = parent.join(format!(".kiln.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inner = private.join("s");
    let bound = tokio::net::UnixListener::bind(&inner).and_then(|l| {
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, socket)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

