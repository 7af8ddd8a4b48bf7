//! Serving one connection from a sandbox: read the request, decide, connect, relay, log.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::addr::canonical;
use crate::relay::{relay, relay_up_to, send_down, send_up, Cut, Meter};
use crate::request::{self, HeadError, Request, Target};
use crate::{Attempt, Decision, ProxyContext};

/// How one connection went. Its [`Attempt`] has also been recorded in the context's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSummary {
    /// The status the proxy itself answered with (`200` for an established CONNECT tunnel,
    /// `403`, `400`, `502`, ...); `None` when it answered nothing (plain HTTP forwarded: the
    /// destination answered; or the client went away first).
    pub status: Option<u16>,
    /// What was recorded; `None` if the client closed without sending a byte.
    pub attempt: Option<Attempt>,
}

/// Serves one connection from a sandbox to its HTTP proxy, to the end, and records it in
/// `ctx.log`. Never panics on client input and never returns early: when this returns, the
/// connection is finished and `stream` dropped.
///
/// * `CONNECT host:port HTTP/1.1`: checked against `ctx.policy`, then connected to a vetted
///   address; the client gets `200 Connection Established` and bytes are relayed both ways.
/// * `GET http://host[:port]/path HTTP/1.1` (any method, absolute form): the same checks; the
///   head is forwarded in origin form with `Host` set from the URL, `Proxy-*` and hop-by-hop
///   headers dropped and `Connection: close` added; then bytes are relayed both ways (one
///   request per connection).
/// * With an upstream proxy in `ctx.upstream`, a target allowed by name is not resolved: the
///   upstream is asked for `CONNECT host:port` and the tunnel it grants carries the bytes
///   above (plain HTTP too, rewritten the same way); the attempt's `via` names it. Its refusal
///   (`407`, `503`, ...) or failure is a `502` with a short reason. IP literals and
///   `localhost` names go direct.
/// * Denied: `403` with a plain-text explanation. Malformed: `400`. Head over
///   [`crate::Limits::max_head_bytes`]: `431`; not complete within
///   [`crate::Limits::head_timeout`]: `408`. Name that does not resolve, or no address
///   accepting the connection: `502` (`504` if resolving takes longer than
///   [`crate::Limits::connect_timeout`]). Sandbox byte budget used up: `429`.
///
/// Bytes are counted and limited from the moment the destination is connected; the proxy's own
/// replies are not counted.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(mut stream: S, ctx: &ProxyContext) -> ConnSummary {
    let started = Instant::now();
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut attempt = Attempt { method: String::new(), host: String::new(), port: 0, allowed: false, reason: None, bytes_up: 0, bytes_down: 0, started_unix_ms, duration_ms: 0, via: None };
    let status = serve(&mut stream, ctx, &mut attempt).await;
    let logged = match status {
        Served::Silent => None,
        Served::Status(_) | Served::NoReply => {
            attempt.duration_ms = started.elapsed().as_millis() as u64;
            ctx.log.record(attempt.clone());
            Some(attempt)
        }
    };
    ConnSummary { status: if let Served::Status(s) = status { Some(s) } else { None }, attempt: logged }
}

