//! Signed build provenance for kiln CI runs.
//!
//! For every run with artifacts the runner fills in [`BuildFacts`], turns them into an in-toto
//! Statement v1 whose predicate is SLSA provenance v1 ([`statement()`]), and signs the statement
//! into a DSSE envelope ([`sign_statement`]) with the host's ed25519 key ([`KeyStore`]).
//! `kiln verify` checks an envelope against an artifact ([`verify_files`]): the signature with
//! the public key, then that the artifact's sha256 is one of the statement's subjects.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dsse;
mod error;
pub mod keys;
pub mod statement;
mod time;
pub mod verify;

pub use error::ProvenanceError;
pub use keys::{KeyStore, PublicKey};
pub use statement::{statement, BuildFacts, Reproduced, Statement, BUILD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE};
pub use verify::{verify_artifact, verify_files, verify_files_statement, VerifiedStatement};

/// Results in this crate.
pub type Result<T, E = ProvenanceError> = std::result::Result<T, E>;

/// Signs a statement into a DSSE envelope, serialized as JSON (what a `.intoto.json` /
/// provenance file holds).
pub fn sign_statement(stmt: &Statement, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let payload = serde_json::to_vec(stmt).expect("a statement always serializes");
    let env = dsse::sign(&payload, key);
    let mut out = serde_json::to_vec_pretty(&env).expect("an envelope always serializes");
    out.push(b'\n');
    out
}

/// Builds the statement for a run, signs it with the store's key (created on first use) and
/// returns the envelope JSON to write next to the artifacts.
pub fn provenance_for_run(facts: &BuildFacts, store: &KeyStore) -> Result<Vec<u8>> {
    let key = store.load_or_create()?;
    Ok(sign_statement(&statement(facts), &key))
}
