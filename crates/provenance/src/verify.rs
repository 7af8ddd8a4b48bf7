//! Checking a provenance file against an artifact: the envelope's signature with a public key,
//! the statement's types, and that the artifact's sha256 is one of the statement's subjects.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::dsse::{self, Envelope, PAYLOAD_TYPE};
use crate::keys::{load_public_key, PublicKey};
use crate::statement::{ResourceDescriptor, Statement, PREDICATE_TYPE, STATEMENT_TYPE};
use crate::{ProvenanceError, Result};

/// The largest provenance file we parse.
pub const MAX_ENVELOPE: u64 = 16 << 20;
/// How many subjects an error message lists.
const SUBJECTS_SHOWN: usize = 10;

/// A statement whose signature verified and which names the artifact.
#[derive(Debug, Clone)]
pub struct VerifiedStatement {
    /// The statement.
    pub statement: Statement,
    /// The subject that matched the artifact.
    pub subject: ResourceDescriptor,
    /// The artifact's sha256, hex.
    pub sha256: String,
    /// The id of the key the signature verified with.
    pub keyid: String,
}

impl VerifiedStatement {
    /// The repository built from.
    pub fn repo(&self) -> &str {
        &self.statement.predicate.build_definition.external_parameters.repo
    }
    /// The ref asked for.
    pub fn git_ref(&self) -> &str {
        &self.statement.predicate.build_definition.external_parameters.git_ref
    }
    /// The commit built, if the statement records one.
    pub fn commit(&self) -> Option<&str> {
        self.statement.commit()
    }
    /// The builder's id.
    pub fn builder_id(&self) -> &str {
        &self.statement.predicate.run_details.builder.id
    }
    /// One line: `<artifact> sha256:<hex> built from <repo>@<commit> (<ref>) by <builder>,
    /// signed by <keyid>`.
    pub fn summary(&self, artifact: &str) -> String {
        format!(
            "{artifact} sha256:{} built from {}@{} ({}) by {}, signed by {}",
            self.sha256,
            self.repo(),
            self.commit().unwrap_or("<unknown commit>"),
            self.git_ref(),
            self.builder_id(),
            self.keyid
        )
    }
}

impl ProvenanceError {
    /// Whether this is about the inputs rather than the verification: a file that cannot be
    /// read or a key file that is not a key (`kiln verify` exits 2 for these, 1 otherwise).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ProvenanceError::Io { .. } | ProvenanceError::BadKey { .. })
    }
}

/// Verifies the envelope JSON against an artifact held in memory. `name`, if given, picks
/// among subjects with the same digest; the digest must match a subject regardless.
pub fn verify_artifact(envelope_json: &[u8], artifact: &[u8], name: Option<&str>, key: &PublicKey) -> Result<VerifiedStatement> {
    verify_digest(envelope_json, &hex::encode(Sha256::digest(artifact)), name, key)
}

/// Verifies the envelope JSON against an artifact known by its sha256 (hex).
pub fn verify_digest(envelope_json: &[u8], sha256: &str, name: Option<&str>, key: &PublicKey) -> Result<VerifiedStatement> {
    if envelope_json.len() as u64 > MAX_ENVELOPE {
        return Err(ProvenanceError::TooLarge { size: envelope_json.len() as u64, limit: MAX_ENVELOPE });
    }
    let env: Envelope = serde_json::from_slice(envelope_json).map_err(|e| ProvenanceError::Envelope(e.to_string()))?;
    let payload = dsse::verify(&env, &key.key)?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(ProvenanceError::PayloadType { found: env.payload_type, expected: PAYLOAD_TYPE });
    }
    let statement = parse_statement(&payload)?;
    let sha256 = sha256.to_ascii_lowercase();
    let matches = |s: &&ResourceDescriptor| s.digest.get("sha256").is_some_and(|d| d.eq_ignore_ascii_case(&sha256));
    let by_name = name.and_then(|n| statement.subject.iter().filter(matches).find(|s| s.name.as_deref() == Some(n)));
    let Some(subject) = by_name.or_else(|| statement.subject.iter().find(matches)).cloned() else {
        return Err(ProvenanceError::NotASubject { digest: sha256, subjects: list_subjects(&statement.subject) });
    };
    Ok(VerifiedStatement { statement, subject, sha256, keyid: key.keyid.clone() })
}

