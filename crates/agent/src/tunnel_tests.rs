//! Tests of the tunnel engine: a socketpair stands in for the port (the test speaks the host's
//! side of the protocol on it) and a loopback listener on an ephemeral port for the proxy
//! address.

use std::collections::{HashSet, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_proto::tunnel::{NetMsg, MAX_CONNS, WINDOW};
use kiln_proto::{encode, FrameDecoder, MAX_CHUNK};

use super::{abort, fd_host_connected, Engine, Port, RESET_ALL};
use crate::log::lock;

const TIMEOUT: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

/// A port whose host can come and go, like virtio-serial: while no host is connected reads
/// return EOF (and what the old host sent is gone), writes would block and `poll` hangs up.
struct TestPort {
    sock: UnixStream,
    up: Arc<AtomicBool>,
}

impl Read for TestPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.up.load(Ordering::SeqCst) {
            return self.sock.read(buf);
        }
        while matches!(self.sock.read(buf), Ok(n) if n > 0) {}
        Ok(0)
    }
}

impl Write for TestPort {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for TestPort {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Port for TestPort {
    fn host_connected(&self) -> bool {
        self.up.load(Ordering::SeqCst) && fd_host_connected(self.sock.as_raw_fd())
    }
}

/// The test's end of the port: the host.
struct Host {
    sock: UnixStream,
    dec: FrameDecoder,
}

impl Host {
    fn send(&mut self, msg: &NetMsg) {
        self.sock.write_all(&encode(msg)).unwrap();
    }

    fn try_recv(&mut self, wait: Duration) -> Option<NetMsg> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(m) = self.dec.next::<NetMsg>().unwrap() {
                m.validate().unwrap();
                return Some(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("the engine closed the port"),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
                Err(e) => panic!("read the port: {e}"),
            }
        }
    }

    fn recv(&mut self) -> NetMsg {
        self.try_recv(TIMEOUT).expect("no message from the engine")
    }

    /// The next message that is not a credit.
    fn recv_no_credit(&mut self) -> NetMsg {
        loop {
            match self.recv() {
                NetMsg::Credit { .. } => {}
                m => return m,
            }
        }
    }

    fn expect_open(&mut self) -> u32 {
        match self.recv() {
            NetMsg::Open { conn } => conn,
            m => panic!("expected Open, got {m:?}"),
        }
    }

    /// Collects `n` bytes of `conn` (credits of it are allowed in between).
    fn recv_data(&mut self, conn: u32, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.recv() {
                NetMsg::Data { conn: c, data } if c == conn => got.extend(data),
                NetMsg::Credit { conn: c, .. } if c == conn => {}
                m => panic!("expected data of {conn}, got {m:?}"),
            }
        }
        assert_eq!(got.len(), n);
        got
    }

    fn quiet(&mut self, wait: Duration) {
        if let Some(m) = self.try_recv(wait) {
            panic!("unexpected message {m:?}");
        }
    }
}

