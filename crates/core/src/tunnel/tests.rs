//! The tunnel with a well-behaved guest, and with one that overruns its credit.

use super::*;
use kiln_proto::tunnel::MAX_CONNS;
use kiln_proto::MAX_CHUNK;
use tokio::io::{AsyncWriteExt, DuplexStream};

/// A handler that echoes upper-cased bytes.
fn echo() -> Handler {
    Arc::new(|mut s: DuplexStream| {
        Box::pin(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let up: Vec<u8> = buf[..n].to_ascii_uppercase();
                        if s.write_all(&up).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        })
    })
}

async fn next(r: &mut (impl AsyncReadExt + Unpin), dec: &mut FrameDecoder) -> NetMsg {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = dec.next::<NetMsg>().unwrap() {
            return m;
        }
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0, "tunnel closed");
        dec.push(&buf[..n]);
    }
}

#[tokio::test]
async fn open_data_credit_close() {
    let (host, mut guest) = UnixStream::pair().unwrap();
    tokio::spawn(serve_stream(host, echo()));
    let mut dec = FrameDecoder::new();
    assert_eq!(next(&mut guest, &mut dec).await, SESSION_MARKER);
    // Stale bytes from an earlier session, then the marker.
    guest.write_all(&encode(&NetMsg::Data { conn: 1, data: b"stale".to_vec() })[3..]).await.unwrap();
    guest.write_all(&encode(&SESSION_MARKER)).await.unwrap();
    guest.write_all(&encode(&NetMsg::Open { conn: 7 })).await.unwrap();
    guest.write_all(&encode(&NetMsg::Data { conn: 7, data: b"hello".to_vec() })).await.unwrap();
    let mut got = Vec::new();
    let mut credited = 0;
    while got.len() < 5 || credited < 5 {
        match next(&mut guest, &mut dec).await {
            NetMsg::Data { conn: 7, data } => got.extend(data),
            NetMsg::Credit { conn: 7, bytes } => credited += bytes,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"HELLO");
    guest.write_all(&encode(&NetMsg::Close { conn: 7 })).await.unwrap();
    loop {
        match next(&mut guest, &mut dec).await {
            NetMsg::Close { conn: 7 } => break,
            NetMsg::Credit { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_guest_over_its_credit_is_reset() {
    let (host, mut guest) = UnixStream::pair().unwrap();
    // A handler that never reads: nothing is credited back.
    let stuck: Handler = Arc::new(|s: DuplexStream| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        })
    });
    tokio::spawn(serve_stream(host, stuck));
    guest.write_all(&encode(&SESSION_MARKER)).await.unwrap();
    guest.write_all(&encode(&NetMsg::Open { conn: 1 })).await.unwrap();
    let chunk = vec![0u8; MAX_CHUNK];
    // Credit comes back only for what fits the 64 KiB pipe to the handler; past that and
    // the window, the guest is over its credit.
    for _ in 0..((WINDOW as usize + 64 * 1024) / MAX_CHUNK + 2) {
        guest.write_all(&encode(&NetMsg::Data { conn: 1, data: chunk.clone() })).await.unwrap();
    }
    let mut dec = FrameDecoder::new();
    loop {
        match next(&mut guest, &mut dec).await {
            NetMsg::Reset { conn: 1 } => break,
            NetMsg::Credit { .. } | NetMsg::Reset { conn: u32::MAX } => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Waits up to 10 s for `f` to hold.
async fn eventually(f: impl Fn() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while !f() {
        if t0.elapsed() > Duration::from_secs(10) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// A tunnel counted in the returned stats, its guest synced.
async fn counted(handler: Handler) -> (Stats, UnixStream) {
    let (host, mut guest) = UnixStream::pair().unwrap();
    let stats = Stats::default();
    tokio::spawn(serve_stream_with_stats(host, handler, stats.clone()));
    guest.write_all(&encode(&SESSION_MARKER)).await.unwrap();
    (stats, guest)
}

#[tokio::test]
async fn an_id_reset_and_opened_again_at_once_is_a_new_connection() {
    let (stats, mut guest) = counted(echo()).await;
    let frames = [NetMsg::Open { conn: 7 }, NetMsg::Reset { conn: 7 }, NetMsg::Open { conn: 7 }, NetMsg::Data { conn: 7, data: b"again".to_vec() }];
    guest.write_all(&frames.iter().flat_map(encode).collect::<Vec<u8>>()).await.unwrap();
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    while got.len() < 5 {
        match next(&mut guest, &mut dec).await {
            NetMsg::Data { conn: 7, data } => got.extend(data),
            NetMsg::Credit { conn: 7, .. } | NetMsg::Reset { conn: u32::MAX } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"AGAIN");
    // The first opening's tasks are gone; the second's are all there.
    assert!(eventually(|| stats.live_tasks() == 1 + TASKS_PER_CONN).await, "{}", stats.live_tasks());
    assert_eq!(stats.live_conns(), 1);
}

#[tokio::test]
async fn a_connection_ends_when_its_handler_is_done() {
    let bye: Handler = Arc::new(|mut s: DuplexStream| {
        Box::pin(async move {
            let _ = s.write_all(b"bye").await;
        })
    });
    let (stats, mut guest) = counted(bye).await;
    guest.write_all(&encode(&NetMsg::Open { conn: 3 })).await.unwrap();
    let mut dec = FrameDecoder::new();
    assert_eq!(next(&mut guest, &mut dec).await, SESSION_MARKER);
    assert_eq!(next(&mut guest, &mut dec).await, NetMsg::Data { conn: 3, data: b"bye".to_vec() });
    assert_eq!(next(&mut guest, &mut dec).await, NetMsg::Close { conn: 3 });
    // The guest never closes its side: nothing can reach the connection, so it is over.
    assert!(eventually(|| stats.live_tasks() == 1).await, "{}", stats.live_tasks());
    assert_eq!(stats.live_conns(), 0);
    guest.write_all(&encode(&NetMsg::Data { conn: 3, data: b"late".to_vec() })).await.unwrap();
    assert_eq!(next(&mut guest, &mut dec).await, NetMsg::Reset { conn: 3 });
}

#[tokio::test]
async fn an_open_over_max_conns_is_refused_without_a_task() {
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let m = made.clone();
    // Handlers that wait for the guest to finish.
    let idle: Handler = Arc::new(move |mut s: DuplexStream| {
        m.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let _ = s.read_to_end(&mut Vec::new()).await;
        })
    });
    let (stats, mut guest) = counted(idle).await;
    let opens: Vec<u8> = (0..=MAX_CONNS as u32).flat_map(|conn| encode(&NetMsg::Open { conn })).collect();
    guest.write_all(&opens).await.unwrap();
    let mut dec = FrameDecoder::new();
    assert_eq!(next(&mut guest, &mut dec).await, SESSION_MARKER);
    assert_eq!(next(&mut guest, &mut dec).await, NetMsg::Reset { conn: MAX_CONNS as u32 });
    assert_eq!(made.load(Ordering::SeqCst), MAX_CONNS);
    assert_eq!(stats.live_conns(), MAX_CONNS);
    assert_eq!(stats.live_tasks(), 1 + MAX_CONNS * TASKS_PER_CONN);
    // Once one connection's tasks have ended, there is room for another.
    guest.write_all(&encode(&NetMsg::Reset { conn: 0 })).await.unwrap();
    assert!(eventually(|| stats.live_conns() == MAX_CONNS - 1).await);
    guest.write_all(&encode(&NetMsg::Open { conn: MAX_CONNS as u32 })).await.unwrap();
    assert!(eventually(|| made.load(Ordering::SeqCst) == MAX_CONNS + 1).await);
    assert_eq!(stats.peak_tasks(), 1 + MAX_CONNS * TASKS_PER_CONN);
}

/// A handler that, like the egress proxy, notes how its connection went once its stream ends,
/// then takes `linger` to return; `noted` counts the notes.
fn noting(noted: Arc<std::sync::atomic::AtomicUsize>, linger: Duration) -> Handler {
    Arc::new(move |mut s: DuplexStream| {
        let noted = noted.clone();
        Box::pin(async move {
            let _ = s.read_to_end(&mut Vec::new()).await;
            noted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(linger).await;
        })
    })
}

/// Opens connection 1 on a tunnel served with `grace`, waits until its handler runs, then
/// resets it (or, with `abort`, aborts the tunnel's task).
async fn reset_one(handler: Handler, grace: Duration, abort: bool) -> (Stats, UnixStream) {
    let (host, mut guest) = UnixStream::pair().unwrap();
    let stats = Stats::default();
    let tunnel = tokio::spawn(serve_with(host, handler, stats.clone(), grace));
    guest.write_all(&[encode(&SESSION_MARKER), encode(&NetMsg::Open { conn: 1 })].concat()).await.unwrap();
    assert!(eventually(|| stats.live_tasks() == 1 + TASKS_PER_CONN).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    if abort {
        tunnel.abort();
    } else {
        guest.write_all(&encode(&NetMsg::Reset { conn: 1 })).await.unwrap();
    }
    (stats, guest)
}

#[tokio::test]
async fn a_reset_handler_finishes_by_itself_within_its_grace() {
    for abort in [false, true] {
        let noted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stats, _guest) = reset_one(noting(noted.clone(), Duration::from_millis(500)), Duration::from_secs(10), abort).await;
        // Its stream closed at once: it saw the end and noted it; it keeps its slot meanwhile.
        assert!(eventually(|| noted.load(Ordering::SeqCst) == 1).await, "abort: {abort}");
        assert_eq!(stats.live_conns(), 1);
        assert!(eventually(|| stats.live_conns() == 0).await);
    }
}

#[tokio::test]
async fn a_handler_past_its_grace_is_dropped() {
    for abort in [false, true] {
        let noted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stats, _guest) = reset_one(noting(noted.clone(), Duration::from_secs(3600)), Duration::from_millis(200), abort).await;
        assert!(eventually(|| noted.load(Ordering::SeqCst) == 1).await);
        assert!(eventually(|| stats.live_conns() == 0).await, "abort: {abort}");
        assert_eq!(stats.live_tasks(), usize::from(!abort), "only the writer, while the tunnel runs");
    }
}
