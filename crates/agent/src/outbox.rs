//! The write side: one writer thread owns the output and writes frames queued on a bounded
//! channel, so a slow host back-pressures the guest instead of growing its memory.
//!
//! Every queued frame carries the connection generation it belongs to; the writer drops frames
//! of a generation that has ended, so a new host never sees replies meant for the previous one.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::{encode, GuestMsg};

use crate::log::{guarded, spawn};

/// Frames the writer may hold before senders block.
const QUEUE: usize = 64;

/// Where frames go.
pub trait Sink: Send + 'static {
    /// Writes one whole frame. `current()` tells whether the frame's connection is still the
    /// live one; a sink may give up on a stale frame (and must not start writing one).
    fn write_frame(&mut self, frame: &[u8], current: &dyn Fn() -> bool) -> io::Result<()>;
}

enum Out {
    Frame { gen: u64, msg: GuestMsg },
    Flush(SyncSender<()>),
}

/// The sending side: cheap to clone, one per thread that replies.
#[derive(Clone)]
pub struct Outbox {
    tx: SyncSender<Out>,
    gen: Arc<AtomicU64>,
}

impl Outbox {
    /// Starts the writer thread over `sink`.
    pub fn start(sink: impl Sink) -> Outbox {
        let (tx, rx) = sync_channel(QUEUE);
        let gen = Arc::new(AtomicU64::new(0));
        let writer_gen = gen.clone();
        // Creating a thread at startup fails only when the system is out of resources; the
        // agent then runs without output rather than dying (which, as PID 1, panics the kernel).
        spawn("writer".into(), move || write_loop(sink, rx, writer_gen));
        Outbox { tx, gen }
    }

    /// The generation of the live connection.
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::SeqCst)
    }

    /// Ends the live generation: frames queued for it are dropped. Returns the new one.
    pub fn next_generation(&self) -> u64 {
        self.gen.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Queues `msg` for connection `gen`, blocking while the queue is full.
    pub fn send(&self, gen: u64, msg: GuestMsg) {
        if self.tx.send(Out::Frame { gen, msg }).is_err() {
            log!("writer is gone; dropping a reply");
        }
    }

    /// Queues `msg` for the live connection.
    pub fn reply(&self, msg: GuestMsg) {
        self.send(self.generation(), msg);
    }

    /// Waits until everything queued so far was written, for at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = sync_channel(1);
        self.tx.send(Out::Flush(ack_tx)).is_ok() && ack_rx.recv_timeout(timeout).is_ok()
    }
}

fn write_loop(mut sink: impl Sink, rx: Receiver<Out>, gen: Arc<AtomicU64>) {
    for out in rx {
        match out {
            Out::Flush(ack) => {
                let _ = ack.try_send(());
            }
            Out::Frame { gen: frame_gen, msg } => guarded("an outgoing frame", || {
                let current = || gen.load(Ordering::SeqCst) == frame_gen;
                if !current() {
                    return;
                }
                // `encode` panics on an oversized message; senders bound their messages, and
                // `guarded` keeps a bug there from ending the writer.
                let frame = encode(&msg);
                if let Err(e) = sink.write_frame(&frame, &current) {
                    log!("write frame: {e}");
                }
            }),
        }
    }
}

/// Frames to the agent's stdout (`--stdio` mode).
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn write_frame(&mut self, frame: &[u8], _current: &dyn Fn() -> bool) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(frame)?;
        out.flush()
    }
}
