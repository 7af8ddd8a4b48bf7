//! Who may call the API. On the unix socket (mode 0600) the peer is the socket's owner: no token.
//! On TCP every request but `/healthz` needs `Authorization: Bearer <token>`, checked against
//! the hashed tokens in the state store.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::{Actor, AppState};

/// Middleware: resolves the [`Actor`] or answers 401.
pub async fn require(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if !st.require_token {
        req.extensions_mut().insert(Actor("local".into()));
        return next.run(req).await;
    }
    if req.uri().path() == "/healthz" {
        req.extensions_mut().insert(Actor("anonymous".into()));
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let Some(token) = token else {
        return ApiError::unauthorized("this listener needs `Authorization: Bearer <token>` (make one with `kiln token create NAME`)").into_response();
    };
    match st.manager.store().token_name(&token) {
        Ok(Some(name)) => {
            req.extensions_mut().insert(Actor(name));
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("unknown or revoked token").into_response(),
        Err(e) => ApiError::from(kiln_daemon::manager::ManagerError::Store(e)).into_response(),
    }
}
