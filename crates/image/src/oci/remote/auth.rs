//! Registry authentication: credentials from the docker config file, and the two challenges
//! registries send (`Basic`, and `Bearer` with a token service).

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.user)
    }
}

impl Credentials {
    /// The `Authorization: Basic …` value.
    pub fn basic(&self) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password)))
    }
}

/// The docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry` (`host[:port]`) from the docker config file, if it has them
/// (`auths` entries with `auth`, or `username` and `password`; keys may carry a scheme and a
/// path). Credential helpers are not run: kiln runs no program a config file names.
pub fn docker_credentials(registry: &str) -> Option<Credentials> {
    let path = docker_config_path()?;
    let meta = std::fs::metadata(&path).ok()?;
    if meta.len() > 1 << 20 {
        return None;
    }
    credentials_from(&std::fs::read(&path).ok()?, registry)
}

fn credentials_from(config: &[u8], registry: &str) -> Option<Credentials> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let key_host = |k: &str| {
        let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_owned()
    };
    let entry = auths.iter().find(|(k, _)| key_host(k) == registry)?.1;
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD.decode(auth).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some(Credentials { user: user.to_owned(), password: password.to_owned() });
    }
    let user = entry.get("username")?.as_str()?;
    let password = entry.get("password")?.as_str()?;
    Some(Credentials { user: user.to_owned(), password: password.to_owned() })
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send the credentials with every request.
    Basic,
    /// Fetch a token from `realm` (with `service` and `scope`), then send it as a bearer token.
    Bearer {
        /// The token service's URL.
        realm: String,
        /// Its `service` parameter.
        service: Option<String>,
        /// Its `scope` parameter.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer { realm: params.get("realm")?.clone(), service: params.get("service").cloned(), scope: params.get("scope").cloned() })
}

/// `key="value", key=value` pairs (quoted values may hold commas and `\"`).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge("Basic realm=\"Registry\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge("Bearer realm=\"https://auth.test/token\",service=\"reg.test\",scope=\"repository:a/b:pull,push\""),
            Some(Challenge::Bearer {
                realm: "https://auth.test/token".into(),
                service: Some("reg.test".into()),
                scope: Some("repository:a/b:pull,push".into())
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn docker_config() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let cfg = format!("{{\"auths\":{{\"https://reg.test/v1/\":{{\"auth\":\"{b64}\"}},\"other.test:5000\":{{\"username\":\"bob\",\"password\":\"pw\"}}}}}}");
        let c = credentials_from(cfg.as_bytes(), "reg.test").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "s3cret"));
        assert_eq!(c.basic(), format!("Basic {b64}"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(credentials_from(cfg.as_bytes(), "other.test:5000").unwrap().user, "bob");
        assert!(credentials_from(cfg.as_bytes(), "third.test").is_none());
        assert!(credentials_from(b"not json", "reg.test").is_none());
    }
}
