//! One tunnelled connection: its entry in the tunnel's table, its tasks (guest → handler,
//! handler → guest, and the handler itself) and the accounting that bounds them.
//!
//! Every task of a connection runs under the connection's [`CancellationToken`], a child of the
//! tunnel's. A `Reset` either way, the guest overrunning its credit, a broken pipe or channel,
//! the handler done and its bytes delivered, or the end of the tunnel cancels it; a token
//! remembers being cancelled, so a task that had not even started yet ends as soon as it runs
//! (no wake-up can be lost). The up and down tasks end at once, which closes the handler's
//! stream; the handler, if it had started, gets [`HANDLER_GRACE`] to finish by itself (the
//! egress proxy logs the attempt as it ends). Each task holds its connection's [`Slot`] until its future is
//! dropped, and the tunnel refuses an `Open` while [`MAX_CONNS`] slots are held: at most
//! `MAX_CONNS * TASKS_PER_CONN` connection tasks are ever alive, whatever the guest sends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_proto::tunnel::{NetMsg, MAX_CONNS, WINDOW};
use kiln_proto::MAX_CHUNK;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// What serves one tunnelled connection (kiln's egress proxy).
pub type Handler = Arc<dyn Fn(DuplexStream) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Tasks each connection runs: guest → handler, handler → guest, and the handler.
pub const TASKS_PER_CONN: usize = 3;

/// How long a handler whose connection is over (its stream closed: `Reset`, or the tunnel
/// ended) may run on to finish by itself, still counted. kiln's egress proxy notices a closed
/// stream within its idle timeout (60 s) and logs the attempt; a handler still running after
/// this is dropped.
pub const HANDLER_GRACE: Duration = Duration::from_secs(60);

/// Host-side buffering per connection: this pipe to the handler plus at most `WINDOW` in flight.
const PIPE: usize = 64 * 1024;

/// Live-task counts of one tunnel (see [`super::serve_stream_with_stats`]).
#[derive(Clone, Default, Debug)]
pub struct Stats(Arc<Counts>);

#[derive(Default, Debug)]
struct Counts {
    tasks: AtomicUsize,
    peak: AtomicUsize,
    conns: AtomicUsize,
}

impl Stats {
    /// Tasks of the tunnel whose future has not been dropped yet: its frame writer, and
    /// [`TASKS_PER_CONN`] per connection (a connection's tasks still count after its `Reset`,
    /// until they have really ended).
    pub fn live_tasks(&self) -> usize {
        self.0.tasks.load(Ordering::SeqCst)
    }

    /// The most tasks ever alive at once.
    pub fn peak_tasks(&self) -> usize {
        self.0.peak.load(Ordering::SeqCst)
    }

    /// Connections with a task still alive; an `Open` is refused while this is [`MAX_CONNS`].
    pub fn live_conns(&self) -> usize {
        self.0.conns.load(Ordering::SeqCst)
    }
}

/// A connection's place under [`MAX_CONNS`], shared by its tasks: freed when the last ends.
pub(super) struct Slot(Stats);

