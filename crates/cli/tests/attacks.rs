//! The attack suite: one test per way a pull request, a guest, a VMM or an API token could
//! reach the host, each named for the attack and each asserting the host is unchanged.
//! (Attacks that need a VM are marked like the other VM tests; `make test` runs them all.)

use std::path::Path;
use std::process::Command;

use kiln_testkit::TestHome;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A pull request's checkout: a git repository with these files and these symlinks committed.
fn pr_checkout(files: &[(&str, &str)], links: &[(&str, &Path)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = t.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, c).unwrap();
    }
    for (p, target) in links {
        let path = t.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &path).unwrap();
    }
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(t.path()).status().unwrap().success(), "{cmd}");
    sh("git init -q && git config user.email pr@example.com && git config user.name pr && git add -A && git commit -qm pr");
    t
}

/// Every file below `dir` with its content, to show nothing changed.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(tree(&p));
        } else {
            v.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    v.sort();
    v
}

/// The PR commits `kiln-out/report.json` and `kiln-out/build` as symlinks to host files and
/// folders, where the docs once put the out folder (and where the default `kiln-ci-out`
/// is, in the checkout): kiln refuses the out folder before anything runs, and the host
/// files are unchanged.
#[test]
fn attack_pr_commits_symlinks_where_kiln_writes_its_output() {
    let th = TestHome::new();
    let victims = tempfile::tempdir().unwrap();
    let report_victim = victims.path().join("etc-passwd");
    std::fs::write(&report_victim, "root:x:0:0\n").unwrap();
    let dir_victim = victims.path().join("root-ssh");
    std::fs::create_dir(&dir_victim).unwrap();
    let before = tree(victims.path());
    for out in ["kiln-out", "kiln-ci-out"] {
        let pr = pr_checkout(
            &[("build.sh", "true\n")],
            &[(&format!("{out}/report.json"), &report_victim), (&format!("{out}/build"), &dir_victim), (&format!("{out}/V=1"), &dir_victim)],
        );
        let mut c = kiln_testkit::kiln!(&th);
        c.current_dir(pr.path()).args(["ci", "run", "--repo", ".", "--build", "sh build.sh", "--matrix", "V=1,2", "--artifact", "*"]);
        if out == "kiln-out" {
            c.args(["--out", out]);
        }
        let o = c.output().unwrap();
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("not empty") && stderr.contains(out), "{stderr}");
        assert_eq!(tree(victims.path()), before, "a host file changed");
    }
    // An out folder that is itself a link to a host folder.
    let pr = pr_checkout(&[("build.sh", "true\n")], &[("kiln-out", &dir_victim)]);
    let o = kiln_testkit::kiln!(&th).current_dir(pr.path()).args(["ci", "run", "--repo", ".", "--build", "true", "--out", "kiln-out"]).output().unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(tree(victims.path()), before, "a host file changed");
}

/// The PR makes its cache-key file a symlink to a host secret: kiln refuses to read it (no
/// digest of the secret is made, nothing runs).
#[test]
fn attack_pr_cache_key_file_is_a_link_to_a_host_secret() {
    let th = TestHome::new();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    let pr = pr_checkout(&[("build.sh", "true\n")], &[("package-lock.json", secret.path())]);
    let out = tempfile::tempdir().unwrap();
    let o = kiln_testkit::kiln!(&th)
        .current_dir(pr.path())
        .args(["ci", "run", "--repo", ".", "--setup", "true", "--cache-key", "package-lock.json", "--build", "true", "--out"])
        .arg(out.path().join("o"))
        .output()
        .unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("package-lock.json") && stderr.contains("not a link"), "{stderr}");
    assert!(!stderr.contains("OPENSSH"), "{stderr}");
}

/// docs/github-actions.md's step as written (`--out "$RUNNER_TEMP/kiln-out"`, a setup with a
/// cache key, a matrix, artifacts) on a pull request that commits symlinks everywhere kiln
/// reads or writes: in the checkout's would-be out folders, as its cache-key file's
/// neighbour, and as artifacts (made in the VM too). Nothing outside the out folder changes,
/// and the out folder holds only regular files and folders.
#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn attack_pr_symlinks_against_the_documented_workflow_write_nothing_outside_the_out_folder() {
    let th = TestHome::for_daemon();
    let victims = tempfile::tempdir().unwrap();
    let victim = victims.path().join("etc-passwd");
    std::fs::write(&victim, "root:x:0:0\n").unwrap();
    let before = tree(victims.path());
    let pr = pr_checkout(
        &[("package-lock.json", "{}\n"), ("build.sh", "mkdir -p dist && echo built > dist/real && ln -sf /etc/passwd dist/link-made-in-vm\n")],
        &[("kiln-out/report.json", &victim), ("kiln-ci-out/build", victims.path()), ("dist/link-committed", &victim)],
    );
    let runner_temp = tempfile::tempdir().unwrap();
    let out = runner_temp.path().join("kiln-out");
    let o = kiln_testkit::kiln!(&th)
        .current_dir(pr.path())
        .args(["ci", "run", "--repo", ".", "--ref", "HEAD", "--template", "base", "--setup", "true", "--cache-key", "package-lock.json"])
        .args(["--build", "sh build.sh", "--matrix", "NODE_ENV=test,production", "--artifact", "dist/*", "--timeout", "300", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(tree(victims.path()), before, "a host file changed");
    let mut regular = 0;
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            assert!(!t.is_symlink(), "a link in the out folder: {}", e.path().display());
            if t.is_dir() {
                stack.push(e.path());
            } else {
                regular += 1;
            }
        }
    }
    for cell in ["NODE_ENV=test", "NODE_ENV=production"] {
        assert_eq!(std::fs::read_to_string(out.join(cell).join("artifacts/dist/real")).unwrap(), "built\n");
        assert!(!out.join(cell).join("artifacts/dist/link-made-in-vm").exists());
        assert!(!out.join(cell).join("artifacts/dist/link-committed").exists());
    }
    assert!(regular >= 5, "report, logs, artifacts, provenance: {regular} files");
    // The checkout's own links are where the PR put them, untouched, and nothing was written through them.
    assert!(std::fs::symlink_metadata(pr.path().join("kiln-out/report.json")).unwrap().file_type().is_symlink());
}
