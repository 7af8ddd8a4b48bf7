//! `--egress-upstream`: builds and sandboxes behind a corporate proxy. The "corporate proxy" is
//! a small CONNECT proxy on the host's loopback (`kiln_testkit::upstream`), which records what
//! it is asked and tunnels any name to 127.0.0.1 at the port asked for; the mirror names end in
//! `.invalid`, so nothing but that proxy could have reached them (the host cannot resolve them).

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use kiln_client::{Client, CreateSandbox, ExecRequest, Target};
use kiln_testkit::upstream::{Mirror, UpstreamProxy};
use kiln_testkit::{kiln, wait_until, TestHome};

/// base64 of `builder:s3cret-pw`, what the upstream must be sent.
const BASIC: &str = "Basic YnVpbGRlcjpzM2NyZXQtcHc=";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A committed git repository with these files.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (p, c) in files {
        std::fs::write(t.path().join(p), c).unwrap();
    }
    let ok = Command::new("sh").arg("-c").arg("git init -q && git add -A && git -c user.email=ci@example.com -c user.name=ci commit -qm init").current_dir(t.path()).status().unwrap();
    assert!(ok.success());
    t
}

fn kiln_ci(th: &TestHome, args: &[&str], env: &[(&str, &str)]) -> Output {
    kiln!(th).args(["ci", "run"]).args(args).env_remove("HTTPS_PROXY").env_remove("https_proxy").envs(env.iter().copied()).output().expect("run kiln")
}

/// A bad upstream URL, from the flag or from HTTPS_PROXY, is a usage error naming where it
/// came from and the form expected, before anything boots; `none` turns HTTPS_PROXY off.
#[test]
fn a_bad_upstream_is_refused_before_any_vm() {
    let th = TestHome::new();
    let src = repo(&[("README", "x\n")]);
    let path = src.path().to_str().unwrap();
    let o = kiln_ci(&th, &["--repo", path, "--build", "true", "--egress-upstream", "socks5://builder:s3cret-pw@proxy.corp.invalid:1080"], &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--egress-upstream socks5://***@proxy.corp.invalid:1080: only http:// upstream proxies are supported"), "{err}");
    assert!(err.contains("(expected http://[USER:PASSWORD@]HOST[:PORT])") && !err.contains("s3cret"), "{err}");
    assert!(!err.contains("VM") && !err.contains("restor"), "{err}");

    let o = kiln_ci(&th, &["--repo", path, "--build", "true"], &[("HTTPS_PROXY", "proxy.corp.invalid:3128")]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("HTTPS_PROXY=proxy.corp.invalid:3128 (the default of --egress-upstream): no scheme"), "{err}");

    let o = kiln!(&th).args(["serve", "--socket"]).arg(th.home.root().join("never.sock")).args(["--egress-upstream", "https://proxy.corp.invalid:3128"]).output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--egress-upstream https://proxy.corp.invalid:3128: only http://"), "{err}");
    assert!(!th.home.root().join("never.sock").exists());

    let help = text(&kiln!().args(["ci", "run", "--help"]).output().unwrap().stdout);
    assert!(help.contains("--egress-upstream <URL>") && help.contains("$HTTPS_PROXY"), "{help}");
}

/// A CI build behind the upstream: a plain-HTTP fetch and a CONNECT tunnel reach a mirror
/// named `build-mirror.invalid` through it, with the credentials of the URL; a name not
/// allowed never reaches it; a repository URL is cloned through it too. The report says so,
/// and never holds the password.
#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn ci_build_reaches_a_mirror_through_the_upstream_proxy() {
    let th = TestHome::for_daemon();
    let up = UpstreamProxy::start();
    let mirror = Mirror::start();
    let port = mirror.port();
    let upstream = format!("http://builder:s3cret-pw@{}", up.addr());
    let build = format!(
        "set +e\n\
         curl -sS -f -m 30 http://build-mirror.invalid:{port}/plain\n\
         curl -sS -f -m 30 -p http://build-mirror.invalid:{port}/tunnel\n\
         curl -sS -m 30 http://other-mirror.invalid:{port}/denied; echo \"denied rc=$?\"\n"
    );
    let src = repo(&[("build.sh", &build)]);
    let out = tempfile::tempdir().unwrap();
    let allow = format!("build-mirror.invalid:{port}");
    let o = kiln_ci(&th, &["--repo", src.path().to_str().unwrap(), "--build", "sh build.sh", "--egress-upstream", &upstream, "--allow", &allow, "--timeout", "300", "--out", out.path().to_str().unwrap(), "--json"], &[]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("egress goes through the upstream proxy http://builder:***@{}", up.addr())), "{stderr}");
    let log = std::fs::read_to_string(out.path().join("build/build.log")).unwrap();
    assert!(log.contains("mirror says /plain\n") && log.contains("mirror says /tunnel\n"), "{log}");
    assert!(log.contains(&format!("kiln egress: other-mirror.invalid:{port} is not allowed (not in the allowlist)")), "{log}");

    let connect = format!("CONNECT build-mirror.invalid:{port} HTTP/1.1");
    assert_eq!(up.seen(), vec![(connect.clone(), Some(BASIC.to_owned())); 2]);
    assert_eq!(mirror.hits(), 2);
    let heads = mirror.heads();
    assert!(heads.iter().any(|h| h.starts_with(&format!("GET /plain HTTP/1.1\r\nHost: build-mirror.invalid:{port}\r\n"))), "{heads:?}");

    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let attempts = r["egress"]["attempts"].as_array().unwrap();
    let via = up.addr();
    assert_eq!(attempts.iter().filter(|a| a["host"] == "build-mirror.invalid" && a["allowed"] == true && a["via"] == via.as_str()).count(), 2, "{attempts:?}");
    assert!(attempts.iter().any(|a| a["host"] == "other-mirror.invalid" && a["allowed"] == false && a["via"].is_null()), "{attempts:?}");
    let mut everything = stderr + &text(&o.stdout);
    for f in ["report.json", "build/build.log"] {
        everything.push_str(&std::fs::read_to_string(out.path().join(f)).unwrap_or_default());
    }
    assert!(!everything.contains("s3cret") && !everything.contains(&BASIC[6..]), "the upstream's password leaked");

    // A repository URL on a mirror the host cannot resolve: cloned by the VM through the upstream.
    let bare = tempfile::tempdir().unwrap();
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).status().unwrap().success(), "{cmd}");
    sh(&format!("git clone -q --bare {} {}/r.git && git -C {}/r.git update-server-info", src.path().display(), bare.path().display(), bare.path().display()));
    let git_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", &git_port.to_string(), "--bind", "127.0.0.1", "--directory"])
        .arg(bare.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", git_port)).is_ok()));
    let out2 = tempfile::tempdir().unwrap();
    let url = format!("http://git-mirror.invalid:{git_port}/r.git");
    let o = kiln_ci(&th, &["--repo", &url, "--build", "head -1 build.sh", "--egress-upstream", &upstream, "--timeout", "300", "--out", out2.path().to_str().unwrap(), "--json"], &[]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(out2.path().join("build/build.log")).unwrap(), "set +e\n");
    assert!(up.seen().iter().any(|(l, _)| *l == format!("CONNECT git-mirror.invalid:{git_port} HTTP/1.1")), "{:?}", up.seen());
    th.assert_clean();
}

