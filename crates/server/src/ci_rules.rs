//! What a CI run request may ask for, by caller, checked before anything runs or is written.
//!
//! A run's paths are on the daemon's host, and the daemon runs as root, so only the daemon's
//! owner (on its unix socket) may name host paths freely. A token may name a local repository
//! beneath one of the daemon's `--repo-root` folders (after resolving links), no out folder
//! (the daemon keeps the outputs) and no cache-key files (it sends their digests). A trusted
//! run writes the setup cache that later runs start from: it needs the trusted scope. Egress
//! to a non-public address (an `allow` entry, or the repository URL's host, which kiln allows
//! while the VM clones) needs the admin scope.

use std::path::{Path, PathBuf};

use kiln_api::CiRunRequest;
use kiln_daemon::Scope;

use crate::auth::require_scope;
use crate::error::{ApiError, ApiResult};
use crate::{Actor, AppState};

/// Checks `req` for `actor`; answers the out folder the caller named (the socket's owner only),
/// and puts the repository's resolved path in `req.repo` when it is local.
pub fn check(st: &AppState, actor: &Actor, req: &mut CiRunRequest) -> ApiResult<Option<PathBuf>> {
    if req.trusted {
        require_scope(st, actor, Scope::Trusted, "a trusted CI run (it writes the setup cache later runs start from)")?;
    }
    let out = out_folder(actor, req.out.take())?;
    if !req.cache_keys.is_empty() && !actor.local {
        return Err(ApiError::bad_request(
            "cache_keys are files on the daemon's host, which only the daemon's owner (on its unix socket) may name; \
             send cache_key_digests instead: the sha256 of each file's contents as \"sha256:<64 hex digits>\" \
             (`kiln ci run --daemon --cache-key FILE` computes them)",
        ));
    }
    req.repo = repository(actor, &st.repo_roots, &req.repo)?;
    let clone_host = kiln_ci::source::is_url(&req.repo).then(|| kiln_ci::url_host(&req.repo)).flatten();
    if let Err(m) = kiln_daemon::access::egress_reach(actor, &req.allow, clone_host) {
        let _ = st.manager.store().event(None, "denied", &format!("CI run: {m}"), &actor.name);
        return Err(ApiError::forbidden(m));
    }
    Ok(out)
}

/// The out folder a request names: only the socket's owner may name one.
fn out_folder(actor: &Actor, out: Option<String>) -> ApiResult<Option<PathBuf>> {
    match out {
        None => Ok(None),
        Some(_) if !actor.local => Err(ApiError::bad_request(
            "out names a folder on the daemon's host, which only the daemon's owner (on its unix socket) may do; leave it out: \
             the daemon keeps the outputs under the run's id (run_id in the report), and `GET /v1/ci/runs/{run_id}/files?path=report.json` \
             reads them (`kiln ci run --daemon --out DIR` fetches them into DIR for you)",
        )),
        Some(o) if !Path::new(&o).is_absolute() => Err(ApiError::bad_request(format!("out {o:?} must be an absolute path on the daemon's host"))),
        Some(o) => Ok(Some(PathBuf::from(o))),
    }
}

/// The repository a caller may name: a URL; any path for the socket's owner; for a token, a
/// git repository whose path and whose repository folder (git looks upward) both resolve
/// beneath a repository root. A path that does not exist is refused in the same words as one
/// outside the roots, so that the answer tells nothing of the host's files.
fn repository(actor: &Actor, roots: &[PathBuf], repo: &str) -> ApiResult<String> {
    if kiln_ci::source::is_url(repo) {
        return Ok(repo.to_owned());
    }
    if actor.local {
        if !Path::new(repo).exists() {
            return Err(ApiError::bad_request(format!("repo {repo}: no such path on the daemon's host")));
        }
        return Ok(repo.to_owned());
    }
    if roots.is_empty() {
        return Err(ApiError::bad_request(format!(
            "repo {repo:?}: this daemon takes no local repository paths from tokens; give a URL (http(s)://, git://, ssh://), \
             or ask its owner to allow a folder with `kiln serve --repo-root DIR`"
        )));
    }
    let beneath = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    let refused = || {
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        ApiError::bad_request(format!(
            "repo {repo:?} is not a git repository beneath this daemon's repository roots ({}); give a path beneath one of them \
             (links are resolved first), or a URL",
            list.join(", ")
        ))
    };
    let resolved = std::fs::canonicalize(repo).map_err(|_| refused())?;
    if !beneath(&resolved) || !resolved.is_dir() {
        return Err(refused());
    }
    match kiln_ci::source::repository_folders(&resolved) {
        Some(folders) if folders.iter().all(|f| beneath(f)) => Ok(resolved.display().to_string()),
        _ => Err(refused()),
    }
}
