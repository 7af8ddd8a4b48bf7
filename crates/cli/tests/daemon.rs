//! `kiln serve` end to end: a real daemon process, real VMs, the Rust client, crash recovery.

use std::process::Command;
use std::time::Duration;

use kiln_client::{Client, ClientError, CreateSandbox, ExecRequest, Target};
use kiln_daemon::store::Store;
use kiln_testkit::{kiln, wait_until, TestHome};

/// A `kiln serve` of the test home (stopped when dropped) and a client of it.
struct Daemon {
    d: kiln_testkit::Daemon,
    client: Client,
}

impl Daemon {
    fn start(th: &TestHome, extra: &[&str]) -> Daemon {
        Self::start_with(th, extra, &[])
    }

    fn start_with(th: &TestHome, extra: &[&str], env: &[(&str, &std::path::Path)]) -> Daemon {
        let mut c = kiln!(th);
        c.envs(env.iter().copied());
        let d = kiln_testkit::Daemon::start(c, th, extra);
        // The owner's admin door: 0600 from the moment it exists under its name, and the kiln
        // database beside it owner-only too.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::symlink_metadata(d.socket()).unwrap().permissions().mode() & 0o777, 0o600);
        if let Ok(m) = std::fs::metadata(d.socket().with_file_name("kiln.db")) {
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
        let client = Client::new(Target::Unix(d.socket().to_owned()), None);
        Daemon { d, client }
    }
}

fn tiny(ttl: i64) -> CreateSandbox {
    CreateSandbox { template: "tiny".into(), ttl_seconds: Some(ttl), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn lifecycle_exec_files_fork_and_ttl() {
    let th = TestHome::for_daemon();
    let d = Daemon::start(&th, &[]);
    let c = &d.client;
    let s = c.create_sandbox(&CreateSandbox { forkable: true, ..tiny(300) }).await.unwrap();
    assert_eq!((s.state.as_str(), s.mode.as_str()), ("running", "restored"));
    let r = c.exec(&s.id, &ExecRequest::shell("echo out; echo err >&2; exit 3")).await.unwrap();
    assert_eq!((r.stdout.as_str(), r.stderr.as_str(), r.exit_code, r.timed_out), ("out\n", "err\n", 3, false));
    let r = c.exec(&s.id, &ExecRequest::shell("while true; do :; done").timeout(2.0)).await.unwrap();
    assert!(r.timed_out && r.exit_code == 124, "{r:?}");
    let r = c.exec(&s.id, &ExecRequest::argv(vec!["no-such-command".into()])).await.unwrap();
    assert_eq!(r.exit_code, 127, "{r:?}");

    // Streaming keeps order per stream.
    let mut out = Vec::new();
    let exit = c
        .exec_stream(&s.id, &ExecRequest::shell("for i in 1 2 3; do echo $i; sleep 0.1; done"), |e| {
            if let kiln_client::ExecEvent::Stdout(d) = e {
                out.extend(d)
            }
        })
        .await
        .unwrap();
    assert_eq!((String::from_utf8(out).unwrap().as_str(), exit.exit_code), ("1\n2\n3\n", 0));

    // Files.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    c.write_file(&s.id, "/root/d/blob", 0o600, std::io::Cursor::new(data.clone())).await.unwrap();
    let mut back = Vec::new();
    assert_eq!(c.read_file(&s.id, "/root/d/blob", &mut back).await.unwrap(), 300_000);
    assert_eq!(back, data);
    assert_eq!(c.stat(&s.id, "/root/d/blob").await.unwrap().mode, 0o600);
    assert_eq!(c.list_files(&s.id, "/root/d").await.unwrap()[0].name, "blob");

    // Fork: two clones, independent.
    let clones = c.fork(&s.id, 2).await.unwrap();
    c.exec(&clones[0].id, &ExecRequest::shell("echo x > /root/only0")).await.unwrap();
    let r = c.exec(&clones[1].id, &ExecRequest::shell("test -e /root/only0 && echo present || echo absent; cat /root/d/blob | wc -c")).await.unwrap();
    assert_eq!(r.stdout.split_whitespace().collect::<Vec<_>>(), ["absent", "300000"]);
    assert_eq!(c.list_sandboxes().await.unwrap().len(), 3);

    // Extend, then delete.
    let before = c.get_sandbox(&s.id).await.unwrap().deadline;
    let after = c.extend(&s.id, 3000).await.unwrap().deadline;
    assert!(after > before);
    c.delete_sandbox(&s.id).await.unwrap();
    assert!(matches!(c.get_sandbox(&s.id).await, Err(ClientError::Api { status: 404, .. })));

    // A sandbox with a 3 s TTL that nobody deletes is gone after its deadline.
    let short = c.create_sandbox(&tiny(3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(matches!(c.get_sandbox(&short.id).await, Err(ClientError::Api { status: 404, .. })));
    let events = Store::open(&th.home.root().join("kiln.db")).unwrap().events(Some(&short.id), 10).unwrap();
    assert!(events.iter().any(|e| e.kind == "reaped"), "{events:?}");
    let metrics = reqwest_metrics(c).await;
    assert!(metrics.contains("kiln_ttl_reaps_total 1"), "{metrics}");
    for cl in clones {
        c.delete_sandbox(&cl.id).await.unwrap();
    }
    drop(d);
    th.assert_clean();
}

async fn reqwest_metrics(c: &Client) -> String {
    use http_body_util::BodyExt;
    let r = c.send(hyper::Method::GET, "/metrics", http_body_util::Empty::new().map_err(|n| match n {}).boxed(), "text/plain").await.unwrap();
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn limits_answer_429() {
    let th = TestHome::for_daemon();
    let d = Daemon::start(&th, &["--max-sandboxes", "1"]);
    let a = d.client.create_sandbox(&tiny(60)).await.unwrap();
    match d.client.create_sandbox(&tiny(60)).await {
        Err(ClientError::Api { status: 429, message, .. }) => assert!(message.contains("limit is 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    d.client.delete_sandbox(&a.id).await.unwrap();
    drop(d);
    let d = Daemon::start(&th, &["--max-memory", "100"]);
    match d.client.create_sandbox(&tiny(60)).await {
        Err(ClientError::Api { status: 429, message, .. }) => assert!(message.contains("MiB"), "{message}"),
        other => panic!("{other:?}"),
    }
    drop(d);
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn kill_9_of_the_daemon_mid_exec_leaks_nothing() {
    let th = TestHome::for_daemon();
    let mut d = Daemon::start(&th, &[]);
    let s = d.client.create_sandbox(&tiny(600)).await.unwrap();
    let daemon_pid = d.d.pid();
    assert!(!kiln_testkit::vmm_cgroups_of(daemon_pid).is_empty(), "the VMM has its cgroup");
    let client = d.client.clone();
    let id = s.id.clone();
    let exec = tokio::spawn(async move { client.exec(&id, &ExecRequest::shell("sleep 60")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!th.vmm_processes().is_empty(), "the VM should be running");
    d.d.kill9();
    // The caller gets an error, not a hang.
    let r = tokio::time::timeout(Duration::from_secs(10), exec).await.expect("exec did not end").unwrap();
    assert!(r.is_err(), "{r:?}");
    // The VMM dies with its daemon.
    assert!(wait_until(Duration::from_secs(5), || th.vmm_processes().is_empty()), "QEMU outlived the daemon");
    // A new daemon reconciles: the sandbox is failed, its files are gone.
    drop(d);
    let d = Daemon::start(&th, &[]);
    assert!(matches!(d.client.get_sandbox(&s.id).await, Err(ClientError::Api { status: 404, .. })));
    let store = Store::open(&th.home.root().join("kiln.db")).unwrap();
    assert!(store.live_sandboxes().unwrap().is_empty());
    assert!(store.events(Some(&s.id), 10).unwrap().iter().any(|e| e.kind == "lost"));
    // ... and the dead daemon's VMM cgroups are removed.
    assert_eq!(kiln_testkit::vmm_cgroups_of(daemon_pid), Vec::<std::path::PathBuf>::new());
    drop(d);
    th.assert_clean();
}

/// A guest whose agent breaks the protocol (garbage, an oversized frame, output without end, a
/// frame that never completes): each time the exec fails with a clear error, the sandbox is
/// failed and destroyed, and the daemon carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn a_hostile_agent_fails_its_sandbox_and_the_daemon_carries_on() {
    // A home of its own: the hostile agent's template snapshot stays out of the shared cache.
    let th = TestHome::isolated();
    let hostile = kiln_image::initramfs::find_agent().unwrap().with_file_name("kiln-hostile-agent");
    assert!(hostile.is_file(), "{} is missing: make build", hostile.display());
    let d = Daemon::start_with(&th, &[], &[("KILN_AGENT", &hostile)]);
    let store = Store::open(&th.home.root().join("kiln.db")).unwrap();
    for (how, expect) in [("garbage", "bad frame"), ("oversized", "exceeds the limit"), ("endless", "stopped answering"), ("stall", "stopped answering")] {
        let s = d.client.create_sandbox(&tiny(600)).await.unwrap();
        assert_eq!(d.client.exec(&s.id, &ExecRequest::shell("true")).await.unwrap().exit_code, 0, "the hostile agent starts well");
        let t = std::time::Instant::now();
        let e = d.client.exec(&s.id, &ExecRequest::shell(how).timeout(2.0)).await.unwrap_err();
        match &e {
            ClientError::Api { status: 502, code, message } => {
                assert_eq!(code, "sandbox_failed");
                assert!(message.contains(expect) && message.contains("destroyed"), "{how}: {message}");
            }
            other => panic!("{how}: {other:?}"),
        }
        eprintln!("{how}: refused in {:?}: {e}", t.elapsed());
        assert!(matches!(d.client.get_sandbox(&s.id).await, Err(ClientError::Api { status: 404, .. })));
        assert!(store.events(Some(&s.id), 10).unwrap().iter().any(|e| e.kind == "failed"), "{how}: not marked failed");
        assert!(wait_until(Duration::from_secs(5), || th.vmm_processes().is_empty()), "{how}: VMM left running");
    }
    // The daemon is still up and serving.
    assert!(d.client.list_sandboxes().await.unwrap().is_empty());
    drop(d);
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn ci_run_through_the_daemon() {
    let th = TestHome::for_daemon();
    let d = Daemon::start(&th, &[]);
    let repo = tempfile::tempdir().unwrap();
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(repo.path()).status().unwrap().success(), "{cmd}");
    sh("git init -q && echo 'echo built; echo \"tok=$TOK\"; exit 3' > build.sh && git add -A && git -c user.email=a@b -c user.name=a commit -qm i");
    let out = tempfile::tempdir().unwrap();
    let mut c = kiln!(&th);
    c.args(["ci", "run", "--daemon", "--repo"]).arg(repo.path()).args(["--build", "sh build.sh", "--secret", "TOK", "--out"]).arg(out.path());
    c.env("KILN_HOST", d.d.host()).env("TOK", "sekrit-value-1");
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(out.path().join("build/build.log")).unwrap();
    assert_eq!(log, "built\ntok=***\n");
    drop(d);
    th.assert_clean();
}

/// `kiln ci run --daemon` over TCP with a token: the repository is beneath the daemon's
/// `--repo-root`, the cache key goes as a digest, the daemon keeps the outputs under the run's
/// id, and the CLI fetches every file the report names into its own --out, as a local run
/// would have made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn ci_run_over_tcp_fetches_the_outputs_into_out() {
    let th = TestHome::for_daemon();
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("app");
    std::fs::create_dir(&repo).unwrap();
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(&repo).status().unwrap().success(), "{cmd}");
    sh("git init -q && echo lock > Cargo.lock && printf 'echo built; echo \"tok=$TOK\"; mkdir -p dist; echo hi > dist/hello; exit 3\\n' > build.sh \
        && git add -A && git -c user.email=a@b -c user.name=a commit -qm i");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let d = kiln_testkit::Daemon::start(kiln!(&th), &th, &["--listen", &addr, "--repo-root", root.path().to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok()), "{}", d.stderr());
    let o = kiln!(&th).args(["token", "create", "ci"]).output().unwrap();
    let token = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let outs = tempfile::tempdir().unwrap();
    let out = outs.path().join("out");
    let mut c = kiln!(&th);
    c.current_dir(&repo).args(["ci", "run", "--daemon", "--repo", ".", "--setup", "true", "--cache-key", "Cargo.lock", "--build", "sh build.sh"]);
    c.args(["--artifact", "dist/*", "--secret", "TOK", "--out"]).arg(&out);
    c.env("KILN_HOST", format!("http://{addr}")).env("KILN_TOKEN", &token).env("TOK", "sekrit-value-2");
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    // The local out folder: what a local run makes.
    assert_eq!(std::fs::read_to_string(out.join("build/build.log")).unwrap(), "built\ntok=***\n");
    assert_eq!(std::fs::read_to_string(out.join("build/artifacts/dist/hello")).unwrap(), "hi\n");
    assert!(out.join("build/provenance.intoto.json").is_file() && out.join("setup.log").is_file());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["cells"][0]["log"].as_str(), Some(out.join("build/build.log").to_str().unwrap()));
    assert_eq!(report["cache"]["written"], false, "an untrusted run wrote the cache");
    // On the daemon: the run's folder, its report's paths relative to it, its owner recorded.
    let run_id = report["run_id"].as_str().unwrap();
    let kept = th.home.root().join("ci-runs").join(run_id);
    let theirs: serde_json::Value = serde_json::from_slice(&std::fs::read(kept.join("report.json")).unwrap()).unwrap();
    assert_eq!(theirs["cells"][0]["log"].as_str(), Some("build/build.log"));
    let store = Store::open(&th.home.root().join("kiln.db")).unwrap();
    assert_eq!(store.ci_run(run_id).unwrap().unwrap().owner, "ci");
    let events = store.events(None, 1000).unwrap();
    assert!(events.iter().any(|e| e.kind == "ci_done" && e.actor == "ci" && e.detail.starts_with(run_id)), "{events:?}");
    drop(d);
    th.assert_clean();
}

/// Polls the pool until `cond` holds (120 s at most: a refill is a restore).
async fn pool_until(c: &Client, what: &str, cond: impl Fn(&kiln_client::PoolStatus) -> bool) -> kiln_client::PoolStatus {
    for _ in 0..1200 {
        let st = c.pool().await.unwrap();
        if cond(&st) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pool never got to {what}: {:?}", c.pool().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn warm_pool_serves_creates_refills_counts_memory_and_is_set_by_an_admin() {
    let th = TestHome::for_daemon();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    // One sandbox at most, and memory for four tiny ones: the pool counts against memory only.
    let d = Daemon::start(&th, &["--pool", "tiny=2", "--max-sandboxes", "1", "--max-memory", "1024", "--listen", &addr]);
    let c = &d.client;
    let st = pool_until(c, "2 ready", |s| s.pools.first().is_some_and(|p| p.ready == 2)).await;
    assert_eq!((st.pools.len(), st.pools[0].template.as_str(), st.pools[0].size, st.memory_mib), (1, "tiny", 2, 512), "{st:?}");
    assert_eq!(th.vmm_processes().len(), 2, "two pooled VMs");

    // A create takes one: its hostname, clock and environment are the create's.
    let env = [("WHO".to_owned(), "caller".to_owned())].into_iter().collect();
    let s = c.create_sandbox(&CreateSandbox { env, ..tiny(120) }).await.unwrap();
    assert_eq!(s.mode, "pooled");
    let r = c.exec(&s.id, &ExecRequest::shell("hostname; echo $WHO; date +%s")).await.unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(&lines[..2], &[s.id.as_str(), "caller"], "{r:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((lines[2].parse::<i64>().unwrap() - now).abs() <= 2, "{r:?}");

    // Refilled in the background; the sandbox limit counts the caller's one, not the pool.
    pool_until(c, "refilled", |s| s.pools[0].ready == 2).await;
    let e = c.create_sandbox(&tiny(60)).await.unwrap_err();
    assert!(e.to_string().contains("limit is 1"), "{e}");
    let metrics = reqwest_metrics(c).await;
    assert!(metrics.contains("kiln_pool_hits_total 1\n"), "{metrics}");
    assert!(metrics.contains("kiln_pool_ready{template=\"tiny\",cpus=\"1\",memory_mib=\"256\"} 2\n"), "{metrics}");

    // Over the memory limit, the pool waits: 256 live + 3 x 256 pooled = 1024, no fourth.
    let set = |size| vec![kiln_client::PoolTarget { template: "tiny".into(), cpus: None, memory_mib: None, size }];
    c.set_pool(set(4)).await.unwrap();
    let st = pool_until(c, "waiting for memory", |s| s.pools[0].last_error.as_deref().is_some_and(|e| e.contains("waiting for memory"))).await;
    assert_eq!((st.pools[0].ready, st.memory_mib), (3, 768), "{st:?}");

    // Only an admin sets the pool; anyone may look.
    let o = kiln!(&th).args(["token", "create", "dev", "--scope", "trusted"]).output().unwrap();
    let dev = Client::new(Target::Tcp(addr.clone()), Some(String::from_utf8(o.stdout).unwrap().trim().to_owned()));
    assert!(matches!(dev.set_pool(set(0)).await, Err(ClientError::Api { status: 403, .. })));
    assert_eq!(dev.pool().await.unwrap().pools[0].size, 4);

    // Emptied: the pooled VMs are destroyed; the caller's sandbox lives on.
    c.set_pool(Vec::new()).await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || th.vmm_processes().len() == 1), "pooled VMs left: {:?}", th.vmm_processes());
    assert_eq!(c.exec(&s.id, &ExecRequest::shell("echo $WHO")).await.unwrap().stdout, "caller\n");
    drop(d);
    th.assert_clean();
}

