//! `kiln-agent`: the guest's PID 1 for kiln sandboxes (this library; `main.rs` is its entry).
//!
//! As PID 1 it boots the guest ([`boot`]) and then serves the kiln protocol on the
//! virtio-serial control port ([`port`]) forever. With `--stdio` (not PID 1) it serves the same
//! protocol on stdin/stdout, so the exec and file logic can be tested on a host without a VM.
//!
//! Threads: the main thread reads and dispatches frames ([`server`]); one writer owns the
//! output ([`outbox`]); one reaper collects every exited child ([`reaper`]); each exec and each
//! file read runs on a thread of its own ([`exec`], [`files`]). As PID 1, one more thread
//! carries the guest's proxy connections over the egress tunnel's port ([`tunnel`]).

#[macro_use]
mod log;

pub mod boot;
mod cgroup;
pub mod cmdline;
mod command;
mod errors;
mod exec;
mod execs;
mod files;
mod identity;
mod outbox;
pub mod port;
mod reaper;
mod server;
mod sys;
mod tunnel;

use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::outbox::{Outbox, StdoutSink};
use crate::port::PortSink;
use crate::reaper::Reaper;
use crate::server::{Mode, Server};

/// Boots, then serves on the control port. Never returns: PID 1 must not exit.
pub fn run_pid1() -> ! {
    log::guarded("boot", boot::boot);
    tunnel::start();
    let reaper = Reaper::start();
    let slot = Arc::new(Mutex::new(None));
    let outbox = Outbox::start(PortSink { slot: slot.clone() });
    let mut server = Server::new(Mode::Pid1, outbox, reaper);
    loop {
        log::guarded("serving", || port::serve(&mut server, &slot));
    }
}

/// Serves on stdin/stdout until stdin ends, then kills every command and exits 0.
pub fn run_stdio() {
    // SAFETY: prctl with integer arguments; makes orphaned grandchildren ours to reap.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log!("PR_SET_CHILD_SUBREAPER: {}", std::io::Error::last_os_error());
    }
    let reaper = Reaper::start();
    let mut server = Server::new(Mode::Stdio, Outbox::start(StdoutSink), reaper);
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => server.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log!("read stdin: {e}");
                break;
            }
        }
    }
    server.finish();
    std::process::exit(0);
}
