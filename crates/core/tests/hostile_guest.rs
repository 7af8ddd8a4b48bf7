//! The hostile-guest suite, against real microVMs (`tiny`): a guest that forks without end,
//! eats its memory, fills its disk, floods its output, panics, halts, or whose VMM is killed
//! under it. Each time the host stays bounded and the caller gets a clear answer. Also: the
//! VMM really runs confined (uid, capabilities, namespaces, cgroup, seccomp, file size).

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_core::{ExecRequest, Output, Sandbox, SandboxError};
use kiln_testkit::{exec, Boot, Collected, TestHome};

/// A shell script with a 60 s timeout; panics if the exec fails.
async fn sh(sbx: &Sandbox, script: &str) -> Collected {
    exec(sbx, ExecRequest::shell(script).timeout(Duration::from_secs(60))).await.checked()
}

fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or("").trim().to_owned()
}

fn kib(field: String) -> u64 {
    field.trim_end_matches("kB").trim().parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn the_vmm_runs_confined() {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", Boot::Restored).await;
    let pid = sbx.vmm_pid();
    let uid: u32 = status_field(pid, "Uid").split_whitespace().next().unwrap().parse().unwrap();
    assert!(uid >= kiln_vmm::confine::DEFAULT_UID_BASE, "VMM uid {uid}");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "QEMU's -sandbox filter is on");
    for ns in ["mnt", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace is shared with the host");
    }
    // Its root holds the system's binaries and its own files, nothing else of the host.
    let root = format!("/proc/{pid}/root");
    assert!(Path::new(&format!("{root}/usr/bin")).is_dir());
    assert!(!Path::new(&format!("{root}/etc/passwd")).exists());
    assert!(!Path::new(&format!("{root}{}", th.home.root().join("keys").display())).exists());
    assert!(Path::new(&format!("{root}{}", sbx.run_dir().unwrap().join("control.sock").display())).exists());
    let entries: Vec<String> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!entries.iter().any(|e| e == "home" || e == "var" || e == "proc"), "{entries:?}");
    // Its cgroup, with the limits of its size.
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name = format!("kiln/vmm-{}-", std::process::id());
    assert!(cg.contains(&name), "{cg}");
    let c = kiln_vmm::confine::host().expect("confinement");
    let mine: Vec<_> = c.cgroups().into_iter().filter(|p| p.to_string_lossy().contains(sbx.id())).collect();
    assert!(!mine.is_empty(), "no cgroup named for {}", sbx.id());
    let limit_file = mine.iter().map(|d| d.join("memory.max")).chain(mine.iter().map(|d| d.join("memory.limit_in_bytes"))).find(|p| p.exists()).unwrap();
    let limit: u64 = std::fs::read_to_string(&limit_file).unwrap().trim().parse().unwrap();
    assert_eq!(limit, (256 + kiln_vmm::confine::OVERHEAD_TCG_MIB) << 20);
    // Files it writes are capped (the overlay's virtual size plus slack).
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let fsize = limits.lines().find(|l| l.starts_with("Max file size")).unwrap().to_owned();
    assert!(fsize.contains(&((64u64 << 20) + kiln_vmm::confine::FILE_SLACK).to_string()), "{fsize}");
    // No core dumps (they would hold guest RAM).
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap().to_owned();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    assert_eq!(core.split_whitespace().nth(5), Some("0"), "{core}");
    // The snapshot it was restored from is root's, not a (reusable) VMM uid's.
    let kiln_core::sandbox::CreateMode::Restored(snap) = sbx.mode() else { panic!("not restored") };
    let meta = std::fs::metadata(th.home.snapshots().join(snap).join("disk.qcow2")).unwrap();
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&meta), std::os::unix::fs::MetadataExt::mode(&meta) & 0o777), (0, 0o444));
    sbx.destroy();
    assert!(mine.iter().all(|d| !d.exists()), "cgroup left behind: {mine:?}");
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn fork_bomb_meets_the_guest_limits_and_the_sandbox_lives_on() {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", Boot::Restored).await;
    let t = Instant::now();
    // The bomb, then (with shell builtins only: nothing to fork) wait until the guest stopped it
    // by the process limit or the memory limit, and exit 7. The agent then kills all it left.
    let bomb = r#"b() { b | b & }; b
while :; do
  read k v < /sys/fs/cgroup/kiln/pids.events; [ "$v" != 0 ] && exit 7
  while read k v; do [ "$k" = oom_kill ] && [ "$v" != 0 ] && exit 7; done < /sys/fs/cgroup/kiln/memory.events
done"#;
    let o = exec(&sbx, ExecRequest::shell(bomb).timeout(Duration::from_secs(120))).await.result.expect("the bomb's exec ends");
    assert_eq!(o.exit_code(), 7, "the bomb never met a limit: {o:?}");
    eprintln!("fork bomb met the guest's limits and was cleaned up in {:?}", t.elapsed());
    // Emptied exec cgroups are kept for later execs: only this one may hold a process.
    let script = "cat /sys/fs/cgroup/kiln/pids.max /proc/sys/kernel/threads-max; cat /sys/fs/cgroup/kiln/exec-*/cgroup.events | grep -c 'populated 1'; echo alive";
    let c = sh(&sbx, script).await;
    let out = c.stdout;
    assert_eq!(c.result.unwrap().exit_code(), 0);
    let lines: Vec<&str> = out.lines().collect();
    let (limit, threads_max): (u64, u64) = (lines[0].parse().unwrap(), lines[1].parse().unwrap());
    assert!(limit <= threads_max * 3 / 4, "{out}");
    assert_eq!(lines[2], "1", "exec groups with processes (this one only): {out}");
    assert_eq!(lines[3], "alive");

    sbx.destroy();
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn memory_hog_meets_the_guest_oom_killer_and_the_host_is_bounded() {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", Boot::Restored).await;
    // A 200 MiB buffer, filled: more than the commands of a 256 MiB guest may have together.
    let req = ExecRequest::argv(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]).timeout(Duration::from_secs(60));
    let o = exec(&sbx, req).await.result.expect("exec");
    assert_eq!(o.exit_code(), 137, "killed by the guest's OOM killer: {o:?}");
    let out = sh(&sbx, "grep -E '^oom_kill ' /sys/fs/cgroup/kiln/memory.events; echo alive").await.stdout;
    assert!(out.ends_with("alive\n") && !out.starts_with("oom_kill 0"), "{out}");
    // The VMM never grew past its cgroup's limit.
    let hwm = kib(status_field(sbx.vmm_pid(), "VmHWM")) << 10;
    assert!(hwm <= (256 + kiln_vmm::confine::OVERHEAD_TCG_MIB) << 20, "VMM peak {hwm} bytes");
    sbx.destroy();
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn disk_fill_stops_at_the_disk_size() {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", Boot::Restored).await;
    let c = sh(&sbx, "dd if=/dev/zero of=/fill bs=1M count=1000; r=$?; sync; exit $r").await;
    assert!(c.stderr.contains("No space left on device"), "{}", c.stderr);
    assert_ne!(c.exit_code(), 0);
    let overlay = sbx.run_dir().unwrap().join("overlay.qcow2");
    let size = std::fs::metadata(&overlay).unwrap().len();
    assert!(size <= (64 << 20) + kiln_vmm::confine::FILE_SLACK, "overlay grew to {size} bytes");
    assert_eq!(sh(&sbx, "rm /fill && echo ok > /after && cat /after").await.stdout, "ok\n");
    sbx.destroy();
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn output_flood_is_cut_at_the_cap_and_not_buffered() {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", Boot::Restored).await;
    let before = kib(status_field(std::process::id(), "VmRSS"));
    let cap = 8u64 << 20;
    let (mut got, mut marker) = (0u64, false);
    let t = Instant::now();
    // 2 GiB straight into the agent's pipe; the guest drains it, the host gets `cap` bytes.
    let req = ExecRequest::shell("dd if=/dev/zero bs=1048576 count=2048 2>/dev/null; echo done >&2").max_output(cap);
    let o = sbx
        .exec(req, |o| match o {
            Output::Stdout(d) => got += d.len() as u64,
            Output::Stderr(d) => marker |= String::from_utf8_lossy(d).contains("[kiln: output truncated"),
        })
        .await
        .unwrap();
    assert_eq!(o.exit_code(), 0);
    assert!(o.output_truncated && marker);
    assert_eq!(got, cap);
    let after = kib(status_field(std::process::id(), "VmRSS"));
    eprintln!("2 GiB flood: {got} bytes passed in {:?}; test process RSS {before} -> {after} kB", t.elapsed());
    assert!(after < before + 64 * 1024, "host memory grew from {before} to {after} kB");
    sbx.destroy();
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn kernel_panic_and_halt_are_reported_as_such() {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", Boot::Restored).await;
    let e = exec(&sbx, ExecRequest::shell("echo c > /proc/sysrq-trigger").timeout(Duration::from_secs(30))).await.result.unwrap_err();
    assert!(matches!(e, SandboxError::Died { .. }), "{e}");
    assert!(e.to_string().contains("the guest kernel panicked"), "{e}");
    drop(sbx);

    let sbx = th.sandbox("tiny", Boot::Restored).await;
    let e = exec(&sbx, ExecRequest::shell("halt -f").timeout(Duration::from_secs(2))).await.result.unwrap_err();
    assert!(e.to_string().contains("the guest halted"), "{e}");
    assert_eq!(sbx.vmm_pid(), 0, "the halted VM was destroyed");
    drop(sbx);
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn killing_the_vmm_mid_exec_fails_the_exec_within_a_second() {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", Boot::Restored).await;
    let pid = sbx.vmm_pid();
    let killer = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // SAFETY: kill(2) on the VMM's pid, a child of this process.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        Instant::now()
    };
    let run = exec(&sbx, ExecRequest::shell("echo started; sleep 60"));
    let (killed_at, c) = tokio::join!(killer, run);
    let (out, r) = (c.stdout, c.result);
    let waited = killed_at.elapsed();
    eprintln!("VMM killed mid-exec: the caller had its error {waited:?} after the kill");
    assert_eq!(out, "started\n");
    let e = r.unwrap_err();
    assert!(matches!(e, SandboxError::Died { .. }), "{e:?}");
    assert!(e.to_string().starts_with("sandbox died"), "{e}");
    assert!(waited < Duration::from_secs(1), "the caller waited {waited:?} after the kill");
    drop(sbx);
    th.assert_clean();
}

/// A VM with only a disk, for asking the jail what it would show the VMM.
fn jail_spec(run: &std::path::Path, disk: std::path::PathBuf, backing: std::path::PathBuf) -> kiln_vmm::driver::VmSpec {
    kiln_vmm::driver::VmSpec {
        kernel: "/k".into(),
        initrd: "/i".into(),
        cmdline: String::new(),
        cpus: 1,
        memory_mib: 64,
        accel: kiln_vmm::Accel::Tcg,
        disk: Some(disk),
        disk_backing: Some(backing),
        run_dir: run.to_owned(),
        memory: kiln_vmm::driver::Memory::Anonymous,
        incoming: false,
    }
}

/// A VMM that got out of its guest could rewrite its overlay's header before the overlay is
/// frozen for a fork, naming any file as its backing file. The clones' jail must not show it.
#[test]
#[ignore = "needs QEMU: run `make test`, or `cargo test -- --include-ignored` once `make deps` installed it"]
fn a_disk_chain_naming_a_non_image_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("signing.key");
    std::fs::write(&secret, vec![7u8; 4096]).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let backing = kiln_core::snapshot::create_overlay(&secret, "raw", &run.join("overlay.qcow2")).unwrap();
    let spec = jail_spec(&run, run.join("overlay.qcow2"), backing);
    let e = kiln_vmm::confine::host().expect("confinement").jail(&spec).unwrap_err().to_string();
    assert!(e.contains("signing.key") && e.contains("not a frozen image") && e.contains("refusing"), "{e}");
}

/// Item 6 of the boundary: a frozen file is not enough. A VMM that rewrote its overlay's
/// header to name another frozen, root-owned, read-only file (another tenant's cache disk, a
/// 0444 secret) is refused too: the jail checks the header against the backing file kiln made
/// the overlay over.
#[test]
#[ignore = "needs QEMU: run `make test`, or `cargo test -- --include-ignored` once `make deps` installed it"]
fn a_rewritten_disk_header_naming_another_frozen_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let frozen = |name: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        kiln_fs::freeze(&p).unwrap();
        p
    };
    let (mine, theirs) = (frozen("rootfs.img"), frozen("other-tenant-disk.img"));
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let overlay = run.join("overlay.qcow2");
    let backing = kiln_core::snapshot::create_overlay(&mine, "raw", &overlay).unwrap();
    // The VMM's rewrite: the same overlay, now over the other file.
    std::fs::remove_file(&overlay).unwrap();
    kiln_core::snapshot::create_overlay(&theirs, "raw", &overlay).unwrap();
    let spec = jail_spec(&run, overlay, backing);
    let e = kiln_vmm::confine::host().expect("confinement").jail(&spec).unwrap_err().to_string();
    assert!(e.contains("other-tenant-disk.img") && e.contains("rewritten") && e.contains("refusing"), "{e}");
}
