//! A run's provenance from key creation to `kiln verify`, and the tampering it must catch.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kiln_provenance::{provenance_for_run, statement, verify_files, BuildFacts, KeyStore, ProvenanceError};
use sha2::{Digest as _, Sha256};

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn sign_verify_and_catch_tampering() {
    let t = tempfile::tempdir().unwrap();
    let store = KeyStore::new(t.path().join("kiln/keys"));

    let bin = b"\x7fELF pretend binary".to_vec();
    let tarball = vec![7u8; 100_000];
    let started = SystemTime::now();
    let facts = BuildFacts {
        repo: "https://git.example.com/acme/widget".into(),
        git_ref: "refs/tags/v1.2.3".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        build: "make dist".into(),
        setup: Some("apt-get install -y build-essential".into()),
        matrix: BTreeMap::from([("ARCH".into(), "x86_64".into())]),
        template: "debian-12".into(),
        template_digest: "ab".repeat(32),
        snapshot_digest: None,
        builder_id: "https://kiln.dev/builder/test-host".into(),
        invocation_id: "run-0001".into(),
        started,
        finished: started + Duration::from_secs(90),
        artifacts: vec![("widget".into(), sha256(&bin)), ("widget.tar.gz".into(), sha256(&tarball))],
        reproduced: None,
    };
    assert_eq!(statement(&facts).subject.len(), 2);
    let envelope = provenance_for_run(&facts, &store).unwrap();

    let prov = t.path().join("widget.intoto.json");
    let art_bin = t.path().join("widget");
    let art_tar = t.path().join("widget.tar.gz");
    std::fs::write(&prov, &envelope).unwrap();
    std::fs::write(&art_bin, &bin).unwrap();
    std::fs::write(&art_tar, &tarball).unwrap();

    // Key files: private owner-only, public readable.
    assert_eq!(mode(&store.private_path()), 0o600);
    assert_eq!(mode(&store.public_path()), 0o644);
    assert_eq!(mode(store.dir()), 0o700);
    let keyid = store.public_key().unwrap().keyid;

    // Both artifacts verify.
    for (path, bytes) in [(&art_bin, &bin), (&art_tar, &tarball)] {
        let summary = verify_files(&prov, path, &store.public_path()).unwrap();
        assert_eq!(
            summary,
            format!(
                "{} sha256:{} built from https://git.example.com/acme/widget@89abcdef0123456789abcdef0123456789abcdef (refs/tags/v1.2.3) by https://kiln.dev/builder/test-host, signed by {keyid}",
                path.display(),
                sha256(bytes)
            )
        );
    }

    // One changed byte in an artifact.
    let mut changed = tarball.clone();
    changed[50_000] ^= 1;
    std::fs::write(&art_tar, &changed).unwrap();
    let e = verify_files(&prov, &art_tar, &store.public_path()).unwrap_err();
    assert!(matches!(e, ProvenanceError::NotASubject { .. }), "{e}");
    assert!(e.to_string().contains(&format!("sha256:{} is not a subject", sha256(&changed))), "{e}");
    assert!(!e.is_bad_input());
    std::fs::write(&art_tar, &tarball).unwrap();
    verify_files(&prov, &art_tar, &store.public_path()).unwrap();

    // One changed byte in the signed payload (decoded, flipped, re-encoded).
    let mut env: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
    let mut payload = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    let at = payload.windows(4).position(|w| w == b"v1.2").unwrap();
    payload[at + 3] = b'3';
    env["payload"] = STANDARD.encode(&payload).into();
    let tampered = t.path().join("tampered.intoto.json");
    std::fs::write(&tampered, serde_json::to_vec(&env).unwrap()).unwrap();
    let e = verify_files(&tampered, &art_bin, &store.public_path()).unwrap_err();
    assert_eq!(e.to_string(), format!("signature does not verify with key {keyid}"));

    // Another host's key.
    let other = KeyStore::new(t.path().join("other/keys"));
    other.load_or_create().unwrap();
    let e = verify_files(&prov, &art_bin, &other.public_path()).unwrap_err();
    assert!(matches!(e, ProvenanceError::BadSignature { .. }), "{e}");
    assert!(e.to_string().contains(&other.public_key().unwrap().keyid));

    // Missing files are bad input, not a failed verification.
    let e = verify_files(&t.path().join("nope.json"), &art_bin, &store.public_path()).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    let e = verify_files(&prov, &t.path().join("nope"), &store.public_path()).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    let e = verify_files(&prov, &art_bin, &t.path().join("nope.pub")).unwrap_err();
    assert!(e.is_bad_input(), "{e}");

    // The same key is used for the next run.
    let again = provenance_for_run(&facts, &store).unwrap();
    std::fs::write(&prov, &again).unwrap();
    verify_files(&prov, &art_bin, &store.public_path()).unwrap();
}

#[test]
fn the_rebuild_record_is_signed_and_checked() {
    let t = tempfile::tempdir().unwrap();
    let store = KeyStore::new(t.path().join("kiln/keys"));
    let bin = b"reproducible bytes".to_vec();
    let art = t.path().join("app");
    std::fs::write(&art, &bin).unwrap();
    let facts = |reproduced| BuildFacts {
        repo: "/srv/git/app".into(),
        git_ref: "HEAD".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        build: "make".into(),
        setup: None,
        matrix: BTreeMap::new(),
        template: "base".into(),
        template_digest: "ab".repeat(32),
        snapshot_digest: None,
        builder_id: "https://kiln.dev/builder/test-host".into(),
        invocation_id: "run-0002".into(),
        started: SystemTime::UNIX_EPOCH,
        finished: SystemTime::UNIX_EPOCH,
        artifacts: vec![("app".into(), sha256(&bin))],
        reproduced,
    };
    let check = |reproduced, n| {
        let prov = t.path().join("p.json");
        std::fs::write(&prov, provenance_for_run(&facts(reproduced), &store).unwrap()).unwrap();
        kiln_provenance::verify_files_statement(&prov, &art, &store.public_path()).unwrap().require_reproduced(n)
    };
    use kiln_provenance::Reproduced;
    check(Some(Reproduced { builds: 3, agreed: 3 }), 3).unwrap();
    check(Some(Reproduced { builds: 3, agreed: 3 }), 2).unwrap();
    let e = check(Some(Reproduced { builds: 2, agreed: 1 }), 2).unwrap_err();
    assert_eq!(e.to_string(), "not reproduced by 2 builds: 1 of 2 builds agreed");
    let e = check(None, 2).unwrap_err();
    assert!(e.to_string().contains("records no rebuilds"), "{e}");
    assert!(!e.is_bad_input());
    // Raising the count in the payload breaks the signature.
    let prov = t.path().join("p.json");
    std::fs::write(&prov, provenance_for_run(&facts(Some(Reproduced { builds: 2, agreed: 1 })), &store).unwrap()).unwrap();
    let mut env: serde_json::Value = serde_json::from_slice(&std::fs::read(&prov).unwrap()).unwrap();
    let payload = String::from_utf8(STANDARD.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
    let forged = payload.replace("\"agreed\":1", "\"agreed\":2");
    assert_ne!(forged, payload);
    env["payload"] = STANDARD.encode(forged).into();
    std::fs::write(&prov, serde_json::to_vec(&env).unwrap()).unwrap();
    let e = kiln_provenance::verify_files_statement(&prov, &art, &store.public_path()).unwrap_err();
    assert!(matches!(e, ProvenanceError::BadSignature { .. }), "{e}");
}
