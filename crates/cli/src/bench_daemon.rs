//! A daemon inside the benchmark's process, serving the API on a unix socket of a home of its
//! own that shares the machine's artifacts (templates, snapshots): what `kiln bench` measures
//! "over the API" is this, request and answer through HTTP and JSON like any client's.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_client::{Client, PoolTarget, Target};
use kiln_core::SandboxError;
use kiln_daemon::manager::{Limits, Manager};
use kiln_image::Home;

/// The daemon of a benchmark; destroyed with every sandbox it holds by [`BenchDaemon::stop`].
pub(crate) struct BenchDaemon {
    manager: Arc<Manager>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    home: Home,
    /// A client of it.
    pub(crate) client: Client,
    _tmp: tempfile::TempDir,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io { what: what.to_owned(), source }
}

fn api(e: kiln_client::ClientError) -> SandboxError {
    SandboxError::Unexpected(format!("the benchmark's daemon: {e}"))
}

impl BenchDaemon {
    /// Starts one over a home of its own beside `home`'s artifacts.
    pub(crate) async fn start(home: &Home) -> Result<BenchDaemon, SandboxError> {
        let tmp = tempfile::Builder::new().prefix("kiln-bench-").tempdir_in("/tmp").map_err(io("create a folder for the benchmark's daemon"))?;
        let own = home.sharing_artifacts(tmp.path()).map_err(io("link the artifacts into the benchmark's home"))?;
        let manager = Manager::open(own.clone(), Limits::default()).map_err(|e| SandboxError::Unexpected(format!("the benchmark's daemon: {e}")))?;
        let socket = tmp.path().join("kiln.sock");
        let listener = tokio::net::UnixListener::bind(&socket).map_err(io("listen on the benchmark's socket"))?;
        let app = kiln_server::app(kiln_server::AppState::new(manager.clone(), false));
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let pool = manager.spawn_pool();
        let tasks = vec![serve, tokio::spawn(async move { drop(pool.await) })];
        Ok(BenchDaemon { manager, tasks, home: own, client: Client::new(Target::Unix(socket), None), _tmp: tmp })
    }

    /// Sets the pool to `size` sandboxes of `template` (0: none).
    pub(crate) async fn set_pool(&self, template: &str, size: usize) -> Result<(), SandboxError> {
        let pools = if size == 0 { Vec::new() } else { vec![PoolTarget { template: template.into(), cpus: None, memory_mib: None, size }] };
        self.client.set_pool(pools).await.map_err(api)?;
        Ok(())
    }

    /// Waits until every pooled template and shape is at its size.
    pub(crate) async fn pool_full(&self, within: Duration) -> Result<(), SandboxError> {
        let end = Instant::now() + within;
        loop {
            let st = self.client.pool().await.map_err(api)?;
            if st.pools.iter().all(|p| p.ready >= p.size) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(SandboxError::Unexpected(format!("the pool did not fill within {} s: {:?}", within.as_secs(), st.pools)));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The run folder of its VMs.
    pub(crate) fn run_dir(&self) -> &Path {
        self.home.run()
    }

    /// Destroys its sandboxes (pooled ones too) and stops serving.
    pub(crate) async fn stop(self) {
        self.manager.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

