//! Who may do what: the scope of an API token, the principal a request is made by (a token,
//! or the owner on the unix socket), and the rule that requests name templates by name only.

use kiln_image::template::valid_name;

/// What a token may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Create, exec in, read and write files of, fork, extend and kill its own sandboxes; run
    /// untrusted CI jobs.
    Untrusted,
    /// Also CI runs with `trusted: true` (they write the setup cache later runs start from).
    Trusted,
    /// Also templates (build, bake), every sandbox whoever made it, and every CI run.
    Admin,
}

impl Scope {
    /// Every scope, least first.
    pub const ALL: [Scope; 3] = [Scope::Untrusted, Scope::Trusted, Scope::Admin];

    /// Its name (as stored and as `kiln token create --scope` takes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Untrusted => "untrusted",
            Scope::Trusted => "trusted",
            Scope::Admin => "admin",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Names no token may have: the audit log uses them for the socket's owner, requests without a
/// token (`/healthz`) and the daemon itself.
pub const RESERVED_NAMES: [&str; 3] = ["local", "anonymous", "kiln"];

/// Who makes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, or `local` for the unix socket's owner; the audit log shows it, and a
    /// sandbox belongs to the name that created it.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// Came in through the owner-only unix socket: may name paths on the daemon's host (a CI
    /// run's repository anywhere, its out folder, its cache-key files).
    pub local: bool,
}

impl Principal {
    /// The owner of the daemon, on its unix socket (mode 0600): admin, and host paths allowed.
    pub fn local() -> Principal {
        Principal { name: "local".into(), scope: Scope::Admin, local: true }
    }

    /// A bearer token's principal.
    pub fn token(name: impl Into<String>, scope: Scope) -> Principal {
        Principal { name: name.into(), scope, local: false }
    }

    /// Whether it has `needed` (or a wider scope).
    pub fn may(&self, needed: Scope) -> bool {
        self.scope >= needed
    }

    /// Whether it may see and use what `owner` created: its own things, or anything for admin.
    pub fn sees(&self, owner: &str) -> bool {
        self.scope == Scope::Admin || self.name == owner
    }
}

/// Checks that a request names a template rather than giving a path to a template file: a
/// path would make the daemon read (and, building it, run as root) a file of the caller's
/// choosing. The error says what to do instead.
pub fn template_name(requested: &str) -> Result<&str, String> {
    if valid_name(requested) {
        return Ok(requested);
    }
    let path_like = requested.contains('/') || requested.contains('\\') || requested.contains('.') || requested.starts_with('~');
    let what = if path_like { "looks like a path" } else { "is not a template name" };
    Err(format!(
        "template {requested:?} {what}: requests name a template of the daemon's template folders (lowercase letters, digits, '-', '_'; \
         `GET /v1/templates` lists them), never a file; an admin can add one there and build it with `kiln template build NAME`"
    ))
}

/// Checks that a caller without the admin scope reaches only the public internet: no `allow`
/// entry naming a non-public address (loopback, private, link-local, ...; such an entry is the
/// only way past the egress proxy's public-only rule, into the host's own services or its
/// networks), and no repository URL whose host is one (`clone_host`, the `host:port` kiln
/// allows while the VM clones it). Entries that do not parse are left to the policy's parser.
pub fn egress_reach(who: &Principal, allow: &[String], clone_host: Option<String>) -> Result<(), String> {
    if who.may(Scope::Admin) {
        return Ok(());
    }
    let entries: Vec<String> = allow.iter().cloned().chain(clone_host).collect();
    let mut inside = Vec::new();
    for e in &entries {
        if let Ok(p) = kiln_egress::Policy::parse(std::slice::from_ref(e)) {
            inside.extend(p.non_public_addresses().into_iter().map(|(ip, why)| format!("{e} ({why} {ip})")));
        }
    }
    if inside.is_empty() {
        return Ok(());
    }
    Err(format!(
        "reaching a non-public address needs a token with the admin scope: {}; allow public hosts by name instead, or ask the daemon's owner (`kiln token create NAME --scope admin`)",
        inside.join(", ")
    ))
}

/// Checks a token name: 1-64 letters, digits, `-`, `_` or `.`, and none of [`RESERVED_NAMES`].
pub fn token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err("token names are 1-64 letters, digits, '-', '_' or '.'".into());
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("{name:?} is reserved (the audit log uses it); choose another name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_lesser_ones() {
        let t = Principal::token("ci", Scope::Trusted);
        assert!(t.may(Scope::Untrusted) && t.may(Scope::Trusted) && !t.may(Scope::Admin));
        assert!(!t.local);
        assert!(t.sees("ci") && !t.sees("other") && !t.sees("local"));
        let admin = Principal::token("ops", Scope::Admin);
        assert!(admin.sees("ci") && admin.sees("local") && !admin.local);
        let owner = Principal::local();
        assert!(owner.local && owner.may(Scope::Admin) && owner.sees("ci"));
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("root"), None);
    }

    #[test]
    fn templates_are_named_never_given_as_paths() {
        assert_eq!(template_name("tiny"), Ok("tiny"));
        assert_eq!(template_name("my-base_2"), Ok("my-base_2"));
        for path in ["/tmp/evil.toml", "evil.toml", "./tiny", "../templates/tiny", "templates/tiny", "~/t", "tiny.", "C:\\t"] {
            let e = template_name(path).unwrap_err();
            assert!(e.contains("looks like a path") && e.contains("kiln template build"), "{path}: {e}");
        }
        assert!(template_name("Tiny").unwrap_err().contains("not a template name"));
        assert!(template_name("").is_err());
    }

    #[test]
    fn only_admins_reach_non_public_addresses() {
        let pr = Principal::token("pr", Scope::Trusted);
        let allow = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(egress_reach(&pr, &allow(&["mirror.example.test:443", "*.example.com", "93.184.216.34"]), Some("example.com:443".into())).is_ok());
        for (entries, clone) in [(vec!["127.0.0.1:7777"], None), (vec!["[::1]"], None), (vec!["10.0.0.5:22"], None), (vec![], Some("192.168.1.2:80"))] {
            let e = egress_reach(&pr, &allow(&entries), clone.map(str::to_owned)).unwrap_err();
            assert!(e.contains("admin scope") && e.contains("non-public"), "{entries:?}: {e}");
        }
        assert!(egress_reach(&Principal::token("ops", Scope::Admin), &allow(&["127.0.0.1:7777"]), None).is_ok());
        assert!(egress_reach(&Principal::local(), &allow(&["10.0.0.5"]), None).is_ok());
    }

    #[test]
    fn token_names() {
        assert!(token_name("ci-runner.1").is_ok());
        assert!(token_name("local").unwrap_err().contains("reserved"));
        assert!(token_name("a b").is_err() && token_name("").is_err());
    }
}
