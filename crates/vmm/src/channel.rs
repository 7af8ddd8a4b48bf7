//! The host end of the agent channel: a unix socket that QEMU bridges to the guest's
//! virtio-serial port, multiplexed by request id.
//!
//! One task reads frames, validates every message (the guest is hostile) and routes it to the
//! request it names. A guest that sends a malformed, oversized or invalid frame, or an unknown
//! request id too often, poisons the channel: every pending request ends and
//! [`AgentChannel::failure`] says why.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::{encode, FrameDecoder, GuestMsg, HostMsg, RequestId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::error::VmError;

/// Messages buffered per request before the reader waits (back-pressure to the guest).
const PER_REQUEST_BUFFER: usize = 64;
/// Unsolicited messages (unknown id) tolerated before the channel is declared broken.
const MAX_STRAY: u32 = 64;
/// Stale bytes skipped, at most, before the first `HelloAck` of a connection.
const MAX_STALE: usize = 16 << 20;

#[derive(Debug, Default)]
struct Shared {
    routes: Mutex<HashMap<RequestId, mpsc::Sender<GuestMsg>>>,
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        drop(f);
        // Dropping every sender ends every pending request.
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A request's stream of replies; deregisters itself when dropped.
#[derive(Debug)]
pub struct Replies {
    id: RequestId,
    rx: mpsc::Receiver<GuestMsg>,
    shared: Arc<Shared>,
}

impl Replies {
    /// The request id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next reply, or the reason the channel broke.
    pub async fn next(&mut self) -> Result<GuestMsg, VmError> {
        match self.rx.recv().await {
            Some(m) => Ok(m),
            None => Err(VmError::Channel(
                self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| "closed".into()),
            )),
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.shared.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// A connected, multiplexed channel to the agent.
#[derive(Debug, Clone)]
pub struct AgentChannel {
    tx: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
}

impl AgentChannel {
    /// Connects to the socket QEMU serves, retrying until it exists or `timeout` passes.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<AgentChannel, VmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => return Err(VmError::io("connect to the agent socket", path)(e)),
            }
        };
        Ok(Self::from_stream(stream))
    }

    /// Wraps an already connected stream (tests use a socketpair).
    pub fn from_stream(stream: UnixStream) -> AgentChannel {
        let (mut r, mut w) = stream.into_split();
        let shared = Arc::new(Shared::default());
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let wshared = shared.clone();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if let Err(e) = w.write_all(&frame).await {
                    wshared.fail(format!("write to guest: {e}"));
                    break;
                }
            }
        });
        let rshared = shared.clone();
        // The first request must be Hello; its id is random so that its answer can be told
        // apart from stale bytes the guest wrote to a previous host (see `read_loop`).
        let first = random_id();
        tokio::spawn(async move {
            let why = read_loop(&mut r, &rshared, first).await;
            rshared.fail(why);
        });
        AgentChannel { tx, shared, next_id: Arc::new(AtomicU32::new(first)) }
    }

    /// Registers a new request id and returns its reply stream.
    pub fn request(&self) -> Replies {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PER_REQUEST_BUFFER);
        if self.failure().is_none() {
            self.shared.routes.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        }
        Replies { id, rx, shared: self.shared.clone() }
    }

    /// Sends a message to the agent.
    pub async fn send(&self, msg: &HostMsg) -> Result<(), VmError> {
        if let Some(f) = self.failure() {
            return Err(VmError::Channel(f));
        }
        self.tx.send(encode(msg)).await.map_err(|_| VmError::Channel(self.failure().unwrap_or_else(|| "closed".into())))
    }

    /// Why the channel broke, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Declares the channel broken (e.g. the VM died), ending every pending request.
    pub fn poison(&self, why: impl Into<String>) {
        self.shared.fail(why.into());
    }
}

