//! API tokens in the state store: a name, the sha256 of the secret (never the secret), and a
//! [`Scope`]. The secret is shown once, when the token is made.

use rusqlite::{params, OptionalExtension};
use sha2::{Digest as _, Sha256};

use crate::access::{Principal, Scope};
use crate::store::{now, Store, StoreError};

/// A token as `kiln token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// Unix seconds.
    pub created_at: i64,
}

/// A stored scope; one this kiln does not know reads as the least (`untrusted`).
fn scope_of(text: &str) -> Scope {
    Scope::parse(text).unwrap_or(Scope::Untrusted)
}

fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Store {
    /// Creates (or replaces) the API token `name` with `scope`; returns the secret (shown
    /// once, stored hashed).
    pub fn create_token(&self, name: &str, scope: Scope) -> Result<String, StoreError> {
        let secret = format!("kiln_{}", kiln_core::random::hex(24));
        self.db().execute(
            "INSERT OR REPLACE INTO tokens (name, sha256, created_at, scope) VALUES (?1, ?2, ?3, ?4)",
            params![name, token_hash(&secret), now(), scope.as_str()],
        )?;
        Ok(secret)
    }

    /// The principal of the token with this secret, if any.
    pub fn token(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        let row: Option<(String, String)> =
            self.db().query_row("SELECT name, scope FROM tokens WHERE sha256 = ?1", [token_hash(secret)], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        Ok(row.map(|(name, scope)| Principal::token(name, scope_of(&scope))))
    }

    /// Every token, by name.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let db = self.db();
        let mut st = db.prepare("SELECT name, scope, created_at FROM tokens ORDER BY name")?;
        let rows = st
            .query_map([], |r| Ok(TokenInfo { name: r.get(0)?, scope: scope_of(&r.get::<_, String>(1)?), created_at: r.get(2)? }))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Deletes a token; whether it existed.
    pub fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.db().execute("DELETE FROM tokens WHERE name = ?1", [name])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_scopes_and_only_their_hash_is_stored() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("kiln.db");
        let (ci, ops) = {
            let s = Store::open(&path).unwrap();
            (s.create_token("ci", Scope::Untrusted).unwrap(), s.create_token("ops", Scope::Admin).unwrap())
        };
        let s = Store::open(&path).unwrap();
        assert_eq!(s.token(&ci).unwrap(), Some(Principal::token("ci", Scope::Untrusted)));
        assert_eq!(s.token(&ops).unwrap(), Some(Principal::token("ops", Scope::Admin)));
        assert_eq!(s.token("kiln_wrong").unwrap(), None);
        let listed: Vec<(String, Scope)> = s.tokens().unwrap().into_iter().map(|t| (t.name, t.scope)).collect();
        assert_eq!(listed, [("ci".to_owned(), Scope::Untrusted), ("ops".to_owned(), Scope::Admin)]);
        let raw = std::fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("kiln_"), "a token secret is on disk");
        // Made again with another scope: the old secret is dead.
        let ci2 = s.create_token("ci", Scope::Trusted).unwrap();
        assert_eq!(s.token(&ci).unwrap(), None);
        assert_eq!(s.token(&ci2).unwrap().unwrap().scope, Scope::Trusted);
        assert!(s.revoke_token("ci").unwrap());
        assert_eq!(s.token(&ci2).unwrap(), None);
        assert!(!s.revoke_token("ci").unwrap());
    }

    #[test]
    fn an_unknown_stored_scope_is_the_least() {
        let s = Store::in_memory().unwrap();
        let secret = s.create_token("x", Scope::Admin).unwrap();
        s.db().execute("UPDATE tokens SET scope = 'superuser' WHERE name = 'x'", []).unwrap();
        assert_eq!(s.token(&secret).unwrap().unwrap().scope, Scope::Untrusted);
    }
}
