//! `kiln token create|ls|revoke`: bearer tokens for the daemon's TCP listener.

use clap::Subcommand;
use kiln_daemon::store::Store;
use kiln_image::Home;

use crate::exit;

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token (printed once; stored hashed).
    Create {
        /// A name for it (shown in the audit log).
        name: String,
    },
    /// List token names.
    Ls,
    /// Revoke a token.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// Runs a token command.
pub fn run(cmd: TokenCmd) -> i32 {
    let home = Home::from_env();
    let _ = std::fs::create_dir_all(home.root());
    let store = match Store::open(&home.root().join("kiln.db")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln: {e}");
            return exit::KILN_FAILED;
        }
    };
    let r = match cmd {
        TokenCmd::Create { name } => {
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                eprintln!("kiln: token names are 1-64 letters, digits, '-', '_' or '.'");
                return exit::USAGE;
            }
            store.create_token(&name).map(|secret| println!("{secret}"))
        }
        TokenCmd::Ls => store.token_names().map(|names| names.iter().for_each(|n| println!("{n}"))),
        TokenCmd::Revoke { name } => match store.revoke_token(&name) {
            Ok(true) => Ok(()),
            Ok(false) => {
                eprintln!("kiln: no token named {name}");
                return exit::USAGE;
            }
            Err(e) => Err(e),
        },
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln: {e}");
            exit::KILN_FAILED
        }
    }
}
