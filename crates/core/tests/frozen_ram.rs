//! No VMM can write a frozen RAM file: template snapshots, fork bases and persisted checkpoints
//! (the CI setup cache) are root's and read-only, and the clones' QEMUs open them read-only
//! (`readonly=on,rom=off`) and map them private.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_core::{ExecRequest, Sandbox, SandboxOptions};
use kiln_testkit::{exec, Boot, TestHome};

/// The file backing the VMM's guest RAM: its largest file mapping.
fn ram_mapping(pid: u32) -> (PathBuf, String) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut best: Option<(u64, PathBuf, String)> = None;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[5].starts_with('/') {
            continue;
        }
        let (a, b) = f[0].split_once('-').unwrap();
        let len = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
        if best.as_ref().is_none_or(|(l, ..)| len > *l) {
            best = Some((len, PathBuf::from(f[5]), f[1].to_owned()));
        }
    }
    let (len, path, perms) = best.expect("a file mapping");
    assert!(len >= 256 << 20, "the largest file mapping of {pid} is {len} bytes ({})", path.display());
    (path, perms)
}

fn ids_of(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    (field("Uid:"), field("Gid:"))
}

/// Asserts that `sbx`'s VMM maps a frozen RAM file that neither it nor its group can write.
fn assert_frozen_for(sbx: &Sandbox, kind: &str) -> PathBuf {
    let pid = sbx.vmm_pid();
    let (ram, perms) = ram_mapping(pid);
    assert!(perms.ends_with('p'), "{kind}: {} is mapped shared ({perms})", ram.display());
    let m = std::fs::symlink_metadata(&ram).unwrap();
    assert!(m.file_type().is_file(), "{kind}");
    assert_eq!((m.uid(), m.mode() & 0o222), (0, 0), "{kind}: {} is {:o} uid {}", ram.display(), m.mode() & 0o7777, m.uid());
    // The VMM runs as a uid and group of its own, and cannot open the file for writing.
    let (uid, gid) = ids_of(pid);
    assert!(uid != 0 && gid != 0, "{kind}: VMM runs as {uid}:{gid}");
    // Through an O_PATH descriptor reopened as /proc/self/fd/3, only the file's own mode is
    // checked (not the folders above it): the VMM's uid may read it, and may not write it.
    let path_fd = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(&ram).unwrap();
    let raw = path_fd.as_raw_fd();
    let opens = |redirect: &str| {
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c").arg(format!("exec 4{redirect}/proc/self/fd/3")).stderr(std::process::Stdio::null()).uid(uid).gid(gid);
        // SAFETY: dup2 is async-signal-safe and touches only descriptors of the child.
        unsafe {
            c.pre_exec(move || if libc::dup2(raw, 3) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
        }
        c.status().unwrap().success()
    };
    assert!(opens("<"), "{kind}: uid {uid} cannot even read {}, so the write check below would prove nothing", ram.display());
    assert!(!opens(">>"), "{kind}: uid {uid} gid {gid} could open {} for writing", ram.display());
    // Every descriptor the VMM holds on it is read-only.
    let mut fds = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if std::fs::read_link(e.path()).ok().as_deref() == Some(ram.as_path()) {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy())).unwrap();
            let flags = info.lines().find(|l| l.starts_with("flags:")).unwrap().split_whitespace().nth(1).unwrap();
            let flags = u32::from_str_radix(flags, 8).unwrap();
            assert_eq!(flags & libc::O_ACCMODE as u32, libc::O_RDONLY as u32, "{kind}: fd {:?} flags {flags:o}", e.file_name());
            fds += 1;
        }
    }
    assert!(fds > 0, "{kind}: the VMM holds no descriptor on {}", ram.display());
    ram
}

async fn answers(sbx: &Sandbox) {
    let c = exec(sbx, ExecRequest::shell("echo alive > /root/x; cat /root/x").timeout(Duration::from_secs(60))).await;
    assert_eq!((c.exit_code(), c.stdout.as_str()), (0, "alive\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn no_vmm_can_write_a_frozen_ram_file() {
    let th = TestHome::new();
    // A template snapshot.
    let restored = th.sandbox("tiny", Boot::Restored).await;
    let ram = assert_frozen_for(&restored, "template snapshot");
    assert!(ram.starts_with(th.home.shm()), "{}", ram.display());
    answers(&restored).await;
    drop(restored);

    // A fork base.
    let opts = SandboxOptions { forkable: true, ..SandboxOptions::default() };
    let mut parent = Sandbox::create(&th.home, &opts, &|m| eprintln!("kiln: {m}")).await.unwrap();
    let clone = parent.fork(&th.home, 1).await.unwrap().pop().unwrap();
    let ram = assert_frozen_for(&clone, "fork base");
    assert!(ram.file_name().unwrap().to_string_lossy().starts_with("fork-"), "{}", ram.display());
    answers(&clone).await;

    // A persisted checkpoint, as the CI setup cache writes them.
    let dir = th.home.root().join("checkpoint");
    let memory: &Path = &dir.join("memory");
    parent.fork_base().unwrap().persist(parent.vm_spec(), &dir, memory).unwrap();
    let from_cache = Sandbox::from_checkpoint(&th.home, &dir, memory, parent.artifacts().clone(), parent.accel(), Vec::new()).await.unwrap();
    assert_eq!(assert_frozen_for(&from_cache, "checkpoint"), memory);
    answers(&from_cache).await;
    drop((from_cache, clone, parent));
    th.assert_clean();
}
