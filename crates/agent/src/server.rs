//! Frame dispatch: decode `HostMsg`s, validate them, answer short requests inline and start
//! threads for long ones (`Exec`, `FileRead`). Shared by PID 1 and `--stdio` mode.

use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::{ErrorKind, FrameDecoder, GuestMsg, HostMsg, RequestId, PROTOCOL_VERSION};

use crate::errors::{error, io_error};
use crate::exec::{self, ExecCtx, Job};
use crate::execs::{Execs, StdinMsg};
use crate::files::{self, FileWrites};
use crate::log::{guarded, spawn};
use crate::outbox::Outbox;
use crate::reaper::Reaper;
use crate::{command, identity, sys};

/// Stdin chunks queued per exec before the reader waits for the command to consume them.
const STDIN_QUEUE: usize = 64;

/// How the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The guest's init: may change the clock, hostname, RNG, and power off.
    Pid1,
    /// A test harness on a host: leaves the system alone and exits on `Shutdown`.
    Stdio,
}

/// The protocol server. Owned by the reader thread.
pub struct Server {
    mode: Mode,
    ctx: ExecCtx,
    decoder: FrameDecoder,
    uploads: FileWrites,
    /// The sandbox environment from the last `SetIdentity`; kept across connections.
    sandbox_env: Vec<(String, String)>,
}

impl Server {
    /// A server replying through `outbox`.
    pub fn new(mode: Mode, outbox: Outbox, reaper: Arc<Reaper>) -> Server {
        let ctx = ExecCtx { outbox, execs: Arc::new(Execs::default()), reaper };
        Server { mode, ctx, decoder: FrameDecoder::new(), uploads: FileWrites::default(), sandbox_env: Vec::new() }
    }

