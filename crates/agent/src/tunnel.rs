//! The egress tunnel, guest side (PID 1 mode; see `kiln_proto::tunnel`). The guest has no
//! network device: build tools reach kiln's egress proxy through `HTTP_PROXY`, which names
//! [`GUEST_PROXY_ADDR`], a listener of ours. Each connection accepted there is carried,
//! multiplexed with the others, over the virtio-serial port [`NET_PORT`] to the host.
//!
//! One thread runs an [`Engine`]: a `poll(2)` loop over the listener, the port and every guest
//! socket, all non-blocking. Flow control is by credit both ways, so no direction buffers more
//! than [`WINDOW`] bytes of one connection:
//! - guest → host: a socket is read only while the host's credit for it is not used up;
//! - host → guest: what a socket cannot take at once is buffered, and credit goes back to the
//!   host only for bytes written to the socket.
//!
//! The port behaves like the control port: `read()` returns 0 while no host is connected and
//! `poll` reports `POLLHUP` then. When the host goes, every guest connection is reset (the
//! processes see their connections fail); connections accepted while no host is connected wait
//! [`HOST_GRACE`] for one and are reset after that.
//!
//! Conventions the protocol leaves open: connection ids count up (wrapping) and never take the
//! value [`RESET_ALL`]. `Reset` of [`RESET_ALL`] marks the start of a host session:
//! - the guest sends it first thing when it sees a host connect, so a host can skip bytes
//!   before it (`FrameDecoder::resync`): the tail of a frame meant for the previous host;
//! - a host may send it first thing when it connects: if the guest missed the previous host's
//!   disconnect (a quick restore) it resets every connection and answers with the marker; if
//!   it saw the host connect (it is then the host's first frame) it has nothing old to reset
//!   and already sent the marker, so it ignores it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use kiln_proto::tunnel::{NetMsg, GUEST_PROXY_ADDR, MAX_CONNS, NET_PORT, WINDOW};
use kiln_proto::{encode, FrameDecoder, CONTROL_PORT, MAX_CHUNK};

use crate::log::{guarded, spawn};
use crate::port::{self, POLL_INTERVAL};
use crate::sys;

/// The connection id that, in a `Reset`, means every connection (the start of a session).
pub const RESET_ALL: u32 = u32::MAX;

/// How long a connection accepted while no host is connected waits for one.
pub const HOST_GRACE: Duration = Duration::from_secs(2);

/// How often to look for a host while none is connected and no connection waits for one.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// How long to look for [`NET_PORT`] once the control port exists (ports appear one by one).
const PORT_GRACE: Duration = Duration::from_secs(2);

/// Bytes queued toward the port past which guest sockets are not read.
const OUT_HIGH: usize = 4 * MAX_CHUNK;

/// Most connections accepted in one step.
const ACCEPT_BATCH: usize = 64;

/// How long the listener rests after `accept` failed (e.g. out of descriptors).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Starts the tunnel thread (PID 1 mode, once the loopback interface is up).
pub fn start() {
    spawn("tunnel".into(), || guarded("the egress tunnel", run));
}

