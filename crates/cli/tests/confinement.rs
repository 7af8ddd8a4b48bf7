//! A host where the VMM cannot be confined (here: kiln run as an unprivileged user, which can
//! neither create namespaces nor switch uids): `kiln doctor` says so, `kiln serve` refuses to
//! start, and `KILN_CONFINE=off` is the explicit way past it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn as_nobody(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).env("HOME", home).env("KILN_HOME", home).env("KILN_RUN_DIR", home.join("run")).stdin(Stdio::null()).uid(NOBODY).gid(NOBODY);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

#[test]
fn an_unconfinable_host_is_reported_and_refused_unless_opted_out() {
    let home = tempfile::Builder::new().prefix("kn-").tempdir_in("/tmp").unwrap();
    std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).unwrap();

    let o = as_nobody(home.path(), &["doctor"], &[]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.contains("confinement")).unwrap_or_default().to_owned();
    assert!(line.contains("FAIL") && line.contains("not running as root") && line.contains("KILN_CONFINE=off"), "{out}");
    assert_ne!(o.status.code(), Some(0));

    let socket = home.path().join("kiln.sock");
    let o = as_nobody(home.path(), &["serve", "--socket", socket.to_str().unwrap()], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("refusing to start") && err.contains("cannot be confined"), "{err}");
    assert!(!socket.exists());

    // Opting out: it starts, and warns.
    let child = as_nobody(home.path(), &["serve", "--socket", socket.to_str().unwrap()], &[("KILN_CONFINE", "off")]).stderr(Stdio::piped()).spawn().unwrap();
    assert!(kiln_testkit::wait_until(Duration::from_secs(20), || socket.exists()), "the opted-out daemon did not listen");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc_kill(child.id() as i32, 15) };
    let o = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("WARNING: KILN_CONFINE=off"));
}
