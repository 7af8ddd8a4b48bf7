//! What a CI run plugs into: kiln's egress proxy and the host's provenance signer, and a run
//! request for `kiln serve` (`kiln_api::CiRunRequest`) made from a config and checked into one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kiln_api::CiRunRequest;
use kiln_core::tunnel::Handler;
use kiln_egress::{EgressLog, Limits, Policy, ProxyContext, SystemResolver};
use kiln_image::Home;

use crate::{CiConfig, Egress};

/// The egress proxy for a run: one policy and log for all its VMs.
pub struct ProxyEgress {
    allow: Vec<String>,
    ctx: Arc<RwLock<Arc<ProxyContext>>>,
    log: Arc<EgressLog>,
}

impl ProxyEgress {
    /// A proxy allowing these entries.
    pub fn new(allow: Vec<String>) -> ProxyEgress {
        let log = Arc::new(EgressLog::new());
        let ctx = Self::context(&allow, &log);
        ProxyEgress { allow, ctx: Arc::new(RwLock::new(ctx)), log }
    }

    fn context(allow: &[String], log: &Arc<EgressLog>) -> Arc<ProxyContext> {
        let policy = Policy::parse(allow).unwrap_or_else(|_| Policy::deny_all());
        let mut ctx = ProxyContext::new(policy, Arc::new(SystemResolver), Limits::default());
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
        *self.ctx.write().unwrap_or_else(|e| e.into_inner()) = Self::context(&allow, &self.log);
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

/// The request for a config (secrets included: send it only over the daemon's socket).
pub fn request(cfg: &CiConfig) -> Result<CiRunRequest, String> {
    let out = std::path::absolute(&cfg.out).map_err(|e| e.to_string())?;
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
        cache_keys: cfg.cache_keys.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()).collect(),
        trusted: cfg.trusted,
        matrix: cfg.matrix.iter().cloned().collect(),
        artifacts: cfg.artifacts.clone(),
        out: out.display().to_string(),
        parallel: Some(cfg.parallel),
    })
}

/// The config a run request asks for, checked.
pub fn into_config(req: CiRunRequest) -> Result<CiConfig, String> {
    if req.timeout_seconds == 0 {
        return Err("timeout_seconds must be positive".into());
    }
    for g in &req.artifacts {
        if !crate::artifacts::valid_glob(g) {
            return Err(format!("artifact glob {g:?}: use a relative glob of letters, digits and ._-/*?[]"));
        }
    }
    Policy::parse(&req.allow).map_err(|e| format!("allow: {e}"))?;
    if !std::path::Path::new(&req.out).is_absolute() {
        return Err("out must be an absolute path".into());
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
        cache_keys: req.cache_keys.into_iter().map(Into::into).collect(),
        cache_key_digests: Vec::new(),
        trusted: req.trusted,
        matrix: req.matrix.into_iter().collect(),
        artifacts: req.artifacts,
        out: req.out.into(),
        parallel: req.parallel.unwrap_or(2).max(1),
    })
}
