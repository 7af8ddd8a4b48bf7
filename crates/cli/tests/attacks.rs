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
