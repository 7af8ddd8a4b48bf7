//! The API's request parsing: every route's body and the guest paths in queries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for op in kiln_server::fuzzing::OPS {
        let _ = kiln_server::fuzzing::parse_body(op, data);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln_server::error::guest_path(s);
    }
});
