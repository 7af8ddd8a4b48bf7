//! Attacks by a VMM that got out of its guest: it can write its own run folder (bound
//! read-write into its jail), so it plants links and FIFOs where the host reads or links.
//! Each test asserts the host file it aims at is unchanged and nothing of it is shown.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use kiln_core::{ExecRequest, SandboxOptions, Sandbox};
use kiln_testkit::TestHome;

/// A root-only host file with a marker in it (the signing key, /etc/shadow).
fn victim(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("signing.key");
    std::fs::write(&p, "HOST-SECRET-MARKER-0x5eed\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn attack_vmm_links_its_overlay_to_a_host_file_before_a_fork() {
    let th = TestHome::new();
    let d = tempfile::tempdir().unwrap();
    let secret = victim(d.path());
    let opts = SandboxOptions { template: "tiny".into(), forkable: true, ..SandboxOptions::default() };
    let mut sbx = Sandbox::create(&th.home, &opts, &|_| {}).await.expect("sandbox");
    let run = sbx.run_dir().unwrap();
    let overlay = run.join("overlay.qcow2");
    std::fs::remove_file(&overlay).unwrap();
    std::os::unix::fs::symlink(&secret, &overlay).unwrap();
    let e = match sbx.fork(&th.home, 2).await {
        Ok(_) => panic!("a fork froze a planted link"),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains("HOST-SECRET-MARKER"), "{e}");
    let m = std::fs::metadata(&secret).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o600, 0), "the host file was chowned or chmodded through the link");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "HOST-SECRET-MARKER-0x5eed\n");
    drop(sbx);
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn attack_vmm_plants_links_and_fifos_where_the_host_reads() {
    let th = TestHome::new();
    let d = tempfile::tempdir().unwrap();
    let secret = victim(d.path());
    let opts = SandboxOptions { template: "tiny".into(), ..SandboxOptions::default() };
    let sbx = Sandbox::create(&th.home, &opts, &|_| {}).await.expect("sandbox");
    let run = sbx.run_dir().unwrap();
    // QEMU's stderr becomes a link to the key, the console log a FIFO nobody writes.
    std::fs::remove_file(run.join("qemu.stderr")).unwrap();
    std::os::unix::fs::symlink(&secret, run.join("qemu.stderr")).unwrap();
    std::fs::remove_file(run.join("console.log")).unwrap();
    let fifo = std::ffi::CString::new(run.join("console.log").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // The VMM dies; the host reads both files to say why.
    // SAFETY: kill takes a pid and a signal; the pid is this test's own VMM.
    assert_eq!(unsafe { libc::kill(sbx.vmm_pid() as i32, libc::SIGKILL) }, 0);
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), sbx.exec(ExecRequest::argv(["true"]), |_| {})).await.expect("the host blocked on a FIFO");
    let e = r.expect_err("the VM is dead").to_string();
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(!e.contains("HOST-SECRET-MARKER"), "the host showed the file the VMM linked: {e}");
    let m = std::fs::metadata(&secret).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    drop(sbx);
    th.assert_clean();
}
