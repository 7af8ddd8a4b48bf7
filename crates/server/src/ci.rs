//! CI runs through the API. `POST /v1/ci/runs` runs a job in the daemon and answers with its
//! report and run id; `GET /v1/ci/runs/{id}/files?path=` reads one of its output files. What a
//! caller may ask for is [`crate::ci_rules`]'s to check, before anything runs. Unless the
//! daemon's owner names an out folder, the outputs go to `$KILN_HOME/ci-runs/<run id>/`, and
//! the report's paths are relative to it. Secrets come in the request body and stay in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_api::CiRunRequest;
use kiln_ci::glue::{host_signer, into_config, ProxyEgress};
use kiln_core::SandboxError;
use kiln_daemon::manager::ManagerError;
use kiln_daemon::store::{now, CiRunRecord};
use kiln_fs::Dir;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{parse_json, ApiError, ApiResult};
use crate::{Actor, AppState};

/// The folder of the daemon's CI outputs, one folder per run inside.
fn runs_folder(st: &AppState) -> PathBuf {
    st.manager.home().root().join("ci-runs")
}

/// `POST /v1/ci/runs`: runs the job and answers with its report (the build's exit code is in
/// it) and its `run_id`.
pub async fn run(State(st): State<AppState>, Extension(actor): Extension<Actor>, body: Bytes) -> ApiResult<Json<Value>> {
    let mut req: CiRunRequest = parse_json(&body)?;
    // Every check comes before anything is made: no folder, no record, no build.
    let named_out = crate::ci_rules::check(&st, &actor, &mut req)?;
    let run_id = format!("ci-{}", kiln_core::random::hex(6));
    let out = named_out.clone().unwrap_or_else(|| runs_folder(&st).join(&run_id));
    let mut cfg = into_config(req, out.clone()).map_err(ApiError::bad_request)?;
    cfg.egress_upstream = st.manager.egress_upstream();
    let def = st.manager.template(&cfg.template, &actor)?;
    // The run's VMs (its setup VM and one clone per cell, alive together while it forks) count
    // against the daemon's limits like sandboxes, for as long as the run lasts.
    let cells = cfg.check_limits()?;
    let _room = st.manager.reserve_vms(cells + 1, u64::from(def.vm.memory_mib))?;
    let store = st.manager.store();
    let kept = named_out.is_none();
    if kept {
        use std::os::unix::fs::DirBuilderExt;
        let runs = runs_folder(&st);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&runs)
            .map_err(|source| ApiError::from(SandboxError::Io { what: format!("create {}", runs.display()), source }))?;
        store.put_ci_run(&CiRunRecord { id: run_id.clone(), owner: actor.name.clone(), started_at: now() }).map_err(ManagerError::from)?;
    }
    let home = st.manager.home().clone();
    let egress = Arc::new(ProxyEgress::for_config(&cfg));
    let sink: kiln_ci::Sink = Arc::new(|_: &str, _: &[u8], _: bool| {});
    let trust = if cfg.trusted { " (trusted)" } else { "" };
    let _ = store.event(None, "ci_run", &format!("{run_id}: {} @ {}{trust}", cfg.repo, cfg.git_ref), &actor.name);
    let report = kiln_ci::run(&home, &cfg, egress, host_signer(&home), sink, &kiln_image::quiet).await;
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = store.event(None, "ci_failed", &format!("{run_id}: {e}"), &actor.name);
            return Err(e.into());
        }
    };
    report.run_id = Some(run_id.clone());
    if kept {
        report.rebase(&out, Path::new(""));
        let text = serde_json::to_vec_pretty(&report).unwrap_or_default();
        if let Err(e) = Dir::open(&out).and_then(|d| d.replace("report.json", &text)) {
            eprintln!("kiln serve: {run_id}: cannot write report.json: {e}");
        }
    }
    let _ = store.event(None, "ci_done", &format!("{run_id}: {} @ {}: exit {}", report.repo, report.commit, report.exit_code), &actor.name);
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// Query of `GET /v1/ci/runs/{id}/files`.
#[derive(Debug, Deserialize)]
pub struct FileQuery {
    /// Relative to the run's folder, e.g. `build/build.log`.
    path: String,
}

/// `GET /v1/ci/runs/{id}/files?path=`: the bytes of one output file of a run the caller
/// started (an admin: any run). The file is opened beneath the run's folder without following
/// any link, and must be a regular file.
pub async fn file(State(st): State<AppState>, Extension(actor): Extension<Actor>, UrlPath(id): UrlPath<String>, Query(q): Query<FileQuery>) -> ApiResult<Response> {
    let not_found = || {
        ApiError::not_found(format!(
            "no CI run {id} (it did not run through this daemon's API, its caller named its out folder, or another token started it)"
        ))
    };
    let run = st.manager.store().ci_run(&id).map_err(ManagerError::from)?.filter(|r| actor.sees(&r.owner)).ok_or_else(not_found)?;
    let dir = Dir::open(&runs_folder(&st)).and_then(|d| d.open_dir(Path::new(&run.id))).map_err(|_| not_found())?;
    let path = q.path.as_str();
    let f = dir.open_regular(Path::new(path)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => ApiError::not_found(format!("run {id} has no file {path:?}")),
        std::io::ErrorKind::InvalidInput => {
            ApiError::bad_request(format!("path {path:?} must be relative to the run's folder, without '..' (e.g. report.json or build/build.log)"))
        }
        std::io::ErrorKind::PermissionDenied => ApiError::bad_request(format!("{path:?} is, or passes through, a link: refused")),
        std::io::ErrorKind::InvalidData => ApiError::bad_request(format!("{path:?} is not a regular file")),
        _ => ApiError::from(SandboxError::Io { what: format!("open {path:?} of CI run {id}"), source: e }),
    })?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = st.manager.store().event(None, "ci_file", &format!("{id}: {path}"), &actor.name);
    // A file of a run still going may grow: the body ends at the length announced.
    let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(f), size);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream".to_owned()), (header::CONTENT_LENGTH, size.to_string())], body).into_response())
}
