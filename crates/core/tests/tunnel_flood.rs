//! A hostile guest against the host end of the egress tunnel, with no VM: the test is the guest,
//! a unix socket peer speaking the tunnel's frames, and the handler relays each connection to a
//! loopback TCP listener the test runs. However the guest opens and resets connections, the
//! host's tasks stay bounded and none outlives its connection or its tunnel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::tunnel::{serve_stream, Handler, SESSION_MARKER};
use kiln_proto::encode;
use kiln_proto::tunnel::{NetMsg, MAX_CONNS};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// Handler futures alive (made but not yet dropped), and the most ever alive at once.
#[derive(Clone, Default)]
struct Live(Arc<(AtomicUsize, AtomicUsize)>);

struct LiveGuard(Live);

impl Live {
    fn enter(&self) -> LiveGuard {
        let n = (self.0).0.fetch_add(1, Ordering::SeqCst) + 1;
        (self.0).1.fetch_max(n, Ordering::SeqCst);
        LiveGuard(self.clone())
    }
    fn now(&self) -> usize {
        (self.0).0.load(Ordering::SeqCst)
    }
    fn peak(&self) -> usize {
        (self.0).1.load(Ordering::SeqCst)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        ((self.0).0).0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A loopback listener that echoes each connection until it closes.
async fn echo_listener() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((mut s, _)) => {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
                // Out of descriptors: let some close.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    });
    addr
}

/// A handler relaying each connection to `addr`, counted in `live` from the moment it is made.
fn relay(addr: std::net::SocketAddr, live: Live) -> Handler {
    Arc::new(move |mut s: DuplexStream| {
        let guard = live.enter();
        Box::pin(async move {
            let _guard = guard;
            if let Ok(mut t) = TcpStream::connect(addr).await {
                let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
            }
        })
    })
}

/// This process's resident memory in bytes, read through a file opened up front (a leak of
/// descriptors must not keep us from measuring).
fn rss(status: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 16 * 1024];
    let n = status.read_at(&mut buf, 0).unwrap();
    let status = String::from_utf8_lossy(&buf[..n]);
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim();
    kb.parse::<u64>().unwrap() * 1024
}

/// Reads and drops whatever the host sends, so its writer never blocks on us.
fn drain(mut r: tokio::net::unix::OwnedReadHalf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
    })
}