/// What `kiln verify` does: reads the provenance file (at most [`MAX_ENVELOPE`] bytes), the
/// public key file and the artifact (streamed), verifies, and returns the summary line
/// ([`VerifiedStatement::summary`], naming the artifact as `artifact` is written).
pub fn verify_files(provenance: &Path, artifact: &Path, key: &Path) -> Result<String> {
    Ok(verify_files_statement(provenance, artifact, key)?.summary(&artifact.display().to_string()))
}

/// [`verify_files`], answering the verified statement.
pub fn verify_files_statement(provenance: &Path, artifact: &Path, key: &Path) -> Result<VerifiedStatement> {
    let key = load_public_key(key)?;
    let envelope = read_bounded(provenance, MAX_ENVELOPE)?;
    let sha256 = sha256_file(artifact)?;
    let name = artifact.file_name().and_then(|n| n.to_str());
    verify_digest(&envelope, &sha256, name, &key)
}

impl VerifiedStatement {
    /// Checks that at least `n` independent builds agreed on the artifacts (the statement's
    /// rebuild record, signed with it).
    pub fn require_reproduced(&self, n: u32) -> Result<()> {
        match self.statement.reproduced() {
            Some(r) if r.agreed >= n => Ok(()),
            Some(r) => Err(ProvenanceError::NotReproduced { wanted: n, detail: format!("{} of {} builds agreed", r.agreed, r.builds) }),
            None => Err(ProvenanceError::NotReproduced { wanted: n, detail: "the provenance records no rebuilds (build with kiln ci run --rebuild N)".into() }),
        }
    }
}

/// The sha256 (hex) of a file's contents, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(ProvenanceError::io("open", path))?;
    if f.metadata().map_err(ProvenanceError::io("stat", path))?.is_dir() {
        return Err(ProvenanceError::io("read", path)(std::io::Error::other("is a directory")));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(ProvenanceError::io("read", path))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(ProvenanceError::io("open", path))?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).map_err(ProvenanceError::io("read", path))?;
    if buf.len() as u64 > limit {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(buf.len() as u64);
        return Err(ProvenanceError::TooLarge { size, limit });
    }
    Ok(buf)
}

fn parse_statement(payload: &[u8]) -> Result<Statement> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| ProvenanceError::Statement(e.to_string()))?;
    let field = |k: &str| v.get(k).and_then(|t| t.as_str()).unwrap_or("").to_string();
    let t = field("_type");
    if t != STATEMENT_TYPE {
        return Err(ProvenanceError::StatementType { found: t, expected: STATEMENT_TYPE });
    }
    let p = field("predicateType");
    if p != PREDICATE_TYPE {
        return Err(ProvenanceError::PredicateType { found: p, expected: PREDICATE_TYPE });
    }
    serde_json::from_value(v).map_err(|e| ProvenanceError::Statement(e.to_string()))
}

