//! The decoders against hostile bytes: random streams and mutations of valid frames never
//! panic, never buffer more than one maximal frame, and every message that decodes and
//! validates stays within the limits the host relies on.

use kiln_proto::tunnel::NetMsg;
use kiln_proto::{encode, DecodeError, FrameDecoder, GuestMsg, MAX_CHUNK, MAX_FRAME};

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn samples() -> Vec<Vec<u8>> {
    vec![
        encode(&GuestMsg::Stdout { id: 1, data: b"hello".to_vec() }),
        encode(&GuestMsg::Exited { id: 1, status: kiln_proto::ExitStatus::Code(0), timed_out: false, duration_ms: 3 }),
        encode(&GuestMsg::Entries { id: 2, entries: vec![], last: true }),
        encode(&GuestMsg::Error { id: 0, kind: kiln_proto::ErrorKind::Io, message: "x".into() }),
        encode(&NetMsg::Data { conn: 3, data: vec![1, 2, 3] }),
    ]
}

/// Feeds `bytes` in random pieces; on a decode error the host drops the channel, so stop there.
fn drive<T: serde::de::DeserializeOwned>(bytes: &[u8], rng: &mut Rng, check: impl Fn(&T)) {
    let mut d = FrameDecoder::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = 1 + rng.below(4096) as usize;
        let end = (at + n).min(bytes.len());
        d.push(&bytes[at..end]);
        at = end;
        loop {
            match d.next::<T>() {
                Ok(Some(m)) => check(&m),
                Ok(None) => break,
                Err(DecodeError::Oversized(len)) => {
                    assert!(len > MAX_FRAME);
                    return;
                }
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= MAX_FRAME + 4 + 4096, "buffered {}", d.buffered());
    }
}

#[test]
fn random_and_mutated_streams() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let samples = samples();
    for round in 0..3000 {
        let mut bytes: Vec<u8> = if round % 3 == 0 {
            (0..rng.below(20_000)).map(|_| rng.next() as u8).collect()
        } else {
            // Valid frames with a few bytes flipped, dropped or inserted.
            let mut v = Vec::new();
            for _ in 0..1 + rng.below(8) {
                v.extend_from_slice(&samples[rng.below(samples.len() as u64) as usize]);
            }
            for _ in 0..1 + rng.below(6) {
                let i = rng.below(v.len() as u64) as usize;
                match rng.below(3) {
                    0 => v[i] ^= 1 << rng.below(8),
                    1 => {
                        v.remove(i);
                    }
                    _ => v.insert(i, rng.next() as u8),
                }
                if v.is_empty() {
                    break;
                }
            }
            v
        };
        if round % 7 == 0 {
            // A length prefix near the limit.
            let len = (MAX_FRAME as u32).wrapping_add(rng.below(3) as u32).wrapping_sub(1);
            let mut p = len.to_le_bytes().to_vec();
            p.append(&mut bytes);
            bytes = p;
        }
        drive::<GuestMsg>(&bytes, &mut rng, |m| {
            if m.validate().is_ok() {
                if let GuestMsg::Stdout { data, .. } | GuestMsg::Stderr { data, .. } | GuestMsg::FileChunk { data, .. } = m {
                    assert!(data.len() <= MAX_CHUNK);
                }
            }
        });
        drive::<NetMsg>(&bytes, &mut rng, |m| {
            if m.validate().is_ok() {
                if let NetMsg::Data { data, .. } = m {
                    assert!(data.len() <= MAX_CHUNK);
                }
            }
        });
    }
}

#[test]
fn resync_on_garbage_keeps_the_buffer_small() {
    let mut rng = Rng(7);
    let mut d = FrameDecoder::new();
    for _ in 0..200 {
        let junk: Vec<u8> = (0..8192).map(|_| rng.next() as u8).collect();
        d.push(&junk);
        assert!(d.resync::<GuestMsg>(|m| matches!(m, GuestMsg::HelloAck { id: 424242, .. })).is_none());
        assert!(d.buffered() <= MAX_FRAME + 8192 + 4, "buffered {}", d.buffered());
    }
}