fn random_id() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: the pointer and length describe `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let id = if n == 4 { u32::from_le_bytes(b) } else { std::process::id().wrapping_mul(2_654_435_761) };
    // Leave room for the ids that follow; never 0 (reserved for unattributed errors).
    (id >> 1).max(1)
}

/// Reads frames and routes them. Until the `HelloAck` for request `hello_id` arrives, bytes
/// are skipped: after a reconnect or a restore the stream can start with the tail of frames
/// the guest wrote to the previous host.
async fn read_loop(r: &mut (impl AsyncReadExt + Unpin), shared: &Shared, hello_id: RequestId) -> String {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stray = 0u32;
    let mut synced = false;
    let mut skipped = 0usize;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                return match dec.finish() {
                    Ok(()) => "the guest closed the channel".into(),
                    Err(e) => format!("the guest closed the channel mid-frame: {e}"),
                }
            }
            Ok(n) => n,
            Err(e) => return format!("read from guest: {e}"),
        };
        dec.push(&buf[..n]);
        if !synced {
            match dec.resync(|m: &GuestMsg| matches!(m, GuestMsg::HelloAck { id, .. } if *id == hello_id)) {
                Some(ack) => {
                    synced = true;
                    if ack.validate().is_err() {
                        return "guest sent an invalid hello".into();
                    }
                    let route = shared.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&hello_id).cloned();
                    if let Some(tx) = route {
                        let _ = tx.send(ack).await;
                    }
                }
                None => {
                    skipped += n;
                    if skipped > MAX_STALE {
                        return format!("guest sent {skipped} bytes without answering hello");
                    }
                    continue;
                }
            }
        }
        loop {
            let msg: GuestMsg = match dec.next() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return format!("guest sent a bad frame: {e}"),
            };
            if let Err(e) = msg.validate() {
                return e.to_string();
            }
            let route = shared.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&msg.id()).cloned();
            match route {
                // A closed receiver means the caller lost interest; drop the message.
                Some(tx) => {
                    let _ = tx.send(msg).await;
                }
                None => {
                    stray += 1;
                    if stray > MAX_STRAY {
                        return format!("guest sent {stray} messages for requests that do not exist");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn hello(ch: &AgentChannel, b: &mut UnixStream, stale: &[u8]) {
        let mut h = ch.request();
        b.write_all(stale).await.unwrap();
        let ack = GuestMsg::HelloAck { id: h.id(), version: 1, agent: "t".into(), kernel: "k".into() };
        b.write_all(&encode(&ack)).await.unwrap();
        assert_eq!(h.next().await.unwrap(), ack);
    }

    #[tokio::test]
    async fn skips_stale_bytes_before_hello() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let ch = AgentChannel::from_stream(a);
        let mut stale = encode(&GuestMsg::Stdout { id: 5, data: vec![1; 1000] });
        stale.drain(..7);
        stale.extend(encode(&GuestMsg::Pong { id: 12 }));
        hello(&ch, &mut b, &stale).await;
        let mut r = ch.request();
        b.write_all(&encode(&GuestMsg::Pong { id: r.id() })).await.unwrap();
        assert_eq!(r.next().await.unwrap(), GuestMsg::Pong { id: r.id() });
        assert!(ch.failure().is_none());
    }

    #[tokio::test]
    async fn routes_replies_and_poisons_on_garbage() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let ch = AgentChannel::from_stream(a);
        hello(&ch, &mut b, &[]).await;
        let mut r1 = ch.request();
        let mut r2 = ch.request();
        b.write_all(&encode(&GuestMsg::Pong { id: r2.id() })).await.unwrap();
        b.write_all(&encode(&GuestMsg::Pong { id: r1.id() })).await.unwrap();
        assert_eq!(r1.next().await.unwrap(), GuestMsg::Pong { id: r1.id() });
        assert_eq!(r2.next().await.unwrap(), GuestMsg::Pong { id: r2.id() });
        // An oversized chunk violates validation: the channel is poisoned.
        let big = GuestMsg::Stdout { id: r1.id(), data: vec![0; kiln_proto::MAX_CHUNK + 1] };
        let mut frame = postcard::to_allocvec(&big).unwrap();
        let mut framed = (frame.len() as u32).to_le_bytes().to_vec();
        framed.append(&mut frame);
        b.write_all(&framed).await.unwrap();
        let err = r1.next().await.unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
        assert!(ch.failure().is_some());
        assert!(ch.send(&HostMsg::Ping { id: 9 }).await.is_err());
    }

    #[tokio::test]
    async fn oversized_length_prefix_poisons() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let ch = AgentChannel::from_stream(a);
        hello(&ch, &mut b, &[]).await;
        let mut r = ch.request();
        b.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let err = r.next().await.unwrap_err().to_string();
        assert!(err.contains("exceeds"), "{err}");
    }
}
