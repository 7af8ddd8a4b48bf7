//! The allowlist: which `host:port` a sandbox may reach.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::addr::{canonical, non_public};

/// Ports an entry without a port allows.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// A sandbox's egress allowlist. Everything not allowed is denied.
///
/// Entries (one `--allow` each) are `HOST[:PORT]`:
///
/// * `example.com` — that name only (case-insensitive, a trailing dot is ignored), not its
///   subdomains;
/// * `*.example.com` — any subdomain of `example.com` at any depth (`a.example.com`,
///   `a.b.example.com`), not `example.com` itself;
/// * `203.0.113.7`, `[2001:db8::7]` — that literal address (IPv6 in brackets). A literal entry
///   is also the only way to let a sandbox reach a non-public address (loopback, private,
///   link-local, metadata, ...): `--allow 127.0.0.1:8080` allows exactly that address and port.
///
/// Without `:PORT` an entry allows ports 80 and 443 only ([`DEFAULT_PORTS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: Pattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A lower-case name without trailing dot.
    Name(String),
    /// `*.suffix`: the lower-case suffix, without the leading `*.`.
    Subdomains(String),
    /// A literal address (canonical: IPv4-mapped IPv6 stored as IPv4).
    Addr(IpAddr),
}

/// An `--allow` entry that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --allow entry {entry:?}: {reason}")]
pub struct PolicyError {
    /// The entry as given.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What the policy says about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Connect (to the addresses that were checked, and no others).
    Allow,
    /// Refuse.
    Deny(Denied),
}

/// Why a connection was refused, and what would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Human-readable reason, e.g. `not in the allowlist`.
    pub reason: String,
    /// `--allow` entries that would let this connection through, e.g. `["example.com:8443"]`
    /// or, when the name resolved to a non-public address, that exact `["10.0.0.5:8443"]`.
    pub allow: Vec<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Policy {
    /// A policy that allows nothing.
    pub fn deny_all() -> Policy {
        Policy::default()
    }

    /// Parses `--allow` entries (see [`Policy`] for the syntax). Surrounding whitespace is
    /// ignored; empty entries are errors.
    pub fn parse(entries: &[String]) -> Result<Policy, PolicyError> {
        let entries = entries.iter().map(|e| parse_entry(e).map_err(|reason| PolicyError { entry: e.clone(), reason })).collect::<Result<_, _>>()?;
        Ok(Policy { entries })
    }

    /// True if the policy allows nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The literal non-public addresses it allows (loopback, private, link-local, ...), each
    /// with why it is not public: the entries that reach past the public internet, into the
    /// host or its networks.
    pub fn non_public_addresses(&self) -> Vec<(IpAddr, &'static str)> {
        self.entries
            .iter()
            .filter_map(|e| match e.host {
                Pattern::Addr(ip) => non_public(ip).map(|why| (ip, why)),
                _ => None,
            })
            .collect()
    }

    /// Whether some entry matches `host:port` by name or literal address — the check to make
    /// *before* resolving `host`, so that names nobody allowed never reach a resolver.
    pub fn permits_name(&self, host: &str, port: u16) -> bool {
        let Some(target) = Target::of(host) else { return false };
        self.entries.iter().any(|e| e.matches(&target, port))
    }

    /// Decides about a connection to `host:port`, where `host` (a name, an IPv4 address or an
    /// IPv6 address with or without brackets) resolved to `resolved` (for a literal address:
    /// that address).
    ///
    /// Allowed if some entry matches `host:port` and every resolved address is public or was
    /// itself allowed literally for `port`. The caller must then connect only to `resolved`,
    /// never resolve again.
    pub fn decide(&self, host: &str, port: u16, resolved: &[IpAddr]) -> Decision {
        let deny = |reason: String, allow: Vec<String>| Decision::Deny(Denied { reason, allow });
        let Some(target) = Target::of(host) else {
            return deny("not a valid host name or address".into(), Vec::new());
        };
        let shown = target.to_string();
        if let Target::Addr(ip) = &target {
            if non_public(canonical(*ip)) == Some("cloud metadata") {
                return deny(format!("{shown} is the cloud metadata service, which no sandbox may reach"), Vec::new());
            }
        }
        if !self.entries.iter().any(|e| e.matches(&target, port)) {
            return deny("not in the allowlist".into(), vec![format!("{shown}:{port}")]);
        }
        if resolved.is_empty() {
            return deny(format!("{shown} resolved to no address"), Vec::new());
        }
        let mut bad = Vec::new();
        for &ip in resolved {
            let ip = canonical(ip);
            // Never reachable, whatever the allowlist says.
            if non_public(ip) == Some("cloud metadata") {
                bad.push((ip, "cloud metadata"));
                continue;
            }
            if self.allows_literal(ip, port) {
                continue;
            }
            if let Some(class) = non_public(ip) {
                bad.push((ip, class));
            }
        }
        if bad.is_empty() {
            return Decision::Allow;
        }
        let list = bad.iter().map(|(ip, class)| format!("{ip} ({class})")).collect::<Vec<_>>().join(", ");
        // The metadata service cannot be allowed: no advice to try.
        let metadata = bad.iter().any(|(_, class)| *class == "cloud metadata");
        let reason = match target {
            Target::Addr(_) => format!("{list} is not a public address"),
            Target::Name(_) if metadata => format!("{shown} resolves to {list}, not a public address, and no sandbox may reach the cloud metadata service"),
            Target::Name(_) => format!("{shown} resolves to {list}, not a public address: a name may lead to a non-public address only if that exact address is allowed too"),
        };
        let allow = if metadata { Vec::new() } else { bad.iter().map(|(ip, _)| format!("{}:{port}", Target::Addr(*ip))).collect() };
        deny(reason, allow)
    }

    fn allows_literal(&self, ip: IpAddr, port: u16) -> bool {
        self.entries.iter().any(|e| e.host == Pattern::Addr(ip) && e.port_matches(port))
    }
}

