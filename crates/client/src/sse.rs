//! Reading the exec stream: server-sent events with base64 output chunks.

use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ClientError;
use crate::types::{ErrorDetail, ExecEvent, ExecExit, OutputChunk};

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
    if serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
        return Ok(None); // keep-alive comments and the like
    }
    let bytes = || {
        let chunk = serde_json::from_str::<OutputChunk>(data).map(|c| c.b64).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.decode(chunk).unwrap_or_default()
    };
    match name {
        "stdout" => on_event(ExecEvent::Stdout(bytes())),
        "stderr" => on_event(ExecEvent::Stderr(bytes())),
        "exit" => return serde_json::from_str(data).map(Some).map_err(|e| ClientError::Transport(e.to_string())),
        "error" => {
            let e = serde_json::from_str::<ErrorDetail>(data)
                .unwrap_or_else(|_| ErrorDetail { code: "sandbox_failed".into(), message: "the sandbox failed".into() });
            return Err(ClientError::Api { status: 502, code: e.code, message: e.message });
        }
        _ => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        let mut got = Vec::new();
        assert_eq!(dispatch("stdout", r#"{"b64":"aGk="}"#, &mut |e| got.push(e)).unwrap(), None);
        assert_eq!(dispatch("stderr", r#"{"b64":"!"}"#, &mut |e| got.push(e)).unwrap(), None);
        assert_eq!(dispatch("", "", &mut |e| got.push(e)).unwrap(), None);
        assert_eq!(got, [ExecEvent::Stdout(b"hi".to_vec()), ExecEvent::Stderr(vec![])]);
        let exit = dispatch("exit", r#"{"exit_code":3,"timed_out":false,"duration_ms":12}"#, &mut |_| {}).unwrap();
        assert_eq!(exit, Some(ExecExit { exit_code: 3, timed_out: false, duration_ms: 12 }));
        let e = dispatch("error", r#"{"code":"sandbox_failed","message":"the VM exited"}"#, &mut |_| {}).unwrap_err();
        assert!(matches!(e, ClientError::Api { status: 502, ref message, .. } if message == "the VM exited"));
    }
}
