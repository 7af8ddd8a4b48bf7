//! Host faults during a bake: the file systems for snapshots and for RAM files fill up. Each
//! time: a clear error, nothing half-written left or used, and the next bake with room works.
//! (A corrupted snapshot, a VMM or a daemon killed with -9: see snapshot_fork.rs,
//! hostile_guest.rs and the daemon tests.)

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_core::{Sandbox, SandboxOptions};
use kiln_testkit::TestHome;

/// A tmpfs of `size` mounted on `dir` for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "kiln-test", dir.to_str().unwrap()]).status().unwrap();
        assert!(ok.success(), "mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }
    fn resize(&self, size: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()]).status().unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn a_full_disk_during_a_bake_is_a_clear_error_and_nothing_half_written_is_used() {
    let th = TestHome::isolated();
    let opts = SandboxOptions { template: "tiny".into(), ..SandboxOptions::default() };
    let progress = |m: &str| eprintln!("kiln: {m}");

    // No room for the RAM file: refused before anything is written.
    let shm = Tmpfs::mount(th.home.shm(), "32m");
    let e = Sandbox::create(&th.home, &opts, &progress).await.unwrap_err().to_string();
    assert!(e.contains("not enough space to bake a snapshot of template tiny") && e.contains("256 MiB"), "{e}");
    shm.resize("512m");

    // Room for the RAM but almost none for the snapshot's files: the bake fails part way.
    let snaps = Tmpfs::mount(&th.home.snapshots(), "320k");
    let e = Sandbox::create(&th.home, &opts, &progress).await.unwrap_err().to_string();
    eprintln!("bake on a full disk: {e}");
    assert!(e.contains("the disk is full") && e.contains("nothing was kept"), "{e}");
    assert_eq!(entries(&th.home.snapshots()), Vec::<String>::new(), "a half-written snapshot was left");
    assert!(entries(th.home.shm()).iter().all(|n| !n.starts_with(".bake-")), "{:?}", entries(th.home.shm()));

    // With room, the next create bakes a good snapshot and runs.
    snaps.resize("64m");
    let sbx = Sandbox::create(&th.home, &opts, &progress).await.expect("bake with room");
    let c = kiln_testkit::sh(&sbx, "echo ok").await;
    assert_eq!((c.exit_code(), c.stdout.as_str()), (0, "ok\n"));
    sbx.destroy();
    drop(snaps);
    drop(shm);
    th.assert_clean();
}
