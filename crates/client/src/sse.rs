//! Reading the exec stream: server-sent events with base64 output chunks.

use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ClientError;
use crate::types::{ExecEvent, ExecExit};

/// Longest event accepted from the daemon.
const MAX_EVENT: usize = 1 << 20;

/// Reads events until `exit` (or `error`), calling `on_event` for output.
pub(crate) async fn consume(mut body: Incoming, mut on_event: impl FnMut(ExecEvent)) -> Result<ExecExit, ClientError> {
    let mut buf: Vec<u8> = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Transport(e.to_string()))?;
        let Some(chunk) = frame.data_ref() else { continue };
        buf.extend_from_slice(chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned();
            if line.is_empty() {
                if let Some(exit) = dispatch(&name, &data, &mut on_event)? {
                    return Ok(exit);
                }
                name.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if buf.len() > MAX_EVENT {
            return Err(ClientError::Transport("event too long".into()));
        }
    }
    Err(ClientError::Transport("the stream ended before the command did".into()))
}

fn dispatch(name: &str, data: &str, on_event: &mut impl FnMut(ExecEvent)) -> Result<Option<ExecExit>, ClientError> {
    let v: serde_json::Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(_) => return Ok(None), // keep-alive comments and the like
    };
    let bytes = || base64::engine::general_purpose::STANDARD.decode(v["b64"].as_str().unwrap_or("")).unwrap_or_default();
    match name {
        "stdout" => on_event(ExecEvent::Stdout(bytes())),
        "stderr" => on_event(ExecEvent::Stderr(bytes())),
        "exit" => return serde_json::from_value(v).map(Some).map_err(|e| ClientError::Transport(e.to_string())),
        "error" => {
            return Err(ClientError::Api {
                status: 502,
                code: v["code"].as_str().unwrap_or("sandbox_failed").to_owned(),
                message: v["message"].as_str().unwrap_or("the sandbox failed").to_owned(),
            })
        }
        _ => {}
    }
    Ok(None)
}