    /// Handles bytes read from the host.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
        loop {
            match self.decoder.next::<HostMsg>() {
                Ok(Some(msg)) => guarded("a request", || self.handle(msg)),
                Ok(None) => return,
                Err(e) => {
                    // The stream cannot be trusted past a bad frame: drop what is buffered.
                    log!("bad frame from host: {e}");
                    self.reply(error(0, ErrorKind::Protocol, format!("bad frame: {e}")));
                    self.decoder = FrameDecoder::new();
                    return;
                }
            }
        }
    }

    /// The host went away: end its connection and forget any partial frame.
    pub fn disconnected(&mut self) {
        if self.decoder.finish().is_err() {
            log!("host disconnected inside a frame");
        }
        self.decoder = FrameDecoder::new();
        self.end_generation();
    }

    /// `--stdio` mode at EOF: kill every command, drop unfinished writes, flush replies.
    pub fn finish(&mut self) {
        if let Err(e) = self.decoder.finish() {
            log!("input ended: {e}");
        }
        self.ctx.execs.kill_all();
        self.uploads.abort_all();
        self.ctx.execs.wait_empty(Duration::from_secs(3));
        self.ctx.outbox.flush(Duration::from_secs(2));
    }

    /// Kills the execs of the live connection, drops its unfinished writes, and starts a new
    /// generation so replies still queued for it are discarded.
    fn end_generation(&mut self) {
        self.ctx.execs.kill_generation(self.ctx.outbox.generation());
        self.uploads.abort_all();
        self.ctx.outbox.next_generation();
    }

    fn reply(&self, msg: GuestMsg) {
        self.ctx.outbox.reply(msg);
    }

    fn reply_opt(&self, msg: Option<GuestMsg>) {
        if let Some(msg) = msg {
            self.reply(msg);
        }
    }

    fn done_or(&self, id: RequestId, op: &str, path: &str, result: std::io::Result<()>) {
        match result {
            Ok(()) => self.reply(GuestMsg::Done { id }),
            Err(e) => self.reply(io_error(id, op, path, &e)),
        }
    }

    fn handle(&mut self, msg: HostMsg) {
        if let Err(e) = msg.validate() {
            return self.reply(error(request_id(&msg), ErrorKind::InvalidInput, format!("invalid request: {e}")));
        }
        let gen = self.ctx.outbox.generation();
        match msg {
            HostMsg::Hello { id, version } => {
                // Every host starts with Hello. If the disconnect of the previous one went
                // unseen (a quick restore), this still ends its connection.
                self.end_generation();
                if version == PROTOCOL_VERSION {
                    let agent = env!("CARGO_PKG_VERSION").to_string();
                    self.reply(GuestMsg::HelloAck { id, version, agent, kernel: sys::kernel_release() });
                } else {
                    let msg = format!("protocol version {version} not supported, agent speaks {PROTOCOL_VERSION}");
                    self.reply(error(id, ErrorKind::InvalidInput, msg));
                }
            }
            HostMsg::Ping { id } => self.reply(GuestMsg::Pong { id }),
            HostMsg::SetIdentity { id, identity } => {
                match self.mode {
                    Mode::Pid1 => identity::apply(&identity),
                    Mode::Stdio => log!("--stdio: leaving clock, RNG, hostname and machine id alone"),
                }
                self.sandbox_env = identity.env;
                self.reply(GuestMsg::Done { id });
            }
            HostMsg::Exec { id, spec } => self.exec(gen, id, spec),
            HostMsg::Stdin { id, data } => {
                if let Some(tx) = self.ctx.execs.stdin(gen, id) {
                    let _ = tx.send(StdinMsg::Data(data));
                }
            }
            HostMsg::StdinEof { id } => {
                if let Some(tx) = self.ctx.execs.take_stdin(gen, id) {
                    let _ = tx.send(StdinMsg::Eof);
                }
            }
            HostMsg::Signal { id, signal } => {
                if (1..=64).contains(&signal) {
                    self.ctx.execs.signal(gen, id, signal);
                } else {
                    self.reply(error(id, ErrorKind::InvalidInput, format!("invalid signal {signal}")));
                }
            }
            HostMsg::FileWrite { id, path, mode, parents } => {
                let reply = self.uploads.begin(id, &path, mode, parents);
                self.reply_opt(reply);
            }
            HostMsg::FileChunk { id, data } => {
                let reply = self.uploads.chunk(id, &data);
                self.reply_opt(reply);
            }
            HostMsg::FileEnd { id } => {
                let reply = self.uploads.end(id);
                self.reply_opt(reply);
            }
            HostMsg::FileRead { id, path, max_bytes } => {
                let outbox = self.ctx.outbox.clone();
                if spawn(format!("read-{id}"), move || files::read(&outbox, gen, id, &path, max_bytes)).is_none() {
                    self.reply(error(id, ErrorKind::Io, "cannot start a thread for the read"));
                }
            }
            HostMsg::Mkdir { id, path, mode, parents } => self.done_or(id, "mkdir", &path, files::mkdir(&path, mode, parents)),
            HostMsg::List { id, path } => match files::list(&path) {
                Ok(entries) => files::batches(id, entries).into_iter().for_each(|m| self.reply(m)),
                Err(e) => self.reply(io_error(id, "list", &path, &e)),
            },
            HostMsg::Stat { id, path } => match files::stat(&path) {
                Ok(stat) => self.reply(GuestMsg::Stat { id, stat }),
                Err(e) => self.reply(io_error(id, "stat", &path, &e)),
            },
            HostMsg::Remove { id, path, recursive } => self.done_or(id, "remove", &path, files::remove(&path, recursive)),
            HostMsg::Sync { id } => {
                sys::sync();
                self.reply(GuestMsg::Done { id });
            }
            HostMsg::Shutdown { id } => self.shutdown(id),
        }
    }

    fn exec(&mut self, gen: u64, id: RequestId, spec: kiln_proto::ExecSpec) {
        let (tx, rx) = if spec.stdin {
            let (tx, rx) = sync_channel(STDIN_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if !self.ctx.execs.insert(gen, id, tx) {
            return self.reply(error(id, ErrorKind::Protocol, format!("request id {id} is already in use")));
        }
        let env = command::compose_env(command::image_env(), &self.sandbox_env, &spec.env);
        let job = Job { gen, id, spec, env, stdin: rx };
        let ctx = self.ctx.clone();
        if spawn(format!("exec-{id}"), move || guarded("an exec", || exec::run(&ctx, job))).is_none() {
            self.ctx.execs.remove(gen, id);
            self.reply(error(id, ErrorKind::Io, "cannot start a thread for the command"));
        }
    }

    fn shutdown(&mut self, id: RequestId) {
        self.ctx.execs.kill_all();
        sys::sync();
        self.reply(GuestMsg::Done { id });
        self.ctx.outbox.flush(Duration::from_secs(1));
        match self.mode {
            Mode::Stdio => std::process::exit(0),
            Mode::Pid1 => {
                // Let the device hand the last bytes to the host before the VM goes away.
                std::thread::sleep(Duration::from_millis(50));
                sys::sync();
                // SAFETY: plain system call; on success it does not return.
                let ret = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
                log!("reboot returned {ret}: {}; still serving", std::io::Error::last_os_error());
            }
        }
    }
}

/// The request id of any host message.
fn request_id(msg: &HostMsg) -> RequestId {
    match msg {
        HostMsg::Hello { id, .. }
        | HostMsg::Ping { id }
        | HostMsg::SetIdentity { id, .. }
        | HostMsg::Exec { id, .. }
        | HostMsg::Stdin { id, .. }
        | HostMsg::StdinEof { id }
        | HostMsg::Signal { id, .. }
        | HostMsg::FileWrite { id, .. }
        | HostMsg::FileChunk { id, .. }
        | HostMsg::FileEnd { id }
        | HostMsg::FileRead { id, .. }
        | HostMsg::Mkdir { id, .. }
        | HostMsg::List { id, .. }
        | HostMsg::Stat { id, .. }
        | HostMsg::Remove { id, .. }
        | HostMsg::Sync { id }
        | HostMsg::Shutdown { id } => *id,
    }
}
