//! The registries the example projects' tests fill: the fixture packages of
//! `tests/fixtures/registries/` as an npm registry (for [`kiln_testkit::http::serve`]).

use std::collections::HashMap;
use std::path::Path;

/// A fixture file's bytes.
pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registries").join(rel)).unwrap()
}

/// An npm registry holding `kiln-pad` 1.0.0, served on 127.0.0.2:`port`.
pub fn npm(port: u16) -> HashMap<String, Vec<u8>> {
    let tgz = fixture("npm/kiln-pad-1.0.0.tgz");
    let packument = serde_json::json!({
        "name": "kiln-pad", "dist-tags": { "latest": "1.0.0" },
        "versions": { "1.0.0": { "name": "kiln-pad", "version": "1.0.0", "main": "index.js", "dist": {
            "tarball": format!("http://127.0.0.2:{port}/kiln-pad/-/kiln-pad-1.0.0.tgz"),
            "integrity": "sha512-ObQp45J4uTBJ0W51FuT/+8roiQdOPb6mNX1RdRYOob+BEutY+lDEuQwM8Y2s/CzSPuCsEFbMqXo9dORzy2OGDg==",
        } } }
    });
    HashMap::from([("/kiln-pad".to_owned(), packument.to_string().into_bytes()), ("/kiln-pad/-/kiln-pad-1.0.0.tgz".to_owned(), tgz)])
}
