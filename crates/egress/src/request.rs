//! Reading and parsing a proxy request head: the request line and the headers, nothing more.

use std::net::Ipv6Addr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no request head could be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// The client closed the connection after sending `got` bytes and no complete head.
    Closed { got: usize },
    /// The head did not end within the limit.
    TooLarge,
    /// The head did not arrive in time.
    Timeout { got: usize },
    /// Reading failed.
    Io(String),
}

/// Reads until the end of the head (an empty line). Returns the head (including the empty
/// line) and whatever was read after it.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(r: &mut R, max: usize, timeout: Duration) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = head_end(&buf) {
                if end > max {
                    return Err(HeadError::TooLarge);
                }
                let rest = buf.split_off(end);
                return Ok((std::mem::take(&mut buf), rest));
            }
            if buf.len() >= max {
                return Err(HeadError::TooLarge);
            }
            // Never read far past the limit.
            let want = chunk.len().min(max + 4 - buf.len());
            match r.read(&mut chunk[..want]).await {
                Ok(0) => return Err(HeadError::Closed { got: buf.len() }),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(HeadError::Io(e.to_string())),
            }
        }
    };
    let got = tokio::time::timeout(timeout, read).await;
    match got {
        Ok(r) => r,
        Err(_) => Err(HeadError::Timeout { got: buf.len() }),
    }
}

/// Index just past the empty line that ends a head (`\r\n\r\n`, or bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// What the client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `CONNECT host:port`.
    Connect,
    /// An absolute-form plain HTTP request, to be forwarded in origin form.
    Http {
        /// The authority as written (for the `Host` header).
        authority: String,
        /// Path and query, at least `/`.
        path: String,
    },
}

/// A parsed proxy request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    /// Host without brackets, lower case, without trailing dot.
    pub host: String,
    pub port: u16,
    pub target: Target,
    pub version: String,
    /// Header names and raw values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Parses a head as returned by [`read_head`]. Errors say what is wrong, for a 400 reply.
pub(crate) fn parse(head: &[u8]) -> Result<Request, String> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| "request line is not ASCII")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("request line must be METHOD TARGET HTTP/1.x".into());
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err("invalid method".into());
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("only HTTP/1.0 and HTTP/1.1 are supported".into());
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            break;
        }
        if l[0] == b' ' || l[0] == b'\t' {
            return Err("folded header lines are not supported".into());
        }
        let colon = l.iter().position(|&b| b == b':').ok_or("header line without ':'")?;
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err("invalid header name".into());
        }
        if value.iter().any(|&b| b == b'\r' || b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("control character in a header value".into());
        }
        let value = value.trim_ascii().to_vec();
        headers.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    let (host, port, target) = if method == "CONNECT" {
        let (host, port) = parse_authority(target, None)?;
        (host, port, Target::Connect)
    } else {
        let rest = strip_prefix_ignore_case(target, "http://").ok_or_else(|| {
            if strip_prefix_ignore_case(target, "https://").is_some() {
                "https:// URLs must be reached with CONNECT".to_string()
            } else {
                "a proxy request needs an absolute http:// URL (or CONNECT)".to_string()
            }
        })?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (host, port) = parse_authority(authority, Some(80))?;
        let path = match path.split('#').next().unwrap_or_default() {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("invalid character in the URL path".into());
        }
        (host, port, Target::Http { authority: authority.to_string(), path })
    };
    Ok(Request { method: method.to_string(), host, port, target, version: version.to_string(), headers })
}

