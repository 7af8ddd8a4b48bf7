//! A `kiln serve` process for a test: started, waited for until its socket is there, and
//! stopped (SIGTERM, then SIGKILL) and reaped when dropped. Its stderr goes to a file, shown
//! when it fails to start and when a test panics while it runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{wait_until, TestHome};

/// How long a daemon may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM (it destroys its sandboxes first).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `kiln serve`.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    /// Where its stderr goes (read for failure messages; removed on drop).
    stderr: tempfile::NamedTempFile,
}

impl Daemon {
    /// Starts `kiln serve --socket SOCKET ARGS` with `kiln` (a command of the kiln binary, with
    /// its environment and any other setting, see [`kiln!`](crate::kiln!)), SOCKET being
    /// `kiln.sock` in `th`'s home.
    pub fn start(kiln: Command, th: &TestHome, args: &[&str]) -> Daemon {
        Daemon::start_at(kiln, &th.home.root().join("kiln.sock"), args)
    }

    /// Starts `kiln serve --socket SOCKET ARGS` with `kiln` and waits until the socket exists;
    /// panics with the daemon's stderr when it exits or does not listen in time. A socket left
    /// at that path (by a daemon killed with -9) is removed first.
    pub fn start_at(mut kiln: Command, socket: &Path, args: &[&str]) -> Daemon {
        let _ = std::fs::remove_file(socket);
        let stderr = tempfile::Builder::new().prefix("kiln-serve-").suffix(".log").tempfile().expect("daemon log file");
        let log = stderr.reopen().expect("daemon log file");
        kiln.arg("serve").arg("--socket").arg(socket).args(args).stdin(Stdio::null()).stderr(log);
        let child = kiln.spawn().expect("start kiln serve");
        let mut d = Daemon { child, socket: socket.to_owned(), stderr };
        let mut exited = None;
        let up = wait_until(LISTEN_TIMEOUT, || {
            exited = d.child.try_wait().ok().flatten();
            exited.is_some() || d.socket.exists()
        });
        if let Some(status) = exited.filter(|_| !d.socket.exists()) {
            panic!("kiln serve exited ({status}) before it listened on {}; its stderr:\n{}", d.socket.display(), d.stderr());
        }
        assert!(up, "kiln serve did not listen on {} within {} s; its stderr:\n{}", d.socket.display(), LISTEN_TIMEOUT.as_secs(), d.stderr());
        d
    }

    /// The unix socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its address for clients (`KILN_HOST`): `unix://SOCKET`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.stderr.path()).unwrap_or_default()).into_owned()
    }

    /// Kills it with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it: SIGTERM (it destroys its sandboxes and exits), SIGKILL after 10 s; reaps it.
    /// Its exit status, `None` if it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let mut status = None;
        wait_until(STOP_TIMEOUT, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("kiln serve's stderr:\n{}", self.stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for kiln: `sh -c SCRIPT serve --socket PATH`, so `$2` is the socket path.
    fn fake(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn a_daemon_that_exits_early_is_reported_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kiln.sock");
        let start = std::panic::AssertUnwindSafe(|| Daemon::start_at(fake("echo cannot start >&2; exit 3"), &socket, &[]));
        let e = std::panic::catch_unwind(start).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("exited") && msg.contains("cannot start"), "{msg}");
    }

    #[test]
    fn a_listening_daemon_is_stopped_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kiln.sock");
        let mut d = Daemon::start_at(fake(r#"echo up >&2; touch "$2"; exec sleep 30"#), &socket, &[]);
        assert_eq!((d.socket(), d.host()), (socket.as_path(), format!("unix://{}", socket.display())));
        assert!(wait_until(Duration::from_secs(5), || d.stderr() == "up\n"), "{:?}", d.stderr());
        let pid = d.pid();
        let status = d.stop().expect("exits on SIGTERM");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(15));
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "not reaped");
    }
}
