//! Sandbox resources: create, list, get, delete, extend, fork. A token sees only the
//! sandboxes it created (an admin sees all); another's answers 404, as a missing one does.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_api::{CreateSandbox, EgressLog, ExtendSandbox, ForkSandbox, Forked, SandboxInfo};
use kiln_daemon::manager::CreateRequest;

use crate::error::{parse_json, ApiError, ApiResult};
use crate::{Actor, AppState};

fn ttl(secs: i64) -> ApiResult<Duration> {
    if secs <= 0 {
        return Err(ApiError::bad_request(format!("ttl_seconds must be positive, not {secs}")));
    }
    Ok(Duration::from_secs(secs as u64))
}

/// `POST /v1/sandboxes`.
pub async fn create(State(st): State<AppState>, Extension(actor): Extension<Actor>, body: Bytes) -> ApiResult<(StatusCode, Json<SandboxInfo>)> {
    let b: CreateSandbox = parse_json(&body)?;
    for k in b.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ApiError::bad_request(format!("env: {k:?} is not a variable name")));
        }
    }
    if b.template.is_empty() == b.image.is_none() {
        return Err(ApiError::bad_request("name a template (\"template\") or an OCI image (\"image\"), one of the two"));
    }
    let req = CreateRequest {
        template: b.template,
        image: b.image,
        ttl: b.ttl_seconds.map(ttl).transpose()?,
        cpus: b.cpus,
        memory_mib: b.memory_mib,
        env: b.env.into_iter().collect(),
        forkable: b.forkable,
        allow: b.allow,
    };
    let info = st.manager.create(req, &actor).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /v1/sandboxes`.
pub async fn list(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Json<Vec<SandboxInfo>> {
    Json(st.manager.list(&actor))
}

/// `GET /v1/sandboxes/{id}`.
pub async fn get(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(st.manager.get(&id, &actor)?))
}

/// `DELETE /v1/sandboxes/{id}`.
pub async fn delete(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    st.manager.delete(&id, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sandboxes/{id}/extend`.
pub async fn extend(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<SandboxInfo>> {
    let b: ExtendSandbox = parse_json(&body)?;
    Ok(Json(st.manager.extend(&id, ttl(b.ttl_seconds)?, &actor)?))
}

/// `POST /v1/sandboxes/{id}/fork`.
pub async fn fork(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, body: Bytes) -> ApiResult<(StatusCode, Json<Forked>)> {
    let b: ForkSandbox = parse_json(&body)?;
    if b.count < 1 {
        return Err(ApiError::bad_request(format!("count must be at least 1, not {}", b.count)));
    }
    let sandboxes = st.manager.fork(&id, b.count as usize, &actor).await?;
    Ok((StatusCode::CREATED, Json(Forked { sandboxes })))
}

/// `GET /v1/sandboxes/{id}/egress`: every connection attempt through the egress proxy.
pub async fn egress(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>) -> ApiResult<Json<EgressLog>> {
    Ok(Json(st.manager.egress_log(&id, &actor)?))
}
