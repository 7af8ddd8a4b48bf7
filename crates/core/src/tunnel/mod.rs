//! The host end of the egress tunnel (see `kiln_proto::tunnel`): demultiplexes the guest's
//! proxy connections from the `kiln.net` port and hands each to a handler (kiln's egress proxy)
//! as a byte stream, with credit flow control both ways so one slow connection cannot stall the
//! others or make the host buffer without bound.
//!
//! The guest is hostile: every task the tunnel spawns is counted ([`Stats`]) and ends with its
//! connection and, at the latest, with the tunnel, whether [`serve`] returns or the task running
//! it is aborted (a sandbox destroyed); only a handler that had started may run on, its stream
//! closed, for [`HANDLER_GRACE`] to finish (and log) by itself. A guest cannot have more than
//! `MAX_CONNS` connections' tasks alive however fast it opens and resets them (how:
//! `tunnel/conn.rs`).

mod conn;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::tunnel::{NetMsg, WINDOW};
use kiln_proto::{encode, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use conn::{Handler, Stats, HANDLER_GRACE, TASKS_PER_CONN};
use conn::{spawn_task, Shared};


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
    serve_stream_with_stats(stream, handler, Stats::default()).await
}

/// [`serve_stream`], counting the tunnel's tasks in `stats`. Once this returns or its future is
/// dropped, every task of the tunnel is cancelled: it ends as soon as it runs, but for a handler
/// that had started, which gets [`HANDLER_GRACE`] to finish with its stream closed.
pub async fn serve_stream_with_stats(stream: UnixStream, handler: Handler, stats: Stats) -> String {
    serve_with(stream, handler, stats, HANDLER_GRACE).await
}

/// [`serve_stream_with_stats`] with `grace` for [`HANDLER_GRACE`].
async fn serve_with(stream: UnixStream, handler: Handler, stats: Stats, grace: Duration) -> String {
    let root = CancellationToken::new();
    // However this future ends (returning, or dropped by an abort), every task of the tunnel is
    // cancelled with it.
    let _ends_all = root.clone().drop_guard();
    let (mut r, w) = stream.into_split();
    let (tx, rx) = mpsc::channel::<NetMsg>(256);
    // A new session starts with a marker both ways; bytes before the guest's marker are the tail
    // of frames it wrote to a previous host (after a restore or reconnect) and are skipped.
    let _ = tx.try_send(SESSION_MARKER);
    let mut synced = false;
    let shared = Arc::new(Shared::new(stats.clone(), tx, root.clone(), handler, grace));
    spawn_task(&stats, None, &root, write_frames(w, rx, shared.clone()));
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => return "the guest side closed".to_owned(),
            Ok(n) => n,
            Err(e) => return format!("read: {e}"),
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
                Err(e) => return format!("bad tunnel frame from the guest: {e}"),
            };
            if let Err(e) = msg.validate() {
                return e.to_string();
            }
            on_message(msg, &shared);
        }
    }
}

/// Writes the frames of `rx`, and the refusals queued beside it, to the guest until the guest
/// stops reading or the tunnel ends (which cancels this task).
async fn write_frames(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<NetMsg>, shared: Arc<Shared>) {
    loop {
        let mut out = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => encode(&m),
                None => return,
            },
            () = shared.resets_ready.notified() => Vec::new(),
        };
        for conn in shared.take_resets() {
            out.extend(encode(&NetMsg::Reset { conn }));
        }
        if !out.is_empty() && w.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// `Reset` of the connection id no connection has: the start of a tunnel session.
pub const SESSION_MARKER: NetMsg = NetMsg::Reset { conn: u32::MAX };

fn on_message(msg: NetMsg, shared: &Arc<Shared>) {
    match msg {
        NetMsg::Open { conn } => conn::open(shared, conn),
        NetMsg::Data { conn, data } => {
            let mut map = shared.lock();
            let Some(c) = map.get(&conn) else {
                drop(map);
                return shared.refuse(conn);
            };
            let inflight = c.guest_inflight.fetch_add(data.len() as i64, Ordering::SeqCst) + data.len() as i64;
            if inflight > i64::from(WINDOW) {
                // The guest ignored its credit: drop the connection.
                if let Some(c) = map.remove(&conn) {
                    c.cancel.cancel();
                }
                drop(map);
                return shared.refuse(conn);
            }
            let _ = c.up.send(data);
        }
        NetMsg::Close { conn } => {
            if let Some(c) = shared.lock().get(&conn) {
                let _ = c.up.send(Vec::new()); // empty = end of the guest's bytes
            }
        }
        NetMsg::Credit { conn, bytes } => {
            if let Some(c) = shared.lock().get(&conn) {
                c.credit.grant(bytes);
            }
        }
        NetMsg::Reset { conn } => {
            if let Some(c) = shared.lock().remove(&conn) {
                c.cancel.cancel();
            }
        }
    }
}
