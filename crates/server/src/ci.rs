//! `POST /v1/ci/runs`: a CI job run by the daemon, for callers that drive kiln over its API.
//! Paths (the repository, cache keys, the output folder) are on the daemon's host; secrets come
//! in the request body and stay in memory.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use kiln_api::CiRunRequest;
use kiln_ci::glue::{host_signer, into_config, ProxyEgress};
use serde_json::Value;

use crate::error::{parse_json, ApiError, ApiResult};
use crate::{Actor, AppState};

/// Runs the job and answers with its report (the build's exit code is in it).
pub async fn run(State(st): State<AppState>, Extension(actor): Extension<Actor>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: CiRunRequest = parse_json(&body)?;
    let cfg = into_config(req).map_err(ApiError::bad_request)?;
    if !kiln_ci::source::is_url(&cfg.repo) && !std::path::Path::new(&cfg.repo).exists() {
        return Err(ApiError::bad_request(format!("repo {}: no such path on the daemon's host", cfg.repo)));
    }
    let home = st.manager.home().clone();
    let egress = Arc::new(ProxyEgress::new(cfg.allow.clone()));
    let sink: kiln_ci::Sink = Arc::new(|_: &str, _: &[u8], _: bool| {});
    let store = st.manager.store();
    let _ = store.event(None, "ci_run", &format!("{} @ {}", cfg.repo, cfg.git_ref), &actor.0);
    let report = kiln_ci::run(&home, &cfg, egress, host_signer(&home), sink, &kiln_image::quiet)
        .await
        .map_err(ApiError::from)?;
    let _ = store.event(None, "ci_done", &format!("{} @ {}: exit {}", report.repo, report.commit, report.exit_code), &actor.0);
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}
