//! Image references: `HOST[:PORT]/NAME[:TAG][@sha256:DIGEST]`, always naming the registry.

use std::fmt;
use std::net::IpAddr;

use crate::store::Digest;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` (an IPv6 address in brackets).
    pub registry: String,
    /// The repository path, e.g. `team/node`.
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// The manifest digest, when the reference pins one.
    pub digest: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {input:?}: {why} (the form is HOST[:PORT]/NAME[:TAG] or HOST[:PORT]/NAME@sha256:DIGEST)")]
pub struct BadReference {
    /// What was given (cut to 200 bytes).
    pub input: String,
    /// What is wrong.
    pub why: String,
}

const MAX_LEN: usize = 512;

impl Reference {
    /// Parses a reference. The registry must be named (a first component with a `.` or a `:`,
    /// or `localhost`): kiln has no default registry.
    pub fn parse(s: &str) -> Result<Reference, BadReference> {
        let bad = |why: &str| BadReference { input: s.chars().take(200).collect(), why: why.to_owned() };
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(bad(&format!("must be 1 to {MAX_LEN} bytes")));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("holds spaces or characters that are not printable ASCII"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are supported"))?;
                (rest, Some(Digest::parse(hex).ok_or_else(|| bad("the digest must be sha256: and 64 lowercase hex digits"))?))
            }
            None => (s, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("name the registry first"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(&format!("{registry:?} is not a registry host; kiln has no default registry, so name one")));
        }
        check_registry(registry).map_err(|w| bad(&w))?;
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(bad(&format!("tag {tag:?} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")));
            }
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if repository.len() > 255 || !repository.split('/').all(component_ok) {
            return Err(bad(&format!("name {repository:?} must be /-separated parts of [a-z0-9._-], each starting and ending with a letter or digit")));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t.map(str::to_owned),
        };
        Ok(Reference { registry: registry.to_owned(), repository: repository.to_owned(), tag, digest })
    }

    /// The registry's host without the port (brackets of an IPv6 address dropped).
    pub fn host(&self) -> &str {
        let r = self.registry.as_str();
        if let Some(v6) = r.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6);
        }
        r.split(':').next().unwrap_or(r)
    }

    /// Whether the registry is on a loopback address (`localhost`, 127.0.0.0/8, `::1`): spoken
    /// to over plain HTTP; every other registry over HTTPS.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// `http://host[:port]` or `https://host[:port]`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.is_loopback() { "http" } else { "https" }, self.registry)
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

/// Whether `reference` (as [`Reference`] prints it) matches `pattern`, where `*` stands for
/// any run of characters (`/` and `:` included) and everything else for itself:
/// `127.0.0.1:*/ci/*`, `registry.example.test/team/node:*`.
pub fn pattern_matches(pattern: &str, reference: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), reference.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

fn check_registry(r: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = r.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("an IPv6 registry address needs its closing ']'")?;
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        (None, after.strip_prefix(':').map(str::to_owned).or_else(|| (!after.is_empty()).then(|| after.to_owned())))
    } else {
        match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p.to_owned())),
            None => (Some(r), None),
        }
    };
    if let Some(h) = host {
        let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-');
        if h.len() > 253 || !h.split('.').all(label_ok) {
            return Err(format!("{h:?} is not a host name"));
        }
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("port {p:?} must be 1-65535"));
        }
    }
    Ok(())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        let r = Reference::parse("127.0.0.1:5000/team/node:20").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", "team/node", Some("20")));
        assert!(r.is_loopback());
        assert_eq!(r.base_url(), "http://127.0.0.1:5000");
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/node:20");
        let r = Reference::parse("registry.example.test/app").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert!(!r.is_loopback());
        assert_eq!(r.base_url(), "https://registry.example.test");
        let d = "a".repeat(64);
        let r = Reference::parse(&format!("localhost:5000/x@sha256:{d}")).unwrap();
        assert_eq!((r.tag.clone(), r.manifest_ref()), (None, format!("sha256:{d}")));
        let r = Reference::parse("[::1]:5000/x:1").unwrap();
        assert!(r.is_loopback());
        assert_eq!(r.host(), "::1");
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("127.0.0.1:*/ci/*", "127.0.0.1:5000/ci/node:20"));
        assert!(pattern_matches("*", "h.test/a:1"));
        assert!(pattern_matches("h.test/team/node:*", "h.test/team/node:20"));
        assert!(!pattern_matches("h.test/team/node:*", "h.test/team/node-evil:20"));
        assert!(!pattern_matches("h.test/a:1", "h.test/a:12"));
        assert!(!pattern_matches("", "h.test/a:1"));
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for s in [
            "", "node:20", "ubuntu", "host.test/UPPER:1", "host.test/a:b c", "host.test/../etc:1", "host.test/a//b",
            "host.test/a:-bad", "host.test:0/a", "host.test:99999/a", "host.test/a@sha1:abc", "host.test/a@sha256:xyz",
            "ho_st.test/a", "[::1/a",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} was accepted");
        }
        let e = Reference::parse("node:20").unwrap_err().to_string();
        assert!(e.contains("HOST[:PORT]/NAME"), "{e}");
    }
}
