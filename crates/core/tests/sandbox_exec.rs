//! Exec and file operations against a real cold-booted microVM (`tiny` template, TCG here).

use std::time::{Duration, Instant};

use kiln_core::{ExecRequest, SandboxError};
use kiln_proto::{ErrorKind, ExitStatus, FileKind};
use kiln_testkit::{exec, sh, Boot, TestHome};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn exec_semantics() {
    for how in Boot::ALL {
        exec_semantics_in(how).await;
    }
}

async fn exec_semantics_in(how: Boot) {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", how).await;

    // stdout and stderr separated, each in order.
    let c = sh(&sbx, "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3").await;
    let (out, err, o) = (c.stdout, c.stderr, c.result.expect("exec"));
    assert_eq!(out, "out1\nout2\n");
    assert_eq!(err, "err1\nerr2\n");
    assert_eq!(o.status, ExitStatus::Code(3));
    assert!(!o.timed_out);

    // Order across streams when the command paces them.
    let log = sh(&sbx, "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c").await.log;
    let kinds: String = log.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, "oeo", "{log:?}");

    // Exit codes 0 and 1, and a signal.
    assert_eq!(sh(&sbx, "true").await.exit_code(), 0);
    assert_eq!(sh(&sbx, "false").await.exit_code(), 1);
    let killed = sh(&sbx, "kill -9 $$").await.result.expect("exec");
    assert_eq!(killed.status, ExitStatus::Signal(9));
    assert_eq!(killed.exit_code(), 137);

    // Command not found is an error of its own kind (the CLI maps it to 127).
    let e = sbx.exec(ExecRequest::argv(["no-such-command"]), |_| {}).await.unwrap_err();
    assert!(matches!(e, SandboxError::Guest { kind: ErrorKind::NotFound, .. }), "{e:?}");
    // ... and through a shell it is the shell's 127.
    assert_eq!(sh(&sbx, "no-such-command").await.exit_code(), 127);

    // Env and cwd.
    let req = ExecRequest::shell("echo $FOO; pwd").env("FOO", "bar baz").cwd("/tmp");
    assert_eq!(exec(&sbx, req).await.checked().stdout, "bar baz\n/tmp\n");

    // stdin.
    let req = ExecRequest::argv(["wc", "-c"]).stdin_bytes(vec![b'x'; 100_000]);
    assert_eq!(exec(&sbx, req).await.checked().stdout.trim(), "100000");

    // 100,000 lines intact and in order.
    let c = sh(&sbx, "seq 1 100000").await;
    let (out, o) = (c.stdout, c.result.expect("exec"));
    assert_eq!(o.exit_code(), 0);
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert!(out == expected, "100k lines differ: got {} bytes, want {}", out.len(), expected.len());

    // The guest's own kernel.
    let out = sh(&sbx, "uname -r").await.stdout;
    assert_eq!(out.trim(), sbx.guest_kernel());

    sbx.destroy();
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn timeout_kills_the_whole_process_group() {
    for how in Boot::ALL {
        timeout_kills_in(how).await;
    }
}

