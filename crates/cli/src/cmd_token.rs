//! `kiln token create|list|revoke`: bearer tokens for the daemon's TCP listener, each with a
//! scope: `untrusted` (the default: its own sandboxes, untrusted CI runs), `trusted` (also CI
//! runs that write the setup cache) or `admin` (also templates, and everything of every token).
//! The commands open the daemon's state store directly (the owner's files) and record what
//! they do in its audit log.

use clap::Subcommand;
use kiln_daemon::access::{token_name, Scope};
use kiln_daemon::store::Store;
use kiln_image::Home;

use crate::exit;

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token (printed once; stored hashed). Making one with an existing name replaces it.
    Create {
        /// A name for it (shown in the audit log; the sandboxes it creates are its own).
        name: String,
        /// What it may do: untrusted (its own sandboxes, untrusted CI runs), trusted (also
        /// `trusted: true` CI runs, which write the setup cache) or admin (also templates, and
        /// every token's sandboxes and runs).
        #[arg(long, default_value = "untrusted", value_parser = parse_scope)]
        scope: Scope,
    },
    /// List tokens: name, scope, when made.
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a token.
    Revoke {
        /// Its name.
        name: String,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| format!("{s:?} is not a scope: untrusted, trusted or admin"))
}

/// Who did it, for the audit log: the daemon's owner, as on its unix socket.
const ACTOR: &str = "local";

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
        TokenCmd::Create { name, scope } => {
            if let Err(m) = token_name(&name) {
                eprintln!("kiln: {m}");
                return exit::USAGE;
            }
            store.create_token(&name, scope).and_then(|secret| {
                store.event(None, "token_created", &format!("{name} ({scope})"), ACTOR)?;
                println!("{secret}");
                Ok(())
            })
        }
        TokenCmd::List => store.tokens().map(|tokens| {
            println!("{:<24} {:<10} CREATED", "NAME", "SCOPE");
            for t in tokens {
                let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.created_at.max(0) as u64));
                println!("{:<24} {:<10} {}", t.name, t.scope, when);
            }
        }),
        TokenCmd::Revoke { name } => match store.revoke_token(&name) {
            Ok(true) => store.event(None, "token_revoked", &name, ACTOR),
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