/// Waits up to `limit` for `f` to hold.
async fn eventually(limit: Duration, f: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

const PAIRS: u32 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_guest_open_reset_flood_leaves_no_tasks() {
    let addr = echo_listener().await;
    let live = Live::default();
    let (host, guest) = UnixStream::pair().unwrap();
    let tunnel = tokio::spawn(serve_stream(host, relay(addr, live.clone())));
    let (r, mut w) = guest.into_split();
    let drained = drain(r);
    w.write_all(&encode(&SESSION_MARKER)).await.unwrap();
    let status = std::fs::File::open("/proc/self/status").unwrap();
    let rss0 = rss(&status);
    let t0 = Instant::now();
    let mut worst = 0;
    // Half the pairs with each Open followed at once by its Reset in the same write.
    for batch in (0..PAIRS / 2).collect::<Vec<_>>().chunks(500) {
        let mut bytes = Vec::new();
        for &conn in batch {
            bytes.extend(encode(&NetMsg::Open { conn }));
            bytes.extend(encode(&NetMsg::Reset { conn }));
        }
        w.write_all(&bytes).await.unwrap();
        worst = worst.max(live.now());
    }
    // The other half with the Opens and their Resets in separate writes, so the host sees
    // them apart and the handlers get to run (and connect) in between.
    for batch in (PAIRS / 2..PAIRS).collect::<Vec<_>>().chunks(100) {
        let opens: Vec<u8> = batch.iter().flat_map(|&conn| encode(&NetMsg::Open { conn })).collect();
        let resets: Vec<u8> = batch.iter().flat_map(|&conn| encode(&NetMsg::Reset { conn })).collect();
        w.write_all(&opens).await.unwrap();
        tokio::task::yield_now().await;
        w.write_all(&resets).await.unwrap();
        worst = worst.max(live.now());
    }
    let flood = t0.elapsed();
    let emptied = eventually(Duration::from_secs(20), || live.now() == 0).await;
    let rss1 = rss(&status);
    let growth = rss1.saturating_sub(rss0);
    eprintln!(
        "flood of {PAIRS} Open/Reset pairs in {flood:?}: live handlers seen {worst}, peak {}, left after 20 s {}, RSS {} -> {} MiB (+{} KiB)",
        live.peak(),
        live.now(),
        rss0 >> 20,
        rss1 >> 20,
        growth >> 10
    );
    assert!(emptied, "{} handler tasks outlived their connections", live.now());
    assert!(live.peak() <= MAX_CONNS, "{} handlers alive at once, over MAX_CONNS = {MAX_CONNS}", live.peak());
    assert!(growth < 64 << 20, "RSS grew by {} MiB", growth >> 20);
    drop(w);
    let why = tokio::time::timeout(Duration::from_secs(10), tunnel).await.expect("serve ends with the guest").unwrap();
    assert_eq!(why, "the guest side closed");
    drained.await.unwrap();
}

/// A handler that writes to the guest without end, counted in `live`.
fn firehose(live: Live) -> Handler {
    Arc::new(move |mut s: DuplexStream| {
        let guard = live.enter();
        Box::pin(async move {
            let _guard = guard;
            let chunk = vec![b'x'; 16 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        })
    })
}

/// Opens `conns` connections to a firehose handler and never gives credit back, so each
/// connection's down task ends up waiting for credit; returns once they all do.
async fn starved_tunnel(conns: u32, live: &Live) -> (tokio::task::JoinHandle<String>, UnixStream) {
    let (host, mut guest) = UnixStream::pair().unwrap();
    let tunnel = tokio::spawn(serve_stream(host, firehose(live.clone())));
    guest.write_all(&encode(&SESSION_MARKER)).await.unwrap();
    for conn in 0..conns {
        guest.write_all(&encode(&NetMsg::Open { conn })).await.unwrap();
    }
    // Read until every connection has used up its window.
    let mut dec = kiln_proto::FrameDecoder::new();
    let mut got = vec![0u64; conns as usize];
    let mut buf = vec![0u8; 64 * 1024];
    while got.iter().any(|&g| g < u64::from(kiln_proto::tunnel::WINDOW)) {
        let n = guest.read(&mut buf).await.unwrap();
        assert!(n > 0);
        dec.push(&buf[..n]);
        while let Some(m) = dec.next::<NetMsg>().unwrap() {
            if let NetMsg::Data { conn, data } = m {
                got[conn as usize] += data.len() as u64;
            }
        }
    }
    assert_eq!(live.now(), conns as usize);
    (tunnel, guest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_task_waiting_for_credit_ends_with_its_tunnel() {
    // The guest goes away: serve returns.
    let live = Live::default();
    let (tunnel, guest) = starved_tunnel(8, &live).await;
    drop(guest);
    let why = tokio::time::timeout(Duration::from_secs(10), tunnel).await.expect("serve ends").unwrap();
    assert_eq!(why, "the guest side closed");
    assert!(eventually(Duration::from_secs(10), || live.now() == 0).await, "{} handlers outlived the tunnel", live.now());

    // The sandbox is destroyed: its tunnel's task is aborted, the guest still connected.
    let live = Live::default();
    let (tunnel, _guest) = starved_tunnel(8, &live).await;
    tunnel.abort();
    assert!(tunnel.await.unwrap_err().is_cancelled());
    assert!(eventually(Duration::from_secs(10), || live.now() == 0).await, "{} handlers outlived the aborted tunnel", live.now());
}
