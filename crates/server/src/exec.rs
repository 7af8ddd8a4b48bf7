//! Running commands: a blocking form with a JSON result (output capped), and a streaming form
//! with server-sent events. Both kill the command's whole process group on `timeout_seconds`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use base64::Engine as _;
use futures_util::Stream;
use kiln_api as api;
use kiln_core::{ExecOutcome, ExecRequest, Output, SandboxError};
use kiln_proto::{Command, ErrorKind};
use serde::Serialize;

use crate::error::{parse_json, ApiError, ApiResult};
use crate::{Actor, AppState};

/// Output kept per stream in the blocking form.
pub const MAX_BLOCKING_OUTPUT: usize = 16 << 20;
/// Output queued for a slow streaming client before the rest is dropped (and said so).
pub const MAX_STREAM_BACKLOG: usize = 64 << 20;

/// The core's request for an API request, and the command as text for the audit log.
fn request(b: api::ExecRequest) -> ApiResult<(ExecRequest, String)> {
    let (command, text) = match (b.cmd, b.argv) {
        (Some(c), None) if !c.trim().is_empty() => (Command::Shell(c.clone()), c),
        (None, Some(a)) if !a.is_empty() && !a[0].is_empty() => {
            let t = a.join(" ");
            (Command::Argv(a), t)
        }
        _ => return Err(ApiError::bad_request("give exactly one of \"cmd\" (a shell string) and \"argv\" (a non-empty list)")),
    };
    let timeout = match b.timeout_seconds {
        None => None,
        Some(t) if t > 0.0 && t <= 7.0 * 86400.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => return Err(ApiError::bad_request(format!("timeout_seconds must be between 0 and 604800, not {t}"))),
    };
    if let Some(cwd) = &b.cwd {
        crate::error::guest_path(cwd)?;
    }
    if b.max_output_bytes == Some(0) {
        return Err(ApiError::bad_request("max_output_bytes must be at least 1"));
    }
    let mut req = ExecRequest { command: Some(command), env: b.env.into_iter().collect(), cwd: b.cwd, timeout, stdin: None, max_output: b.max_output_bytes };
    if let Some(s) = b.stdin {
        req = req.stdin_bytes(s.into_bytes());
    }
    Ok((req, text))
}

/// A command the guest could not start becomes the shell's answer: 127 or 126 with a message.
fn not_started(e: &SandboxError) -> Option<(i32, String)> {
    match e {
        SandboxError::Guest { kind: ErrorKind::NotFound, message } => Some((127, format!("{message}\n"))),
        SandboxError::Guest { kind: ErrorKind::PermissionDenied, message } => Some((126, format!("{message}\n"))),
        _ => None,
    }
}

struct Capped {
    buf: Vec<u8>,
    truncated: bool,
}

impl Capped {
    fn push(&mut self, d: &[u8]) {
        let room = MAX_BLOCKING_OUTPUT.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&d[..d.len().min(room)]);
        self.truncated |= d.len() > room;
    }
}

/// `POST /v1/sandboxes/{id}/exec`.
pub async fn exec(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<api::ExecResult>> {
    let (req, text) = request(parse_json(&body)?)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let (mut out, mut err) = (Capped { buf: Vec::new(), truncated: false }, Capped { buf: Vec::new(), truncated: false });
    let r = lease
        .exec(req, |o| match o {
            Output::Stdout(d) => out.push(d),
            Output::Stderr(d) => err.push(d),
        })
        .await;
    drop(lease);
    if let Some((code, msg)) = r.as_ref().err().and_then(not_started) {
        st.manager.note_exec(&id, &text, &Err(kiln_daemon::manager::ManagerError::Invalid(msg.trim().to_owned())), &actor.name);
        return Ok(Json(api::ExecResult {
            stdout: String::new(),
            stderr: msg,
            exit_code: code,
            timed_out: false,
            duration_ms: 0,
            stdout_truncated: false,
            stderr_truncated: false,
        }));
    }
    let r = st.manager.settle(&id, r).await;
    st.manager.note_exec(&id, &text, &r, &actor.name);
    let o: ExecOutcome = r?;
    let exit = exit_of(&o);
    Ok(Json(api::ExecResult {
        stdout: String::from_utf8_lossy(&out.buf).into_owned(),
        stderr: String::from_utf8_lossy(&err.buf).into_owned(),
        exit_code: exit.exit_code,
        timed_out: exit.timed_out,
        duration_ms: exit.duration_ms,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
    }))
}

/// How a command ended, as the API shows it.
fn exit_of(o: &ExecOutcome) -> api::ExecExit {
    api::ExecExit { exit_code: o.exit_code(), timed_out: o.timed_out, duration_ms: o.duration.as_millis() as u64 }
}

/// One server-sent event: its name, and its data as JSON.
fn sse(name: &str, data: &impl Serialize) -> Event {
    Event::default().event(name).data(serde_json::to_string(data).unwrap_or_default())
}

/// A `stdout` or `stderr` event.
fn chunk(name: &str, bytes: &[u8]) -> Event {
    sse(name, &api::OutputChunk { b64: base64::engine::general_purpose::STANDARD.encode(bytes) })
}

/// `POST /v1/sandboxes/{id}/exec/stream`.
pub async fn exec_stream(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let (req, text) = request(parse_json(&body)?)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Event, usize)>();
    let backlog = Arc::new(AtomicUsize::new(0));
    let consumed = backlog.clone();
    let manager = st.manager.clone();
    tokio::spawn(async move {
        let mut dropped = false;
        let r = lease
            .exec(req, |o| {
                let (name, d) = match o {
                    Output::Stdout(d) => ("stdout", d),
                    Output::Stderr(d) => ("stderr", d),
                };
                // The output callback cannot wait for a slow client; past the backlog cap the
                // rest is dropped rather than buffered without bound.
                if backlog.fetch_add(d.len(), Ordering::Relaxed) > MAX_STREAM_BACKLOG {
                    dropped = true;
                    return;
                }
                let _ = tx.send((chunk(name, d), d.len()));
            })
            .await;
        drop(lease);
        if dropped {
            let note = b"\n[kiln: output dropped: the client read too slowly]\n";
            let _ = tx.send((chunk("stderr", note), 0));
        }
        let event = if let Some((code, msg)) = r.as_ref().err().and_then(not_started) {
            let _ = tx.send((chunk("stderr", msg.as_bytes()), 0));
            sse("exit", &api::ExecExit { exit_code: code, timed_out: false, duration_ms: 0 })
        } else {
            let r = manager.settle(&id, r).await;
            manager.note_exec(&id, &text, &r, &actor.name);
            match r {
                Ok(o) => sse("exit", &exit_of(&o)),
                Err(e) => {
                    let e = ApiError::from(e);
                    sse("error", &api::ErrorDetail { code: e.code.to_owned(), message: e.message })
                }
            }
        };
        let _ = tx.send((event, 0));
    });
    let events = futures_util::stream::unfold((rx, consumed), |(mut rx, consumed)| async move {
        let (event, size) = rx.recv().await?;
        consumed.fetch_sub(size, Ordering::Relaxed);
        Some((Ok(event), (rx, consumed)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
