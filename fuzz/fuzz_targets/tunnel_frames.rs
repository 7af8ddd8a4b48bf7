//! The host's decoder for the egress tunnel, on arbitrary bytes.
#![no_main]

use kiln_proto::tunnel::NetMsg;
use kiln_proto::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::new();
    d.push(data);
    while let Ok(Some(m)) = d.next::<NetMsg>() {
        let _ = m.validate();
        let _ = m.conn();
    }
});