impl Drop for Slot {
    fn drop(&mut self) {
        (self.0).0.conns.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one task (and holds its connection's slot) until the task's future is dropped.
struct TaskGuard {
    stats: Stats,
    _slot: Option<Arc<Slot>>,
}

impl TaskGuard {
    fn new(stats: &Stats, slot: Option<&Arc<Slot>>) -> TaskGuard {
        let n = stats.0.tasks.fetch_add(1, Ordering::SeqCst) + 1;
        stats.0.peak.fetch_max(n, Ordering::SeqCst);
        TaskGuard { stats: stats.clone(), _slot: slot.cloned() }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.stats.0.tasks.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spawns `fut` as a counted task of the tunnel that ends when `cancel` is cancelled; checked
/// first, so a task cancelled before it ever ran drops `fut` unpolled.
pub(super) fn spawn_task(stats: &Stats, slot: Option<&Arc<Slot>>, cancel: &CancellationToken, fut: impl Future<Output = ()> + Send + 'static) {
    let guard = TaskGuard::new(stats, slot);
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            biased;
            () = cancel.cancelled() => {}
            () = fut => {}
        }
    });
}

/// What one tunnel's reader and its connection tasks share.
pub(super) struct Shared {
    conns: Mutex<HashMap<u32, Conn>>,
    /// Numbers the openings, so a reused id's entry is told from the one before.
    opened: AtomicU64,
    pub(super) stats: Stats,
    /// Frames to the guest, written by the tunnel's writer task.
    pub(super) tx: mpsc::Sender<NetMsg>,
    /// The tunnel's token: cancelled when it ends, and with it every connection's.
    root: CancellationToken,
    handler: Handler,
    /// How long a handler may run on once its connection is over.
    grace: Duration,
    /// Resets of refused connections that did not fit in `tx` (the writer sends them next),
    /// at most [`MAX_PENDING_RESETS`].
    resets: Mutex<std::collections::VecDeque<u32>>,
    /// Wakes the writer for `resets` (a permit is kept: no wake-up is lost).
    pub(super) resets_ready: Notify,
}

/// Refusals kept for the writer when its channel is full. A guest that opens connections
/// faster than it reads the answers loses the ones over this: it is flooding.
const MAX_PENDING_RESETS: usize = 4 * MAX_CONNS;

/// A connection's entry, while the guest may still talk to it.
pub(super) struct Conn {
    /// Which opening of this id the entry is.
    opening: u64,
    /// Guest → handler bytes, consumed by the up task; empty: the guest's `Close`.
    pub(super) up: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes the guest sent that we have not credited back yet.
    pub(super) guest_inflight: Arc<AtomicI64>,
    /// Credit we have toward the guest.
    pub(super) credit: Arc<Credit>,
    /// Ends the connection's tasks.
    pub(super) cancel: CancellationToken,
}

/// Credit toward the guest, and the wake-up of the down task waiting for more.
pub(super) struct Credit {
    bytes: AtomicI64,
    more: Notify,
}

impl Credit {
    /// The guest granted `n` more bytes.
    pub(super) fn grant(&self, n: u32) {
        self.bytes.fetch_add(i64::from(n), Ordering::SeqCst);
        // One waiter at most (the down task); the permit is kept if it is not waiting yet.
        self.more.notify_one();
    }

    /// Waits until some credit is available, and says how much.
    async fn wait(&self) -> usize {
        loop {
            let a = self.bytes.load(Ordering::SeqCst);
            if a > 0 {
                return a as usize;
            }
            self.more.notified().await;
        }
    }
}

impl Shared {
    pub(super) fn new(stats: Stats, tx: mpsc::Sender<NetMsg>, root: CancellationToken, handler: Handler, grace: Duration) -> Shared {
        Shared {
            conns: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            stats,
            tx,
            root,
            handler,
            grace,
            resets: Mutex::new(std::collections::VecDeque::new()),
            resets_ready: Notify::new(),
        }
    }

    /// The connection table.
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<u32, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the guest its connection `conn` is gone. When the writer's channel is full the
    /// reset waits in a bounded queue of its own (a guest whose `Open` was refused must hear
    /// so, or its connection hangs); past that bound it is dropped: the host never buffers
    /// without bound for a guest that does not read.
    pub(super) fn refuse(&self, conn: u32) {
        if self.tx.try_send(NetMsg::Reset { conn }).is_ok() {
            return;
        }
        let mut q = self.resets.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < MAX_PENDING_RESETS && !q.contains(&conn) {
            q.push_back(conn);
        }
        drop(q);
        self.resets_ready.notify_one();
    }

    /// The refusals waiting for the writer.
    pub(super) fn take_resets(&self) -> Vec<u32> {
        self.resets.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }
}

/// Removes a connection's entry (if it is still this opening's) once its up and down tasks end.
struct Entry {
    shared: Arc<Shared>,
    id: u32,
    opening: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut map = self.shared.lock();
        if map.get(&self.id).is_some_and(|c| c.opening == self.opening) {
            map.remove(&self.id);
        }
    }
}

/// The guest opened `id`: refused with a `Reset` (and nothing spawned) if the id is in use or
/// [`MAX_CONNS`] connections still have tasks alive; else its entry and tasks.
pub(super) fn open(shared: &Arc<Shared>, id: u32) {
    let mut map = shared.lock();
    if shared.stats.live_conns() >= MAX_CONNS || map.contains_key(&id) {
        drop(map);
        shared.refuse(id);
        return;
    }
    let opening = shared.opened.fetch_add(1, Ordering::SeqCst);
    let cancel = shared.root.child_token();
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let inflight = Arc::new(AtomicI64::new(0));
    let credit = Arc::new(Credit { bytes: AtomicI64::new(i64::from(WINDOW)), more: Notify::new() });
    map.insert(id, Conn { opening, up: up_tx, guest_inflight: inflight.clone(), credit: credit.clone(), cancel: cancel.clone() });
    shared.stats.0.conns.fetch_add(1, Ordering::SeqCst);
    let slot = Arc::new(Slot(shared.stats.clone()));
    // Spawned without the lock: a task dropped at once (the runtime shutting down) takes it.
    drop(map);
    let entry = Arc::new(Entry { shared: shared.clone(), id, opening });
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (rd, wr) = tokio::io::split(ours);
    let handler_done = CancellationToken::new();
    let link = Link { id, tx: shared.tx.clone(), cancel: cancel.clone() };
    let stats = &shared.stats;
    spawn_task(stats, Some(&slot), &cancel, up(wr, up_rx, inflight, link.clone(), entry.clone()));
    spawn_task(stats, Some(&slot), &cancel, down(rd, credit, handler_done.clone(), link, entry));
    let serving = (shared.handler)(theirs);
    spawn_handler(stats, &slot, &cancel, shared.grace, async move {
        serving.await;
        handler_done.cancel();
    });
}

/// Spawns a connection's handler as a counted task. Cancelled before it ever ran, it is dropped
/// unpolled (it saw nothing); cancelled later, its stream is closed (the up and down tasks have
/// ended) and it gets `grace` to finish by itself (kiln's egress proxy logs the attempt then),
/// keeping the connection's slot, and is dropped if it has not.
fn spawn_handler(stats: &Stats, slot: &Arc<Slot>, cancel: &CancellationToken, grace: Duration, fut: impl Future<Output = ()> + Send + 'static) {
    let guard = TaskGuard::new(stats, Some(slot));
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let _guard = guard;
        // Moved in first so that it is dropped before the guard, whichever way this ends.
        let mut fut = std::pin::pin!(fut);
        if cancel.is_cancelled() {
            return;
        }
        tokio::select! {
            () = &mut fut => return,
            () = cancel.cancelled() => {}
        }
        let _ = tokio::time::timeout(grace, fut).await;
    });
}

