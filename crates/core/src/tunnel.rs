//! The host end of the egress tunnel (see `kiln_proto::tunnel`): demultiplexes the guest's
//! proxy connections from the `kiln.net` port and hands each to a handler (kiln's egress proxy)
//! as a byte stream, with credit flow control both ways so one slow connection cannot stall the
//! others or make the host buffer without bound.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::tunnel::{NetMsg, MAX_CONNS, WINDOW};
use kiln_proto::{encode, FrameDecoder, MAX_CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

/// What serves one tunnelled connection (kiln's egress proxy).
pub type Handler = Arc<dyn Fn(DuplexStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Conn {
    /// Guest → handler bytes, consumed by the connection's writer task.
    up: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes the guest sent that we have not credited back yet.
    guest_inflight: Arc<AtomicI64>,
    /// Credit we have toward the guest.
    credit: Arc<(AtomicI64, Notify)>,
    /// Ends the connection's tasks.
    reset: Arc<Notify>,
}

type Conns = Arc<Mutex<HashMap<u32, Conn>>>;

fn lock(c: &Conns) -> std::sync::MutexGuard<'_, HashMap<u32, Conn>> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects to a VM's tunnel socket and serves it until the VM goes away; returns why it ended.
pub async fn serve(socket: &Path, handler: Handler) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match UnixStream::connect(socket).await {
            Ok(s) => break s,
            Err(e) if (e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::ConnectionRefused) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return format!("connect {}: {e}", socket.display()),
        }
    };
    serve_stream(stream, handler).await
}

/// Serves an already connected tunnel stream.
pub async fn serve_stream(stream: UnixStream, handler: Handler) -> String {
    let (mut r, mut w) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<NetMsg>(256);
    // A new session starts with a marker both ways; bytes before the guest's marker are the tail
    // of frames it wrote to a previous host (after a restore or reconnect) and are skipped.
    let _ = tx.try_send(SESSION_MARKER);
    let mut synced = false;
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if w.write_all(&encode(&m)).await.is_err() {
                break;
            }
        }
    });
    let conns: Conns = Arc::new(Mutex::new(HashMap::new()));
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let why = 'outer: loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break "the guest side closed".to_owned(),
            Ok(n) => n,
            Err(e) => break format!("read: {e}"),
        };
        dec.push(&buf[..n]);
        if !synced {
            if dec.resync(|m: &NetMsg| *m == SESSION_MARKER).is_none() {
                continue;
            }
            synced = true;
        }
        loop {
            let msg: NetMsg = match dec.next() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => break 'outer format!("bad tunnel frame from the guest: {e}"),
            };
            if let Err(e) = msg.validate() {
                break 'outer e.to_string();
            }
            on_message(msg, &conns, &tx, &handler);
        }
    };
    for (_, c) in lock(&conns).drain() {
        c.reset.notify_waiters();
    }
    writer.abort();
    why
}

/// `Reset` of the connection id no connection has: the start of a tunnel session.
pub const SESSION_MARKER: NetMsg = NetMsg::Reset { conn: u32::MAX };

fn on_message(msg: NetMsg, conns: &Conns, tx: &mpsc::Sender<NetMsg>, handler: &Handler) {
    match msg {
        NetMsg::Open { conn } => {
            let mut map = lock(conns);
            if map.len() >= MAX_CONNS || map.contains_key(&conn) {
                let _ = tx.try_send(NetMsg::Reset { conn });
                return;
            }
            // Host-side buffering per connection: this pipe plus at most WINDOW in flight.
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (up_tx, up_rx) = mpsc::unbounded_channel();
            let c = Conn {
                up: up_tx,
                guest_inflight: Arc::new(AtomicI64::new(0)),
                credit: Arc::new((AtomicI64::new(i64::from(WINDOW)), Notify::new())),
                reset: Arc::new(Notify::new()),
            };
            spawn_conn(conn, ours, up_rx, &c, conns.clone(), tx.clone());
            map.insert(conn, c);
            drop(map);
            tokio::spawn(handler(theirs));
        }
        NetMsg::Data { conn, data } => {
            let map = lock(conns);
            let Some(c) = map.get(&conn) else {
                let _ = tx.try_send(NetMsg::Reset { conn });
                return;
            };
            let inflight = c.guest_inflight.fetch_add(data.len() as i64, Ordering::SeqCst) + data.len() as i64;
            if inflight > i64::from(WINDOW) {
                // The guest ignored its credit: drop the connection.
                c.reset.notify_waiters();
                let _ = tx.try_send(NetMsg::Reset { conn });
                return;
            }
            let _ = c.up.send(data);
        }
        NetMsg::Close { conn } => {
            if let Some(c) = lock(conns).get(&conn) {
                let _ = c.up.send(Vec::new()); // empty = end of the guest's bytes
            }
        }
        NetMsg::Credit { conn, bytes } => {
            if let Some(c) = lock(conns).get(&conn) {
                c.credit.0.fetch_add(i64::from(bytes), Ordering::SeqCst);
                c.credit.1.notify_waiters();
            }
        }
        NetMsg::Reset { conn } => {
            if let Some(c) = lock(conns).remove(&conn) {
                c.reset.notify_waiters();
            }
        }
    }
}

fn spawn_conn(id: u32, ours: DuplexStream, mut up_rx: mpsc::UnboundedReceiver<Vec<u8>>, c: &Conn, conns: Conns, tx: mpsc::Sender<NetMsg>) {
    let (mut rd, mut wr) = tokio::io::split(ours);
    let inflight = c.guest_inflight.clone();
    let up_tx = tx.clone();
    // Guest → handler: write, then give the guest its credit back.
    let up = tokio::spawn(async move {
        while let Some(data) = up_rx.recv().await {
            if data.is_empty() {
                let _ = wr.shutdown().await;
                return;
            }
            if wr.write_all(&data).await.is_err() {
                let _ = up_tx.send(NetMsg::Reset { conn: id }).await;
                return;
            }
            inflight.fetch_sub(data.len() as i64, Ordering::SeqCst);
            let _ = up_tx.send(NetMsg::Credit { conn: id, bytes: data.len() as u32 }).await;
        }
    });
    let credit = c.credit.clone();
    let reset = c.reset.clone();
    // Handler → guest, within the guest's credit.
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let avail = loop {
                let notified = credit.1.notified();
                let a = credit.0.load(Ordering::SeqCst);
                if a > 0 {
                    break a as usize;
                }
                notified.await;
            };
            let n = match rd.read(&mut buf[..avail.min(MAX_CHUNK)]).await {
                Ok(0) => {
                    let _ = tx.send(NetMsg::Close { conn: id }).await;
                    return;
                }
                Ok(n) => n,
                Err(_) => {
                    let _ = tx.send(NetMsg::Reset { conn: id }).await;
                    return;
                }
            };
            credit.0.fetch_sub(n as i64, Ordering::SeqCst);
            if tx.send(NetMsg::Data { conn: id, data: buf[..n].to_vec() }).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let up_abort = up.abort_handle();
        let down_abort = down.abort_handle();
        tokio::select! {
            _ = reset.notified() => { up_abort.abort(); down_abort.abort(); }
            _ = async { let _ = up.await; let _ = down.await; } => {}
        }
        lock(&conns).remove(&id);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
}
