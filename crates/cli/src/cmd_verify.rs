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
    /// Also require that at least N independent builds agreed on the artifacts (as recorded,
    /// under the signature, by `kiln ci run --rebuild N`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    require_reproduced: Option<u32>,
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
    let verified = kiln_provenance::verify_files_statement(&a.provenance, &a.artifact, &key)
        .and_then(|v| a.require_reproduced.map_or(Ok(()), |n| v.require_reproduced(n)).map(|()| v));
    match verified {
        Ok(v) => {
            let rebuilds = v.statement.reproduced().map(|r| format!("; {} of {} independent builds agreed", r.agreed, r.builds)).unwrap_or_default();
            println!("ok: {}{rebuilds}", v.summary(&a.artifact.display().to_string()));
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