/// Finds the port, listens, and runs the engine forever, reopening the port when it fails.
fn run() {
    // The control port is waited for (and logged about) by the server; the ports appear one
    // after the other, so ours gets a short grace after it before we conclude it is absent.
    while port::find(CONTROL_PORT).is_none() {
        std::thread::sleep(POLL_INTERVAL);
    }
    let deadline = Instant::now() + PORT_GRACE;
    while port::find(NET_PORT).is_none() {
        if Instant::now() >= deadline {
            return log!("no virtio port named {NET_PORT}: no egress tunnel");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let mut listener = match TcpListener::bind(GUEST_PROXY_ADDR) {
        Ok(l) => l,
        Err(e) => return log!("tunnel: listen on {GUEST_PROXY_ADDR}: {e}; no egress tunnel"),
    };
    log!("tunnel: listening on {GUEST_PROXY_ADDR}");
    loop {
        let mut engine = Engine::new(port::open(NET_PORT), listener, MAX_CONNS);
        guarded("the egress tunnel", || loop {
            if let Err(e) = engine.step(None) {
                log!("tunnel port: {e}; reopening");
                return;
            }
        });
        listener = engine.close();
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The engine's side of the tunnel port.
pub trait Port: Read + Write + AsRawFd {
    /// Whether a host is connected at the other end: `poll` reports no hang-up.
    fn host_connected(&self) -> bool {
        fd_host_connected(self.as_raw_fd())
    }
}

impl Port for File {}
impl Port for UnixStream {}

/// Whether `poll` on `fd` reports neither hang-up nor error.
fn fd_host_connected(fd: RawFd) -> bool {
    let mut fds = [pollfd(fd, libc::POLLOUT)];
    match sys::poll(&mut fds, Some(Duration::ZERO)) {
        Ok(_) => fds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) == 0,
        Err(_) => false,
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

fn retry(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// Closes `sock` with a reset (`SO_LINGER` 0), so its peer sees the connection fail rather
/// than end.
fn abort(sock: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the descriptor is open (owned by `sock`); the pointer and length describe
    // `linger`, which outlives the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(sock);
}

/// Sets `O_NONBLOCK` on `fd`.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only queries the descriptor's flags.
    let flags = sys::check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: F_SETFL with the descriptor's own flags plus O_NONBLOCK.
    sys::check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Frames queued toward the port.
#[derive(Default)]
struct Outq {
    buf: Vec<u8>,
    pos: usize,
}

impl Outq {
    fn push(&mut self, msg: &NetMsg) {
        if self.pos == self.buf.len() {
            self.clear();
        } else if self.pos >= OUT_HIGH {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(&encode(msg));
    }

    fn backlog(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Writes what the port takes without blocking.
    fn flush(&mut self, port: &mut impl Write) -> io::Result<()> {
        while self.pos < self.buf.len() {
            match port.write(&self.buf[self.pos..]) {
                Ok(0) => break,
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.pos == self.buf.len() {
            self.clear();
        }
        Ok(())
    }
}

/// One tunnelled connection.
struct Conn {
    sock: TcpStream,
    /// Guest → host is open: the socket has not reached EOF (we have not sent `Close`).
    reading: bool,
    /// Bytes sent to the host and not credited back yet (at most [`WINDOW`]).
    in_flight: u32,
    /// Bytes received from the host and not credited back yet (at most [`WINDOW`]).
    owed: u32,
    /// Of `owed`, bytes already written to the socket: the next credit.
    consumed: u32,
    /// Host bytes the socket has not taken yet, from `pos`.
    pending: Vec<u8>,
    pos: usize,
    /// The host sent `Close`.
    host_closed: bool,
    /// The socket's write side is shut down (after `Close` and the pending bytes).
    write_shut: bool,
    /// `poll` reported a hang-up: the socket is left out of `poll` while we want nothing of it.
    hup: bool,
}

impl Conn {
    fn new(sock: TcpStream) -> Conn {
        Conn {
            sock,
            reading: true,
            in_flight: 0,
            owed: 0,
            consumed: 0,
            pending: Vec::new(),
            pos: 0,
            host_closed: false,
            write_shut: false,
            hup: false,
        }
    }

    fn wants_read(&self) -> bool {
        self.reading && self.in_flight < WINDOW
    }

    fn has_pending(&self) -> bool {
        self.pos < self.pending.len()
    }

    fn events(&self, can_read: bool) -> libc::c_short {
        let mut events = 0;
        if can_read && self.wants_read() {
            events |= libc::POLLIN;
        }
        if self.has_pending() {
            events |= libc::POLLOUT;
        }
        events
    }

    fn shut_write(&mut self) {
        // A socket whose peer is gone may refuse; its read side reports that.
        let _ = self.sock.shutdown(Shutdown::Write);
        self.write_shut = true;
    }
}

/// The multiplexer: guest sockets accepted on a listener ↔ frames on a port.
pub struct Engine<P: Port> {
    port: P,
    listener: TcpListener,
    max_conns: usize,
    grace: Duration,
    /// A host is connected to the port.
    connected: bool,
    /// No frame from the host was handled since it connected.
    fresh: bool,
    conns: HashMap<u32, Conn>,
    /// Accepted while no host was connected, with the time they give up.
    waiting: Vec<(TcpStream, Instant)>,
    next_id: u32,
    decoder: FrameDecoder,
    out: Outq,
    port_buf: Vec<u8>,
    sock_buf: Vec<u8>,
    listener_paused_until: Option<Instant>,
}

impl<P: Port> Engine<P> {
    /// An engine carrying connections accepted on `listener` over `port`, at most `max_conns`
    /// at once. Both are made non-blocking.
    pub fn new(port: P, listener: TcpListener, max_conns: usize) -> Engine<P> {
        if let Err(e) = set_nonblocking(port.as_raw_fd()) {
            log!("tunnel: make the port non-blocking: {e}");
        }
        if let Err(e) = listener.set_nonblocking(true) {
            log!("tunnel: make the listener non-blocking: {e}");
        }
        Engine {
            port,
            listener,
            max_conns,
            grace: HOST_GRACE,
            connected: false,
            fresh: false,
            conns: HashMap::new(),
            waiting: Vec::new(),
            next_id: 1,
            decoder: FrameDecoder::new(),
            out: Outq::default(),
            port_buf: vec![0; 64 * 1024],
            sock_buf: vec![0; MAX_CHUNK],
            listener_paused_until: None,
        }
    }

    /// Connections open (not counting those waiting for a host).
    #[cfg(test)]
    pub fn open_conns(&self) -> usize {
        self.conns.len()
    }

    /// Sets how long connections wait for a host.
    #[cfg(test)]
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Ends the engine: resets every connection and hands back the listener.
    pub fn close(mut self) -> TcpListener {
        self.reset_all(false);
        for (sock, _) in self.waiting.drain(..) {
            abort(sock);
        }
        self.listener
    }

    /// Waits for something to do (for at most `max_wait`, forever when `None`) and does it.
    /// An error means the port failed: the caller reopens it.
    pub fn step(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        if !self.connected && self.port.host_connected() {
            log!("tunnel: host connected");
            self.connected = true;
            self.fresh = true;
            self.out.push(&NetMsg::Reset { conn: RESET_ALL });
            for (sock, _) in std::mem::take(&mut self.waiting) {
                self.open_conn(sock);
            }
        }
        self.expire_waiting(now);
        if self.listener_paused_until.is_some_and(|t| now >= t) {
            self.listener_paused_until = None;
        }

        let mut fds = Vec::with_capacity(2 + self.conns.len());
        let mut ids = Vec::with_capacity(self.conns.len());
        let listen_fd = if self.listener_paused_until.is_none() { self.listener.as_raw_fd() } else { -1 };
        fds.push(pollfd(listen_fd, libc::POLLIN));
        // While no host is connected the port reports hang-up (and EOF) at once: it is not
        // polled then, and `host_connected` is asked again after a tick instead (a short one
        // while connections wait for a host).
        let port_fd = if self.connected { self.port.as_raw_fd() } else { -1 };
        let port_events = if self.out.backlog() > 0 { libc::POLLIN | libc::POLLOUT } else { libc::POLLIN };
        fds.push(pollfd(port_fd, port_events));
        let can_read = self.out.backlog() < OUT_HIGH;
        for (&id, c) in &self.conns {
            let events = c.events(can_read);
            if events == 0 && c.hup {
                continue;
            }
            fds.push(pollfd(c.sock.as_raw_fd(), events));
            ids.push(id);
        }
        let timeout = self.timeout(now, max_wait);
        sys::poll(&mut fds, timeout)?;

        if fds[0].revents & libc::POLLIN != 0 {
            self.accept_all();
        }
        if self.connected {
            let revents = fds[1].revents;
            if revents & libc::POLLNVAL != 0 {
                return Err(io::Error::other("the port descriptor is not open"));
            }
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.read_port(revents)?;
            }
        }
        for (i, id) in ids.into_iter().enumerate() {
            self.on_socket(id, fds[i + 2].revents);
        }
        self.send_credits();
        if self.connected {
            self.out.flush(&mut self.port)?;
        }
        Ok(())
    }

    fn timeout(&self, now: Instant, max_wait: Option<Duration>) -> Option<Duration> {
        let mut t = max_wait;
        let mut cap = |d: Duration| t = Some(t.map_or(d, |cur| cur.min(d)));
        if !self.connected {
            cap(if self.waiting.is_empty() { IDLE_TICK } else { POLL_INTERVAL });
        }
        if let Some(first) = self.waiting.iter().map(|(_, deadline)| *deadline).min() {
            cap(first.saturating_duration_since(now));
        }
        if let Some(until) = self.listener_paused_until {
            cap(until.saturating_duration_since(now));
        }
        t
    }

    fn expire_waiting(&mut self, now: Instant) {
        let before = self.waiting.len();
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting).into_iter().partition(|(_, d)| *d <= now);
        self.waiting = kept;
        if !expired.is_empty() {
            log!("tunnel: no host connected within {:?}; resetting {} of {before} waiting connections", self.grace, expired.len());
        }
        for (sock, _) in expired {
            abort(sock);
        }
    }

    fn accept_all(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((sock, _)) => self.admit(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    log!("tunnel: accept: {e}; pausing the listener for {ACCEPT_PAUSE:?}");
                    self.listener_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, sock: TcpStream) {
        if self.conns.len() + self.waiting.len() >= self.max_conns {
            return abort(sock);
        }
        if sock.set_nonblocking(true).is_err() {
            return abort(sock);
        }
        let _ = sock.set_nodelay(true);
        if self.connected {
            self.open_conn(sock);
        } else {
            self.waiting.push((sock, Instant::now() + self.grace));
        }
    }

    fn open_conn(&mut self, sock: TcpStream) {
        let id = self.alloc_id();
        self.conns.insert(id, Conn::new(sock));
        self.out.push(&NetMsg::Open { conn: id });
    }

    /// The next id not in use; ids count up so a recent one is not reused soon.
    fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id == RESET_ALL {
                self.next_id = 0;
            }
            if id != RESET_ALL && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    fn read_port(&mut self, revents: libc::c_short) -> io::Result<()> {
        match self.port.read(&mut self.port_buf) {
            Ok(0) => self.host_gone(),
            Ok(n) => {
                self.decoder.push(&self.port_buf[..n]);
                self.handle_frames();
            }
            // A hang-up with nothing to read: the host is gone all the same.
            Err(e) if retry(&e) && revents & libc::POLLHUP != 0 && revents & libc::POLLIN == 0 => self.host_gone(),
            Err(e) if retry(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The host disconnected: every connection fails, and the next host starts afresh.
    fn host_gone(&mut self) {
        log!("tunnel: host disconnected; resetting {} connections", self.conns.len());
        self.connected = false;
        self.reset_all(false);
        self.out.clear();
        self.decoder = FrameDecoder::new();
    }

    fn handle_frames(&mut self) {
        loop {
            match self.decoder.next::<NetMsg>() {
                Ok(Some(msg)) => self.on_host_msg(msg),
                Ok(None) => return,
                Err(e) => {
                    self.fresh = false;
                    // The stream cannot be trusted past a bad frame: drop what is buffered.
                    log!("tunnel: bad frame from the host: {e}; resetting every connection");
                    self.reset_all(true);
                    self.decoder = FrameDecoder::new();
                    return;
                }
            }
        }
    }

    fn on_host_msg(&mut self, msg: NetMsg) {
        let first = std::mem::replace(&mut self.fresh, false);
        if let Err(e) = msg.validate() {
            let conn = msg.conn();
            log!("tunnel: invalid message from the host for connection {conn}: {e}");
            return self.reset_conn(conn, true);
        }
        match msg {
            // Connections are opened by the guest only.
            NetMsg::Open { conn } => log!("tunnel: the host tried to open connection {conn}; ignored"),
            NetMsg::Data { conn, data } => self.host_data(conn, data),
            NetMsg::Close { conn } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                c.host_closed = true;
                if !c.has_pending() && !c.write_shut {
                    c.shut_write();
                }
                self.forget_if_done(conn);
            }
            NetMsg::Credit { conn, bytes } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.in_flight = c.in_flight.saturating_sub(bytes);
                }
            }
            // A new host whose arrival we missed: what we hold belongs to the previous one.
            NetMsg::Reset { conn: RESET_ALL } if !first => {
                log!("tunnel: the host started a new session; resetting {} connections", self.conns.len());
                self.reset_all(false);
                self.out.push(&NetMsg::Reset { conn: RESET_ALL });
            }
            NetMsg::Reset { conn: RESET_ALL } => {}
            NetMsg::Reset { conn } => self.reset_conn(conn, false),
        }
    }

    fn host_data(&mut self, conn: u32, data: Vec<u8>) {
        // Data for an unknown connection was sent before the host saw our Reset: ignored.
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let len = data.len() as u32;
        if c.host_closed || c.owed.saturating_add(len) > WINDOW {
            let why = if c.host_closed { "after its Close" } else { "beyond its credit" };
            log!("tunnel: the host sent data for connection {conn} {why}; resetting it");
            return self.reset_conn(conn, true);
        }
        c.owed += len;
        if c.has_pending() {
            c.pending.drain(..c.pos);
            c.pending.extend_from_slice(&data);
        } else {
            c.pending = data;
        }
        c.pos = 0;
        self.write_pending(conn);
    }

    /// Writes buffered host bytes to the socket; false if the connection failed.
    fn write_pending(&mut self, conn: u32) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        while c.has_pending() {
            match c.sock.write(&c.pending[c.pos..]) {
                Ok(0) => return self.guest_failed(conn),
                Ok(n) => {
                    c.pos += n;
                    c.consumed += n as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return self.guest_failed(conn),
            }
        }
        c.pending = Vec::new();
        c.pos = 0;
        if c.host_closed && !c.write_shut {
            c.shut_write();
        }
        self.forget_if_done(conn);
        true
    }

    fn on_socket(&mut self, conn: u32, revents: libc::c_short) {
        if revents == 0 {
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if revents & libc::POLLHUP != 0 {
            c.hup = true;
        }
        if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            self.guest_failed(conn);
            return;
        }
        if c.has_pending() && revents & (libc::POLLOUT | libc::POLLHUP) != 0 && !self.write_pending(conn) {
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.wants_read() && revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            self.read_socket(conn);
        }
    }

    fn read_socket(&mut self, conn: u32) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let max = ((WINDOW - c.in_flight) as usize).min(MAX_CHUNK);
        match c.sock.read(&mut self.sock_buf[..max]) {
            Ok(0) => {
                c.reading = false;
                self.out.push(&NetMsg::Close { conn });
                self.forget_if_done(conn);
            }
            Ok(n) => {
                c.in_flight += n as u32;
                self.out.push(&NetMsg::Data { conn, data: self.sock_buf[..n].to_vec() });
            }
            Err(e) if retry(&e) => {}
            Err(_) => {
                self.guest_failed(conn);
            }
        }
    }

    /// Returns credit for what the sockets took since the last step.
    fn send_credits(&mut self) {
        for (&conn, c) in &mut self.conns {
            if c.consumed == 0 {
                continue;
            }
            // After its Close the host sends nothing more: credit would be of no use.
            if !c.host_closed {
                self.out.push(&NetMsg::Credit { conn, bytes: c.consumed });
            }
            c.owed -= c.consumed;
            c.consumed = 0;
        }
    }

    /// Forgets a connection closed both ways.
    fn forget_if_done(&mut self, conn: u32) {
        if self.conns.get(&conn).is_some_and(|c| !c.reading && c.write_shut) {
            self.conns.remove(&conn);
        }
    }

    /// The guest socket failed: drop the connection and tell the host. Returns false.
    fn guest_failed(&mut self, conn: u32) -> bool {
        self.reset_conn(conn, true);
        false
    }

    /// Drops a connection at once; tells the host if `tell`.
    fn reset_conn(&mut self, conn: u32, tell: bool) {
        if let Some(c) = self.conns.remove(&conn) {
            abort(c.sock);
            if tell {
                self.out.push(&NetMsg::Reset { conn });
            }
        }
    }

    /// Drops every connection; tells the host if `tell`.
    fn reset_all(&mut self, tell: bool) {
        for (conn, c) in self.conns.drain() {
            abort(c.sock);
            if tell {
                self.out.push(&NetMsg::Reset { conn });
            }
        }
    }
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