/// `host:port`, `[v6]:port`, or (with a default port) `host`, `[v6]`. No user info.
fn parse_authority(a: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    if a.contains('@') {
        return Err("user info in the URL is not supported".into());
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("missing ']' in the host")?;
        v6.parse::<Ipv6Addr>().map_err(|_| "invalid IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after ']'")?),
        };
        (v6.to_ascii_lowercase(), port)
    } else {
        match a.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (a.to_string(), None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or("invalid port")?,
        Some(_) => return Err("invalid port".into()),
        None => default_port.ok_or("CONNECT needs host:port")?,
    };
    let host = host.strip_suffix('.').unwrap_or(&host).to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return Err("invalid host".into());
    }
    if !host.contains(':') && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_') {
        return Err("invalid character in the host".into());
    }
    Ok((host, port))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_variants() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[tokio::test]
    async fn reads_head_and_keeps_the_rest() {
        let mut input: &[u8] = b"CONNECT a:1 HTTP/1.1\r\n\r\nearly";
        let (head, rest) = read_head(&mut input, 100, Duration::from_secs(1)).await.unwrap();
        assert_eq!(head, b"CONNECT a:1 HTTP/1.1\r\n\r\n");
        assert_eq!(rest, b"early");
        let mut input: &[u8] = b"CONNECT a:1 HTTP/1.1\r\n";
        assert_eq!(read_head(&mut input, 100, Duration::from_secs(1)).await, Err(HeadError::Closed { got: 22 }));
        let big = [b'a'; 200];
        assert_eq!(read_head(&mut &big[..], 100, Duration::from_secs(1)).await, Err(HeadError::TooLarge));
        let mut input: &[u8] = b"GET http://a/ HTTP/1.1\r\nX: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n\r\n";
        assert_eq!(read_head(&mut input, 40, Duration::from_secs(1)).await, Err(HeadError::TooLarge));
    }

    #[test]
    fn parses_connect() {
        let r = parse(b"CONNECT Example.com.:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.host.as_str(), r.port, &r.target), ("CONNECT", "example.com", 443, &Target::Connect));
        assert_eq!(r.headers, vec![("Host".to_string(), b"example.com:443".to_vec())]);
        let r = parse(b"CONNECT [::1]:8080 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 8080));
    }

    #[test]
    fn parses_absolute_form() {
        let table: &[(&str, &str, u16, &str, &str)] = &[
            ("GET http://127.0.0.1:8080/x HTTP/1.1", "127.0.0.1", 8080, "127.0.0.1:8080", "/x"),
            ("GET http://Example.com HTTP/1.1", "example.com", 80, "Example.com", "/"),
            ("GET HTTP://example.com?q=1 HTTP/1.0", "example.com", 80, "example.com", "/?q=1"),
            ("POST http://[::1]:9/a/b?c#frag HTTP/1.1", "::1", 9, "[::1]:9", "/a/b?c"),
            ("HEAD http://[::1]/ HTTP/1.1", "::1", 80, "[::1]", "/"),
        ];
        for (line, host, port, authority, path) in table {
            let r = parse(format!("{line}\r\n\r\n").as_bytes()).unwrap();
            assert_eq!((r.host.as_str(), r.port), (*host, *port), "{line}");
            assert_eq!(r.target, Target::Http { authority: authority.to_string(), path: path.to_string() }, "{line}");
        }
    }

    #[test]
    fn rejects_malformed() {
        let table: &[&[u8]] = &[
            b"\r\n\r\n",
            b"hello\r\n\r\n",
            b"GET /x HTTP/1.1\r\n\r\n",
            b"GET https://example.com/ HTTP/1.1\r\n\r\n",
            b"GET ftp://example.com/ HTTP/1.1\r\n\r\n",
            b"GET http://example.com/ HTTP/2\r\n\r\n",
            b"GET http://example.com/  HTTP/1.1\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1 x\r\n\r\n",
            b"G(T http://example.com/ HTTP/1.1\r\n\r\n",
            b"GET http:///x HTTP/1.1\r\n\r\n",
            b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
            b"GET http://exa%6dple.com/ HTTP/1.1\r\n\r\n",
            b"GET http://example.com:0/ HTTP/1.1\r\n\r\n",
            b"GET http://example.com:99999/ HTTP/1.1\r\n\r\n",
            b"GET http://example.com:+80/ HTTP/1.1\r\n\r\n",
            b"GET http://[::1/ HTTP/1.1\r\n\r\n",
            b"GET http://[zz]/ HTTP/1.1\r\n\r\n",
            b"CONNECT example.com HTTP/1.1\r\n\r\n",
            b"CONNECT example.com: HTTP/1.1\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\n Folded: x\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\nX: a\0b\r\n\r\n",
            b"GET http://ex\xffample.com/ HTTP/1.1\r\n\r\n",
        ];
        for head in table {
            assert!(parse(head).is_err(), "{}", String::from_utf8_lossy(head));
        }
    }
}
