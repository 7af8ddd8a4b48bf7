//! The host's decoder for the agent's control channel, on arbitrary bytes.
#![no_main]

use kiln_proto::{FrameDecoder, GuestMsg, MAX_CHUNK, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::new();
    for piece in data.chunks(97) {
        d.push(piece);
        loop {
            match d.next::<GuestMsg>() {
                Ok(Some(m)) => {
                    if m.validate().is_ok() {
                        if let GuestMsg::Stdout { data, .. } | GuestMsg::Stderr { data, .. } = &m {
                            assert!(data.len() <= MAX_CHUNK);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= MAX_FRAME + 4 + 97);
    }
    let _ = d.resync::<GuestMsg>(|m| matches!(m, GuestMsg::HelloAck { .. }));
});
