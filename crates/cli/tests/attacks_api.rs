//! The attack suite, API side: a real `kiln serve` listening on TCP, and bearer tokens made with
//! `kiln token create` (default scope: untrusted) trying to reach the host, or each other,
//! through it. Each test is named for the attack and asserts the host is unchanged.
//! (The refusals need no VM: their daemons run with KILN_CONFINE=off, as they never start one;
//! the attack that needs a sandbox is marked like the other VM tests.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http_body_util::BodyExt;
use kiln_client::{Client, ClientError, CreateSandbox, ExecRequest, Target};
use kiln_daemon::store::Store;
use kiln_testkit::{kiln, wait_until, TestHome};

/// A `kiln serve` of `th` on its unix socket and on a free loopback port; stopped when dropped.
struct TcpDaemon {
    _d: kiln_testkit::Daemon,
    addr: String,
}

impl TcpDaemon {
    /// `vm`: whether the test starts VMs (then the daemon confines them, as always).
    fn start(th: &TestHome, extra: &[&str], vm: bool) -> TcpDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut c = kiln!(th);
        if !vm {
            c.env("KILN_CONFINE", "off");
        }
        let mut args = vec!["--listen", addr.as_str()];
        args.extend_from_slice(extra);
        let d = kiln_testkit::Daemon::start(c, th, &args);
        let up = wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok());
        assert!(up, "no TCP listener on {addr}; its stderr:\n{}", d.stderr());
        TcpDaemon { _d: d, addr }
    }

    /// A client with this token.
    fn client(&self, token: &str) -> Client {
        Client::new(Target::Tcp(self.addr.clone()), Some(token.to_owned()))
    }
}

/// `kiln token create NAME [--scope S]` in `th`'s home: the secret.
fn token(th: &TestHome, name: &str, scope: Option<&str>) -> String {
    let mut c = kiln!(th);
    c.args(["token", "create", name]);
    if let Some(s) = scope {
        c.args(["--scope", s]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

/// Every path below `dir` (links not followed), to show nothing was made.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        v.push(e.path());
        if e.file_type().unwrap().is_dir() {
            v.extend(tree(&e.path()));
        }
    }
    v.sort();
    v
}

/// The status and message of a refusal (panics on success).
fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, message, .. }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn ci_request(fields: serde_json::Value) -> kiln_client::CiRunRequest {
    let mut body = serde_json::json!({ "repo": "https://example.com/r.git", "build": "true" });
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    serde_json::from_value(body).unwrap()
}

/// The token names a template file of its own (whose commands would run as root at build
/// time): 400, telling it to name a template, and nothing is built or written anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_token_template_given_as_a_path_builds_nothing() {
    let th = TestHome::for_daemon();
    let d = TcpDaemon::start(&th, &[], false);
    let c = d.client(&token(&th, "pr-bot", None));
    let evil = tempfile::tempdir().unwrap();
    let file = evil.path().join("evil.toml");
    std::fs::write(&file, "run = [\"touch /kiln-template-ran\"]\n[rootfs]\nkind = \"busybox\"\nsize_mib = 64\n").unwrap();
    let (templates, store) = (tree(&th.home.templates()), tree(&th.home.store()));
    let path = file.display().to_string();
    for template in [path.as_str(), "evil.toml", "../../tmp/evil", "./evil"] {
        let (status, message) = refusal(c.create_sandbox(&CreateSandbox { template: template.into(), ..Default::default() }).await);
        assert_eq!(status, 400, "{template}: {message}");
        assert!(message.contains("name a template") && message.contains("kiln template build"), "{template}: {message}");
        let (status, message) = refusal(c.ci_run(&ci_request(serde_json::json!({ "template": template }))).await);
        assert_eq!(status, 400, "{template}: {message}");
        assert!(message.contains("name a template"), "{template}: {message}");
    }
    // Nothing was built: no template record, no image in the store, nothing beside the file,
    // no run folder, and the file's command never ran.
    assert_eq!(tree(&th.home.templates()), templates);
    assert!(!th.home.templates().join("evil.json").exists());
    assert_eq!(tree(&th.home.store()), store);
    assert_eq!(tree(evil.path()), [file]);
    assert!(!th.home.root().join("ci-runs").exists());
    assert!(!Path::new("/kiln-template-ran").exists());
    // The token was made untrusted by default, and says so.
    let o = kiln!(&th).args(["token", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(listing.lines().any(|l| l.split_whitespace().take(2).eq(["pr-bot", "untrusted"])), "{listing}");
}

/// An untrusted token asks for a trusted run (one that writes the setup cache every later run
/// of the repository starts from): 403, naming the scope it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_token_trusted_ci_run_is_forbidden() {
    let th = TestHome::for_daemon();
    let d = TcpDaemon::start(&th, &[], false);
    let c = d.client(&token(&th, "pr-bot", None));
    let (status, message) = refusal(c.ci_run(&ci_request(serde_json::json!({ "trusted": true, "setup": "true" }))).await);
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("trusted scope") && message.contains("--scope trusted"), "{message}");
    assert!(!th.home.root().join("ci-runs").exists());
    let events = Store::open(&th.home.root().join("kiln.db")).unwrap().events(None, 100).unwrap();
    assert!(events.iter().any(|e| e.kind == "denied" && e.actor == "pr-bot"), "{events:?}");
}

