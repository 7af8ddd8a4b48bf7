//! Transport: one HTTP/1.1 connection per request, over a unix socket or TCP.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::ClientError;
use crate::types::*;

/// How long a connection is retried while the daemon's socket or port does not answer yet.
pub const START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket path.
    Unix(PathBuf),
    /// host:port.
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
            Target::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl Target {
    /// Parses `unix:///path` or `http://host:port`.
    pub fn parse(s: &str) -> Result<Target, ClientError> {
        if let Some(p) = s.strip_prefix("unix://") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("http://") {
            return Ok(Target::Tcp(a.trim_end_matches('/').to_owned()));
        }
        Err(ClientError::Config(format!("KILN_HOST must be unix:///path or http://host:port, not {s:?}")))
    }

    /// The default: the daemon's socket in `KILN_HOME`.
    pub fn default_socket() -> Target {
        let home = std::env::var_os("KILN_HOME").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("XDG_DATA_HOME")
                .map(|x| PathBuf::from(x).join("kiln"))
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".local/share/kiln"))
        });
        Target::Unix(home.join("kiln.sock"))
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The client.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    token: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    /// A client for `target`.
    pub fn new(target: Target, token: Option<String>) -> Client {
        Client { target, token }
    }

    /// From `KILN_HOST` and `KILN_TOKEN`, defaulting to the local daemon's socket.
    pub fn from_env() -> Client {
        let target = std::env::var("KILN_HOST").ok().and_then(|h| Target::parse(&h).ok()).unwrap_or_else(Target::default_socket);
        Client { target, token: std::env::var("KILN_TOKEN").ok() }
    }

    /// Where it connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Connects; a daemon that is starting (`kiln serve &` just before) gets [`START_WAIT`] to
    /// open its socket or port, then the error says it is not running.
    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let started = std::time::Instant::now();
        loop {
            let r: std::io::Result<Box<dyn Io>> = match &self.target {
                Target::Unix(p) => tokio::net::UnixStream::connect(p).await.map(|s| Box::new(s) as Box<dyn Io>),
                Target::Tcp(a) => tokio::net::TcpStream::connect(a).await.map(|s| Box::new(s) as Box<dyn Io>),
            };
            match r {
                Ok(io) => return Ok(io),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) && started.elapsed() < START_WAIT => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => return Err(ClientError::Unreachable { target: self.target.to_string(), detail: e.to_string() }),
            }
        }
    }

    /// Sends one request and returns the response with its body unread.
    pub async fn send(&self, method: Method, path: &str, body: Body, content_type: &str) -> Result<Response<Incoming>, ClientError> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = match &self.target {
            Target::Tcp(a) => a.clone(),
            Target::Unix(_) => "localhost".into(),
        };
        let mut req = Request::builder().method(method).uri(path).header("host", host).header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(body).map_err(|e| ClientError::Transport(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ClientError::Transport(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(api_error(status, &bytes))
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, json: Option<&impl Serialize>) -> Result<T, ClientError> {
        let body = match json {
            Some(j) => full(serde_json::to_vec(j).map_err(|e| ClientError::Transport(e.to_string()))?),
            None => full(Bytes::new()),
        };
        let resp = self.send(method, path, body, "application/json").await?;
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        if bytes.is_empty() {
            return serde_json::from_slice(b"null").map_err(|e| ClientError::Transport(e.to_string()));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport(format!("bad JSON from the daemon: {e}")))
    }

    /// Creates a sandbox.
    pub async fn create_sandbox(&self, req: &CreateSandbox) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, "/v1/sandboxes", Some(req)).await
    }

    /// Live sandboxes.
    pub async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, ClientError> {
        self.call(Method::GET, "/v1/sandboxes", None::<&()>).await
    }

    /// One sandbox.
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::GET, &format!("/v1/sandboxes/{}", enc(id)), None::<&()>).await
    }

    /// Destroys a sandbox.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), ClientError> {
        let _: Option<serde_json::Value> = self.call(Method::DELETE, &format!("/v1/sandboxes/{}", enc(id)), None::<&()>).await?;
        Ok(())
    }

    /// Sets the deadline to now + `ttl_seconds`.
    pub async fn extend(&self, id: &str, ttl_seconds: i64) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, &format!("/v1/sandboxes/{}/extend", enc(id)), Some(&ExtendSandbox { ttl_seconds })).await
    }

    /// Forks into `count` clones.
    pub async fn fork(&self, id: &str, count: usize) -> Result<Vec<Sandbox>, ClientError> {
        // A count past i64 is refused by the daemon's own limit, as any count over it is.
        let body = ForkSandbox { count: i64::try_from(count).unwrap_or(i64::MAX) };
        let f: Forked = self.call(Method::POST, &format!("/v1/sandboxes/{}/fork", enc(id)), Some(&body)).await?;
        Ok(f.sandboxes)
    }

    /// The warm pool.
    pub async fn pool(&self) -> Result<PoolStatus, ClientError> {
        self.call(Method::GET, "/v1/pool", None::<&()>).await
    }

    /// Sets the warm pool (the admin scope): every template and shape to keep ready.
    pub async fn set_pool(&self, pools: Vec<PoolTarget>) -> Result<PoolStatus, ClientError> {
        self.call(Method::PUT, "/v1/pool", Some(&SetPool { pools })).await
    }

    /// Runs a CI job in the daemon; waits for its report (`kiln-ci`'s `Report`, as JSON, with
    /// the `run_id` whose files [`Client::ci_run_file`] reads).
    pub async fn ci_run(&self, request: &CiRunRequest) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, "/v1/ci/runs", Some(request)).await
    }

    /// Reads an output file of a CI run the daemon kept (`path` relative to the run's folder,
    /// e.g. `build/build.log`) into `out`; returns its size.
    pub async fn ci_run_file(&self, run_id: &str, path: &str, out: &mut (impl AsyncWrite + Unpin)) -> Result<u64, ClientError> {
        let resp = self.send(Method::GET, &format!("/v1/ci/runs/{}/files?path={}", enc(run_id), enc(path)), full(Bytes::new()), "application/json").await?;
        copy_body(resp, out, "the daemon failed?").await
    }

    /// Runs a command and waits for its result.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        self.call(Method::POST, &format!("/v1/sandboxes/{}/exec", enc(id)), Some(req)).await
    }

    /// Runs a command, calling `on_event` for each chunk of output as it arrives.
    pub async fn exec_stream(&self, id: &str, req: &ExecRequest, on_event: impl FnMut(ExecEvent)) -> Result<ExecExit, ClientError> {
        let body = full(serde_json::to_vec(req).map_err(|e| ClientError::Transport(e.to_string()))?);
        let resp = self.send(Method::POST, &format!("/v1/sandboxes/{}/exec/stream", enc(id)), body, "application/json").await?;
        crate::sse::consume(resp.into_body(), on_event).await
    }

    /// Writes a file from a stream.
    pub async fn write_file(&self, id: &str, path: &str, mode: u32, data: impl AsyncRead + Send + Sync + 'static) -> Result<(), ClientError> {
        let stream = futures_util::StreamExt::map(tokio_util::io::ReaderStream::new(data), |r| r.map(Frame::data));
        let body = StreamBody::new(stream).boxed();
        let path = format!("/v1/sandboxes/{}/files?path={}&mode={mode}", enc(id), enc(path));
        self.send(Method::PUT, &path, body, "application/octet-stream").await.map(|_| ())
    }

    /// Reads a file into `out`; returns its size.
    pub async fn read_file(&self, id: &str, path: &str, out: &mut (impl AsyncWrite + Unpin)) -> Result<u64, ClientError> {
        let resp = self.send(Method::GET, &format!("/v1/sandboxes/{}/files?path={}", enc(id), enc(path)), full(Bytes::new()), "application/json").await?;
        copy_body(resp, out, "the sandbox failed?").await
    }

    /// Lists a folder.
    pub async fn list_files(&self, id: &str, path: &str) -> Result<Vec<FileInfo>, ClientError> {
        self.call(Method::GET, &format!("/v1/sandboxes/{}/files/list?path={}", enc(id), enc(path)), None::<&()>).await
    }

    /// Metadata of a path.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/sandboxes/{}/files/stat?path={}", enc(id), enc(path)), None::<&()>).await
    }

    /// Creates a folder and its parents.
    pub async fn mkdir(&self, id: &str, path: &str, mode: u32) -> Result<(), ClientError> {
        let _: Option<serde_json::Value> =
            self.call(Method::POST, &format!("/v1/sandboxes/{}/files/mkdir?path={}&mode={mode}", enc(id), enc(path)), None::<&()>).await?;
        Ok(())
    }

    /// Removes a file or folder.
    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), ClientError> {
        let _: Option<serde_json::Value> =
            self.call(Method::DELETE, &format!("/v1/sandboxes/{}/files?path={}&recursive={recursive}", enc(id), enc(path)), None::<&()>).await?;
        Ok(())
    }
}

