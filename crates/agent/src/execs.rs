//! The table of running execs, keyed by connection generation and request id: what `Stdin`,
//! `Signal` and the end of a connection need to reach a running command.

use std::collections::HashMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_proto::RequestId;

use crate::cgroup::Cgroup;
use crate::log::lock;
use crate::sys;

/// Input for a command's stdin.
pub enum StdinMsg {
    /// Bytes to write.
    Data(Vec<u8>),
    /// Close the pipe.
    Eof,
}

#[derive(Default)]
struct Entry {
    /// The main process, which leads the command's process group; `None` before it started
    /// and after it was reaped (its group id may then be reused).
    pid: Option<libc::pid_t>,
    cgroup: Option<Arc<Cgroup>>,
    stdin: Option<SyncSender<StdinMsg>>,
    /// Killed before it started: kill it as soon as it has.
    killed: bool,
}

impl Entry {
    fn kill(&mut self) {
        self.killed = true;
        self.stdin = None;
        if let Some(pid) = self.pid {
            if let Err(e) = sys::killpg(pid, libc::SIGKILL) {
                log!("kill process group {pid}: {e}");
            }
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
    }
}

type Key = (u64, RequestId);

/// The running execs.
#[derive(Default)]
pub struct Execs {
    map: Mutex<HashMap<Key, Entry>>,
}

impl Execs {
    /// Reserves `id` in generation `gen`; false if an exec with that id is still running.
    pub fn insert(&self, gen: u64, id: RequestId, stdin: Option<SyncSender<StdinMsg>>) -> bool {
        let mut map = lock(&self.map);
        if map.contains_key(&(gen, id)) {
            return false;
        }
        map.insert((gen, id), Entry { stdin, ..Entry::default() });
        true
    }

    /// Records the main process and cgroup of a started exec (killing it at once if its
    /// connection ended meanwhile).
    pub fn started(&self, gen: u64, id: RequestId, pid: libc::pid_t, cgroup: Option<Arc<Cgroup>>) {
        if let Some(e) = lock(&self.map).get_mut(&(gen, id)) {
            e.pid = Some(pid);
            e.cgroup = cgroup;
            if e.killed {
                e.kill();
            }
        }
    }

    /// The main process was reaped: stop signalling its group id.
    pub fn exited(&self, gen: u64, id: RequestId) {
        if let Some(e) = lock(&self.map).get_mut(&(gen, id)) {
            e.pid = None;
        }
    }

    /// Forgets a finished exec.
    pub fn remove(&self, gen: u64, id: RequestId) {
        lock(&self.map).remove(&(gen, id));
    }

    /// The stdin queue of an exec, if it has one still open.
    pub fn stdin(&self, gen: u64, id: RequestId) -> Option<SyncSender<StdinMsg>> {
        lock(&self.map).get(&(gen, id)).and_then(|e| e.stdin.clone())
    }

    /// Takes the stdin queue of an exec, so later `Stdin` messages are ignored.
    pub fn take_stdin(&self, gen: u64, id: RequestId) -> Option<SyncSender<StdinMsg>> {
        lock(&self.map).get_mut(&(gen, id)).and_then(|e| e.stdin.take())
    }

    /// Sends `signal` to the process group of an exec (SIGKILL also empties its cgroup).
    pub fn signal(&self, gen: u64, id: RequestId, signal: libc::c_int) {
        let mut map = lock(&self.map);
        let Some(e) = map.get_mut(&(gen, id)) else { return };
        if signal == libc::SIGKILL {
            e.kill();
        } else if let Some(pid) = e.pid {
            if let Err(err) = sys::killpg(pid, signal) {
                log!("signal {signal} to process group {pid}: {err}");
            }
        }
    }

    /// Kills every exec of generation `gen`.
    pub fn kill_generation(&self, gen: u64) {
        lock(&self.map).iter_mut().filter(|((g, _), _)| *g == gen).for_each(|(_, e)| e.kill());
    }

    /// Kills every exec.
    pub fn kill_all(&self) {
        lock(&self.map).values_mut().for_each(Entry::kill);
    }

    /// Waits until no exec is left, for at most `timeout`.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.map).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