/// The token names host paths in a CI run: a repository outside the daemon's repository root
/// (directly, through a link planted beneath the root, or by a path that does not exist), an
/// out folder, cache-key files. Each is a 4xx, and nothing is made: not the out folder, not a
/// run folder of the daemon's. `kiln ci run --daemon` over TCP says the daemon refused (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_token_host_paths_in_a_ci_run_are_refused() {
    let th = TestHome::for_daemon();
    let places = tempfile::tempdir().unwrap();
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(places.path()).status().unwrap().success(), "{cmd}");
    sh("mkdir root && git init -q root/allowed && git init -q secret-repo && ln -s ../secret-repo root/planted");
    let root = places.path().join("root");
    let d = TcpDaemon::start(&th, &["--repo-root", root.to_str().unwrap()], false);
    let secret = token(&th, "pr-bot", None);
    let c = d.client(&secret);
    let outside = places.path().join("secret-repo").display().to_string();
    let out = places.path().join("out");
    for fields in [
        serde_json::json!({ "repo": outside }),
        serde_json::json!({ "repo": root.join("planted").display().to_string() }),
        serde_json::json!({ "repo": root.join("allowed/../../secret-repo").display().to_string() }),
        serde_json::json!({ "repo": root.join("nothing-here").display().to_string() }),
        serde_json::json!({ "repo": "/root" }),
        serde_json::json!({ "out": out.display().to_string() }),
        serde_json::json!({ "cache_keys": ["/etc/shadow"] }),
        serde_json::json!({ "cache_key_digests": ["/etc/shadow"] }),
    ] {
        let (status, message) = refusal(c.ci_run(&ci_request(fields.clone())).await);
        assert!((400..500).contains(&status), "{fields}: {status} {message}");
        assert!(!message.contains("No such file"), "{fields}: {message}");
    }
    assert!(!out.exists(), "the out folder was made");
    assert!(!th.home.root().join("ci-runs").exists());
    // The CLI over TCP: the refusal in the daemon's words, as bad input.
    let o = kiln!(&th)
        .args(["ci", "run", "--daemon", "--repo", &outside, "--build", "true", "--out"])
        .arg(places.path().join("cli-out"))
        .env("KILN_HOST", format!("http://{}", d.addr))
        .env("KILN_TOKEN", &secret)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the daemon refused the run") && stderr.contains("repository roots"), "{stderr}");
    assert!(!th.home.root().join("ci-runs").exists());
}

/// A token goes after another token's sandbox by its id: every route answers 404, as for a
/// sandbox that does not exist, and the listing does not show it; the owner and an admin
/// still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn attack_token_another_tokens_sandbox_is_404() {
    let th = TestHome::for_daemon();
    let d = TcpDaemon::start(&th, &[], true);
    let (alice, mallory, admin) = (d.client(&token(&th, "alice", None)), d.client(&token(&th, "mallory", None)), d.client(&token(&th, "ops", Some("admin"))));
    let s = alice.create_sandbox(&CreateSandbox { template: "tiny".into(), ttl_seconds: Some(300), forkable: true, ..Default::default() }).await.unwrap();
    alice.write_file(&s.id, "/root/secret", 0o600, std::io::Cursor::new(b"alice's".to_vec())).await.unwrap();
    let id = s.id.as_str();
    let mut sink = Vec::new();
    let egress = |c: &Client| {
        let c = c.clone();
        let uri = format!("/v1/sandboxes/{id}/egress");
        async move { c.send(hyper::Method::GET, &uri, http_body_util::Empty::new().map_err(|n| match n {}).boxed(), "application/json").await.map(drop) }
    };
    let attempts: Vec<(&str, Result<(), ClientError>)> = vec![
        ("get", mallory.get_sandbox(id).await.map(drop)),
        ("exec", mallory.exec(id, &ExecRequest::shell("cat /root/secret")).await.map(drop)),
        ("read", mallory.read_file(id, "/root/secret", &mut sink).await.map(drop)),
        ("write", mallory.write_file(id, "/root/secret", 0o644, std::io::Cursor::new(b"mallory's".to_vec())).await),
        ("list", mallory.list_files(id, "/root").await.map(drop)),
        ("stat", mallory.stat(id, "/root/secret").await.map(drop)),
        ("mkdir", mallory.mkdir(id, "/root/m", 0o755).await),
        ("remove", mallory.remove(id, "/root/secret", false).await),
        ("fork", mallory.fork(id, 1).await.map(drop)),
        ("extend", mallory.extend(id, 3000).await.map(drop)),
        ("egress", egress(&mallory).await),
        ("delete", mallory.delete_sandbox(id).await),
    ];
    let missing = refusal(mallory.get_sandbox("sbx-000000000000").await).1;
    for (what, r) in attempts {
        let (status, message) = refusal(r);
        assert_eq!(status, 404, "{what}: {message}");
        assert_eq!(message.replace(id, "ID"), missing.replace("sbx-000000000000", "ID"), "{what}");
    }
    assert!(sink.is_empty());
    assert!(mallory.list_sandboxes().await.unwrap().is_empty());
    // The owner and an admin still reach it, unchanged.
    assert_eq!(alice.list_sandboxes().await.unwrap().len(), 1);
    assert_eq!(admin.list_sandboxes().await.unwrap().len(), 1);
    let r = admin.exec(id, &ExecRequest::shell("cat /root/secret; ls /root")).await.unwrap();
    assert_eq!(r.stdout, "alice'ssecret\n");
    egress(&alice).await.unwrap();
    // The audit log names each caller.
    let events = Store::open(&th.home.root().join("kiln.db")).unwrap().events(Some(id), 100).unwrap();
    let actors: Vec<(&str, &str)> = events.iter().map(|e| (e.kind.as_str(), e.actor.as_str())).collect();
    assert!(actors.contains(&("created", "alice")) && actors.contains(&("files", "alice")) && actors.contains(&("exec", "ops")), "{actors:?}");
    assert!(!actors.iter().any(|(_, a)| *a == "mallory"), "{actors:?}");
    alice.delete_sandbox(id).await.unwrap();
    drop(d);
    th.assert_clean();
}
