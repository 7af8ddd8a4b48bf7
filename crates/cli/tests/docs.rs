//! The documentation runs: every console block of the README and `docs/*.md` that types a
//! `kiln` command is run as a user would type it (one bash session per block, in a folder
//! set up with what the text assumes: the repository's examples, a project, a loopback
//! registry with an image where the text names one), each command must succeed unless the
//! next one reads its `$?`, and the output the text shows must appear (`…` stands for
//! anything). A block that types `kiln` and is not run here fails `blocks_are_all_run`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testkit::TestHome;

mod registries;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A fenced block: its file, first line, language and lines.
#[derive(Debug, Clone)]
struct Block {
    file: String,
    line: usize,
    lang: String,
    lines: Vec<String>,
}

fn blocks(file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    for (i, l) in text.lines().enumerate() {
        if let Some(rest) = l.trim_start().strip_prefix("```") {
            match cur.take() {
                Some(b) => out.push(b),
                None => cur = Some(Block { file: file.to_owned(), line: i + 1, lang: rest.trim().to_owned(), lines: Vec::new() }),
            }
        } else if let Some(b) = cur.as_mut() {
            b.lines.push(l.to_owned());
        }
    }
    out
}

/// The documents whose blocks are checked.
fn documents() -> Vec<String> {
    let mut v = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs")).unwrap().flatten().map(|e| format!("docs/{}", e.file_name().to_string_lossy())).filter(|n| n.ends_with(".md")).collect();
    docs.sort();
    v.extend(docs);
    v
}

/// A command and the output the text shows after it.
#[derive(Debug)]
struct Step {
    cmd: String,
    expect: Vec<String>,
}

fn steps(b: &Block) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut continued = false;
    for l in &b.lines {
        if continued {
            let s = out.last_mut().unwrap();
            s.cmd.push('\n');
            s.cmd.push_str(l);
            continued = l.ends_with('\\');
        } else if let Some(cmd) = l.strip_prefix("$ ") {
            out.push(Step { cmd: cmd.to_owned(), expect: Vec::new() });
            continued = cmd.ends_with('\\');
        } else if let Some(s) = out.last_mut() {
            if !l.trim().is_empty() {
                s.expect.push(l.trim().to_owned());
            }
        }
    }
    out
}

fn types_kiln(b: &Block) -> bool {
    b.lang == "console" && steps(b).iter().any(|s| s.cmd.split(|c: char| c.is_whitespace() || c == '(').any(|w| w == "kiln"))
}

/// Whether `line` matches `pattern`, where `…` stands for any run of characters.
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let mut rest = line;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    rest.is_empty() || parts.len() > 1 && parts.last() == Some(&"")
}

/// The blocks this file runs, by (file, first command), with the setup each needs.
const RUN: &[(&str, &str)] = &[
    ("README.md", "export PATH=$PWD/target/release:$PATH"),
    ("README.md", "kiln ci run --repo examples/hello-c --ref HEAD \\"),
    ("README.md", "kiln serve &"),
    ("docs/api.md", "kiln token create pr-bot"),
    ("docs/oci-images.md", "kiln template build ./py3.toml"),
    ("README.md", "export HTTPS_PROXY=http://proxy.corp.invalid:3128"),
];

fn key(b: &Block) -> (String, String) {
    let first = steps(b).first().map(|s| s.cmd.lines().next().unwrap_or("").to_owned()).unwrap_or_default();
    let first = first.split("  #").next().unwrap().trim_end().to_owned();
    (b.file.clone(), first)
}

#[test]
fn blocks_are_all_run() {
    let mut missing = Vec::new();
    for d in documents() {
        for b in blocks(&d).iter().filter(|b| types_kiln(b)) {
            let (f, first) = key(b);
            if !RUN.iter().any(|(rf, rc)| *rf == f && *rc == first) {
                missing.push(format!("{}:{} ({first})", b.file, b.line));
            }
        }
    }
    assert!(missing.is_empty(), "console blocks that type `kiln` and that crates/cli/tests/docs.rs does not run: {missing:?}");
    assert!(matches("kiln: template py3 built in …s: … (… MiB)", "kiln: template py3 built in 3.2s: 0123abcd (1100 MiB)"));
    assert!(matches("Python 3…", "Python 3.11.2") && !matches("Python 3…", "Python 2.7"));
    assert!(matches("124", "124") && !matches("124", "1245"));
}

