//! What a CI run plugs into: kiln's egress proxy and the host's provenance signer, and a run
//! request for `kiln serve` (`kiln_api::CiRunRequest`) made from a config (with host paths,
//! for the daemon's unix socket; or with digests and no out folder, for a TCP listener) and
//! checked into one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kiln_api::CiRunRequest;
use kiln_core::tunnel::Handler;
use kiln_egress::{EgressLog, Limits, Policy, ProxyContext, SystemResolver, Upstream};
use kiln_image::Home;

use crate::{CiConfig, Egress};

/// The egress proxy for a run: one policy and log for all its VMs.
pub struct ProxyEgress {
    allow: Vec<String>,
    upstream: Option<Arc<Upstream>>,
    ctx: Arc<RwLock<Arc<ProxyContext>>>,
    log: Arc<EgressLog>,
}

impl ProxyEgress {
    /// A proxy allowing these entries, connecting to them itself.
    pub fn new(allow: Vec<String>) -> ProxyEgress {
        ProxyEgress::with_upstream(allow, None)
    }

    /// A proxy allowing these entries, sending allowed names through `upstream` (`None`:
    /// connecting itself).
    pub fn with_upstream(allow: Vec<String>, upstream: Option<Arc<Upstream>>) -> ProxyEgress {
        let log = Arc::new(EgressLog::new());
        let ctx = Self::context(&allow, &upstream, &log);
        ProxyEgress { allow, upstream, ctx: Arc::new(RwLock::new(ctx)), log }
    }

    /// The proxy a config asks for: its allowlist and its upstream.
    pub fn for_config(cfg: &CiConfig) -> ProxyEgress {
        ProxyEgress::with_upstream(cfg.allow.clone(), cfg.egress_upstream.clone())
    }

    fn context(allow: &[String], upstream: &Option<Arc<Upstream>>, log: &Arc<EgressLog>) -> Arc<ProxyContext> {
        let policy = Policy::parse(allow).unwrap_or_else(|_| Policy::deny_all());
        let mut ctx = ProxyContext::new(policy, Arc::new(SystemResolver), Limits::default()).with_upstream(upstream.clone());
        ctx.log = log.clone();
        Arc::new(ctx)
    }
}

impl Egress for ProxyEgress {
    fn handler(&self) -> Handler {
        let current = self.ctx.clone();
        Arc::new(move |stream| {
            // The policy in force when the connection opens.
            let ctx = current.read().unwrap_or_else(|e| e.into_inner()).clone();
            Box::pin(async move {
                kiln_egress::serve_connection(stream, &ctx).await;
            })
        })
    }

    fn allow_extra(&self, entry: Option<String>) {
        let mut allow = self.allow.clone();
        allow.extend(entry);
        *self.ctx.write().unwrap_or_else(|e| e.into_inner()) = Self::context(&allow, &self.upstream, &self.log);
    }

    fn report(&self) -> serde_json::Value {
        serde_json::to_value(self.log.snapshot()).unwrap_or_default()
    }
}

/// Signs each cell's provenance with the host key in `$KILN_HOME/keys`.
pub fn host_signer(home: &Home) -> crate::Signer {
    let store = kiln_provenance::KeyStore::in_home(home.root());
    Arc::new(move |f: &kiln_provenance::BuildFacts, dir: &kiln_fs::Dir| {
        let facts = kiln_provenance::BuildFacts { builder_id: format!("https://kiln.dev/builder/{}", hostname()), ..f.clone() };
        let json = kiln_provenance::provenance_for_run(&facts, &store).map_err(|e| e.to_string())?;
        dir.write_new(std::path::Path::new("provenance.intoto.json"), &json).map_err(|e| e.to_string())
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "localhost".into())
}

/// The request for a config over the daemon's unix socket, whose peer is the daemon's owner:
/// the repository, cache-key files and out folder as host paths (secrets included: send it
/// only to a daemon you trust with them).
pub fn request(cfg: &CiConfig) -> Result<CiRunRequest, String> {
    let out = std::path::absolute(&cfg.out).map_err(|e| e.to_string())?;
    let mut req = without_host_files(cfg)?;
    req.cache_keys = cfg.cache_keys.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()).collect();
    req.out = Some(out.display().to_string());
    Ok(req)
}

