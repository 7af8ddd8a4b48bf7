//! A hostile guest against the host end of the egress tunnel, with no VM: the test is the guest,
//! a unix socket peer speaking the tunnel's frames, and the handler relays each connection to a
//! loopback TCP listener the test runs. However the guest opens and resets connections, the
//! host's tasks stay bounded and none outlives its connection or its tunnel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::tunnel::{serve_stream_with_stats, Handler, Stats, SESSION_MARKER, TASKS_PER_CONN};
use kiln_proto::encode;
use kiln_proto::tunnel::{NetMsg, MAX_CONNS};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// Handler futures alive (made but not yet dropped), the most ever alive at once, and how many
/// were made.
#[derive(Clone, Default)]
struct Live(Arc<(AtomicUsize, AtomicUsize, AtomicUsize)>);

struct LiveGuard(Live);

impl Live {
    fn enter(&self) -> LiveGuard {
        let n = (self.0).0.fetch_add(1, Ordering::SeqCst) + 1;
        (self.0).1.fetch_max(n, Ordering::SeqCst);
        (self.0).2.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.clone())
    }
    fn now(&self) -> usize {
        (self.0).0.load(Ordering::SeqCst)
    }
    fn peak(&self) -> usize {
        (self.0).1.load(Ordering::SeqCst)
    }
    fn made(&self) -> usize {
        (self.0).2.load(Ordering::SeqCst)
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

/// What the host sent the guest: how many `Reset`s, and the frames of one connection.
struct Heard {
    resets: Arc<AtomicUsize>,
    of_probe: tokio::sync::mpsc::UnboundedReceiver<NetMsg>,
    done: tokio::task::JoinHandle<()>,
}

/// Reads everything the host sends, so its writer never blocks on us; frames of `probe` and
/// later ids are passed on.
fn listen(mut r: tokio::net::unix::OwnedReadHalf, probe: u32) -> Heard {
    let resets = Arc::new(AtomicUsize::new(0));
    let (tx, of_probe) = tokio::sync::mpsc::unbounded_channel();
    let counted = resets.clone();
    let done = tokio::spawn(async move {
        let mut dec = kiln_proto::FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            dec.push(&buf[..n]);
            while let Some(m) = dec.next::<NetMsg>().unwrap() {
                match m {
                    _ if m.conn() >= probe => drop(tx.send(m)),
                    NetMsg::Reset { .. } => drop(counted.fetch_add(1, Ordering::SeqCst)),
                    _ => {}
                }
            }
        }
    });
    Heard { resets, of_probe, done }
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
    let stats = Stats::default();
    let (host, guest) = UnixStream::pair().unwrap();
    let tunnel = tokio::spawn(serve_stream_with_stats(host, relay(addr, live.clone()), stats.clone()));
    let (r, mut w) = guest.into_split();
    let probe = PAIRS + 1;
    let mut heard = listen(r, probe);
    w.write_all(&encode(&SESSION_MARKER)).await.unwrap();
    // The frame writer, and nothing else yet.
    assert!(eventually(Duration::from_secs(5), || stats.live_tasks() == 1).await);
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
    // The guest stops: every connection it opened, it reset.
    let emptied = eventually(Duration::from_secs(20), || live.now() == 0 && stats.live_tasks() == 1).await;
    let rss1 = rss(&status);
    let growth = rss1.saturating_sub(rss0);
    eprintln!(
        "flood of {PAIRS} Open/Reset pairs in {flood:?}: {} handlers made, live seen {worst}, peak {}; peak tunnel tasks {}; {} Resets from the host; left after the guest stopped: {} handlers, {} tasks; RSS {} -> {} MiB (+{} KiB)",
        live.made(),
        live.peak(),
        stats.peak_tasks(),
        heard.resets.load(Ordering::SeqCst),
        live.now(),
        stats.live_tasks(),
        rss0 >> 20,
        rss1 >> 20,
        growth >> 10
    );
    assert!(emptied, "{} handlers and {} tasks outlived their connections", live.now(), stats.live_tasks());
    assert!(live.peak() <= MAX_CONNS, "{} handlers alive at once, over MAX_CONNS = {MAX_CONNS}", live.peak());
    let bound = MAX_CONNS * TASKS_PER_CONN + 1;
    assert!(stats.peak_tasks() <= bound, "{} tasks alive at once, over {bound}", stats.peak_tasks());
    assert!(growth < 64 << 20, "RSS grew by {} MiB", growth >> 20);

    // The tunnel still serves a well-behaved connection. The host may still be reading the
    // end of the flood and refuse the first tries (at its limit): a refused Open is told so
    // with a Reset, and the guest tries again with a new id.
    let tp = Instant::now();
    let mut echoed = Vec::new();
    'tries: for attempt in 0..100 {
        let id = probe + attempt;
        w.write_all(&[encode(&NetMsg::Open { conn: id }), encode(&NetMsg::Data { conn: id, data: b"ping".to_vec() })].concat()).await.unwrap();
        while echoed.len() < 4 {
            // A refusal past the host's bound on queued Resets is dropped (the guest is
            // flooding): like a guest's connect timeout, try again after a while.
            let Ok(m) = tokio::time::timeout(Duration::from_secs(2), heard.of_probe.recv()).await else { continue 'tries };
            let m = m.unwrap();
            match m {
                _ if m.conn() != id => {} // an earlier try's refusal
                NetMsg::Data { data, .. } => echoed.extend(data),
                NetMsg::Credit { .. } => {}
                NetMsg::Reset { .. } => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'tries;
                }
                other => panic!("{other:?}"),
            }
        }
        break;
    }
    eprintln!("probe echoed after {:?}", tp.elapsed());
    assert_eq!(echoed, b"ping");
    assert_eq!(stats.live_conns(), 1);

    // The guest goes away with that connection open: it ends with the tunnel.
    drop(w);
    let why = tokio::time::timeout(Duration::from_secs(10), tunnel).await.expect("serve ends with the guest").unwrap();
    assert_eq!(why, "the guest side closed");
    assert!(eventually(Duration::from_secs(10), || stats.live_tasks() == 0 && live.now() == 0).await, "{} tasks outlived the tunnel", stats.live_tasks());
    heard.done.await.unwrap();
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
async fn starved_tunnel(conns: u32, live: &Live, stats: &Stats) -> (tokio::task::JoinHandle<String>, UnixStream) {
    let (host, mut guest) = UnixStream::pair().unwrap();
    let tunnel = tokio::spawn(serve_stream_with_stats(host, firehose(live.clone()), stats.clone()));
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
    assert_eq!(stats.live_tasks(), 1 + conns as usize * TASKS_PER_CONN);
    (tunnel, guest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_task_waiting_for_credit_ends_with_its_tunnel() {
    // The guest goes away: serve returns.
    let (live, stats) = (Live::default(), Stats::default());
    let (tunnel, guest) = starved_tunnel(8, &live, &stats).await;
    drop(guest);
    let why = tokio::time::timeout(Duration::from_secs(10), tunnel).await.expect("serve ends").unwrap();
    assert_eq!(why, "the guest side closed");
    assert!(eventually(Duration::from_secs(10), || live.now() == 0 && stats.live_tasks() == 0).await, "{} tasks outlived the tunnel", stats.live_tasks());

    // The sandbox is destroyed: its tunnel's task is aborted, the guest still connected.
    let (live, stats) = (Live::default(), Stats::default());
    let (tunnel, _guest) = starved_tunnel(8, &live, &stats).await;
    tunnel.abort();
    assert!(tunnel.await.unwrap_err().is_cancelled());
    assert!(eventually(Duration::from_secs(10), || live.now() == 0 && stats.live_tasks() == 0).await, "{} tasks outlived the aborted tunnel", stats.live_tasks());
}
