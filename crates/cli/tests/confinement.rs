//! A host where the VMM cannot be confined (here: kiln run as an unprivileged user, which can
//! neither create namespaces nor switch uids): `kiln doctor` says so, `kiln serve` refuses to
//! start, and `KILN_CONFINE=off` is the explicit way past it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use kiln_testkit::{kiln, Daemon};

const NOBODY: u32 = 65534;

fn as_nobody(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = kiln!();
    c.args(args).env("HOME", home).env("KILN_HOME", home).env("KILN_RUN_DIR", home.join("run")).stdin(Stdio::null()).uid(NOBODY).gid(NOBODY);
    c.envs(env.iter().copied());
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
    let mut d = Daemon::start_at(as_nobody(home.path(), &[], &[("KILN_CONFINE", "off")]), &socket, &[]);
    d.stop();
    assert!(d.stderr().contains("WARNING: KILN_CONFINE=off"), "{}", d.stderr());
}