/// The request for a config to a daemon's TCP listener: no host paths but the repository's
/// (which the daemon takes beneath its `--repo-root` folders only), the cache-key files as
/// digests of their contents, read here (see [`crate::cache::file_digest`]), and no out folder
/// (the daemon keeps the outputs; fetch them by the report's `run_id`).
pub fn remote_request(cfg: &CiConfig) -> Result<CiRunRequest, crate::CiError> {
    let mut req = without_host_files(cfg).map_err(crate::CiError::Invalid)?;
    req.cache_key_digests = cfg.cache_keys.iter().map(|f| crate::cache::file_digest(f)).collect::<Result<_, _>>()?;
    Ok(req)
}

/// The request without cache keys or an out folder.
fn without_host_files(cfg: &CiConfig) -> Result<CiRunRequest, String> {
    let repo = if crate::source::is_url(&cfg.repo) { cfg.repo.clone() } else { std::path::absolute(&cfg.repo).map_err(|e| e.to_string())?.display().to_string() };
    Ok(CiRunRequest {
        repo,
        git_ref: cfg.git_ref.clone(),
        build: cfg.build.clone(),
        setup: cfg.setup.clone(),
        timeout_seconds: cfg.timeout.as_secs(),
        template: cfg.template.clone(),
        secrets: cfg.secrets.iter().cloned().collect(),
        setup_secrets: cfg.setup_secrets,
        allow: cfg.allow.clone(),
        cache_keys: Vec::new(),
        cache_key_digests: Vec::new(),
        trusted: cfg.trusted,
        matrix: cfg.matrix.iter().cloned().collect(),
        artifacts: cfg.artifacts.clone(),
        out: None,
        parallel: Some(cfg.parallel),
        rebuild: (cfg.rebuild > 0).then_some(cfg.rebuild),
        require_reproducible: cfg.require_reproducible,
    })
}

