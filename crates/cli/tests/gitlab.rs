//! The GitLab custom executor driver, driven the way gitlab-runner drives it: config, prepare,
//! run (once per stage), cleanup, with GitLab's exit-code variables.

use std::process::{Output, Stdio};

use kiln_testkit::{kiln, Daemon, TestHome};

fn stage(th: &TestHome, daemon: &Daemon, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = kiln!(th);
    c.arg("gitlab").args(args).stdin(Stdio::null());
    c.env("KILN_HOST", daemon.host());
    c.env("BUILD_FAILURE_EXIT_CODE", "77").env("SYSTEM_FAILURE_EXIT_CODE", "88");
    c.envs(env.iter().copied());
    c.output().expect("run kiln gitlab")
}

#[test]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
fn four_stages_like_gitlab_runner() {
    let th = TestHome::for_daemon();
    let daemon = Daemon::start(kiln!(&th), &th, &[]);
    let job = [("CUSTOM_ENV_CI_JOB_ID", "4242"), ("CUSTOM_ENV_CI_JOB_TIMEOUT", "600")];

    let o = stage(&th, &daemon, &["config"], &job);
    let cfg: serde_json::Value = serde_json::from_slice(&o.stdout).expect("config JSON");
    assert_eq!(cfg["driver"]["name"], "kiln");
    assert_eq!(cfg["builds_dir_is_shared"], false);

    let o = stage(&th, &daemon, &["prepare"], &job);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    let dir = tempfile::tempdir().unwrap();
    let script = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/usr/bin/env bash\nset -eo pipefail\n{body}\n")).unwrap();
        p
    };
    let sources = script("get_sources", "mkdir -p /builds/proj && echo 'int main(void){return 0;}' > /builds/proj/m.c && echo fetched");
    let o = stage(&th, &daemon, &["run", sources.to_str().unwrap(), "get_sources"], &job);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("fetched"));

    // State carries over between stages (one VM per job); a failing build script exits with
    // BUILD_FAILURE_EXIT_CODE and reports its real code in BUILD_EXIT_CODE_FILE.
    let code_file = dir.path().join("exit-code");
    let build = script("build_script", "cd /builds/proj && cc -o m m.c && ./m && echo built >&2 && exit 7");
    let o = stage(&th, &daemon, &["run", build.to_str().unwrap(), "build_script"], &[job[0], job[1], ("BUILD_EXIT_CODE_FILE", code_file.to_str().unwrap())]);
    assert_eq!(o.status.code(), Some(77), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("built"));
    assert_eq!(std::fs::read_to_string(&code_file).unwrap().trim(), "7");

    // A job the executor knows nothing of: a system failure, not a build failure.
    let o = stage(&th, &daemon, &["run", build.to_str().unwrap(), "build_script"], &[("CUSTOM_ENV_CI_JOB_ID", "9999")]);
    assert_eq!(o.status.code(), Some(88), "{}", String::from_utf8_lossy(&o.stderr));

    let o = stage(&th, &daemon, &["cleanup"], &job);
    assert_eq!(o.status.code(), Some(0));
    assert!(!th.home.root().join("gitlab/4242.sandbox").exists());
    // Cleanup twice is fine.
    assert_eq!(stage(&th, &daemon, &["cleanup"], &job).status.code(), Some(0));

    drop(daemon);
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs; needs docker-registry, umoci and skopeo (make test installs them)"]
fn a_job_image_is_booted_when_the_runner_allows_it() {
    use kiln_testkit::oci::{busybox_userland, ImageLayout, LocalRegistry};
    let th = TestHome::for_daemon();
    let daemon = Daemon::start(kiln!(&th), &th, &[]);
    let reg = LocalRegistry::start();
    let img = ImageLayout::new("1");
    img.layer(|root| {
        busybox_userland(root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/job-image"), "the job's own image\n").unwrap();
    });
    let reference = img.push(&reg, "ci/job:1");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("build_script");
    std::fs::write(&script, "cat /etc/job-image\n").unwrap();
    let job = |id: &'static str, patterns: &'static str| vec![("CUSTOM_ENV_CI_JOB_ID", id), ("CUSTOM_ENV_CI_JOB_IMAGE", reference.as_str()), ("KILN_GITLAB_IMAGES", patterns)];

    // Not on the runner's allowlist: the job fails before any VM, naming the allowlist.
    let o = stage(&th, &daemon, &["prepare"], &job("5150", "127.0.0.1:*/other/*"));
    assert_eq!(o.status.code(), Some(88), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("KILN_GITLAB_IMAGES") && err.contains(&reference), "{err}");

    // Allowed: the job's image is the VM (built the first time), and its script runs in it.
    let env = job("5151", "127.0.0.1:*/ci/*");
    let o = stage(&th, &daemon, &["prepare"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = stage(&th, &daemon, &["run", script.to_str().unwrap(), "build_script"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "the job's own image\n");
    assert_eq!(stage(&th, &daemon, &["cleanup"], &env).status.code(), Some(0));
    drop(daemon);
    th.assert_clean();
}
