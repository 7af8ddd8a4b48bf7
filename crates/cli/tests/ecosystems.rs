//! The shipped ecosystem templates (`node`, `python`, `go`, `rust`) build the example projects
//! in `examples/` with their own package managers, cold and on a setup-cache hit. Registries
//! are the test's own: an npm registry and a PEP 503 index served on loopback (127.0.0.2, which
//! the guest's NO_PROXY does not cover, so the package managers go through kiln's egress proxy,
//! allowed by `--allow 127.0.0.2:PORT`), a GOPROXY folder and vendored crates in the examples.
//! No test reaches a public registry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use kiln_testkit::TestHome;

mod registries;
use registries::fixture;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}


/// The example committed into a git repository of its own.
fn example_repo(name: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let sh = |cmd: &str, dir: &Path| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(dir).status().unwrap().success(), "{cmd}");
    sh(&format!("cp -a {}/. .", root().join("examples").join(name).display()), t.path());
    sh("git init -q && git add -A && git -c user.email=ci@example.com -c user.name=ci commit -qm example", t.path());
    t
}

/// `kiln ci run` of an example twice (a trusted run that writes the setup cache, then one that
/// hits it); both must pass and produce `dist/label.txt`.
fn build_twice(template: &str, example: &str, extra: &[String], setup: &str, key: &str, build: &str) -> (f64, f64) {
    let th = TestHome::new();
    let repo = example_repo(example);
    let mut times = Vec::new();
    for (round, trusted) in [(1, true), (2, false)] {
        let out = tempfile::tempdir().unwrap();
        let mut c = kiln_testkit::kiln!(&th);
        c.args(["ci", "run", "--repo"]).arg(repo.path()).args(["--ref", "HEAD", "--template", template, "--setup", setup, "--cache-key"]);
        c.arg(repo.path().join(key)).args(["--build", build, "--artifact", "dist/*", "--timeout", "1200", "--json", "--out"]).arg(out.path().join("o"));
        c.args(extra);
        if trusted {
            c.arg("--trusted");
        }
        let t0 = std::time::Instant::now();
        let o: Output = c.output().unwrap();
        times.push(t0.elapsed().as_secs_f64());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{template} round {round}: {stderr}");
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["cache"]["hit"], round == 2, "{template} round {round}: {r}");
        let label = std::fs::read_to_string(out.path().join("o/build/artifacts/dist/label.txt")).unwrap_or_else(|e| panic!("{template}: {e}: {stderr}"));
        assert_eq!(label, "build-000007\n");
    }
    eprintln!("{template}: cold {:.1}s, cache hit {:.1}s", times[0], times[1]);
    th.assert_clean();
    (times[0], times[1])
}

#[test]
#[ignore = "boots VMs and builds the node template: run by `make test`"]
fn node_example_through_a_loopback_npm_registry() {
    let (port, hits) = kiln_testkit::http::serve(registries::npm);
    let extra = [format!("--allow=127.0.0.2:{port}")];
    let setup = format!("npm ci --registry=http://127.0.0.2:{port}/ --no-audit --no-fund");
    build_twice("node", "node-app", &extra, &setup, "package-lock.json", "npm test && npm run build");
    assert!(hits.load(Ordering::SeqCst) >= 1, "npm never asked the registry");
}

#[test]
#[ignore = "boots VMs and builds the python template: run by `make test`"]
fn python_example_through_a_loopback_package_index() {
    let (port, hits) = kiln_testkit::http::serve(|_| {
        let whl = fixture("pypi/kiln_pad-1.0.0-py3-none-any.whl");
        let page = "<!DOCTYPE html><html><body>\n<a href=\"/files/kiln_pad-1.0.0-py3-none-any.whl#sha256=db023c72e705fd31c3e501b8af5fbd4e81f6a9a0726af0cbbe1af2e0b7721122\">kiln_pad-1.0.0-py3-none-any.whl</a>\n</body></html>\n";
        HashMap::from([("/simple/kiln-pad".to_owned(), page.as_bytes().to_vec()), ("/files/kiln_pad-1.0.0-py3-none-any.whl".to_owned(), whl)])
    });
    let extra = [format!("--allow=127.0.0.2:{port}")];
    let setup = format!("python3 -m venv /work/venv && /work/venv/bin/pip install --disable-pip-version-check --index-url http://127.0.0.2:{port}/simple/ --trusted-host 127.0.0.2 --require-hashes -r requirements.txt");
    build_twice(
        "python",
        "python-app",
        &extra,
        &setup,
        "requirements.txt",
        "/work/venv/bin/python -m unittest -v && /work/venv/bin/python build.py",
    );
    assert!(hits.load(Ordering::SeqCst) >= 2, "pip never asked the index");
}

#[test]
#[ignore = "boots VMs and builds the go template: run by `make test`"]
fn go_example_through_a_goproxy_folder() {
    let env = "export GOPROXY=file:///work/src/goproxy GOSUMDB=off GOFLAGS=-mod=mod GOCACHE=/work/gocache GOPATH=/work/gopath;";
    build_twice("go", "go-app", &[], &format!("{env} go mod download && go build ./..."), "go.sum", &format!("{env} go test ./... && go run ."));
}

#[test]
#[ignore = "boots VMs and builds the rust template: run by `make test`"]
fn rust_example_with_vendored_crates() {
    let env = "export CARGO_TARGET_DIR=/work/target CARGO_HOME=/work/cargo;";
    build_twice(
        "rust",
        "rust-app",
        &[],
        &format!("{env} cargo fetch --locked && cargo build --release --locked --offline"),
        "Cargo.lock",
        &format!("{env} cargo test --locked --offline && cargo run --release --locked --offline"),
    );
}
