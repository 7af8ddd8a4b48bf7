//! The virtio-serial ports (PID 1 mode): finding one by name, and for the control port reading
//! from it across host disconnects and reconnects, and writing frames to it. The egress tunnel
//! ([`crate::tunnel`]) finds and opens its port the same way.
//!
//! Port semantics: it is exclusive, so it is opened once, read-write. `read()` returns 0 while
//! the host side is disconnected and writes cannot proceed then. A disconnect ends the
//! connection; the next data starts a new one (a new host, e.g. after a snapshot restore).
//! The port is opened non-blocking so the writer drops frames while no host is connected
//! instead of blocking, and never delivers the tail of a frame to the next host.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_proto::CONTROL_PORT;

use crate::log::{guarded, lock};
use crate::outbox::Sink;
use crate::server::Server;
use crate::sys;

/// How often to look again for the port, or for the host to connect.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long to wait for the port quietly before logging that it is still missing.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// The open port, shared by the reader (which opens it) and the writer.
pub type PortSlot = Arc<Mutex<Option<Arc<File>>>>;

/// The device of the virtio port whose sysfs `name` is `name`.
pub fn find(name: &str) -> Option<PathBuf> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    dir.flatten()
        .find(|e| std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name))
        .map(|e| PathBuf::from("/dev").join(e.file_name()))
}

/// Waits (forever, logging now and then) until the port named `name` exists and opens
/// (read-write, non-blocking).
pub fn open(name: &str) -> File {
    let start = Instant::now();
    let mut next_log = start + PORT_WAIT;
    loop {
        let mut last_err = None;
        if let Some(path) = find(name) {
            let opened = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(&path);
            match opened {
                Ok(f) => {
                    log!("port {name} ({}) open after {:?}", path.display(), start.elapsed());
                    return f;
                }
                Err(e) => last_err = Some(format!("{}: {e}", path.display())),
            }
        }
        if Instant::now() >= next_log {
            let why = last_err.unwrap_or_else(|| format!("no virtio port named {name}"));
            log!("still waiting for the port {name} after {:?} ({why})", start.elapsed());
            next_log += PORT_WAIT;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Serves the protocol on the port forever.
pub fn serve(server: &mut Server, slot: &PortSlot) -> ! {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let port = Arc::new(open(CONTROL_PORT));
        *lock(slot) = Some(port.clone());
        let mut connected = false;
        loop {
            let mut fds = [libc::pollfd { fd: port.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            if let Err(e) = sys::poll(&mut fds, None) {
                log!("poll control port: {e}");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
            match (&*port).read(&mut buf) {
                Ok(0) => {
                    if connected {
                        log!("host disconnected");
                        connected = false;
                        guarded("the end of a connection", || server.disconnected());
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
                Ok(n) => {
                    if !connected {
                        log!("host connected");
                        connected = true;
                    }
                    guarded("input from the host", || server.feed(&buf[..n]));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    log!("read control port: {e}; reopening");
                    if connected {
                        guarded("the end of a connection", || server.disconnected());
                    }
                    break;
                }
            }
        }
        *lock(slot) = None;
        drop(port);
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Frames to the port, written by the writer thread.
pub struct PortSink {
    /// The port, once the reader has opened it.
    pub slot: PortSlot,
}

impl Sink for PortSink {
    fn write_frame(&mut self, frame: &[u8], current: &dyn Fn() -> bool) -> io::Result<()> {
        // No port open, or (below) no host connected: whoever the frame was for is gone, and
        // the next host starts afresh with Hello. Dropping it also keeps the writer from
        // blocking, so a reader waiting on a full queue gets to see the disconnect.
        let Some(port) = lock(&self.slot).clone() else { return Ok(()) };
        let mut off = 0;
        while off < frame.len() {
            if off == 0 && !current() {
                return Ok(());
            }
            match (&*port).write(&frame[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [libc::pollfd { fd: port.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
                    sys::poll(&mut fds, Some(Duration::from_millis(100)))?;
                    if fds[0].revents & libc::POLLHUP != 0 && fds[0].revents & libc::POLLOUT == 0 {
                        // Also mid-frame: its tail would corrupt the next host's stream.
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