/// An engine stepping on a thread of its own.
struct Harness<P: Port + Send + 'static> {
    engine: Arc<Mutex<Engine<P>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl<P: Port + Send + 'static> Harness<P> {
    fn start(port: P, max_conns: usize, grace: Duration) -> Harness<P> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut engine = Engine::new(port, listener, max_conns);
        engine.set_grace(grace);
        let engine = Arc::new(Mutex::new(engine));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                lock(&e).step(Some(Duration::from_millis(10))).unwrap();
            }
        });
        Harness { engine, stop, thread: Some(thread), addr }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    fn wait_conns(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let open = lock(&self.engine).open_conns();
            if open == n {
                return;
            }
            assert!(Instant::now() < deadline, "{open} connections open, expected {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl<P: Port + Send + 'static> Drop for Harness<P> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An engine and its host, past the guest's session marker.
fn setup(max_conns: usize) -> (Harness<UnixStream>, Host) {
    let (port, host) = UnixStream::pair().unwrap();
    let h = Harness::start(port, max_conns, Duration::from_millis(200));
    let mut host = Host { sock: host, dec: FrameDecoder::new() };
    assert_eq!(host.recv(), NetMsg::Reset { conn: RESET_ALL });
    (h, host)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

/// The client's connection was reset.
fn assert_reset(client: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[test]
fn hello_round_trip_with_credit() {
    let (_h, mut host) = setup(MAX_CONNS);
    let mut client = _h.connect();
    client.write_all(b"hello").unwrap();
    let conn = host.expect_open();
    assert_ne!(conn, RESET_ALL);
    assert_eq!(host.recv_data(conn, 5), b"hello");
    host.send(&NetMsg::Credit { conn, bytes: 5 });
    host.send(&NetMsg::Data { conn, data: b"HELLO".to_vec() });
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HELLO");
    let mut credited = 0;
    while credited < 5 {
        match host.recv() {
            NetMsg::Credit { conn: c, bytes } if c == conn => credited += bytes,
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(credited, 5);
}

#[test]
fn echo_a_mebibyte_both_ways() {
    let (h, mut host) = setup(MAX_CONNS);
    let client = h.connect();
    let mut writer = client.try_clone().unwrap();
    let sent = pattern(MIB);
    let to_send = sent.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let r = std::thread::spawn(move || {
        let mut client = client;
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    });

    let conn = host.expect_open();
    let (mut credit, mut received, mut granted) = (u64::from(WINDOW), 0u64, 0u64);
    let mut echo: VecDeque<u8> = VecDeque::new();
    let mut guest_closed = false;
    loop {
        while !echo.is_empty() && credit > 0 {
            let n = echo.len().min(MAX_CHUNK).min(credit as usize);
            let data: Vec<u8> = echo.drain(..n).collect();
            host.send(&NetMsg::Data { conn, data });
            credit -= n as u64;
        }
        if guest_closed && echo.is_empty() {
            host.send(&NetMsg::Close { conn });
            break;
        }
        match host.recv() {
            NetMsg::Data { conn: c, data } if c == conn => {
                received += data.len() as u64;
                assert!(received - granted <= u64::from(WINDOW), "the guest exceeded its credit");
                host.send(&NetMsg::Credit { conn, bytes: data.len() as u32 });
                granted += data.len() as u64;
                echo.extend(data);
            }
            NetMsg::Credit { conn: c, bytes } if c == conn => {
                credit += u64::from(bytes);
                assert!(credit <= u64::from(WINDOW), "the guest credited more than it received");
            }
            NetMsg::Close { conn: c } if c == conn => guest_closed = true,
            m => panic!("{m:?}"),
        }
    }
    w.join().unwrap();
    let got = r.join().unwrap();
    assert_eq!(received, MIB as u64);
    assert!(got == sent, "echo differs ({} bytes back)", got.len());
    h.wait_conns(0);
}

#[test]
fn never_more_than_the_window_in_flight() {
    let (h, mut host) = setup(MAX_CONNS);
    let mut client = h.connect();
    let sent = pattern(MIB);
    let to_send = sent.clone();
    let w = std::thread::spawn(move || {
        client.write_all(&to_send).unwrap();
        client
    });
    let conn = host.expect_open();
    // No credit back: exactly one window arrives, then nothing.
    let mut got = host.recv_data(conn, WINDOW as usize);
    host.quiet(Duration::from_millis(300));
    // Credit it all, then each chunk as it comes.
    host.send(&NetMsg::Credit { conn, bytes: WINDOW });
    let mut granted = got.len();
    while got.len() < MIB {
        match host.recv() {
            NetMsg::Data { conn: c, data } if c == conn => {
                got.extend_from_slice(&data);
                assert!(got.len() - granted <= WINDOW as usize, "the guest exceeded its credit");
                host.send(&NetMsg::Credit { conn, bytes: data.len() as u32 });
                granted += data.len();
            }
            m => panic!("{m:?}"),
        }
    }
    assert!(got == sent, "data differs");
    drop(w.join().unwrap());
    assert_eq!(host.recv(), NetMsg::Close { conn });
}

#[test]
fn half_close_guest_first() {
    let (h, mut host) = setup(MAX_CONNS);
    let mut client = h.connect();
    client.write_all(b"req").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let conn = host.expect_open();
    assert_eq!(host.recv_data(conn, 3), b"req");
    assert_eq!(host.recv(), NetMsg::Close { conn });
    h.wait_conns(1);
    host.send(&NetMsg::Data { conn, data: b"resp".to_vec() });
    host.send(&NetMsg::Close { conn });
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"resp");
    h.wait_conns(0);
}

#[test]
fn half_close_host_first() {
    let (h, mut host) = setup(MAX_CONNS);
    let mut client = h.connect();
    let conn = host.expect_open();
    host.send(&NetMsg::Data { conn, data: b"hi".to_vec() });
    host.send(&NetMsg::Close { conn });
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hi");
    h.wait_conns(1);
    client.write_all(b"late").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    match host.recv_no_credit() {
        NetMsg::Data { conn: c, data } if c == conn => assert_eq!(data, b"late"),
        m => panic!("{m:?}"),
    }
    assert_eq!(host.recv_no_credit(), NetMsg::Close { conn });
    h.wait_conns(0);
}

#[test]
fn reset_from_the_host_resets_the_guest_socket() {
    let (h, mut host) = setup(MAX_CONNS);
    let mut client = h.connect();
    let conn = host.expect_open();
    host.send(&NetMsg::Reset { conn });
    assert_reset(&mut client);
    h.wait_conns(0);
    // Late data for it is ignored.
    host.send(&NetMsg::Data { conn, data: b"late".to_vec() });
    host.quiet(Duration::from_millis(100));
}

#[test]
fn a_failed_guest_socket_is_reset_to_the_host() {
    let (h, mut host) = setup(MAX_CONNS);
    let client = h.connect();
    let conn = host.expect_open();
    abort(client);
    assert_eq!(host.recv(), NetMsg::Reset { conn });
    h.wait_conns(0);
}

#[test]
fn host_eof_resets_every_connection() {
    let (h, mut host) = setup(MAX_CONNS);
    let mut a = h.connect();
    let mut b = h.connect();
    host.expect_open();
    host.expect_open();
    drop(host);
    assert_reset(&mut a);
    assert_reset(&mut b);
    h.wait_conns(0);
    // No host any more: a new connection waits for one (200 ms here), then is reset.
    let start = Instant::now();
    let mut c = h.connect();
    assert_reset(&mut c);
    assert!(start.elapsed() >= Duration::from_millis(150), "reset after {:?}", start.elapsed());
}

#[test]
fn a_new_host_gets_the_connections_that_waited() {
    let (port, host_sock) = UnixStream::pair().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let h = Harness::start(TestPort { sock: port, up: up.clone() }, MAX_CONNS, TIMEOUT);
    let mut host = Host { sock: host_sock, dec: FrameDecoder::new() };
    assert_eq!(host.recv(), NetMsg::Reset { conn: RESET_ALL });
    let mut a = h.connect();
    let first = host.expect_open();
    // The host goes (a byte wakes the engine, which then reads EOF, as from virtio-serial).
    up.store(false, Ordering::SeqCst);
    host.sock.write_all(b"x").unwrap();
    assert_reset(&mut a);
    h.wait_conns(0);
    let mut b = h.connect();
    host.quiet(Duration::from_millis(100));
    // A new host connects, announces itself, and sees the guest's marker and then the waiting
    // connection open; its marker, as the first frame, resets nothing.
    host.dec = FrameDecoder::new();
    up.store(true, Ordering::SeqCst);
    host.send(&NetMsg::Reset { conn: RESET_ALL });
    assert_eq!(host.recv(), NetMsg::Reset { conn: RESET_ALL });
    let conn = host.expect_open();
    assert_ne!(conn, first);
    host.quiet(Duration::from_millis(100));
    b.write_all(b"ping").unwrap();
    assert_eq!(host.recv_data(conn, 4), b"ping");
    host.send(&NetMsg::Data { conn, data: b"pong".to_vec() });
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let (h, mut host) = setup(2);
    let mut a = h.connect();
    let _b = h.connect();
    let ca = host.expect_open();
    host.expect_open();
    let mut c = h.connect();
    assert_reset(&mut c);
    host.quiet(Duration::from_millis(200));
    // Closing one makes room.
    a.shutdown(Shutdown::Write).unwrap();
    assert_eq!(host.recv(), NetMsg::Close { conn: ca });
    host.send(&NetMsg::Close { conn: ca });
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap();
    h.wait_conns(1);
    let _d = h.connect();
    host.expect_open();
    h.wait_conns(2);
}

#[test]
fn a_malformed_frame_resets_everything_and_resyncs() {
    let (h, mut host) = setup(MAX_CONNS);
    let mut a = h.connect();
    let mut b = h.connect();
    let ids: HashSet<u32> = [host.expect_open(), host.expect_open()].into();
    host.sock.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    let mut reset = HashSet::new();
    while reset.len() < 2 {
        match host.recv() {
            NetMsg::Reset { conn } => assert!(reset.insert(conn)),
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(reset, ids);
    assert_reset(&mut a);
    assert_reset(&mut b);
    h.wait_conns(0);
    let mut c = h.connect();
    let conn = host.expect_open();
    host.send(&NetMsg::Data { conn, data: b"ok".to_vec() });
    let mut buf = [0u8; 2];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn session_marker_unknown_ids_and_invalid_messages() {
    let (h, mut host) = setup(MAX_CONNS);
    let mut a = h.connect();
    let mut b = h.connect();
    let ca = host.expect_open();
    let _cb = host.expect_open();
    // Unknown connection: ignored.
    host.send(&NetMsg::Data { conn: 12345, data: b"x".to_vec() });
    host.send(&NetMsg::Credit { conn: 12345, bytes: 1 });
    host.quiet(Duration::from_millis(100));
    // An invalid message resets its connection only.
    host.send(&NetMsg::Credit { conn: ca, bytes: WINDOW + 1 });
    assert_eq!(host.recv(), NetMsg::Reset { conn: ca });
    assert_reset(&mut a);
    h.wait_conns(1);
    // A new session mid-stream (the guest missed a host's arrival): everything is reset, and
    // the guest answers with its marker.
    host.send(&NetMsg::Reset { conn: RESET_ALL });
    assert_eq!(host.recv(), NetMsg::Reset { conn: RESET_ALL });
    assert_reset(&mut b);
    h.wait_conns(0);
    host.quiet(Duration::from_millis(100));
}
