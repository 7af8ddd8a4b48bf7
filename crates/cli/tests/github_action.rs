//! kiln's GitHub Action (`action.yml` and `action/run.sh`): every input reaches an existing
//! `kiln ci run` flag, and the step, run with the variables a GitHub runner sets, drives a
//! real `kiln ci run` (real VMs), writes the job summary and sets its outputs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testkit::github::Action;
use kiln_testkit::TestHome;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `(helper, INPUT_VAR, --flag)` of each mapping line of the script (`one INPUT_REPO --repo`).
fn mappings() -> Vec<(String, String, String)> {
    let script = std::fs::read_to_string(root().join("action/run.sh")).unwrap();
    script
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w[..] {
                [helper @ ("one" | "words" | "lines" | "switch"), var, flag] if var.starts_with("INPUT_") => Some((helper.to_owned(), var.to_owned(), flag.to_owned())),
                _ => None,
            }
        })
        .collect()
}

/// The long flags `kiln ci run --help` lists.
fn ci_run_flags() -> BTreeSet<String> {
    let o = kiln_testkit::kiln!().args(["ci", "run", "--help"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned())
        .collect()
}

#[test]
fn every_input_maps_to_an_existing_flag() {
    let action = Action::load(&root());
    let flags = ci_run_flags();
    assert!(flags.contains("--rebuild") && flags.contains("--step-summary"), "{flags:?}");
    let (env, run) = action.step();
    assert!(run.contains("$GITHUB_ACTION_PATH/action/run.sh"), "{run}");
    let mapped = mappings();
    let script = std::fs::read_to_string(root().join("action/run.sh")).unwrap();
    for (name, _) in action.inputs() {
        // Each input is handed over in its own variable, never pasted into the script.
        let var = format!("INPUT_{}", name.to_uppercase().replace('-', "_"));
        assert_eq!(env.get(&var).map(String::as_str), Some(format!("${{{{ inputs.{name} }}}}").as_str()), "input {name}");
        match name.as_str() {
            // Not flags of their own: the out folder (with --step-summary) and the binary.
            "out" => assert!(script.contains("args+=(--out \"$out\")") && script.contains("INPUT_OUT"), "out"),
            "kiln" => assert!(script.contains("INPUT_KILN")),
            _ => {
                let (_, _, flag) = mapped.iter().find(|(_, v, _)| *v == var).unwrap_or_else(|| panic!("input {name} ({var}) maps to no flag"));
                assert!(flags.contains(flag), "input {name} maps to {flag}, which kiln ci run does not have");
            }
        }
    }
    assert_eq!(env.len(), action.inputs().len(), "one variable per input, nothing else: {env:?}");
    for (_, var, _) in &mapped {
        assert!(env.contains_key(var), "the script reads {var}, which no input sets");
    }
    // The script never evaluates an input.
    let code = script.lines().filter(|l| !l.trim_start().starts_with('#'));
    assert!(!code.clone().any(|l| l.split_whitespace().any(|w| w == "eval")) && code.clone().any(|l| l.trim() == "set -f"));
    for (name, value) in action.outputs() {
        assert_eq!(value, format!("${{{{ steps.run.outputs.{name} }}}}"));
        assert!(script.contains(&format!("echo \"{name}=")), "the script sets output {name}");
    }
}

/// A workspace like `actions/checkout` leaves: examples/hello-c as a git repository.
fn checkout() -> tempfile::TempDir {
    let w = tempfile::tempdir().unwrap();
    let sh = |c: &str| assert!(Command::new("sh").arg("-c").arg(c).current_dir(w.path()).status().unwrap().success(), "{c}");
    sh(&format!("cp -a {}/. .", root().join("examples/hello-c").display()));
    sh("git init -q && git add -A && git -c user.email=a@b -c user.name=a commit -qm pr");
    w
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn the_action_runs_a_real_build() {
    let th = TestHome::for_daemon();
    let action = Action::load(&root());
    let bin = Path::new(env!("CARGO_BIN_EXE_kiln")).parent().unwrap().to_owned();
    let env: Vec<(&str, String)> = th.env().into_iter().map(|(k, v)| (k, v.display().to_string())).chain([("DEPLOY_TOKEN", "tok-from-the-workflow".to_owned())]).collect();
    let w = checkout();
    let with = [
        ("build", "make test && mkdir -p dist && cp hello dist/hello-$V && printf %s \"$DEPLOY_TOKEN\" | wc -c > dist/token-length-$V"),
        ("matrix", "V=1,2\n"),
        ("artifacts", "dist/*"),
        ("secrets", "DEPLOY_TOKEN"),
        ("rebuild", "2"),
        ("require-reproducible", "true"),
        ("timeout", "300"),
    ];
    let r = action.run(w.path(), &with, &env, &bin);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.outputs.get("exit-code").map(String::as_str), Some("0"), "{:?}", r.outputs);
    let report_path = r.runner_temp.join("kiln-ci-out/report.json");
    assert_eq!(r.outputs.get("report"), Some(&report_path.display().to_string()));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    // The ref defaulted to github.sha: the checkout's commit.
    let sha = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(w.path()).output().unwrap().stdout;
    assert_eq!(report["commit"].as_str(), Some(String::from_utf8_lossy(&sha).trim()));
    for cell in report["cells"].as_array().unwrap() {
        assert_eq!(cell["reproducible"], true, "{cell:#}");
        let v = &cell["env"]["V"].as_str().unwrap().to_owned();
        let length = Path::new(cell["log"].as_str().unwrap()).parent().unwrap().join(format!("artifacts/dist/token-length-{v}"));
        assert_eq!(std::fs::read_to_string(length).unwrap().trim(), "21", "the secret reached the build");
    }
    assert!(r.summary.contains("| Cell | Exit | Time | Artifacts | Reproducible |"), "{}", r.summary);
    assert!(r.summary.contains("| V=1 | 0 |") && r.summary.contains("yes (2 builds)"), "{}", r.summary);
    assert!(r.summary.contains("Egress: 0 attempt(s), 0 denied"), "{}", r.summary);
    for text in [&r.summary, &r.stdout, &r.stderr, &std::fs::read_to_string(&report_path).unwrap()] {
        assert!(!text.contains("tok-from-the-workflow"), "the secret leaked");
    }

    // A failing build: the step fails with the build's exit code, and says so in its outputs.
    let w = checkout();
    let r = action.run(w.path(), &[("build", "echo failing on purpose; exit 7"), ("allow", "blocked.invalid:443")], &env, &bin);
    assert_eq!(r.code, Some(7), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.outputs.get("exit-code").map(String::as_str), Some("7"));
    assert!(r.summary.contains("| default | 7 |") && r.summary.contains("Exit code: 7"), "{}", r.summary);

    // A bad input: exit 2 and a GitHub error annotation, nothing run.
    let r = action.run(w.path(), &[("build", "true"), ("trusted", "yes")], &env, &bin);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("::error::kiln action: the input 'trusted': expected true or false, got 'yes'"), "{}", r.stderr);
    th.assert_clean();
}