enum Served {
    /// Nothing to log: the client sent nothing.
    Silent,
    /// The proxy answered with this status.
    Status(u16),
    /// Logged, but the proxy answered nothing itself (plain HTTP forwarded: the destination
    /// answered; or the stream broke).
    NoReply,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(stream: &mut S, ctx: &ProxyContext, attempt: &mut Attempt) -> Served {
    let limits = &ctx.limits;
    let (head, early) = match request::read_head(stream, limits.max_head_bytes, limits.head_timeout).await {
        Ok(h) => h,
        // Nothing said: nobody to answer, nothing to log.
        Err(HeadError::Closed { got: 0 } | HeadError::Timeout { got: 0 }) => return Served::Silent,
        Err(HeadError::Io(e)) => {
            attempt.reason = Some(format!("reading the request failed: {e}"));
            return Served::NoReply;
        }
        Err(e) => {
            let (code, why) = match e {
                HeadError::TooLarge => (431, format!("request head larger than {} bytes", limits.max_head_bytes)),
                HeadError::Timeout { .. } => (408, format!("request head not complete within {} s", limits.head_timeout.as_secs_f64())),
                HeadError::Closed { .. } | HeadError::Io(_) => (400, "connection closed in the middle of the request head".into()),
            };
            attempt.reason = Some(why.clone());
            return reply(stream, code, &format!("kiln egress: {why}\n")).await;
        }
    };
    let req = match request::parse(&head) {
        Ok(r) => r,
        Err(why) => {
            attempt.reason = Some(format!("malformed request: {why}"));
            return reply(stream, 400, &format!("kiln egress: bad request: {why}\n")).await;
        }
    };
    if let (Target::Http { .. }, Err((code, why))) = (&req.target, body_length(&req)) {
        attempt.reason = Some(format!("refused request framing: {why}"));
        return reply(stream, code, &format!("kiln egress: {why}\n")).await;
    }
    attempt.method.clone_from(&req.method);
    attempt.host.clone_from(&req.host);
    attempt.port = req.port;
    let shown = if req.host.contains(':') { format!("[{}]:{}", req.host, req.port) } else { format!("{}:{}", req.host, req.port) };

    // Policy by name first: names nobody allowed never reach the resolver, nor the upstream.
    let literal = req.host.parse::<IpAddr>().ok();
    if !ctx.policy.permits_name(&req.host, req.port) {
        // A literal address is decided in full (the metadata service gets its own answer).
        if let Some(ip) = literal {
            if let Decision::Deny(d) = ctx.policy.decide(&req.host, req.port, &[ip]) {
                return deny(stream, attempt, &shown, &d.reason, &d.allow).await;
            }
        }
        return deny(stream, attempt, &shown, "not in the allowlist", std::slice::from_ref(&shown)).await;
    }
    // Behind an upstream proxy a name goes through it, unresolved; literals and localhost direct.
    let via = ctx.upstream.as_deref().filter(|_| literal.is_none() && !loopback_name(&req.host));
    let (mut dest, rest) = match via {
        Some(up) => {
            attempt.allowed = true;
            attempt.via = Some(up.authority());
            if ctx.bytes_total.load(Ordering::Relaxed) >= limits.max_bytes_total {
                return fail(stream, attempt, true, 429, format!("the sandbox's egress limit of {} bytes is used up", limits.max_bytes_total)).await;
            }
            match up.open(&req.host, req.port, limits.connect_timeout).await {
                Ok(tunnel) => tunnel,
                Err(why) => return fail(stream, attempt, true, 502, why).await,
            }
        }
        None => match direct(stream, ctx, attempt, &req, literal, &shown).await {
            Ok(s) => (s, Vec::new()),
            Err(served) => return served,
        },
    };

    let meter = Meter::new(limits.max_bytes_per_conn, &ctx.bytes_total, limits.max_bytes_total);
    let (result, served) = match &req.target {
        Target::Connect => {
            if write_timeout(stream, b"HTTP/1.1 200 Connection Established\r\n\r\n", false, limits.idle_timeout).await.is_err() {
                attempt.reason = Some("sandbox went away before the tunnel was established".into());
                return Served::Status(200);
            }
            let r = match send_first(stream, &mut dest, &rest, &early, &meter, limits.idle_timeout).await {
                Ok(()) => relay(&mut *stream, dest, &meter, limits.idle_timeout).await,
                Err(cut) => Err(cut),
            };
            (r, Served::Status(200))
        }
        Target::Http { authority, path } => {
            // One request, framed by its Content-Length: the body goes up, nothing after it.
            let body = body_length(&req).expect("checked before connecting");
            let mut out = origin_form_head(&req, authority, path);
            let early_body = early.len().min(usize::try_from(body).unwrap_or(usize::MAX));
            out.extend_from_slice(&early[..early_body]);
            let left = body - early_body as u64;
            let r = match send_first(stream, &mut dest, &rest, &out, &meter, limits.idle_timeout).await {
                Ok(()) => relay_up_to(&mut *stream, dest, &meter, limits.idle_timeout, Some(left)).await,
                Err(cut) => Err(cut),
            };
            (r, Served::NoReply)
        }
    };
    attempt.bytes_up = meter.up.load(Ordering::Relaxed);
    attempt.bytes_down = meter.down.load(Ordering::Relaxed);
    if let Err(cut) = result {
        attempt.reason = Some(cut.to_string());
    }
    served
}

/// Resolves the target (unless it is a literal address), checks every address it has, and
/// connects to a vetted one. Refused or failed: the sandbox has had its answer.
async fn direct<S: AsyncWrite + Unpin>(stream: &mut S, ctx: &ProxyContext, attempt: &mut Attempt, req: &Request, literal: Option<IpAddr>, shown: &str) -> Result<TcpStream, Served> {
    let limits = &ctx.limits;
    let resolved = match literal {
        Some(ip) => vec![ip],
        None => match tokio::time::timeout(limits.connect_timeout, ctx.resolver.resolve(&req.host)).await {
            Ok(Ok(ips)) if !ips.is_empty() => ips,
            Ok(Ok(_)) => return Err(fail(stream, attempt, false, 502, format!("could not resolve {}: no addresses", req.host)).await),
            Ok(Err(e)) => return Err(fail(stream, attempt, false, 502, format!("could not resolve {}: {e}", req.host)).await),
            Err(_) => return Err(fail(stream, attempt, false, 504, format!("could not resolve {} within {} s", req.host, limits.connect_timeout.as_secs_f64())).await),
        },
    };
    match ctx.policy.decide(&req.host, req.port, &resolved) {
        Decision::Allow => {}
        Decision::Deny(d) => return Err(deny(stream, attempt, shown, &d.reason, &d.allow).await),
    }
    attempt.allowed = true;
    if ctx.bytes_total.load(Ordering::Relaxed) >= limits.max_bytes_total {
        return Err(fail(stream, attempt, true, 429, format!("the sandbox's egress limit of {} bytes is used up", limits.max_bytes_total)).await);
    }
    match connect(&resolved, req.port, limits.connect_timeout).await {
        Ok(s) => Ok(s),
        Err(why) => Err(fail(stream, attempt, true, 502, format!("could not connect to {shown}: {why}")).await),
    }
}

/// `localhost` and its subdomains (RFC 6761): never sent to an upstream proxy.
fn loopback_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// Before relaying: what the destination already sent (`down`, past an upstream proxy's
/// answer) to the sandbox, and what the proxy forwards for the sandbox (`up`) to the destination.
async fn send_first<S: AsyncWrite + Unpin>(stream: &mut S, dest: &mut TcpStream, down: &[u8], up: &[u8], meter: &Meter<'_>, idle: Duration) -> Result<(), Cut> {
    send_down(stream, down, meter, idle).await?;
    send_up(dest, up, meter, idle).await
}

async fn deny<S: AsyncWrite + Unpin>(stream: &mut S, attempt: &mut Attempt, shown: &str, reason: &str, allow: &[String]) -> Served {
    attempt.allowed = false;
    attempt.reason = Some(reason.to_string());
    let hint = if allow.is_empty() { String::new() } else { format!("; allow it with --allow {}", allow.join(" --allow ")) };
    reply(stream, 403, &format!("kiln egress: {shown} is not allowed ({reason}){hint}\n")).await
}

async fn fail<S: AsyncWrite + Unpin>(stream: &mut S, attempt: &mut Attempt, allowed: bool, code: u16, why: String) -> Served {
    attempt.allowed = allowed;
    let served = reply(stream, code, &format!("kiln egress: {why}\n")).await;
    attempt.reason = Some(why);
    served
}

/// Answers with `code` and a plain-text body, then closes the sending side.
async fn reply<S: AsyncWrite + Unpin>(stream: &mut S, code: u16, body: &str) -> Served {
    let text = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let msg = format!("HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    // The client may not read at all; do not wait on it for long.
    let _ = write_timeout(stream, msg.as_bytes(), true, Duration::from_secs(10)).await;
    Served::Status(code)
}

/// Writes `data` (then closes the sending side if `close`) within `limit`.
async fn write_timeout<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8], close: bool, limit: Duration) -> Result<(), ()> {
    let write = async {
        stream.write_all(data).await?;
        stream.flush().await?;
        if close {
            stream.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Tries each vetted address in turn, within `limit` overall.
async fn connect(addrs: &[IpAddr], port: u16, limit: Duration) -> Result<TcpStream, String> {
    let attempt = async {
        let mut last = String::from("no address");
        for &ip in addrs {
            match TcpStream::connect(SocketAddr::new(canonical(ip), port)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = format!("{ip}: {e}"),
            }
        }
        Err(last)
    };
    tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| Err(format!("timed out after {} s", limit.as_secs_f64())))
}

/// The length of a plain HTTP request's body, from its one `Content-Length` (none: no body).
/// What could frame the body two ways is refused, so the destination and the proxy always
/// agree where the request ends: `Transfer-Encoding` (411: send a length), several or
/// malformed lengths, or a `Connection` header naming a framing header (which a proxy would
/// then drop).
fn body_length(req: &Request) -> Result<u64, (u16, String)> {
    let mut length: Option<u64> = None;
    for (name, value) in &req.headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err((411, "Transfer-Encoding is not relayed for plain http://; send Content-Length (or use https://)".into()));
        }
        if name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(value).to_ascii_lowercase();
            if v.split(',').map(str::trim).any(|t| matches!(t, "content-length" | "transfer-encoding" | "host")) {
                return Err((400, "Connection names a header that frames the request".into()));
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(value).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            let n = v.and_then(|v| v.parse::<u64>().ok()).ok_or((400, "invalid Content-Length".to_string()))?;
            if length.is_some() {
                return Err((400, "more than one Content-Length".into()));
            }
            length = Some(n);
        }
    }
    Ok(length.unwrap_or(0))
}

/// The request head to send to the destination: origin form, `Host` from the URL, hop-by-hop
/// and `Proxy-*` headers dropped, `Connection: close`.
fn origin_form_head(req: &Request, authority: &str, path: &str) -> Vec<u8> {
    let connection_tokens: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| String::from_utf8_lossy(v).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = format!("{} {} {}\r\nHost: {}\r\n", req.method, path, req.version, authority).into_bytes();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        let hop = matches!(lower.as_str(), "host" | "connection" | "keep-alive" | "upgrade" | "te")
            || lower.starts_with("proxy-")
            || connection_tokens.contains(&lower);
        if hop {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_to_origin_form() {
        let req = request::parse(
            b"POST http://Example.com:8080/up?x=1 HTTP/1.1\r\nHost: evil.example\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nContent-Length: 3\r\nUser-Agent: t\r\n\r\n",
        )
        .unwrap();
        let Target::Http { authority, path } = &req.target else { panic!() };
        let head = origin_form_head(&req, authority, path);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /up?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nContent-Length: 3\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
        );
    }
}
