//! A static HTTP server for tests: registries on loopback that a test fills (npm, PEP 503).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A static HTTP server on 127.0.0.2 (which the guest's NO_PROXY does not cover, so guests
/// reach it through kiln's egress proxy): `files(port)` gives path → bytes; answers absolute-
/// and origin-form GETs; counts requests.
pub fn serve(files: impl FnOnce(u16) -> HashMap<String, Vec<u8>>) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let files = Arc::new(files(port));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (files, h) = (files.clone(), h.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).map_or(true, |n| n == 0) || l == "\r\n" {
                        break;
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                // Absolute form (through a proxy) or origin form.
                let target = line.split_whitespace().nth(1).unwrap_or("/");
                let path = target.split_once("://").map_or(target, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
                let path = path.split('?').next().unwrap();
                let mut s = s;
                match files.get(path).or_else(|| files.get(path.trim_end_matches('/'))) {
                    Some(b) => {
                        let ct = if b.starts_with(b"<!DOCTYPE html") { "text/html" } else if b.starts_with(b"{") { "application/json" } else { "application/octet-stream" };
                        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len());
                        let _ = s.write_all(b);
                    }
                    None => {
                        let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            });
        }
    });
    (port, hits)
}

