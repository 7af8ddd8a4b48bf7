//! `kiln verify`: check a build's signed provenance against an artifact. The work is in
//! `kiln_provenance::verify_files`; this maps its result to output and exit codes.

use std::path::PathBuf;

use clap::Args;
use kiln_image::Home;
use kiln_provenance::KeyStore;

use crate::exit;

/// Exit code when the provenance does not verify.
const VERIFY_FAILED: i32 = 1;

/// Arguments of `kiln verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The provenance file: a DSSE envelope holding an in-toto statement (SLSA provenance v1).
    #[arg(long, value_name = "FILE")]
    provenance: PathBuf,
    /// The artifact to check against it.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    /// The builder's public key (PEM, or 32 bytes as hex or base64) [default:
    /// $KILN_HOME/keys/signing.pub, this host's own key].
    #[arg(long, value_name = "PUBKEY")]
    key: Option<PathBuf>,
}

/// Verifies: 0 if the signature and the artifact's digest check out, 1 if not, 2 for unreadable
/// inputs.
pub fn run(a: VerifyArgs) -> i32 {
    let key = match a.key {
        Some(k) => k,
        None => {
            let k = KeyStore::in_home(Home::from_env().root()).public_path();
            if !k.exists() {
                eprintln!("kiln: no public key at {} (this host has not signed provenance yet); pass --key PUBKEY", k.display());
                return exit::USAGE;
            }
            k
        }
    };
    match kiln_provenance::verify_files(&a.provenance, &a.artifact, &key) {
        Ok(summary) => {
            println!("ok: {summary}");
            0
        }
        Err(e) if e.is_bad_input() => {
            eprintln!("kiln: {e}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("kiln: verification failed: {e}");
            VERIFY_FAILED
        }
    }
}
