//! The Python SDK's pytest suite, unit tests and tests against a real daemon with real VMs.

use std::path::Path;
use std::process::Command;

use kiln_testkit::{kiln, Daemon, TestHome};

/// Debian's Python, where `make deps` installs pytest (python3-pytest); a `python3` earlier on
/// `PATH` (pyenv, a virtualenv) may have no pytest.
const PYTHON: &str = "/usr/bin/python3";

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn python_sdk_against_a_real_daemon() {
    let th = TestHome::for_daemon();
    let daemon = Daemon::start(kiln!(&th), &th, &[]);
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python");
    let out = Command::new(PYTHON)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&sdk)
        .env("KILN_TEST_DAEMON", "1")
        .env("KILN_HOST", daemon.host())
        .env("KILN_TEST_TEMPLATE", "tiny")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3 -m pytest (apt-get install python3-pytest)");
    // The README's orchestrator example: builds a C project in a `base` sandbox and exits with
    // the build's exit code.
    let example = Command::new(PYTHON)
        .args(["examples/build_project.py", "base"])
        .current_dir(&sdk)
        .env("KILN_HOST", daemon.host())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the example");
    // Shut the daemon down: SIGTERM, then wait.
    drop(daemon);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pytest failed");
    assert!(stdout.contains("passed") && !stdout.contains("skipped"), "the daemon tests did not run: {stdout}");
    let ex_out = String::from_utf8_lossy(&example.stdout);
    assert_eq!(example.status.code(), Some(0), "{ex_out}\n{}", String::from_utf8_lossy(&example.stderr));
    assert!(ex_out.contains("hello from the microVM"), "{ex_out}");
    th.assert_clean();
}
