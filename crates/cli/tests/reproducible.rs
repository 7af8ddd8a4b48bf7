//! `kiln ci run --rebuild N` on real VMs (template `base`): builds that honour
//! SOURCE_DATE_EPOCH agree, builds that embed the clock, the hostname or a random UUID do not,
//! the report names what differs, and the signed provenance records how many builds agreed.

use std::path::Path;
use std::process::{Command, Output};

use kiln_testkit::TestHome;

fn kiln(th: &TestHome, args: &[&str]) -> Output {
    kiln_testkit::kiln!(th).args(args).output().expect("run kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A git repository with these files, committed.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (p, c) in files {
        std::fs::write(t.path().join(p), c).unwrap();
    }
    let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(t.path()).status().unwrap().success(), "{cmd}");
    sh("git init -q && git config user.email ci@example.com && git config user.name ci && git add -A && git commit -qm init");
    t
}

/// `kiln ci run --json` with these arguments after `--repo REPO --out OUT`: its exit code
/// and report.
fn ci(th: &TestHome, repo: &Path, out: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["ci", "run", "--repo", repo.to_str().unwrap(), "--out", out.to_str().unwrap(), "--timeout", "300", "--json"];
    all.extend_from_slice(args);
    let o = kiln(th, &all);
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no report ({e}): {}", text(&o.stderr)));
    (o.status.code().unwrap_or(-1), report)
}

fn verify(th: &TestHome, prov: &str, artifact: &Path, n: &str) -> Output {
    kiln(th, &["verify", "--provenance", prov, "--artifact", artifact.to_str().unwrap(), "--require-reproduced", n])
}

const STAMPED_C: &str = r#"#include <stdio.h>
int main(void) { printf("built " __DATE__ " " __TIME__ "\n"); return 0; }
"#;

/// A C program that embeds the build's date (gcc takes it from SOURCE_DATE_EPOCH) and a
/// tarball with fixed mtimes, owners and order: three builds agree; the provenance says so.
#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn builds_that_honour_source_date_epoch_agree() {
    let th = TestHome::for_daemon();
    let src = repo(&[("stamp.c", STAMPED_C)]);
    let out = tempfile::tempdir().unwrap();
    let build = "set -e; mkdir -p dist; cc -O2 -o dist/stamp stamp.c; ./dist/stamp > dist/stamp.txt; \
                 echo \"$SOURCE_DATE_EPOCH\" > dist/epoch; \
                 tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner -cf - dist/stamp dist/stamp.txt | gzip -n > dist/stamp.tar.gz";
    let (code, report) = ci(&th, src.path(), &out.path().join("o"), &["--build", build, "--artifact", "dist/*", "--rebuild", "3", "--require-reproducible"]);
    assert_eq!(code, 0, "{report:#}");
    let cell = &report["cells"][0];
    assert_eq!((cell["reproducible"].as_bool(), cell["agreed"].as_u64()), (Some(true), Some(3)), "{cell:#}");
    assert_eq!(cell["rebuilds"].as_array().map(Vec::len), Some(2));
    assert!(cell.get("differences").is_none(), "{cell:#}");
    // SOURCE_DATE_EPOCH was the commit's time.
    let ct = Command::new("git").args(["log", "-1", "--format=%ct"]).current_dir(src.path()).output().unwrap();
    let cell_dir = out.path().join("o/build");
    assert_eq!(std::fs::read_to_string(cell_dir.join("artifacts/dist/epoch")).unwrap(), text(&ct.stdout));
    // Each build's files are there, and they are the same.
    for k in [2, 3] {
        let again = cell_dir.join(format!("rebuild-{k}/artifacts/dist/stamp.tar.gz"));
        assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(cell_dir.join("artifacts/dist/stamp.tar.gz")).unwrap());
        assert!(cell_dir.join(format!("rebuild-{k}/build.log")).is_file());
    }
    // The signed provenance records three builds that agreed.
    let prov = cell["provenance"].as_str().unwrap();
    let tarball = cell_dir.join("artifacts/dist/stamp.tar.gz");
    let ok = verify(&th, prov, &tarball, "3");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("3 of 3 independent builds agreed"), "{}", text(&ok.stdout));
    let more = verify(&th, prov, &tarball, "4");
    assert_eq!(more.status.code(), Some(1));
    assert!(text(&more.stderr).contains("not reproduced by 4 builds: 3 of 3 builds agreed"), "{}", text(&more.stderr));
    th.assert_clean();
}

