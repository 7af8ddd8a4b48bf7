//! The proxy behind an upstream HTTP proxy (`--egress-upstream`): a small CONNECT proxy written
//! here, on loopback, records what it is asked and tunnels any name to 127.0.0.1. Names
//! (`.invalid`, which cannot resolve) resolve through a resolver that fails and counts.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_egress::{listen_tcp, Limits, Policy, ProxyContext, Resolve, ResolveFuture, StaticResolver, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCAL: [u8; 4] = [127, 0, 0, 1];
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// A resolver that counts calls and fails: nothing may be resolved through it.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Resolve for Counting {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Err(io::Error::new(io::ErrorKind::NotFound, host.to_string())) })
    }
}

/// How the test's upstream proxy answers a CONNECT.
#[derive(Clone, Copy)]
enum Mode {
    /// `200`, then a tunnel to 127.0.0.1 at the port asked for, whatever the name.
    Tunnel,
    /// `200` with these bytes right behind it (the destination's first words), then a tunnel.
    TunnelAfter(&'static [u8]),
    /// These bytes, then close.
    Answer(&'static [u8]),
    /// A head that never ends: this many bytes of headers.
    Endless(usize),
    /// Nothing at all, for a while.
    Silent,
}

/// What the upstream proxy was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    line: String,
    authorization: Option<String>,
}

struct UpstreamProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl UpstreamProxy {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn upstream_proxy(mode: Mode) -> UpstreamProxy {
    let listener = TcpListener::bind(SocketAddr::from((LOCAL, 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_upstream(s, mode, record.clone()));
        }
    });
    UpstreamProxy { addr, seen }
}

async fn serve_upstream(mut s: TcpStream, mode: Mode, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || !matches!(s.read(&mut byte).await, Ok(1)) {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    let authorization = text.lines().find_map(|l| l.strip_prefix("Proxy-Authorization: ")).map(str::to_owned);
    seen.lock().unwrap().push(Seen { line: line.clone(), authorization });
    let port: u16 = line.split(' ').nth(1).and_then(|t| t.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
    let after: &[u8] = match mode {
        Mode::Tunnel => b"",
        Mode::TunnelAfter(bytes) => bytes,
        Mode::Answer(bytes) => {
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
            return;
        }
        Mode::Endless(n) => {
            let _ = s.write_all(b"HTTP/1.1 200 Connection established\r\n").await;
            for i in 0..n / 32 {
                if s.write_all(format!("X-Filler-{i:05}: {}\r\n", "u".repeat(15)).as_bytes()).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        }
        Mode::Silent => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
    };
    let Ok(mut dest) = TcpStream::connect(SocketAddr::from((LOCAL, port))).await else {
        let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    let mut answer = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 upstream.test\r\n\r\n".to_vec();
    answer.extend_from_slice(after);
    if s.write_all(&answer).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut s, &mut dest).await;
}

/// A destination on loopback counting its connections, serving each with `f`.
async fn target<F, Fut>(f: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::from((LOCAL, 0))).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(f(s));
        }
    });
    (port, accepted)
}