/// The config a run request asks for, checked, writing its outputs into `out` (the request's
/// own `out`, when the caller may name one, or a folder of the daemon's). Who may ask for what
/// (scopes, host paths) is the server's to check first; this checks the request's form.
pub fn into_config(req: CiRunRequest, out: std::path::PathBuf) -> Result<CiConfig, String> {
    if req.timeout_seconds == 0 {
        return Err("timeout_seconds must be positive".into());
    }
    for g in &req.artifacts {
        if !crate::artifacts::valid_glob(g) {
            return Err(format!("artifact glob {g:?}: use a relative glob of letters, digits and ._-/*?[]"));
        }
    }
    Policy::parse(&req.allow).map_err(|e| format!("allow: {e}"))?;
    if !out.is_absolute() {
        return Err("out must be an absolute path".into());
    }
    let cells = crate::run::cell_count(&req.matrix).map_err(|e| e.to_string())?;
    crate::run::check_rebuild(cells, req.rebuild.unwrap_or(0), req.require_reproducible, &req.artifacts).map_err(|e| e.to_string())?;
    if let Some((name, _)) = req.secrets.iter().find(|(_, v)| v.len() < 3) {
        return Err(format!("secret {name}: too short to mask reliably (at least 3 characters)"));
    }
    if let Some(d) = req.cache_key_digests.iter().find(|d| !crate::cache::valid_digest(d)) {
        return Err(format!("cache_key_digests: {d:?} is not sha256: and 64 lowercase hex digits (the sha256 of a cache-key file's contents)"));
    }
    Ok(CiConfig {
        repo: req.repo,
        git_ref: req.git_ref,
        build: req.build,
        setup: req.setup,
        timeout: Duration::from_secs(req.timeout_seconds),
        template: req.template,
        secrets: req.secrets.into_iter().collect(),
        setup_secrets: req.setup_secrets,
        allow: req.allow,
        // The daemon's own, not the request's.
        egress_upstream: None,
        cache_keys: req.cache_keys.into_iter().map(Into::into).collect(),
        cache_key_digests: req.cache_key_digests,
        trusted: req.trusted,
        matrix: req.matrix.into_iter().collect(),
        artifacts: req.artifacts,
        out,
        parallel: req.parallel.unwrap_or(2).max(1),
        rebuild: req.rebuild.unwrap_or(0),
        require_reproducible: req.require_reproducible,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> CiConfig {
        let lock = dir.join("Cargo.lock");
        std::fs::write(&lock, b"lock").unwrap();
        CiConfig {
            repo: dir.display().to_string(),
            git_ref: "HEAD".into(),
            build: "make".into(),
            timeout: Duration::from_secs(60),
            template: "base".into(),
            cache_keys: vec![lock],
            out: dir.join("out"),
            parallel: 2,
            ..CiConfig::default()
        }
    }

    #[test]
    fn a_socket_request_names_host_paths_and_a_tcp_one_does_not() {
        let t = tempfile::tempdir().unwrap();
        let cfg = config(t.path());
        let local = request(&cfg).unwrap();
        assert_eq!(local.out.as_deref(), Some(t.path().join("out").to_str().unwrap()));
        assert_eq!(local.cache_keys, [t.path().join("Cargo.lock").display().to_string()]);
        assert!(local.cache_key_digests.is_empty());
        let remote = remote_request(&cfg).unwrap();
        assert_eq!((remote.out.as_deref(), remote.cache_keys.len()), (None, 0));
        assert_eq!(remote.cache_key_digests, [crate::cache::file_digest(&t.path().join("Cargo.lock")).unwrap()]);
        // Both key the same entry the same way each time.
        assert_eq!(remote_request(&cfg).unwrap(), remote);
    }

    #[test]
    fn the_upstream_outlives_a_clone_host_allowed_for_a_while() {
        let up = Arc::new(Upstream::parse("http://127.0.0.1:3128").unwrap());
        let cfg = CiConfig { allow: vec!["build-mirror.invalid".into()], egress_upstream: Some(up.clone()), ..CiConfig::default() };
        let e = ProxyEgress::for_config(&cfg);
        let upstream = |e: &ProxyEgress| e.ctx.read().unwrap().upstream.clone();
        assert_eq!(upstream(&e), Some(up.clone()));
        e.allow_extra(Some("git.invalid:443".into()));
        assert_eq!(upstream(&e), Some(up.clone()));
        assert!(e.ctx.read().unwrap().policy.permits_name("git.invalid", 443));
        e.allow_extra(None);
        assert_eq!(upstream(&e), Some(up));
        assert!(ProxyEgress::new(vec![]).ctx.read().unwrap().upstream.is_none());
    }

    #[test]
    fn a_request_is_checked_into_a_config() {
        let t = tempfile::tempdir().unwrap();
        let req = remote_request(&config(t.path())).unwrap();
        let cfg = into_config(req.clone(), t.path().join("o")).unwrap();
        assert_eq!((cfg.out, cfg.cache_key_digests.len()), (t.path().join("o"), 1));
        assert!(into_config(req.clone(), "relative".into()).unwrap_err().contains("absolute"));
        let bad = CiRunRequest { cache_key_digests: vec!["/etc/shadow".into()], ..req.clone() };
        assert!(into_config(bad, t.path().join("o")).unwrap_err().contains("sha256"));
        let wide = CiRunRequest { matrix: [("A".to_owned(), (0..9).map(|i| i.to_string()).collect()), ("B".to_owned(), (0..9).map(|i| i.to_string()).collect())].into(), ..req.clone() };
        assert!(into_config(wide, t.path().join("o")).unwrap_err().contains("more than 64 cells"));
        let short = CiRunRequest { secrets: [("T".to_owned(), "ab".to_owned())].into(), ..req };
        assert!(into_config(short, t.path().join("o")).unwrap_err().contains("too short"));
    }
}
