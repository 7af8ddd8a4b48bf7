//! An upstream HTTP proxy (a corporate proxy) that allowed connections are sent through:
//! `http://[USER:PASSWORD@]HOST[:PORT]`.
//!
//! With one set on the [`crate::ProxyContext`], a target the policy allows by *name* is not
//! resolved on the host: kiln connects to the upstream, asks it for `CONNECT host:port` (with
//! `Proxy-Authorization: Basic` when the URL has credentials), and relays the tunnel it gets.
//! Plain-HTTP requests go through such a tunnel too (as `CONNECT host:80`), rewritten to origin
//! form exactly as when kiln connects itself. Targets that are IP literals (which only an exact
//! address entry can allow) and `localhost` names go direct, with the usual address checks.

use std::fmt;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::request::{read_head, HeadError};

/// The form an upstream URL takes, for error messages.
pub const FORM: &str = "http://[USER:PASSWORD@]HOST[:PORT]";

/// Most bytes of the upstream's answer head (status line and headers) kiln reads: 8 KiB.
pub const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Longest upstream URL accepted.
const MAX_URL: usize = 2048;

/// An upstream HTTP proxy. Its `Debug` and `Display` forms never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// A name, an IPv4 address, or an IPv6 address without brackets.
    host: String,
    port: u16,
    /// The user name, if the URL had credentials (for display).
    user: Option<String>,
    /// `Basic <base64 of user:password>`, if the URL had credentials.
    authorization: Option<String>,
}

/// An upstream URL that could not be used. The message never holds the URL's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (expected {FORM})")]
pub struct UpstreamError {
    /// What is wrong.
    pub reason: String,
}

fn bad(reason: impl Into<String>) -> UpstreamError {
    UpstreamError { reason: reason.into() }
}

impl Upstream {
    /// Parses `http://[USER:PASSWORD@]HOST[:PORT]` (a trailing `/` is fine; PORT defaults to
    /// 80; USER and PASSWORD may be percent-encoded). Only `http://`: kiln speaks plain HTTP to
    /// the upstream (the tunnels through it carry the guest's own TLS).
    pub fn parse(url: &str) -> Result<Upstream, UpstreamError> {
        let url = url.trim();
        if url.len() > MAX_URL {
            return Err(bad(format!("longer than {MAX_URL} characters")));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("no scheme: write http:// before the proxy's host"));
        };
        if !scheme.eq_ignore_ascii_case("http") {
            let shown: String = scheme.chars().take(16).filter(|c| c.is_ascii_graphic()).collect();
            return Err(bad(format!("only http:// upstream proxies are supported, not {shown}://")));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(bad("a proxy URL has no path, query or fragment"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, authorization) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let user = percent_decode(user).ok_or_else(|| bad("invalid %-escape in the user name"))?;
                let password = percent_decode(password).ok_or_else(|| bad("invalid %-escape in the password"))?;
                if user.is_empty() {
                    return Err(bad("empty user name before '@'"));
                }
                if user.contains(&b':') {
                    return Err(bad("a user name cannot hold ':'"));
                }
                if user.iter().chain(&password).any(|b| b.is_ascii_control()) {
                    return Err(bad("a control character in the credentials"));
                }
                let mut pair = user.clone();
                pair.push(b':');
                pair.extend_from_slice(&password);
                (Some(String::from_utf8_lossy(&user).into_owned()), Some(format!("Basic {}", base64(&pair))))
            }
        };
        let (host, port) = split_host_port(hostport)?;
        Ok(Upstream { host, port, user, authorization })
    }

    /// `host:port` (`[v6]:port`): how logs name it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the URL had credentials (sent as `Proxy-Authorization: Basic`).
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }

    /// Connects to the upstream, asks it for a tunnel to `host:port`, and reads its answer
    /// (at most [`MAX_ANSWER_HEAD`] bytes of head). Connecting, and then the answer, have
    /// `timeout` each. On a 2xx answer: the stream, and whatever the upstream sent after its
    /// head (the destination's first bytes). Otherwise: why, in a short line (the upstream's
    /// own words cut to a few printable characters).
    pub(crate) async fn open(&self, host: &str, port: u16, timeout: Duration) -> Result<(TcpStream, Vec<u8>), String> {
        let me = self.authority();
        let secs = timeout.as_secs_f64();
        let mut s = match tokio::time::timeout(timeout, TcpStream::connect((self.host.as_str(), self.port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("could not connect to the upstream proxy {me}: {e}")),
            Err(_) => return Err(format!("could not connect to the upstream proxy {me} within {secs} s")),
        };
        let _ = s.set_nodelay(true);
        let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        match tokio::time::timeout(timeout, async { s.write_all(head.as_bytes()).await.and(s.flush().await) }).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("the upstream proxy {me} failed: {e}")),
            Err(_) => return Err(format!("the upstream proxy {me} took no request within {secs} s")),
        }
        let (answer, rest) = match read_head(&mut s, MAX_ANSWER_HEAD, timeout).await {
            Ok(h) => h,
            Err(HeadError::TooLarge) => return Err(format!("the upstream proxy {me} answered a head larger than {MAX_ANSWER_HEAD} bytes")),
            Err(HeadError::Timeout { .. }) => return Err(format!("the upstream proxy {me} did not answer CONNECT {target} within {secs} s")),
            Err(HeadError::Closed { .. }) => return Err(format!("the upstream proxy {me} closed the connection without answering CONNECT {target}")),
            Err(HeadError::Io(e)) => return Err(format!("reading the answer of the upstream proxy {me} failed: {e}")),
        };
        let (code, phrase) = status(&answer).ok_or_else(|| format!("the upstream proxy {me} did not answer in HTTP"))?;
        if (200..300).contains(&code) {
            return Ok((s, rest));
        }
        let hint = match code {
            407 if self.has_credentials() => "; it refused the credentials in the upstream URL",
            407 => "; it wants credentials: give them in the upstream URL, http://USER:PASSWORD@HOST:PORT",
            _ => "",
        };
        Err(format!("the upstream proxy {me} refused CONNECT {target}: {code} {phrase}{hint}"))
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "http://{u}:***@{}", self.authority()),
            None => write!(f, "http://{}", self.authority()),
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upstream({self})")
    }
}

