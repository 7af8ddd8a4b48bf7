//! A corporate proxy and a mirror behind it, on the host's loopback, for tests of
//! `--egress-upstream`: [`UpstreamProxy`] records each `CONNECT` it is sent (and its
//! `Proxy-Authorization`) and tunnels any name to 127.0.0.1 at the port asked for, so a mirror
//! named `*.invalid` (which no resolver answers) is reachable through it and nothing else;
//! [`Mirror`] answers every request with `mirror says <path>`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Each request line a proxy was sent, with its `Proxy-Authorization` value.
type Seen = Mutex<Vec<(String, Option<String>)>>;

/// The CONNECT proxy. Its threads live as long as the test process.
#[derive(Debug)]
pub struct UpstreamProxy {
    port: u16,
    seen: Arc<Seen>,
}

impl UpstreamProxy {
    /// Listens on 127.0.0.1 at a free port.
    pub fn start() -> UpstreamProxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the upstream proxy");
        let port = l.local_addr().expect("its address").port();
        let seen: Arc<Seen> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let record = record.clone();
                std::thread::spawn(move || tunnel(s, &record));
            }
        });
        UpstreamProxy { port, seen }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What it was sent so far: each request line (`CONNECT host:port HTTP/1.1`) with its
    /// `Proxy-Authorization` value, if any.
    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn tunnel(mut s: TcpStream, seen: &Seen) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || !matches!(s.read(&mut byte), Ok(1)) {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or_default().to_owned();
    let auth = head.lines().find_map(|l| l.strip_prefix("Proxy-Authorization: ")).map(str::to_owned);
    seen.lock().unwrap_or_else(|e| e.into_inner()).push((line.clone(), auth));
    let port: u16 = line.split(' ').nth(1).and_then(|t| t.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
    let Ok(dest) = TcpStream::connect(("127.0.0.1", port)) else {
        let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    if s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() {
        return;
    }
    let (Ok(mut up_r), Ok(mut dest_w)) = (s.try_clone(), dest.try_clone()) else { return };
    let (mut dest_r, mut up_w) = (dest, s);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut dest_w);
        let _ = dest_w.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut dest_r, &mut up_w);
    let _ = up_w.shutdown(Shutdown::Write);
    let _ = t.join();
}

/// An HTTP server on 127.0.0.1 answering each request with `mirror says <path>\n`.
#[derive(Debug)]
pub struct Mirror {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    hits: Arc<AtomicUsize>,
}

impl Mirror {
    /// Listens on 127.0.0.1 at a free port.
    pub fn start() -> Mirror {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the mirror");
        let port = l.local_addr().expect("its address").port();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, n) = (heads.clone(), hits.clone());
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                n.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let body = format!("mirror says {}\n", head.split(' ').nth(1).unwrap_or("?"));
                h.lock().unwrap_or_else(|e| e.into_inner()).push(head);
                let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
            }
        });
        Mirror { port, heads, hits }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request heads it got.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections it accepted.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