/// A connection's host, normalized for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name(String),
    Addr(IpAddr),
}

impl Target {
    fn of(host: &str) -> Option<Target> {
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner.parse::<Ipv6Addr>().ok().map(|a| Target::Addr(canonical(IpAddr::V6(a))));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Target::Addr(canonical(ip)));
        }
        let name = normalize_name(host)?;
        valid_name(&name).ok()?;
        Some(Target::Name(name))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(n) => f.write_str(n),
            Target::Addr(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Target::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl Entry {
    fn port_matches(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }

    fn matches(&self, target: &Target, port: u16) -> bool {
        self.port_matches(port)
            && match (&self.host, target) {
                (Pattern::Name(n), Target::Name(h)) => n == h,
                (Pattern::Subdomains(suffix), Target::Name(h)) => h.len() > suffix.len() + 1 && h.ends_with(suffix.as_str()) && h.as_bytes()[h.len() - suffix.len() - 1] == b'.',
                (Pattern::Addr(a), Target::Addr(b)) => a == b,
                _ => false,
            }
    }
}

fn normalize_name(host: &str) -> Option<String> {
    let h = host.strip_suffix('.').unwrap_or(host);
    (!h.is_empty()).then(|| h.to_ascii_lowercase())
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1..=63 bytes, at most 253 in all,
/// not all-numeric (that would be an address in some odd notation such as `127.1`).
fn valid_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("host name labels must be 1 to 63 characters".into());
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("{c:?} is not allowed in a host name"));
        }
    }
    if name.split('.').next_back().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("not a valid IPv4 address, and a host name cannot end in a numeric label".into());
    }
    Ok(())
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) if !s.starts_with('+') => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