/// Runs a block in `work` with `env`; panics with the transcript when a step fails.
fn run_block(b: &Block, work: &Path, env: &[(&str, String)], subst: &[(String, String)]) {
    let fix = |s: &str| subst.iter().fold(s.to_owned(), |s, (a, to)| s.replace(a.as_str(), to));
    let steps = steps(b);
    let mut script = String::from("exec 2>&1\n");
    for (i, s) in steps.iter().enumerate() {
        // The markers keep `$?` for a step that reads it.
        script.push_str(&format!("__s=$?; printf '\\n@@doc-step {i}\\n'; (exit $__s)\n{}\n__s=$?; printf '\\n@@doc-status {i} %d\\n' $__s; (exit $__s)\n", fix(&s.cmd)));
    }
    script.push_str("for p in $(jobs -p); do kill $p; done; wait\n");
    let out = Command::new("bash").arg("-c").arg(&script).current_dir(work).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for (i, s) in steps.iter().enumerate() {
        let seg = text.split(&format!("@@doc-step {i}\n")).nth(1).unwrap_or_else(|| panic!("{}:{}: step {i} never ran:\n{text}", b.file, b.line));
        let (seg, status) = seg.split_once(&format!("@@doc-status {i} ")).unwrap_or_else(|| panic!("{}:{}: step {i} did not finish:\n{text}", b.file, b.line));
        let status: i32 = status.lines().next().unwrap().trim().parse().unwrap();
        let read_next = steps.get(i + 1).is_some_and(|n| n.cmd.trim() == "echo $?");
        assert!(status == 0 || read_next, "{}:{}: `{}` exited {status}:\n{seg}", b.file, b.line, s.cmd);
        let lines: Vec<&str> = seg.lines().map(str::trim).collect();
        let mut at = 0;
        for want in &s.expect {
            let want = fix(want);
            match lines[at..].iter().position(|l| matches(&want, l)) {
                Some(p) => at += p + 1,
                None => panic!("{}:{}: `{}` did not print {want:?} (in order); it printed:\n{seg}", b.file, b.line, s.cmd),
            }
        }
    }
}

fn find_block(file: &str, first: &str) -> Block {
    blocks(file).into_iter().find(|b| key(b) == (file.to_owned(), first.to_owned())).unwrap_or_else(|| panic!("{file}: no block starting {first:?}"))
}

/// A working folder like a checkout: `target` and `examples` of the repository, plus `extra`.
fn workdir() -> tempfile::TempDir {
    let w = tempfile::Builder::new().prefix("kdoc-").tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kiln")).parent().unwrap().parent().unwrap().to_owned();
    std::os::unix::fs::symlink(bin_dir, w.path().join("target")).unwrap();
    std::os::unix::fs::symlink(root().join("examples"), w.path().join("examples")).unwrap();
    w
}