/// Copies a response's body into `out`; a body shorter or longer than its `content-length` is
/// an error (`why` guesses the cause).
async fn copy_body(resp: Response<Incoming>, out: &mut (impl AsyncWrite + Unpin), why: &str) -> Result<u64, ClientError> {
    let expected: Option<u64> = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Transport(e.to_string()))?;
        if let Some(d) = frame.data_ref() {
            out.write_all(d).await.map_err(|e| ClientError::Transport(e.to_string()))?;
            n += d.len() as u64;
        }
    }
    out.flush().await.map_err(|e| ClientError::Transport(e.to_string()))?;
    if expected.is_some_and(|e| e != n) {
        return Err(ClientError::Transport(format!("file ended after {n} of {} bytes ({why})", expected.unwrap_or(0))));
    }
    Ok(n)
}

/// The daemon's error answer; one that is not an [`ErrorBody`] (a proxy's page, say) keeps its
/// status.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error: ErrorDetail { code, message } }) => ClientError::Api { status: status.as_u16(), code, message },
        Err(_) => ClientError::Api { status: status.as_u16(), code: "unknown".into(), message: format!("HTTP {status}") },
    }
}

/// Percent-encodes a query or path component.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("unix:///tmp/k.sock").unwrap(), Target::Unix("/tmp/k.sock".into()));
        assert_eq!(Target::parse("http://127.0.0.1:7777/").unwrap(), Target::Tcp("127.0.0.1:7777".into()));
        assert!(Target::parse("ftp://x").is_err());
        assert_eq!(enc("/a b&c"), "/a%20b%26c");
    }

    #[test]
    fn error_answers() {
        let e = api_error(StatusCode::NOT_FOUND, br#"{"error":{"code":"not_found","message":"no sandbox sbx-1"}}"#);
        assert!(matches!(e, ClientError::Api { status: 404, ref code, ref message } if code == "not_found" && message == "no sandbox sbx-1"));
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(matches!(e, ClientError::Api { status: 502, ref code, ref message } if code == "unknown" && message == "HTTP 502 Bad Gateway"));
    }
}
