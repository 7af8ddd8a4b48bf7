//! A hostile guest agent, for kiln's hostile-guest tests only (`KILN_AGENT` points a test at
//! it; nothing else uses it). It stands for a guest whose kernel or agent an attacker owns:
//! it boots like the real agent, answers the handshake and identity so the sandbox comes up,
//! then answers an exec by breaking the protocol in the way the command names:
//!
//! - `garbage`: random bytes, forever;
//! - `oversized`: a frame that announces nearly 4 GiB, then bytes forever;
//! - `endless`: valid output frames, forever, and no exit;
//! - `stall`: the first bytes of a valid-sized frame, then one byte a second, forever;
//! - anything else: a clean exit 0, so the sandbox is known to work.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use kiln_proto::{encode, Command, ExitStatus, FrameDecoder, GuestMsg, HostMsg, PROTOCOL_VERSION};

fn send(port: &mut File, msg: &GuestMsg) {
    let _ = port.write_all(&encode(msg));
}

/// xorshift64: cheap bytes that look random to a decoder.
fn fill_random(buf: &mut [u8], state: &mut u64) {
    for b in buf {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *b = *state as u8;
    }
}

fn misbehave(port: &mut File, id: u32, how: &str) -> ! {
    eprintln!("kiln-hostile-agent: exec {id}: {how}");
    let mut buf = vec![0u8; 64 * 1024];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(id);
    match how {
        "garbage" => loop {
            fill_random(&mut buf, &mut seed);
            let _ = port.write_all(&buf);
        },
        "oversized" => {
            let _ = port.write_all(&0xFFFF_FFF0u32.to_le_bytes());
            loop {
                let _ = port.write_all(&buf);
            }
        }
        "endless" => {
            send(port, &GuestMsg::Started { id, pid: 1 });
            loop {
                send(port, &GuestMsg::Stdout { id, data: buf.clone() });
            }
        }
        _ => {
            // "stall": a frame of 200,000 bytes that never completes.
            let _ = port.write_all(&200_000u32.to_le_bytes());
            loop {
                let _ = port.write_all(&[0]);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn serve(port: &mut File) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) | Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        while let Ok(Some(msg)) = dec.next::<HostMsg>() {
            let reply = match msg {
                HostMsg::Hello { id, .. } => GuestMsg::HelloAck { id, version: PROTOCOL_VERSION, agent: "hostile".into(), kernel: "hostile".into() },
                HostMsg::Ping { id } => GuestMsg::Pong { id },
                HostMsg::Exec { id, spec } => {
                    let text = match &spec.command {
                        Command::Shell(s) => s.clone(),
                        Command::Argv(a) => a.join(" "),
                    };
                    if ["garbage", "oversized", "endless", "stall"].contains(&text.as_str()) {
                        misbehave(port, id, &text);
                    }
                    send(port, &GuestMsg::Started { id, pid: 1 });
                    GuestMsg::Exited { id, status: ExitStatus::Code(0), timed_out: false, duration_ms: 0 }
                }
                HostMsg::SetIdentity { id, .. } | HostMsg::Sync { id } => GuestMsg::Done { id },
                _ => continue,
            };
            send(port, &reply);
        }
    }
}

fn main() {
    // SAFETY: getpid has no arguments and cannot fail.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("kiln-hostile-agent: a test fixture that runs as a guest's PID 1 only");
        std::process::exit(2);
    }
    kiln_agent::boot::boot();
    let mut port = kiln_agent::port::open(kiln_proto::CONTROL_PORT);
    // Blocking I/O: this agent has nothing else to do.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(port.as_raw_fd(), libc::F_SETFL, 0) };
    loop {
        serve(&mut port);
    }
}