/// The acceptance: `examples/hello-c` built twice is reproducible; a build that writes the
/// date, the hostname and a random UUID into its artifacts is not, and the report names each
/// of them (and for a text file, the first line that differs).
#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn hello_c_agrees_and_a_dated_build_does_not() {
    let th = TestHome::for_daemon();
    let hello = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello-c"));
    let out = tempfile::tempdir().unwrap();
    let build = "make && mkdir -p dist && cp hello dist/";
    let (code, report) = ci(&th, hello, &out.path().join("same"), &["--build", build, "--artifact", "dist/*", "--rebuild", "2"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["cells"][0]["reproducible"], true, "{report:#}");

    let dated = "make && mkdir -p dist && cp hello dist/ && date > dist/date.txt && cat /proc/sys/kernel/hostname > dist/host.txt \
                 && cat /proc/sys/kernel/random/uuid > dist/uuid.txt";
    let args = ["--build", dated, "--artifact", "dist/*", "--rebuild", "2", "--matrix", "V=1,2"];
    let (code, report) = ci(&th, hello, &out.path().join("dated"), &args);
    assert_eq!(code, 0, "without --require-reproducible a difference does not fail the run: {report:#}");
    for cell in report["cells"].as_array().unwrap() {
        assert_eq!((cell["reproducible"].as_bool(), cell["agreed"].as_u64()), (Some(false), Some(1)), "{cell:#}");
        let differs: Vec<&str> = cell["differences"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
        assert_eq!(differs, ["dist/date.txt", "dist/host.txt", "dist/uuid.txt"], "{cell:#}");
        let date = &cell["differences"][0];
        assert!(date["first_difference"].as_str().unwrap().starts_with("line 1: build 1 has \""), "{date:#}");
        assert_eq!(date["sha256"].as_array().unwrap().len(), 2);
        // The signed provenance says the builds did not agree.
        let prov = cell["provenance"].as_str().unwrap();
        let artifact = Path::new(cell["log"].as_str().unwrap()).parent().unwrap().join("artifacts/dist/hello");
        let no = verify(&th, prov, &artifact, "2");
        assert_eq!(no.status.code(), Some(1), "{}", text(&no.stdout));
        assert!(text(&no.stderr).contains("1 of 2 builds agreed"), "{}", text(&no.stderr));
    }
    // With --require-reproducible the same run fails with exit 3, and the summary names the file.
    let mut strict = args.to_vec();
    strict.push("--require-reproducible");
    let o = kiln(&th, &[&["ci", "run", "--repo", hello.to_str().unwrap(), "--out", out.path().join("strict").to_str().unwrap(), "--timeout", "300"], &strict[..]].concat());
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(stdout.contains("NOT reproducible: 1 of 2 builds agree") && stdout.contains("dist/date.txt differs: line 1"), "{stdout}");
    th.assert_clean();
}

/// Bad combinations are refused before any VM starts, with what to do.
#[test]
fn rebuild_arguments_are_checked() {
    let th = TestHome::new();
    let out = tempfile::tempdir().unwrap();
    let o = |extra: &[&str]| {
        let mut args = vec!["ci", "run", "--repo", ".", "--build", "true", "--out", out.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        kiln(&th, &args)
    };
    for (extra, says) in [
        (&["--rebuild", "2"][..], "name them with --artifact"),
        (&["--rebuild", "1", "--artifact", "a"][..], "between 2 and 16"),
        (&["--require-reproducible", "--artifact", "a"][..], "needs --rebuild N"),
        (&["--rebuild", "16", "--artifact", "a", "--matrix", "A=1,2,3,4,5"][..], "more than 64 VMs"),
    ] {
        let r = o(extra);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {}", text(&r.stderr));
        assert!(text(&r.stderr).contains(says), "{extra:?}: {}", text(&r.stderr));
    }
}
