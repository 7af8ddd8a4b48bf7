//! The API's request parsing: every JSON body the routing table names, and the guest paths in
//! queries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for route in kiln_server::fuzzing::json_routes() {
        let _ = kiln_server::fuzzing::parse_body(route, data);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln_server::error::guest_path(s);
    }
});