fn parse_entry(entry: &str) -> Result<Entry, String> {
    let e = entry.trim();
    if e.is_empty() {
        return Err("empty".into());
    }
    // [v6] or [v6]:port
    if let Some(rest) = e.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or("missing ']' after IPv6 address")?;
        let ip: Ipv6Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or("expected ':PORT' after ']'")?)?),
        };
        return literal(IpAddr::V6(ip), port);
    }
    if e.matches(':').count() > 1 {
        return Err("write IPv6 addresses in brackets, e.g. [2001:db8::1]:443".into());
    }
    let (host, port) = match e.split_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (e, None),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return literal(ip, port);
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        let suffix = normalize_name(suffix).ok_or("nothing after '*.'")?;
        valid_name(&suffix)?;
        return Ok(Entry { host: Pattern::Subdomains(suffix), port });
    }
    if host.contains('*') {
        return Err("a wildcard is only allowed as a leading '*.', e.g. *.example.com".into());
    }
    let name = normalize_name(host).ok_or("empty host")?;
    valid_name(&name)?;
    Ok(Entry { host: Pattern::Name(name), port })
}

fn literal(ip: IpAddr, port: Option<u16>) -> Result<Entry, String> {
    let ip = canonical(ip);
    if ip.is_unspecified() {
        return Err(format!("{ip} is the unspecified address; to reach this host's loopback write 127.0.0.1 or [::1]"));
    }
    if non_public(ip) == Some("cloud metadata") {
        return Err(format!("{ip} is the cloud metadata service, which holds the host's credentials; kiln never lets a sandbox reach it"));
    }
    Ok(Entry { host: Pattern::Addr(ip), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> Policy {
        Policy::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const PUBLIC: &str = "93.184.216.34";

    #[test]
    fn parse_accepts() {
        let table: &[(&str, Pattern, Option<u16>)] = &[
            ("example.com", Pattern::Name("example.com".into()), None),
            ("Example.COM.", Pattern::Name("example.com".into()), None),
            ("  example.com:8443 ", Pattern::Name("example.com".into()), Some(8443)),
            ("*.example.com", Pattern::Subdomains("example.com".into()), None),
            ("*.Example.com:22", Pattern::Subdomains("example.com".into()), Some(22)),
            ("localhost:8080", Pattern::Name("localhost".into()), Some(8080)),
            ("_srv.example-1.com", Pattern::Name("_srv.example-1.com".into()), None),
            ("127.0.0.1:8080", Pattern::Addr("127.0.0.1".parse().unwrap()), Some(8080)),
            ("10.1.2.3", Pattern::Addr("10.1.2.3".parse().unwrap()), None),
            ("[::1]:8080", Pattern::Addr("::1".parse().unwrap()), Some(8080)),
            ("[2001:db8::7]", Pattern::Addr("2001:db8::7".parse().unwrap()), None),
            ("[::ffff:127.0.0.1]:80", Pattern::Addr("127.0.0.1".parse().unwrap()), Some(80)),
            ("example.com:65535", Pattern::Name("example.com".into()), Some(65535)),
        ];
        for (text, host, port) in table {
            let p = policy(&[text]);
            assert_eq!(p.entries, vec![Entry { host: host.clone(), port: *port }], "{text}");
        }
    }

    #[test]
    fn non_public_literals_are_named() {
        let p = policy(&["example.com", "127.0.0.1:8080", "[::1]", "10.1.2.3", PUBLIC, "localhost", "[::ffff:192.168.1.1]:22"]);
        let found: Vec<String> = p.non_public_addresses().into_iter().map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(found, ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1"]);
        assert!(policy(&["example.com", PUBLIC]).non_public_addresses().is_empty());
    }

    #[test]
    fn parse_rejects_with_reasons() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("example.com:0", "port 0"),
            ("example.com:65536", "not a port"),
            ("example.com:", "not a port"),
            ("example.com:http", "not a port"),
            ("example.com:+80", "not a port"),
            ("::1", "brackets"),
            ("::1:8080", "brackets"),
            ("[::1", "missing ']'"),
            ("[::1]8080", "expected ':PORT'"),
            ("[not-v6]:80", "not an IPv6 address"),
            ("[10.0.0.1]:80", "not an IPv6 address"),
            ("*", "wildcard"),
            ("*.", "nothing after"),
            ("a.*.example.com", "wildcard"),
            ("*example.com", "wildcard"),
            ("exa mple.com", "not allowed in a host name"),
            ("example.com/path", "not allowed in a host name"),
            ("http://example.com", "not a port"),
            ("user@example.com", "not allowed in a host name"),
            ("a..b", "1 to 63"),
            ("127.1", "numeric label"),
            ("1.2.3.4.5", "numeric label"),
            ("0.0.0.0:80", "unspecified"),
            ("[::]:80", "unspecified"),
        ];
        for (text, want) in table {
            let err = Policy::parse(&[text.to_string()]).expect_err(text);
            assert_eq!(err.entry, *text);
            assert!(err.reason.contains(want), "{text}: {err}");
            assert!(err.to_string().starts_with("invalid --allow entry"), "{err}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(Policy::parse(&[long]).unwrap_err().reason.contains("1 to 63"));
        let too_long = ["abcdefghij"; 26].join(".");
        assert!(Policy::parse(&[too_long]).unwrap_err().reason.contains("253"));
    }

    #[test]
    fn matching_by_name_and_port() {
        let p = policy(&["example.com", "*.corp.example:8443", "api.test:9000", "10.0.0.5:5432", "[fd00::5]"]);
        let public = ips(&[PUBLIC]);
        // (host, port, allowed)
        let table: &[(&str, u16, bool)] = &[
            ("example.com", 443, true),
            ("example.com", 80, true),
            ("EXAMPLE.com.", 443, true),
            ("example.com", 8080, false),
            ("example.com", 22, false),
            ("www.example.com", 443, false),
            ("example.com.evil", 443, false),
            ("badexample.com", 443, false),
            ("a.corp.example", 8443, true),
            ("a.b.CORP.example", 8443, true),
            ("corp.example", 8443, false),
            ("xcorp.example", 8443, false),
            ("a.corp.example", 443, false),
            ("api.test", 9000, true),
            ("api.test", 443, false),
            ("other.test", 9000, false),
            ("", 443, false),
            ("bad host", 443, false),
        ];
        for (host, port, want) in table {
            assert_eq!(p.permits_name(host, *port), *want, "{host}:{port}");
            assert_eq!(p.decide(host, *port, &public) == Decision::Allow, *want, "{host}:{port}");
        }
        assert!(Policy::deny_all().is_empty());
        assert!(!Policy::deny_all().permits_name("example.com", 443));
    }

    #[test]
    fn literal_addresses() {
        let p = policy(&["127.0.0.1:8080", "[::1]:9090", "10.0.0.5", "localhost:8080"]);
        let table: &[(&str, u16, &[&str], bool)] = &[
            ("127.0.0.1", 8080, &["127.0.0.1"], true),
            ("127.0.0.1", 8081, &["127.0.0.1"], false),
            ("127.0.0.2", 8080, &["127.0.0.2"], false),
            ("::ffff:127.0.0.1", 8080, &["::ffff:127.0.0.1"], true),
            ("[::ffff:127.0.0.1]", 8080, &["::ffff:127.0.0.1"], true),
            ("::1", 9090, &["::1"], true),
            ("[::1]", 9090, &["::1"], true),
            ("[::1]", 8080, &["::1"], false),
            ("10.0.0.5", 443, &["10.0.0.5"], true),
            ("10.0.0.5", 5432, &["10.0.0.5"], false),
            // a name matching an entry, resolving to an address allowed literally for that port
            ("localhost", 8080, &["127.0.0.1"], true),
            // ... but not also to one that is not
            ("localhost", 8080, &["127.0.0.1", "::1"], false),
            // literal entries do not allow names that resolve to them
            ("db.internal", 443, &["10.0.0.5"], false),
        ];
        for (host, port, resolved, want) in table {
            assert_eq!(p.decide(host, *port, &ips(resolved)) == Decision::Allow, *want, "{host}:{port} -> {resolved:?}");
        }
    }

    #[test]
    fn the_metadata_service_is_never_allowed() {
        for entry in ["169.254.169.254", "169.254.169.254:80", "[fd00:ec2::254]", "[::ffff:169.254.169.254]"] {
            let e = Policy::parse(&[entry.to_string()]).unwrap_err();
            assert!(e.to_string().contains("cloud metadata service"), "{entry}: {e}");
        }
        let p = policy(&["169.254.0.0", "metadata.internal"]);
        assert!(matches!(p.decide("metadata.internal", 80, &ips(&["169.254.169.254"])), Decision::Deny(_)));
        // Asked for directly: refused with no advice to allow it.
        let Decision::Deny(d) = p.decide("169.254.169.254", 80, &ips(&["169.254.169.254"])) else { panic!() };
        assert!(d.allow.is_empty() && d.reason.contains("no sandbox may reach"), "{d:?}");
    }

    #[test]
    fn rebinding_to_non_public_is_denied() {
        let p = policy(&["build.example.com", "*.cdn.example"]);
        for bad in ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "0.1.2.3", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"] {
            // alone, or hidden among public addresses
            for resolved in [ips(&[bad]), ips(&[PUBLIC, bad])] {
                let Decision::Deny(d) = p.decide("build.example.com", 443, &resolved) else { panic!("{bad} allowed") };
                assert!(d.reason.starts_with("build.example.com resolves to "), "{d}");
                assert!(d.reason.contains("not a public address"), "{d}");
                let metadata = d.reason.contains("cloud metadata");
                assert_eq!(d.allow.len(), usize::from(!metadata), "{d:?}");
            }
            assert!(matches!(p.decide("x.cdn.example", 80, &ips(&[bad])), Decision::Deny(_)), "{bad}");
        }
        let Decision::Deny(d) = p.decide("build.example.com", 443, &ips(&["169.254.169.254"])) else { panic!() };
        assert_eq!(d.reason, "build.example.com resolves to 169.254.169.254 (cloud metadata), not a public address, and no sandbox may reach the cloud metadata service");
        assert!(d.allow.is_empty(), "{d:?}");
        let Decision::Deny(d) = p.decide("build.example.com", 443, &ips(&["::1"])) else { panic!() };
        assert_eq!(d.allow, vec!["[::1]:443"]);
        // A mirror on the host's network: why, and what would let it through.
        let Decision::Deny(d) = p.decide("build.example.com", 443, &ips(&["10.1.2.3"])) else { panic!() };
        assert_eq!(d.reason, "build.example.com resolves to 10.1.2.3 (private), not a public address: a name may lead to a non-public address only if that exact address is allowed too");
        assert_eq!(d.allow, vec!["10.1.2.3:443"]);
    }

    #[test]
    fn public_resolution_is_allowed() {
        let p = policy(&["build.example.com", "*.cdn.example:8443"]);
        assert_eq!(p.decide("build.example.com", 443, &ips(&[PUBLIC, "2606:4700:4700::1111"])), Decision::Allow);
        assert_eq!(p.decide("a.cdn.example", 8443, &ips(&["1.1.1.1"])), Decision::Allow);
    }

    #[test]
    fn denials_explain() {
        let p = policy(&["example.com"]);
        let Decision::Deny(d) = p.decide("evil.com", 443, &ips(&[PUBLIC])) else { panic!() };
        assert_eq!(d.reason, "not in the allowlist");
        assert_eq!(d.allow, vec!["evil.com:443"]);
        let Decision::Deny(d) = p.decide("::1", 80, &ips(&["::1"])) else { panic!() };
        assert_eq!(d.allow, vec!["[::1]:80"]);
        let Decision::Deny(d) = p.decide("example.com", 443, &[]) else { panic!() };
        assert!(d.reason.contains("resolved to no address"), "{d}");
        assert!(matches!(p.decide("ex ample.com", 443, &[]), Decision::Deny(_)));
    }
}