fn env_for(th: &TestHome) -> Vec<(&'static str, String)> {
    let bin = Path::new(env!("CARGO_BIN_EXE_kiln")).parent().unwrap().display().to_string();
    let mut env: Vec<(&'static str, String)> = th.env().into_iter().map(|(k, v)| (k, v.display().to_string())).collect();
    env.push(("PATH", format!("{bin}:{}", std::env::var("PATH").unwrap_or_default())));
    env
}

#[test]
#[ignore = "boots VMs: run by `make test`"]
fn readme_using_it() {
    let th = TestHome::for_daemon();
    let w = workdir();
    // The project the text copies in.
    let p = w.path().join("myproject");
    std::fs::create_dir(&p).unwrap();
    for e in std::fs::read_dir(root().join("examples/hello-c")).unwrap().flatten() {
        std::fs::copy(e.path(), p.join(e.file_name())).unwrap();
    }
    run_block(&find_block("README.md", RUN[0].1), w.path(), &env_for(&th), &[]);
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs: run by `make test`"]
fn readme_ci_and_verify() {
    let th = TestHome::for_daemon();
    let w = workdir();
    run_block(&find_block("README.md", RUN[1].1), w.path(), &env_for(&th), &[]);
    assert!(w.path().join("ci-out/V=2/artifacts/dist/hello-2").is_file());
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs: run by `make test`"]
fn readme_daemon_and_api_tokens() {
    let th = TestHome::for_daemon();
    let w = workdir();
    std::fs::write(w.path().join("build.sh"), "set -e\necho building\n").unwrap();
    run_block(&find_block("README.md", RUN[2].1), w.path(), &env_for(&th), &[]);
    run_block(&find_block("docs/api.md", RUN[3].1), w.path(), &env_for(&th), &[]);
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs; needs docker-registry, umoci, skopeo and mmdebstrap (make test installs them)"]
fn oci_images_doc_with_a_loopback_registry() {
    use kiln_testkit::oci::{debian_userland_tar, ImageLayout, LocalRegistry};
    let th = TestHome::for_daemon();
    let w = workdir();
    let reg = LocalRegistry::start();
    let img = ImageLayout::new("3");
    img.raw_layer(&std::fs::read(debian_userland_tar(&["git", "ca-certificates", "python3"])).unwrap());
    let reference = img.push(&reg, "ci/python:3");
    // The CA the text names: any certificate will do.
    let ca = w.path().join("corp-root.crt");
    std::fs::write(&ca, kiln_testkit::oci::host_certificate()).unwrap();
    let subst = vec![
        ("registry.example.test/ci/python:3".to_owned(), reference),
        ("/usr/local/share/ca-certificates/corp-root.crt".to_owned(), ca.display().to_string()),
        // Its own name per run: template records live in the shared home.
        ("py3".to_owned(), format!("py3-{}", std::process::id())),
    ];
    let fix = |s: &str| subst.iter().fold(s.to_owned(), |s, (a, to)| s.replace(a.as_str(), to));
    let toml = blocks("docs/oci-images.md").into_iter().find(|b| b.lang == "toml").expect("the doc's template");
    assert!(toml.lines[0].contains("py3.toml"), "{:?}", toml.lines[0]);
    std::fs::write(w.path().join(fix("py3.toml")), fix(&toml.lines.join("\n"))).unwrap();
    // The repository `kiln ci run --repo .` builds: the working folder, with a test.
    std::fs::write(w.path().join("test_doc.py"), "import unittest\nclass T(unittest.TestCase):\n    def test_it(self):\n        self.assertEqual(1 + 1, 2)\n").unwrap();
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(w.path()).status().unwrap().success(), "{cmd}");
    sh("git init -q && git add test_doc.py && git -c user.email=a@b -c user.name=a commit -qm doc");
    run_block(&find_block("docs/oci-images.md", RUN[4].1), w.path(), &env_for(&th), &subst);
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs: run by `make test`"]
fn readme_behind_a_corporate_proxy() {
    use kiln_testkit::upstream::{Mirror, UpstreamProxy};
    let th = TestHome::for_daemon();
    let w = workdir();
    // The corporate proxy and the mirror, on loopback; the mirror's name resolves nowhere.
    let (up, mirror) = (UpstreamProxy::start(), Mirror::start());
    let subst = vec![("proxy.corp.invalid:3128".to_owned(), up.addr()), ("build-mirror.invalid:8080".to_owned(), format!("build-mirror.invalid:{}", mirror.port()))];
    run_block(&find_block("README.md", RUN[5].1), w.path(), &env_for(&th), &subst);
    assert_eq!(up.seen(), vec![(format!("CONNECT build-mirror.invalid:{} HTTP/1.1", mirror.port()), None)]);
    assert_eq!(mirror.hits(), 1);
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs and builds the node template: run by `make test`"]
fn github_actions_workflow_builds_the_node_example() {
    let th = TestHome::new();
    let b = blocks("docs/github-actions.md").into_iter().find(|b| b.lang == "yaml" && b.lines.iter().any(|l| l.contains("uses: kiln-dev/kiln@"))).expect("the workflow");
    // The checkout: the node example, its .npmrc naming the registry (here: one on loopback).
    let (port, hits) = kiln_testkit::http::serve(registries::npm);
    let w = tempfile::tempdir().unwrap();
    let sh = |c: &str| assert!(Command::new("sh").arg("-c").arg(c).current_dir(w.path()).status().unwrap().success(), "{c}");
    sh(&format!("cp -a {}/. .", root().join("examples/node-app").display()));
    std::fs::write(w.path().join(".npmrc"), format!("registry=http://127.0.0.2:{port}/\naudit=false\nfund=false\n")).unwrap();
    sh("git init -q && git add -A && git -c user.email=a@b -c user.name=a commit -qm pr");
    // GitHub's side: the expressions of the workflow, then the action's step as a runner runs it.
    let context = |e: &str| match e {
        "github.event.pull_request.head.sha" => "HEAD".to_owned(),
        "vars.NPM_REGISTRY" => format!("127.0.0.2:{port}"),
        "secrets.NPM_TOKEN" => "npm-token-from-the-workflow".to_owned(),
        other => panic!("the workflow uses ${{{{ {other} }}}}"),
    };
    let (with, step_env) = kiln_testkit::github::workflow_step(&b.lines.join("\n"), "kiln-dev/kiln@", &context);
    assert!(with.contains(&("template".to_owned(), "node".to_owned())), "{with:?}");
    let mut env: Vec<(&str, String)> = env_for(&th);
    env.extend(step_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let with: Vec<(&str, &str)> = with.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_kiln")).parent().unwrap().to_owned();
    let r = kiln_testkit::github::Action::load(&root()).run(w.path(), &with, &env, &bin);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    for text in [&r.stdout, &r.stderr, &r.summary] {
        assert!(!text.contains("npm-token-from-the-workflow"), "the secret leaked");
    }
    for cell in ["NODE_ENV=test", "NODE_ENV=production"] {
        let label = r.runner_temp.join("kiln-ci-out").join(cell).join("artifacts/dist/label.txt");
        assert_eq!(std::fs::read_to_string(&label).unwrap_or_else(|e| panic!("{}: {e}\n{}", label.display(), r.stderr)), "build-000007\n");
        assert!(r.summary.contains(&format!("| {} | 0 |", cell.replace('_', "\\_"))), "{}", r.summary);
    }
    assert_eq!(r.outputs.get("exit-code").map(String::as_str), Some("0"));
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    th.assert_clean();
}
