//! `kiln run` end to end: the real binary, real VMs, real exit codes.

use std::process::Output;
use std::time::{Duration, Instant};

use kiln_testkit::TestHome;

fn kiln(th: &TestHome, args: &[&str]) -> Output {
    kiln_testkit::kiln!(th).args(args).output().expect("run kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn streams_and_exit_code() {
    let th = TestHome::new();
    let o = kiln(&th, &["run", "--template", "tiny", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");
    assert_eq!(o.status.code(), Some(3));
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn signal_and_not_found_codes() {
    let th = TestHome::new();
    let o = kiln(&th, &["run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(137), "{}", text(&o.stderr));
    let o = kiln(&th, &["run", "--", "no-such-tool", "--x"]);
    assert_eq!(o.status.code(), Some(127));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no-such-tool") && err.contains("template"), "{err}");
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn timeout_exits_124_and_leaves_no_qemu() {
    let th = TestHome::new();
    let t0 = Instant::now();
    let o = kiln(&th, &["run", "--template", "tiny", "--timeout", "2", "--", "sh", "-c", "sleep 100 & while :; do :; done"]);
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(124), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("timed out"), "{}", text(&o.stderr));
    // Boot (~2-3 s under TCG) + 2 s timeout + teardown.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(th.vmm_processes().is_empty());
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn env_workdir_and_stdin() {
    let th = TestHome::new();
    let mut c = kiln_testkit::kiln!(&th);
    c.args(["run", "-i", "-e", "A=1", "-e", "B=x y", "-w", "/tmp", "--", "sh", "-c", "echo $A $B; pwd; wc -l"]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"1\n2\n3\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout).split_whitespace().collect::<Vec<_>>(), ["1", "x", "y", "/tmp", "3"]);
    assert_eq!(o.status.code(), Some(0));
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn bad_input_gets_one_line_and_code_2() {
    let th = TestHome::new();
    for args in [
        &["run", "--template", "nope", "--", "true"][..],
        &["run", "--env", "NOEQUALS", "--", "true"][..],
        &["run", "--timeout", "-1", "--", "true"][..],
        &["run", "--cpus", "0", "--", "true"][..],
        &["run", "--memory", "1", "--", "true"][..],
        &["run", "--copy", "/definitely/missing:/x", "--", "true"][..],
        &["run", "--accel", "xen", "--", "true"][..],
        &["run", "--bogus-flag", "--", "true"][..],
    ] {
        let o = kiln(&th, args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?}");
        assert!(err.lines().next().unwrap().len() > 10, "{args:?}: {err}");
    }
    let o = kiln(&th, &["run", "--template", "nope", "--", "true"]);
    let err = text(&o.stderr);
    assert!(err.contains("unknown template 'nope'") && err.contains("tiny"), "{err}");
    th.assert_clean();
}

#[test]
fn every_command_has_help() {
    let th = TestHome::new();
    for args in [&["--help"][..], &["run", "--help"], &["template", "--help"], &["template", "build", "--help"], &["template", "ls", "--help"], &["doctor", "--help"]] {
        let o = kiln(&th, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(text(&o.stdout).contains("Usage:"), "{args:?}");
    }
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn template_ls_shows_built_templates() {
    let th = TestHome::new();
    let o = kiln(&th, &["template", "ls"]);
    let out = text(&o.stdout);
    let tiny = out.lines().find(|l| l.starts_with("tiny ")).unwrap_or_else(|| panic!("{out}"));
    assert!(tiny.contains("MiB"), "{tiny}");
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn base_template_has_git() {
    let th = TestHome::new();
    let o = kiln(&th, &["run", "--template", "base", "--", "git", "--version"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("git version"), "{}", text(&o.stdout));
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn restores_by_default_with_a_new_boot_id_each_time() {
    let th = TestHome::new();
    let run = || kiln(&th, &["run", "-v", "--template", "tiny", "--", "cat", "/proc/sys/kernel/random/boot_id"]);
    let (a, b) = (run(), run());
    for o in [&a, &b] {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains("by restore from snapshot tiny-"), "{}", text(&o.stderr));
    }
    assert_eq!(text(&a.stdout).trim().len(), 36);
    assert_ne!(text(&a.stdout), text(&b.stdout));
    let cold = kiln(&th, &["run", "-v", "--cold", "--", "true"]);
    assert!(text(&cold.stderr).contains("by cold boot"), "{}", text(&cold.stderr));
    th.assert_clean();
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn bench_reports_ratios_as_json() {
    let th = TestHome::new();
    let o = kiln(&th, &["bench", "create", "-n", "3", "--cold", "1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let ratio = v["ratio_restore_to_cold_p50"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{v}");
    assert_eq!(v["restore"]["n"], 3);
    let o = kiln(&th, &["bench", "exec", "-n", "20", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["guest_exec"]["p50_ms"].as_f64().unwrap() > 0.0);
    let o = kiln(&th, &["bench", "fork", "-n", "2", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["clone_private_guest_mib"].as_array().unwrap().len(), 2);
    th.assert_clean();
}
