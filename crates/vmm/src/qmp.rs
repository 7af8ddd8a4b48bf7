//! An async client for QEMU's machine protocol (QMP): JSON lines over a unix socket.
//! Commands are sent one at a time; events are kept in a bounded list.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::error::VmError;

/// Longest QMP line accepted from QEMU.
const MAX_LINE: usize = 1 << 20;
/// Events kept for [`Qmp::events`].
const MAX_EVENTS: usize = 256;

/// A connected QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until `timeout`), reads the greeting, negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, VmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => return Err(VmError::io("connect to QMP", path)(e)),
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(r), writer: w, events: Vec::new() };
        let greeting = qmp.read_value().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Qmp { command: "greeting".into(), detail: greeting.to_string() });
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_value(&mut self) -> Result<Value, VmError> {
        let mut line = String::new();
        let n = (&mut self.reader).take(MAX_LINE as u64).read_line(&mut line).await.map_err(|e| VmError::Qmp { command: "read".into(), detail: e.to_string() })?;
        if n == 0 {
            return Err(VmError::Qmp { command: "read".into(), detail: "QEMU closed the QMP socket".into() });
        }
        serde_json::from_str(&line).map_err(|e| VmError::Qmp { command: "read".into(), detail: format!("bad JSON: {e}") })
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await.map_err(|e| VmError::Qmp { command: command.into(), detail: e.to_string() })?;
        loop {
            let v = self.read_value().await?;
            if v.get("event").is_some() {
                if self.events.len() < MAX_EVENTS {
                    self.events.push(v);
                }
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let detail = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error").to_owned();
                return Err(VmError::Qmp { command: command.into(), detail });
            }
        }
    }

    /// Hands QEMU an open file under `name` (QMP `getfd`, the descriptor travels as
    /// SCM_RIGHTS ancillary data with the command).
    pub async fn send_fd(&mut self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), VmError> {
        use std::os::fd::AsRawFd;
        let mut bytes = serde_json::to_vec(&json!({ "execute": "getfd", "arguments": { "fdname": name } })).expect("json");
        bytes.push(b'\n');
        let sock = self.writer.as_ref().as_raw_fd();
        let err = |detail: String| VmError::Qmp { command: "getfd".into(), detail };
        // The socket is non-blocking; wait until it can take the (small) message.
        self.writer.as_ref().writable().await.map_err(|e| err(e.to_string()))?;
        let n = send_with_fd(sock, &mut bytes, fd.as_raw_fd());
        if n != bytes.len() as isize {
            return Err(err(format!("sendmsg: {}", std::io::Error::last_os_error())));
        }
        loop {
            let v = self.read_value().await?;
            if v.get("event").is_some() {
                continue;
            }
            if v.get("return").is_some() {
                return Ok(());
            }
            return Err(err(v.get("error").map(|e| e.to_string()).unwrap_or_default()));
        }
    }

    /// Events received so far.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Polls `query-migrate` until it reports `completed` (or fails), up to `timeout`.
    pub async fn wait_migration(&mut self, timeout: Duration) -> Result<Value, VmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.execute("query-migrate", None).await?;
            match v.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(v),
                Some("failed") | Some("cancelled") => {
                    let detail = v.get("error-desc").and_then(Value::as_str).unwrap_or("migration failed").to_owned();
                    return Err(VmError::Qmp { command: "migrate".into(), detail });
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(VmError::Timeout { what: "migration", secs: timeout.as_secs_f64(), console: String::new() });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// One `sendmsg` carrying `bytes` and the descriptor `fd` as SCM_RIGHTS.
fn send_with_fd(sock: i32, bytes: &mut [u8], fd: i32) -> isize {
    let mut iov = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: bytes.len() };
    // SAFETY: CMSG_SPACE is a pure computation on a constant size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `cbuf`, large enough for one header and one int, so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA points inside `cbuf`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::copy_nonoverlapping(&fd, libc::CMSG_DATA(c).cast::<i32>(), 1);
    }
    // SAFETY: `msg` and everything it points to live until the call returns.
    unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) }
}