fn list_subjects(subjects: &[ResourceDescriptor]) -> String {
    if subjects.is_empty() {
        return "none".into();
    }
    let mut parts: Vec<String> = subjects
        .iter()
        .take(SUBJECTS_SHOWN)
        .map(|s| {
            let d = s.digest.get("sha256").map(|d| format!("sha256:{d}")).unwrap_or_else(|| "no sha256".into());
            match &s.name {
                Some(n) => format!("{n} {d}"),
                None => d,
            }
        })
        .collect();
    if subjects.len() > SUBJECTS_SHOWN {
        parts.push(format!("and {} more", subjects.len() - SUBJECTS_SHOWN));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::{statement, tests::facts};
    use crate::{dsse, sign_statement};
    use ed25519_dalek::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[42; 32])
    }

    fn signed(artifacts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut f = facts();
        f.artifacts = artifacts.iter().map(|(n, b)| (n.to_string(), hex::encode(Sha256::digest(b)))).collect();
        sign_statement(&statement(&f), &key())
    }

    #[test]
    fn verifies_and_summarizes() {
        let env = signed(&[("a.tar", b"AAA"), ("b.tar", b"BBB")]);
        let pk = PublicKey::new(key().verifying_key());
        let v = verify_artifact(&env, b"BBB", None, &pk).unwrap();
        assert_eq!(v.subject.name.as_deref(), Some("b.tar"));
        assert_eq!(
            v.summary("out/b.tar"),
            format!(
                "out/b.tar sha256:{} built from https://github.com/acme/widget@0123456789abcdef0123456789abcdef01234567 (refs/heads/main) by https://kiln.dev/builder/host-1, signed by {}",
                hex::encode(Sha256::digest(b"BBB")),
                pk.keyid
            )
        );
    }

    #[test]
    fn name_prefers_but_digest_decides() {
        let env = signed(&[("a.tar", b"SAME"), ("b.tar", b"SAME"), ("c.tar", b"C")]);
        let pk = PublicKey::new(key().verifying_key());
        assert_eq!(verify_artifact(&env, b"SAME", Some("b.tar"), &pk).unwrap().subject.name.as_deref(), Some("b.tar"));
        assert_eq!(verify_artifact(&env, b"SAME", Some("zzz"), &pk).unwrap().subject.name.as_deref(), Some("a.tar"));
        // The name of a subject does not help a file with another digest.
        let e = verify_artifact(&env, b"other", Some("c.tar"), &pk).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("artifact digest sha256:{} is not a subject of this provenance (subjects: a.tar sha256:", hex::encode(Sha256::digest(b"other")))), "{msg}");
        assert!(msg.contains("c.tar sha256:"), "{msg}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let pk = PublicKey::new(key().verifying_key());
        let mut stmt = serde_json::to_value(statement(&facts())).unwrap();
        stmt["predicateType"] = "https://slsa.dev/provenance/v0.2".into();
        let env = serde_json::to_vec(&dsse::sign(&serde_json::to_vec(&stmt).unwrap(), &key())).unwrap();
        assert!(matches!(verify_artifact(&env, b"x", None, &pk), Err(ProvenanceError::PredicateType { .. })));
        stmt["_type"] = "https://in-toto.io/Statement/v0.1".into();
        let env = serde_json::to_vec(&dsse::sign(&serde_json::to_vec(&stmt).unwrap(), &key())).unwrap();
        assert!(matches!(verify_artifact(&env, b"x", None, &pk), Err(ProvenanceError::StatementType { .. })));
        let env = serde_json::to_vec(&dsse::sign_typed("text/plain", b"{}", &key())).unwrap();
        assert!(matches!(verify_artifact(&env, b"x", None, &pk), Err(ProvenanceError::PayloadType { .. })));
        let env = serde_json::to_vec(&dsse::sign(b"not json", &key())).unwrap();
        assert!(matches!(verify_artifact(&env, b"x", None, &pk), Err(ProvenanceError::Statement(_))));
    }

    #[test]
    fn bounded_and_malformed_envelopes() {
        let pk = PublicKey::new(key().verifying_key());
        let big = vec![b' '; MAX_ENVELOPE as usize + 1];
        assert!(matches!(verify_artifact(&big, b"x", None, &pk), Err(ProvenanceError::TooLarge { .. })));
        assert!(matches!(verify_artifact(b"{\"payload\": 1}", b"x", None, &pk), Err(ProvenanceError::Envelope(_))));
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("big.json");
        std::fs::write(&p, &big).unwrap();
        assert!(matches!(read_bounded(&p, MAX_ENVELOPE), Err(ProvenanceError::TooLarge { .. })));
    }

    #[test]
    fn subject_list_is_bounded() {
        let subjects: Vec<_> = (0..12)
            .map(|i| ResourceDescriptor { name: Some(format!("f{i}")), digest: [("sha256".into(), "00".into())].into(), ..Default::default() })
            .collect();
        let s = list_subjects(&subjects);
        assert!(s.ends_with("f9 sha256:00, and 2 more"), "{s}");
        assert_eq!(list_subjects(&[]), "none");
    }
}
