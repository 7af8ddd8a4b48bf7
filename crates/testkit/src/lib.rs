//! Test support for kiln's integration tests: a kiln home that shares the artifact cache but
//! has its own short run folder, sandbox fixtures, and leak checks.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_core::{Sandbox, SandboxOptions};
use kiln_image::Home;

/// A home for one test: the shared artifact cache (built once per machine), and a run folder
/// of its own so leaks can be checked without seeing other tests' VMs.
pub struct TestHome {
    /// The home.
    pub home: Home,
    /// The run folder (a temporary folder under /tmp, removed on drop).
    pub run: tempfile::TempDir,
}

impl TestHome {
    /// A new test home.
    pub fn new() -> TestHome {
        let shared = Home::from_env();
        let run = tempfile::Builder::new().prefix("kt-").tempdir_in("/tmp").expect("temp run folder");
        TestHome { home: Home::at(shared.root(), run.path()), run }
    }

    /// Environment variables that point a `kiln` process at this home.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![("KILN_HOME", self.home.root().to_path_buf()), ("KILN_RUN_DIR", self.run.path().to_path_buf())]
    }

    /// Boots a sandbox of `template` by cold boot.
    pub async fn boot(&self, template: &str) -> Sandbox {
        let opts = SandboxOptions { template: template.into(), ..SandboxOptions::default() };
        Sandbox::create(&self.home, &opts, &|m| eprintln!("kiln: {m}")).await.expect("sandbox boots")
    }

    /// Processes whose command line mentions this home's run folder (its VMs).
    pub fn vmm_processes(&self) -> Vec<u32> {
        processes_mentioning(self.run.path())
    }

    /// Entries left in the run folder.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.run.path()).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    }

    /// Asserts that no VM of this home is running and no run folder is left (waiting briefly).
    pub fn assert_clean(&self) {
        let clean = wait_until(Duration::from_secs(5), || self.vmm_processes().is_empty() && self.leftovers().is_empty());
        assert!(clean, "leaked: processes {:?}, files {:?}", self.vmm_processes(), self.leftovers());
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
                .unwrap_or(false)
        })
        .collect()
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
