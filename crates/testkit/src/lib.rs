//! Test support for kiln's integration tests: a kiln home that shares the artifact cache but
//! has its own short run folder, sandbox fixtures, leak checks (over `kiln_core::leaks`, which
//! `kiln bench load` uses too), the `kiln` command of a test ([`kiln!`]), a `kiln serve`
//! fixture ([`Daemon`]), an exec helper ([`exec()`]) and OCI images on a loopback registry
//! ([`oci`]).
#![forbid(unsafe_code)]

mod command;
mod daemon;
mod exec;
pub mod github;
pub mod http;
pub mod oci;
pub mod upstream;

pub use command::kiln;
pub use daemon::Daemon;
pub use exec::{exec, sh, Collected};

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use kiln_core::leaks::{processes_mentioning, vmm_cgroups_of, HostState, Leaks};
use kiln_core::sandbox::CreateMode;
use kiln_core::{Sandbox, SandboxOptions};
use kiln_image::Home;

/// How a test sandbox starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// Cold boot of the kernel.
    Cold,
    /// Restore from the template's baked snapshot.
    Restored,
    /// A clone forked from a running (restored, forkable) sandbox, which is then destroyed.
    Forked,
    /// Restored ahead of time, warmed and paused as the daemon's warm pool keeps it, left
    /// there for [`POOL_WAIT`], then claimed.
    Pooled,
}

impl Boot {
    /// Every way, for tests that must hold for each.
    pub const ALL: [Boot; 4] = [Boot::Cold, Boot::Restored, Boot::Forked, Boot::Pooled];
}

/// How long a [`Boot::Pooled`] sandbox waits in its pool before it is claimed: long enough
/// that a clock or state left from the pool would show.
pub const POOL_WAIT: Duration = Duration::from_millis(1500);

/// A home for one test: the shared artifact cache (built once per machine), and a run folder
/// of its own so leaks can be checked without seeing other tests' VMs.
pub struct TestHome {
    /// The home.
    pub home: Home,
    /// The temporary folder holding the run folder (and, when isolated, the home), removed on drop.
    _tmp: tempfile::TempDir,
}

impl TestHome {
    /// A new test home.
    pub fn new() -> TestHome {
        let shared = Home::from_env();
        let run = tempfile::Builder::new().prefix("kt-").tempdir_in("/tmp").expect("temp run folder");
        TestHome { home: Home::at(shared.root(), run.path()), _tmp: run }
    }

    /// Environment variables that point a `kiln` process at this home.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("KILN_HOME", self.home.root().to_path_buf()),
            ("KILN_RUN_DIR", self.home.run().to_path_buf()),
            ("KILN_SHM_DIR", self.home.shm().to_path_buf()),
        ]
    }

    /// A home of its own (state database, socket, run folder) that shares every artifact of
    /// the machine's cache, snapshots included: for daemon tests.
    pub fn for_daemon() -> TestHome {
        let root = tempfile::Builder::new().prefix("kd-").tempdir_in("/tmp").expect("temp home");
        let home = Home::from_env().sharing_artifacts(root.path()).expect("a home sharing the artifacts");
        TestHome { home, _tmp: root }
    }

    /// A sandbox of `template` in the given way: cold-booted, restored from its snapshot
    /// (baked on first use), forked, or pooled. Tests of guest behaviour run against each
    /// (`Boot::ALL`).
    pub async fn sandbox(&self, template: &str, how: Boot) -> Sandbox {
        let opts = SandboxOptions {
            template: template.into(),
            cold: how == Boot::Cold,
            forkable: how == Boot::Forked,
            ..SandboxOptions::default()
        };
        let mut sbx = if how == Boot::Pooled {
            let warm = kiln_core::warm::Warm::prepare(&self.home, &opts, &|m| eprintln!("kiln: {m}")).await.expect("pooled sandbox restores");
            tokio::time::sleep(POOL_WAIT).await;
            warm.claim(opts.env.clone()).await.expect("pooled sandbox is claimed")
        } else {
            Sandbox::create(&self.home, &opts, &|m| eprintln!("kiln: {m}")).await.expect("sandbox starts")
        };
        if how == Boot::Forked {
            let mut clones = sbx.fork(&self.home, 1).await.expect("fork");
            sbx.destroy();
            sbx = clones.pop().expect("one clone");
        }
        let mode = match sbx.mode() {
            CreateMode::Cold => Boot::Cold,
            CreateMode::Restored(_) => Boot::Restored,
            CreateMode::Forked(_) => Boot::Forked,
            CreateMode::Pooled(_) => Boot::Pooled,
        };
        assert_eq!(mode, how, "asked for {how:?}, got {:?}", sbx.mode());
        sbx
    }

    /// A home of its own for snapshots (for tests that damage them), sharing the
    /// read-only artifacts (kernel, images, template records) of the machine's cache.
    pub fn isolated() -> TestHome {
        let shared = Home::from_env();
        let root = tempfile::Builder::new().prefix("kh-").tempdir_in("/tmp").expect("temp home");
        for sub in ["store", "kernels", "templates"] {
            std::os::unix::fs::symlink(shared.root().join(sub), root.path().join(sub)).expect("link shared artifacts");
        }
        let _ = std::fs::copy(shared.root().join("accel-probe.json"), root.path().join("accel-probe.json"));
        let run = root.path().join("run");
        std::fs::create_dir_all(&run).expect("run folder");
        let home = Home::at(root.path(), &run);
        TestHome { home, _tmp: root }
    }

    /// Processes whose command line mentions this home's run folder (its VMs).
    pub fn vmm_processes(&self) -> Vec<u32> {
        processes_mentioning(self.home.run())
    }

    /// Entries left in the run folder.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        kiln_core::leaks::names(self.home.run()).into_iter().map(|n| self.home.run().join(n)).collect()
    }

    /// Asserts that no VM of this home is running and no run folder is left (waiting briefly).
    pub fn assert_clean(&self) {
        let clean = wait_until(Duration::from_secs(5), || self.vmm_processes().is_empty() && self.leftovers().is_empty());
        assert!(clean, "leaked: processes {:?}, files {:?}", self.vmm_processes(), self.leftovers());
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        // An isolated home has RAM files of its own in the tmpfs.
        if !self.home.root().starts_with(Home::from_env().root())
            && self.home.root().starts_with("/tmp")
            && self.home.shm() != Home::from_env().shm()
        {
            let _ = std::fs::remove_dir_all(self.home.shm());
        }
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