/// The status code and (printable, at most 64 characters) reason phrase of an answer head.
fn status(head: &[u8]) -> Option<(u16, String)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/1.1 ").or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let (code, phrase) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = std::str::from_utf8(code).ok()?.parse().ok()?;
    let phrase: String = phrase.iter().take(64).map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).collect();
    Some((code, phrase))
}

/// `host[:port]` or `[v6][:port]`, port 80 by default.
fn split_host_port(s: &str) -> Result<(String, u16), UpstreamError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| bad("missing ']' after the IPv6 address"))?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad("not an IPv6 address between '[' and ']'"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected :PORT after ']'"))?),
        };
        (v6.to_ascii_lowercase(), port)
    } else {
        if s.matches(':').count() > 1 {
            return Err(bad("write an IPv6 address in brackets, e.g. http://[2001:db8::1]:3128"));
        }
        match s.split_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (s.to_ascii_lowercase(), None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        },
    };
    let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.len() > 253 || (!host.contains(':') && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')) {
        return Err(bad("the host must be a name or an address"));
    }
    Ok((host, port))
}

/// `%XX` escapes decoded; `None` for a broken one.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (plain, coded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"), ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ==")] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    #[test]
    fn parses_upstream_urls() {
        let table: &[(&str, &str, u16, Option<&str>)] = &[
            ("http://proxy.corp.invalid:3128", "proxy.corp.invalid", 3128, None),
            ("  HTTP://Proxy.Corp.Invalid:8080/ ", "proxy.corp.invalid", 8080, None),
            ("http://proxy.corp.invalid", "proxy.corp.invalid", 80, None),
            ("http://127.0.0.1:3128", "127.0.0.1", 3128, None),
            ("http://[::1]:3128", "::1", 3128, None),
            ("http://[fd00::7]", "fd00::7", 80, None),
            ("http://Aladdin:open%20sesame@proxy.corp.invalid:3128", "proxy.corp.invalid", 3128, Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")),
            ("http://user:p%40ss:w@rd@10.0.0.1:3128", "10.0.0.1", 3128, Some("Basic dXNlcjpwQHNzOndAcmQ=")),
            ("http://user@proxy.corp.invalid:3128", "proxy.corp.invalid", 3128, Some("Basic dXNlcjo=")),
        ];
        for (url, host, port, auth) in table {
            let u = Upstream::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((u.host.as_str(), u.port, u.authorization.as_deref()), (*host, *port, *auth), "{url}");
        }
        assert_eq!(Upstream::parse("http://[::1]:3128").unwrap().authority(), "[::1]:3128");
    }

    #[test]
    fn refuses_bad_urls_without_showing_the_password() {
        let table: &[(&str, &str)] = &[
            ("proxy.corp.invalid:3128", "no scheme"),
            ("https://proxy.corp.invalid:3128", "not https://"),
            ("socks5://proxy.corp.invalid:1080", "not socks5://"),
            ("http://proxy.corp.invalid:3128/path", "no path"),
            ("http://proxy.corp.invalid:3128?x", "no path"),
            ("http://proxy.corp.invalid:0", "port"),
            ("http://proxy.corp.invalid:99999", "port"),
            ("http://proxy.corp.invalid:+80", "port"),
            ("http://proxy.corp.invalid:", "port"),
            ("http://:3128", "no host"),
            ("http://", "no host"),
            ("http://pr oxy:3128", "name or an address"),
            ("http://::1:3128", "brackets"),
            ("http://[::1:3128", "missing ']'"),
            ("http://[zz]:3128", "IPv6"),
            ("http://:s3cret-pw@proxy.corp.invalid:3128", "empty user"),
            ("http://u:s3cret-pw%zz@proxy.corp.invalid:3128", "%-escape"),
            ("http://u%3Ax:s3cret-pw@proxy.corp.invalid:3128", "cannot hold ':'"),
            ("http://u:s3cret-pw%0d%0a@proxy.corp.invalid:3128", "control character"),
        ];
        for (url, want) in table {
            let e = Upstream::parse(url).expect_err(url);
            let text = e.to_string();
            assert!(text.contains(want), "{url}: {text}");
            assert!(text.ends_with(&format!("(expected {FORM})")), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert!(Upstream::parse(&format!("http://{}:1", "a".repeat(3000))).unwrap_err().reason.contains("longer than"));
    }

    #[test]
    fn shows_no_password() {
        let u = Upstream::parse("http://builder:s3cret-pw@proxy.corp.invalid:3128").unwrap();
        assert_eq!(u.to_string(), "http://builder:***@proxy.corp.invalid:3128");
        assert_eq!(format!("{u:?}"), "Upstream(http://builder:***@proxy.corp.invalid:3128)");
        assert!(u.has_credentials());
        assert_eq!(Upstream::parse("http://proxy.corp.invalid:3128").unwrap().to_string(), "http://proxy.corp.invalid:3128");
    }

    #[test]
    fn status_lines() {
        assert_eq!(status(b"HTTP/1.1 200 Connection established\r\n\r\n"), Some((200, "Connection established".into())));
        assert_eq!(status(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n"), Some((407, "Proxy Authentication Required".into())));
        assert_eq!(status(b"HTTP/1.1 204\r\n\r\n"), Some((204, String::new())));
        assert_eq!(status(b"HTTP/1.1 503 \x1b[31mred\r\n\r\n"), Some((503, "?[31mred".into())));
        assert_eq!(status(format!("HTTP/1.1 503 {}\r\n\r\n", "x".repeat(500)).as_bytes()).unwrap().1.len(), 64);
        for bad in [&b"SSH-2.0-x\r\n\r\n"[..], b"HTTP/1.1 20 ok\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 2000 x\r\n\r\n", b""] {
            assert_eq!(status(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
