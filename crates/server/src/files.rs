//! File resources: bytes in and out (streamed, size-capped), list, stat, mkdir, remove. Each
//! request is of a sandbox the caller may see, and is recorded in the audit log with its caller.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::TryStreamExt;
use kiln_api as api;
use kiln_proto::{FileKind, FileStat, DEFAULT_MAX_FILE};
use serde::Deserialize;

use crate::error::{guest_path, ApiError, ApiResult};
use crate::{Actor, AppState};

/// Most entries one listing returns.
pub const MAX_LIST: usize = 100_000;

/// Query of the file routes.
#[derive(Debug, Deserialize)]
pub struct PathQuery {
    path: String,
    mode: Option<u32>,
    recursive: Option<bool>,
}

/// The API's name for a kind.
fn kind(k: FileKind) -> api::FileKind {
    match k {
        FileKind::File => api::FileKind::File,
        FileKind::Dir => api::FileKind::Dir,
        FileKind::Symlink => api::FileKind::Symlink,
        FileKind::Other => api::FileKind::Other,
    }
}

/// What the API shows of a guest file.
fn file_info(s: &FileStat) -> api::FileInfo {
    api::FileInfo { name: s.name.clone(), kind: kind(s.kind), size: s.size, mode: s.mode, mtime: s.mtime }
}

fn mode(q: &PathQuery, default: u32) -> ApiResult<u32> {
    match q.mode {
        None => Ok(default),
        Some(m) if m <= 0o7777 => Ok(m),
        Some(m) => Err(ApiError::bad_request(format!("mode {m} is not permission bits (0..=4095; 420 is 0o644)"))),
    }
}

/// `GET /v1/sandboxes/{id}/files?path=`: the file's bytes, streamed.
pub async fn read(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, Query(q): Query<PathQuery>) -> ApiResult<Response> {
    let path = guest_path(&q.path)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let stat = st.manager.settle(&id, lease.map_err(lease.agent().stat(&path).await).await).await;
    st.manager.note_files(&id, "read", &path, &stat, &actor.name);
    let stat = stat?;
    if stat.kind != FileKind::File {
        return Err(ApiError::bad_request(format!("{path} is a {}, not a file", kind(stat.kind))));
    }
    if stat.size > DEFAULT_MAX_FILE {
        return Err(ApiError::too_large(format!("{path} is {} bytes; the limit is {DEFAULT_MAX_FILE}", stat.size)));
    }
    let (mut w, r) = tokio::io::duplex(256 * 1024);
    let agent = lease.agent().clone();
    tokio::spawn(async move {
        // An error after the headers went out ends the body early; the length tells the client.
        let _ = agent.read_file(&path, DEFAULT_MAX_FILE, &mut w).await;
        drop(lease);
    });
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(r));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream".to_owned()), (header::CONTENT_LENGTH, stat.size.to_string())], body).into_response())
}

/// `PUT /v1/sandboxes/{id}/files?path=&mode=`: writes the body (parents created).
pub async fn write(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, Query(q): Query<PathQuery>, body: Body) -> ApiResult<StatusCode> {
    let path = guest_path(&q.path)?;
    let mode = mode(&q, 0o644)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let r = lease.map_err(lease.agent().write_file(&path, mode, true, reader).await).await;
    drop(lease);
    let r = st.manager.settle(&id, r).await;
    st.manager.note_files(&id, "write", &path, &r, &actor.name);
    r?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/sandboxes/{id}/files?path=&recursive=`.
pub async fn remove(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, Query(q): Query<PathQuery>) -> ApiResult<StatusCode> {
    let path = guest_path(&q.path)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let r = lease.map_err(lease.agent().remove(&path, q.recursive.unwrap_or(false)).await).await;
    drop(lease);
    let r = st.manager.settle(&id, r).await;
    st.manager.note_files(&id, "remove", &path, &r, &actor.name);
    r?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sandboxes/{id}/files/list?path=`.
pub async fn list(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, Query(q): Query<PathQuery>) -> ApiResult<Json<Vec<api::FileInfo>>> {
    let path = guest_path(&q.path)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let r = lease.map_err(lease.agent().list(&path, MAX_LIST).await).await;
    drop(lease);
    let r = st.manager.settle(&id, r).await;
    st.manager.note_files(&id, "list", &path, &r, &actor.name);
    let entries = r?;
    Ok(Json(entries.iter().map(file_info).collect()))
}

/// `GET /v1/sandboxes/{id}/files/stat?path=`.
pub async fn stat(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, Query(q): Query<PathQuery>) -> ApiResult<Json<api::FileInfo>> {
    let path = guest_path(&q.path)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let r = lease.map_err(lease.agent().stat(&path).await).await;
    drop(lease);
    let r = st.manager.settle(&id, r).await;
    st.manager.note_files(&id, "stat", &path, &r, &actor.name);
    Ok(Json(file_info(&r?)))
}

/// `POST /v1/sandboxes/{id}/files/mkdir?path=&mode=`.
pub async fn mkdir(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(id): Path<String>, Query(q): Query<PathQuery>, _body: Bytes) -> ApiResult<StatusCode> {
    let path = guest_path(&q.path)?;
    let mode = mode(&q, 0o755)?;
    let lease = st.manager.lease(&id, &actor).await?;
    let r = lease.map_err(lease.agent().mkdir(&path, mode, true).await).await;
    drop(lease);
    let r = st.manager.settle(&id, r).await;
    st.manager.note_files(&id, "mkdir", &path, &r, &actor.name);
    r?;
    Ok(StatusCode::NO_CONTENT)
}