/// `kiln serve --egress-upstream`: a sandbox's egress, and a CI run's through the API, go
/// through the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn daemon_sandboxes_and_ci_runs_go_through_its_upstream() {
    let th = TestHome::for_daemon();
    let up = UpstreamProxy::start();
    let mirror = Mirror::start();
    let port = mirror.port();
    let mut c = kiln!(&th);
    c.env_remove("HTTPS_PROXY").env_remove("https_proxy");
    let d = kiln_testkit::Daemon::start(c, &th, &["--egress-upstream", &format!("http://{}", up.addr())]);
    assert!(d.stderr().contains(&format!("egress goes through the upstream proxy http://{}", up.addr())), "{}", d.stderr());
    let client = Client::new(Target::Unix(d.socket().to_owned()), None);
    let s = client.create_sandbox(&CreateSandbox { template: "tiny".into(), ttl_seconds: Some(300), allow: vec![format!("build-mirror.invalid:{port}")], ..Default::default() }).await.unwrap();
    let mut req = ExecRequest::shell(format!("wget -q -O - http://build-mirror.invalid:{port}/sandbox"));
    req.env.insert("http_proxy".into(), format!("http://{}", kiln_proto::tunnel::GUEST_PROXY_ADDR));
    let r = client.exec(&s.id, &req.timeout(60.0)).await.unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "mirror says /sandbox\n"), "{r:?}");
    client.delete_sandbox(&s.id).await.unwrap();

    let src = repo(&[("README", "x\n")]);
    let out = tempfile::tempdir().unwrap();
    let mut c = kiln!(&th);
    c.args(["ci", "run", "--daemon", "--repo"]).arg(src.path()).args(["--build", &format!("curl -sS -f -m 30 http://build-mirror.invalid:{port}/ci"), "--allow", &format!("build-mirror.invalid:{port}"), "--timeout", "300", "--out"]).arg(out.path());
    c.env("KILN_HOST", d.host()).env_remove("HTTPS_PROXY").env_remove("https_proxy");
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(out.path().join("build/build.log")).unwrap(), "mirror says /ci\n");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert!(report["egress"]["attempts"].as_array().unwrap().iter().all(|a| a["via"] == up.addr().as_str()), "{report}");

    let connect = format!("CONNECT build-mirror.invalid:{port} HTTP/1.1");
    assert_eq!(up.seen(), vec![(connect, None); 2]);
    assert_eq!(mirror.hits(), 2);
    drop(d);
    th.assert_clean();
}
