//! Health, metrics, and the answer for unknown routes.

use axum::extract::State;
use axum::http::{header, Uri};
use axum::response::IntoResponse;
use axum::Json;
use kiln_api::Health;

use crate::error::ApiError;
use crate::AppState;

/// `GET /healthz`.
pub async fn healthz() -> Json<Health> {
    Json(Health::ok())
}

/// `GET /metrics`.
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.manager.metrics_text())
}

/// Any other path.
pub async fn no_route(uri: Uri) -> ApiError {
    let mut e = ApiError::not_found(format!("no route {} (see /openapi.json)", uri.path()));
    e.code = "no_route";
    e
}