/// What a connection's up and down tasks need to talk to the guest and to end the connection.
#[derive(Clone)]
struct Link {
    id: u32,
    tx: mpsc::Sender<NetMsg>,
    cancel: CancellationToken,
}

impl Link {
    /// Sends `m` to the guest; false (and the connection ended) if the tunnel is gone.
    async fn send(&self, m: NetMsg) -> bool {
        let ok = self.tx.send(m).await.is_ok();
        if !ok {
            self.cancel.cancel();
        }
        ok
    }

    /// Resets the connection both ways.
    async fn reset(&self) {
        self.send(NetMsg::Reset { conn: self.id }).await;
        self.cancel.cancel();
    }
}

/// Guest → handler: writes, then gives the guest its credit back.
async fn up(mut wr: WriteHalf<DuplexStream>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>, inflight: Arc<AtomicI64>, link: Link, _entry: Arc<Entry>) {
    loop {
        let Some(data) = rx.recv().await else {
            // The entry is gone: so is the connection.
            link.cancel.cancel();
            return;
        };
        if data.is_empty() {
            let _ = wr.shutdown().await;
            return;
        }
        if wr.write_all(&data).await.is_err() {
            return link.reset().await;
        }
        inflight.fetch_sub(data.len() as i64, Ordering::SeqCst);
        if !link.send(NetMsg::Credit { conn: link.id, bytes: data.len() as u32 }).await {
            return;
        }
    }
}

/// Handler → guest, within the guest's credit. At the handler's end of stream: `Close`, and once
/// the handler has returned too, the connection is over (nothing can reach it any more).
async fn down(mut rd: ReadHalf<DuplexStream>, credit: Arc<Credit>, handler_done: CancellationToken, link: Link, entry: Arc<Entry>) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let avail = credit.wait().await;
        let n = match rd.read(&mut buf[..avail.min(MAX_CHUNK)]).await {
            Ok(0) => {
                if link.send(NetMsg::Close { conn: link.id }).await {
                    drop(entry);
                    handler_done.cancelled().await;
                }
                link.cancel.cancel();
                return;
            }
            Ok(n) => n,
            Err(_) => return link.reset().await,
        };
        credit.bytes.fetch_sub(n as i64, Ordering::SeqCst);
        if !link.send(NetMsg::Data { conn: link.id, data: buf[..n].to_vec() }).await {
            return;
        }
    }
}