async fn timeout_kills_in(how: Boot) {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", how).await;
    let t0 = Instant::now();
    let req = ExecRequest::shell("sleep 1000 & while :; do :; done").timeout(Duration::from_secs(2));
    let o = sbx.exec(req, |_| {}).await.unwrap();
    assert!(o.timed_out);
    assert_eq!(o.exit_code(), 124);
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    // Nothing of it is left in the guest, nor a background job escaped with setsid.
    let out = sh(&sbx, "ps -o pid,args | grep -E 'sleep (1000|999)' | grep -v grep || true").await.stdout;
    assert_eq!(out.trim(), "", "left in the guest: {out}");
    let req = ExecRequest::shell("setsid sleep 999 & sleep 1000").timeout(Duration::from_secs(1));
    assert!(sbx.exec(req, |_| {}).await.unwrap().timed_out);
    let out = sh(&sbx, "ps -o pid,args | grep -E 'sleep (1000|999)' | grep -v grep || true").await.stdout;
    assert_eq!(out.trim(), "", "left in the guest: {out}");
    // A background job is killed when its command ends, too.
    let c = sh(&sbx, "sleep 777 & echo started").await;
    let (out, o) = (c.stdout, c.result.expect("exec"));
    assert_eq!((out.as_str(), o.exit_code()), ("started\n", 0));
    let out = sh(&sbx, "ps -o pid,args | grep 'sleep 777' | grep -v grep || true").await.stdout;
    assert_eq!(out.trim(), "");
    // The emptied cgroup of a command is the next one's, with nothing of the last one in it.
    let first = sh(&sbx, "cat /proc/self/cgroup").await.stdout;
    let c = sh(&sbx, "cat /proc/self/cgroup; for p in $(cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cgroup.procs); do cat /proc/$p/comm; done").await;
    let lines: Vec<&str> = c.stdout.lines().collect();
    assert_eq!(lines[0], first.trim(), "cgroup not reused: {}", c.stdout);
    assert!(lines[1..].iter().all(|l| ["sh", "cat", "cut"].contains(l)), "someone else in the reused cgroup: {}", c.stdout);
    sbx.destroy();
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn files_round_trip() {
    for how in Boot::ALL {
        files_round_trip_in(how).await;
    }
}

async fn files_round_trip_in(how: Boot) {
    let th = TestHome::new();
    let sbx = th.sandbox("tiny", how).await;
    let agent = sbx.agent();

    // 10 MiB of random bytes, written and read back with the same sha256.
    let data = kiln_core::random::bytes(10 << 20);
    let want = hex::encode(Sha256::digest(&data));
    agent.write_file("/root/blob.bin", 0o600, true, &data[..]).await.unwrap();
    let back = agent.read_bytes("/root/blob.bin", 64 << 20).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&back)), want);
    // The guest sees the same bytes.
    let out = sh(&sbx, "sha256sum /root/blob.bin").await.stdout;
    assert!(out.starts_with(&want), "{out}");

    // Mode bits, stat, list, mkdir, remove.
    let st = agent.stat("/root/blob.bin").await.unwrap();
    assert_eq!((st.kind, st.size, st.mode), (FileKind::File, 10 << 20, 0o600));
    agent.mkdir("/root/a/b/c", 0o750, true).await.unwrap();
    agent.write_bytes("/root/a/b/c/x.sh", 0o755, b"#!/bin/sh\necho hi from x\n").await.unwrap();
    let out = sh(&sbx, "/root/a/b/c/x.sh").await.stdout;
    assert_eq!(out, "hi from x\n");
    let names: Vec<String> = agent.list("/root/a/b/c", 100).await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["x.sh"]);
    assert_eq!(agent.stat("/root/a/b").await.unwrap().kind, FileKind::Dir);
    agent.remove("/root/a", true).await.unwrap();
    let e = agent.stat("/root/a").await.unwrap_err();
    assert!(matches!(e, SandboxError::Guest { kind: ErrorKind::NotFound, .. }), "{e:?}");

    // A read over the cap is refused; relative paths never leave the host.
    let e = agent.read_bytes("/root/blob.bin", 1024).await.unwrap_err();
    assert!(matches!(e, SandboxError::Guest { kind: ErrorKind::InvalidInput, .. }), "{e:?}");
    assert!(matches!(agent.stat("etc/passwd").await, Err(SandboxError::Invalid(_))));

    // Copy a host folder in.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/f.txt"), b"copied").unwrap();
    let stats = agent.copy_in(dir.path(), "/src").await.unwrap();
    assert_eq!(stats.files, 1);
    assert_eq!(agent.read_bytes("/src/sub/f.txt", 100).await.unwrap(), b"copied");

    sbx.destroy();
    th.assert_clean();
}
