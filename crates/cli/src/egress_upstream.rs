//! `--egress-upstream URL` of `kiln ci run` and `kiln serve`: the upstream HTTP proxy (a
//! corporate proxy) that sandboxes' egress goes through. Without the flag, kiln's own
//! `HTTPS_PROXY` (or `https_proxy`); `none` or an empty value connects directly.

use std::sync::Arc;

use kiln_egress::Upstream;

/// The flag, as `--help` and the messages name it.
pub const FLAG: &str = "--egress-upstream";

/// The variables read when the flag is not given, in order.
pub const ENV: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];

/// One line for stderr: where egress goes.
pub fn describe(upstream: &Upstream) -> String {
    format!("egress goes through the upstream proxy {upstream} ({FLAG} none to connect directly)")
}

/// The upstream of `flag` (the flag's value, if given), else of the first of [`ENV`] that `env`
/// has and is not empty. `none` (any case) or an empty value: none. A value that is not
/// [`FORM`](kiln_egress::upstream::FORM) is an error naming the flag or the variable (with the URL's password hidden).
pub fn choose(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Option<Arc<Upstream>>, String> {
    let (value, from) = match flag {
        Some(v) => (v.to_owned(), FLAG),
        None => match ENV.iter().find_map(|k| env(k).filter(|v| !v.trim().is_empty()).map(|v| (v, *k))) {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match Upstream::parse(value) {
        Ok(u) => Ok(Some(Arc::new(u))),
        Err(e) if from == FLAG => Err(format!("{FLAG} {}: {e}; or {FLAG} none to connect directly", hide_password(value))),
        Err(e) => Err(format!("{from}={} (the default of {FLAG}): {e}; or {FLAG} none to connect directly", hide_password(value))),
    }
}

/// `url` with whatever stands between `://` and the host's `@` replaced by `***`.
fn hide_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let shown = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}{tail}"),
        None => rest.to_owned(),
    };
    if scheme.is_empty() && !url.contains("://") {
        shown
    } else {
        format!("{scheme}://{shown}")
    }
}

/// Help text of the flag, shared by `kiln ci run` and `kiln serve`.
pub const HELP: &str = "Send the egress the allowlist lets through to this upstream HTTP proxy: http://[USER:PASSWORD@]HOST[:PORT] (PORT defaults to 80). Allowed names are not resolved on this host: the upstream is asked for CONNECT host:port (plain http:// requests too), with Proxy-Authorization: Basic when the URL has credentials. IP literals and localhost still go direct. Default: $HTTPS_PROXY (or $https_proxy); 'none' or '' connects directly.";

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_egress::upstream::FORM;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_flag_then_the_environment() {
        let up = |c: Option<Arc<Upstream>>| c.map(|c| c.authority());
        let proxy = [("HTTPS_PROXY", "http://proxy.corp.invalid:3128"), ("https_proxy", "http://other.corp.invalid:8080")];
        assert_eq!(up(choose(None, env(&proxy)).unwrap()).as_deref(), Some("proxy.corp.invalid:3128"));
        assert_eq!(up(choose(None, env(&proxy[1..])).unwrap()).as_deref(), Some("other.corp.invalid:8080"));
        assert_eq!(up(choose(None, env(&[("HTTPS_PROXY", " "), proxy[1]])).unwrap()).as_deref(), Some("other.corp.invalid:8080"));
        assert_eq!(up(choose(Some("http://127.0.0.1:9"), env(&proxy)).unwrap()).as_deref(), Some("127.0.0.1:9"));
        for off in ["none", "NONE", "", "  "] {
            assert!(choose(Some(off), env(&proxy)).unwrap().is_none(), "{off:?}");
        }
        assert!(choose(None, env(&[("HTTP_PROXY", "http://proxy.corp.invalid:3128")])).unwrap().is_none());
        assert!(choose(None, env(&[("HTTPS_PROXY", "none")])).unwrap().is_none());
        assert!(choose(None, env(&[])).unwrap().is_none());
    }

    #[test]
    fn bad_values_name_their_source_and_hide_the_password() {
        let e = choose(Some("https://u:hunter2-pw@proxy.corp.invalid:3128"), env(&[])).unwrap_err();
        assert!(e.starts_with("--egress-upstream https://***@proxy.corp.invalid:3128: only http://"), "{e}");
        assert!(e.contains(FORM) && e.ends_with("or --egress-upstream none to connect directly") && !e.contains("hunter2"), "{e}");
        let e = choose(None, env(&[("HTTPS_PROXY", "proxy.corp.invalid:3128")])).unwrap_err();
        assert!(e.starts_with("HTTPS_PROXY=proxy.corp.invalid:3128 (the default of --egress-upstream): no scheme"), "{e}");
        let e = choose(None, env(&[("https_proxy", "http://u:hunter2-pw@proxy.corp.invalid:3128/x")])).unwrap_err();
        assert!(e.starts_with("https_proxy=http://***@proxy.corp.invalid:3128/x ") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn says_where_egress_goes_without_the_password() {
        let u = choose(Some("http://builder:hunter2-pw@proxy.corp.invalid:3128"), env(&[])).unwrap().unwrap();
        assert_eq!(describe(&u), "egress goes through the upstream proxy http://builder:***@proxy.corp.invalid:3128 (--egress-upstream none to connect directly)");
    }
}