async fn echo_target() -> (u16, Arc<AtomicUsize>) {
    target(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// An HTTP server answering `hello`, keeping each request head it got.
async fn http_target(heads: Arc<Mutex<Vec<String>>>) -> (u16, Arc<AtomicUsize>) {
    target(move |mut s| {
        let heads = heads.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            heads.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
            let _ = s.shutdown().await;
        }
    })
    .await
}

fn ctx(allow: &[String], resolver: Arc<dyn Resolve>, upstream: &str, limits: Limits) -> Arc<ProxyContext> {
    let up = Arc::new(Upstream::parse(upstream).unwrap());
    Arc::new(ProxyContext::new(Policy::parse(allow).unwrap(), resolver, limits).with_upstream(Some(up)))
}

async fn proxy(ctx: Arc<ProxyContext>) -> SocketAddr {
    listen_tcp(SocketAddr::from((LOCAL, 0)), ctx).await.unwrap().0
}

/// Sends `request`, closes the sending side, and reads everything until the proxy closes.
async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.expect("proxy did not close").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn wait_log(ctx: &ProxyContext, n: usize) -> Vec<kiln_egress::Attempt> {
    for _ in 0..1000 {
        if ctx.log.len() >= n {
            return ctx.log.snapshot().attempts;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("log has {} attempts, wanted {n}", ctx.log.len());
}

#[tokio::test]
async fn allowed_name_goes_through_the_upstream_unresolved() {
    let (port, accepted) = echo_target().await;
    let up = upstream_proxy(Mode::Tunnel).await;
    let resolver = Arc::new(Counting::default());
    let ctx = ctx(&[format!("build-mirror.invalid:{port}")], resolver.clone(), &up.url(), Limits::default());
    let p = proxy(ctx.clone()).await;

    let resp = exchange(p, format!("CONNECT build-mirror.invalid:{port} HTTP/1.1\r\nHost: build-mirror.invalid:{port}\r\n\r\nearly-bytes").as_bytes()).await;
    assert_eq!(resp.as_bytes(), [ESTABLISHED, b"early-bytes"].concat(), "{resp}");
    assert_eq!(up.seen(), vec![Seen { line: format!("CONNECT build-mirror.invalid:{port} HTTP/1.1"), authorization: None }]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(resolver.0.load(Ordering::SeqCst), 0, "the name was resolved on the host");

    let a = &wait_log(&ctx, 1).await[0];
    assert_eq!((a.method.as_str(), a.host.as_str(), a.port, a.allowed, &a.reason), ("CONNECT", "build-mirror.invalid", port, true, &None));
    assert_eq!(a.via.as_deref(), Some(up.addr.to_string().as_str()));
    assert_eq!((a.bytes_up, a.bytes_down), (11, 11));
    let json = serde_json::to_value(a).unwrap();
    assert_eq!(json["via"], up.addr.to_string());
}

#[tokio::test]
async fn plain_http_goes_through_the_upstream_as_connect() {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (port, _) = http_target(heads.clone()).await;
    let up = upstream_proxy(Mode::Tunnel).await;
    let resolver = Arc::new(Counting::default());
    let ctx = ctx(&[format!("build-mirror.invalid:{port}")], resolver.clone(), &up.url(), Limits::default());
    let p = proxy(ctx.clone()).await;

    let req = format!("GET http://build-mirror.invalid:{port}/pkg HTTP/1.1\r\nHost: build-mirror.invalid:{port}\r\nProxy-Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n");
    let resp = exchange(p, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\nhello"), "{resp}");
    assert_eq!(up.seen(), vec![Seen { line: format!("CONNECT build-mirror.invalid:{port} HTTP/1.1"), authorization: None }]);
    // Through the tunnel, the same origin-form request as without an upstream.
    assert_eq!(heads.lock().unwrap().clone(), vec![format!("GET /pkg HTTP/1.1\r\nHost: build-mirror.invalid:{port}\r\nConnection: close\r\n\r\n")]);
    assert_eq!(resolver.0.load(Ordering::SeqCst), 0);
    let a = &wait_log(&ctx, 1).await[0];
    assert_eq!((a.method.as_str(), a.allowed, a.via.is_some()), ("GET", true, true));
}

#[tokio::test]
async fn denied_names_never_reach_the_upstream() {
    let (port, accepted) = echo_target().await;
    let up = upstream_proxy(Mode::Tunnel).await;
    let resolver = Arc::new(Counting::default());
    let ctx = ctx(&[format!("build-mirror.invalid:{port}")], resolver.clone(), &up.url(), Limits::default());
    let p = proxy(ctx.clone()).await;

    for req in [
        "CONNECT secret-data.attacker.test:443 HTTP/1.1\r\n\r\n".to_string(),
        format!("CONNECT build-mirror.invalid:{} HTTP/1.1\r\n\r\n", port.wrapping_add(1).max(1)),
        format!("GET http://other-mirror.invalid:{port}/ HTTP/1.1\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
        "CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n".to_string(),
    ] {
        let resp = exchange(p, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{req}: {resp}");
    }
    let log = wait_log(&ctx, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert_eq!((accepted.load(Ordering::SeqCst), resolver.0.load(Ordering::SeqCst)), (0, 0));
    assert!(log.iter().all(|a| !a.allowed && a.via.is_none()), "{log:?}");
}

#[tokio::test]
async fn literals_and_localhost_go_direct() {
    let (port, accepted) = echo_target().await;
    let up = upstream_proxy(Mode::Tunnel).await;
    let resolver = Arc::new(StaticResolver::new().with("localhost", &[LOCAL.into()]));
    let ctx = ctx(&[format!("127.0.0.1:{port}"), format!("localhost:{port}")], resolver, &up.url(), Limits::default());
    let p = proxy(ctx.clone()).await;

    for host in ["127.0.0.1", "localhost"] {
        let resp = exchange(p, format!("CONNECT {host}:{port} HTTP/1.1\r\n\r\nping").as_bytes()).await;
        assert_eq!(resp.as_bytes(), [ESTABLISHED, b"ping"].concat(), "{host}: {resp}");
    }
    // An address only an exact entry allows keeps the address checks: `localhost` resolving
    // to an address nobody allowed is refused, not sent upstream.
    let ctx2 = self::ctx(&["localhost:9".into()], Arc::new(StaticResolver::new().with("localhost", &[LOCAL.into()])), &up.url(), Limits::default());
    let resp = exchange(proxy(ctx2).await, b"CONNECT localhost:9 HTTP/1.1\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403 ") && resp.contains("127.0.0.1 (loopback)"), "{resp}");

    let log = wait_log(&ctx, 2).await;
    assert!(log.iter().all(|a| a.allowed && a.via.is_none()), "{log:?}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn upstream_refusals_are_502() {
    let (port, accepted) = echo_target().await;
    let allow = [format!("build-mirror.invalid:{port}")];
    let table: &[(Mode, &str)] = &[
        (Mode::Answer(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n"), "refused CONNECT build-mirror.invalid:PORT: 407 Proxy Authentication Required; it wants credentials"),
        (Mode::Answer(b"HTTP/1.1 503 Service Unavailable\r\n\r\nupstream-secret-page"), "refused CONNECT build-mirror.invalid:PORT: 503 Service Unavailable"),
        (Mode::Answer(b"HTTP/1.0 302 Found\r\nLocation: http://portal.corp.invalid/\r\n\r\n"), ": 302 Found"),
        (Mode::Answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "did not answer in HTTP"),
        (Mode::Answer(b""), "closed the connection without answering"),
        (Mode::Answer(b"HTTP/1.1 200 Conn"), "closed the connection without answering"),
    ];
    for (mode, want) in table {
        let up = upstream_proxy(*mode).await;
        let ctx = ctx(&allow, Arc::new(Counting::default()), &up.url(), Limits::default());
        let resp = exchange(proxy(ctx.clone()).await, format!("CONNECT build-mirror.invalid:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
        let want = want.replace("PORT", &port.to_string());
        assert!(resp.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{resp}");
        assert!(resp.contains(&format!("kiln egress: the upstream proxy {} ", up.addr)) && resp.contains(&want), "{want}: {resp}");
        assert!(!resp.contains("upstream-secret-page") && !resp.contains("Proxy-Authenticate"), "{resp}");
        let a = &wait_log(&ctx, 1).await[0];
        assert!(a.allowed && a.via.is_some() && a.reason.as_deref().is_some_and(|r| r.contains(&want)), "{a:?}");
        assert_eq!((a.bytes_up, a.bytes_down), (0, 0));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_upstream_head_is_refused() {
    let (port, _) = echo_target().await;
    let up = upstream_proxy(Mode::Endless(64 * 1024)).await;
    let ctx = ctx(&[format!("build-mirror.invalid:{port}")], Arc::new(Counting::default()), &up.url(), Limits::default());
    let resp = exchange(proxy(ctx.clone()).await, format!("CONNECT build-mirror.invalid:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{resp}");
    assert!(resp.contains("answered a head larger than 8192 bytes"), "{resp}");
    assert!(!resp.contains("X-Filler") && resp.len() < 512, "{resp}");
}

#[tokio::test]
async fn silent_or_absent_upstream_is_502() {
    let (port, _) = echo_target().await;
    let allow = [format!("build-mirror.invalid:{port}")];
    let quick = Limits { connect_timeout: Duration::from_millis(300), ..Limits::default() };
    let up = upstream_proxy(Mode::Silent).await;
    let ctx1 = ctx(&allow, Arc::new(Counting::default()), &up.url(), quick.clone());
    let resp = exchange(proxy(ctx1).await, format!("CONNECT build-mirror.invalid:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 502 ") && resp.contains("did not answer CONNECT") && resp.contains("within 0.3 s"), "{resp}");

    // Nothing listening where the upstream should be.
    let gone = TcpListener::bind(SocketAddr::from((LOCAL, 0))).await.unwrap().local_addr().unwrap();
    let ctx2 = ctx(&allow, Arc::new(Counting::default()), &format!("http://{gone}"), quick);
    let resp = exchange(proxy(ctx2.clone()).await, format!("GET http://build-mirror.invalid:{port}/ HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 502 ") && resp.contains(&format!("could not connect to the upstream proxy {gone}")), "{resp}");
    let a = &wait_log(&ctx2, 1).await[0];
    assert_eq!(a.via.as_deref(), Some(gone.to_string().as_str()));
}

#[tokio::test]
async fn credentials_are_sent_and_never_logged() {
    let (port, _) = echo_target().await;
    let up = upstream_proxy(Mode::Tunnel).await;
    let url = format!("http://builder:s3cret%21@{}", up.addr);
    let ctx = ctx(&[format!("build-mirror.invalid:{port}")], Arc::new(Counting::default()), &url, Limits::default());
    let resp = exchange(proxy(ctx.clone()).await, format!("CONNECT build-mirror.invalid:{port} HTTP/1.1\r\n\r\nx").as_bytes()).await;
    assert_eq!(resp.as_bytes(), [ESTABLISHED, b"x"].concat(), "{resp}");
    // base64("builder:s3cret!")
    assert_eq!(up.seen()[0].authorization.as_deref(), Some("Basic YnVpbGRlcjpzM2NyZXQh"));
    let log = serde_json::to_string(&wait_log(&ctx, 1).await).unwrap();
    assert!(!log.contains("s3cret") && !log.contains("YnVpbGRlcjpzM2NyZXQh") && !log.contains("builder"), "{log}");
    assert_eq!(format!("{:?}", ctx.upstream.as_deref().unwrap()), format!("Upstream(http://builder:***@{})", up.addr));
}

#[tokio::test]
async fn bytes_after_the_upstream_answer_reach_the_sandbox_counted() {
    let (port, _) = echo_target().await;
    let up = upstream_proxy(Mode::TunnelAfter(b"SSH-2.0-banner\r\n")).await;
    let limits = Limits { max_bytes_per_conn: 20, ..Limits::default() };
    let ctx = ctx(&[format!("build-mirror.invalid:{port}")], Arc::new(Counting::default()), &up.url(), limits);
    let resp = exchange(proxy(ctx.clone()).await, format!("CONNECT build-mirror.invalid:{port} HTTP/1.1\r\n\r\nhello-world").as_bytes()).await;
    // 16 bytes of banner down, then 4 of the 11 up: the connection's 20 bytes.
    assert_eq!(resp.as_bytes(), [ESTABLISHED, b"SSH-2.0-banner\r\n"].concat(), "{resp}");
    let a = &wait_log(&ctx, 1).await[0];
    assert_eq!((a.bytes_down, a.bytes_up), (16, 4), "{a:?}");
    assert_eq!(a.reason.as_deref(), Some("closed at the per-connection limit of 20 bytes"));
}
