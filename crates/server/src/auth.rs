//! Who may call the API. On the unix socket (mode 0600) the peer is the socket's owner: no
//! token, the admin scope, and host paths allowed. On TCP every request but `/healthz` needs
//! `Authorization: Bearer <token>`, checked against the hashed tokens in the state store; the
//! request then has that token's name and scope. What each scope may do is checked by the
//! handlers ([`require_scope`]) and the manager (a sandbox is its creator's).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use kiln_daemon::Scope;

use crate::error::{ApiError, ApiResult};
use crate::{Actor, AppState};

/// Refuses (403, and an audit event naming the caller) a request that needs `needed` from a
/// caller without it; `what` names the action for the message.
pub fn require_scope(st: &AppState, actor: &Actor, needed: Scope, what: &str) -> ApiResult<()> {
    if actor.may(needed) {
        return Ok(());
    }
    let _ = st.manager.store().event(None, "denied", &format!("{what}: needs the {needed} scope, has {}", actor.scope), &actor.name);
    Err(ApiError::forbidden(format!(
        "{what} needs a token with the {needed} scope; this one ({}) has {}. The daemon's owner can make one: `kiln token create NAME --scope {needed}`",
        actor.name, actor.scope
    )))
}

/// Middleware: resolves the [`Actor`] or answers 401.
pub async fn require(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if !st.require_token {
        req.extensions_mut().insert(Actor::local());
        return next.run(req).await;
    }
    if req.uri().path() == "/healthz" {
        req.extensions_mut().insert(Actor::token("anonymous", Scope::Untrusted));
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
    match st.manager.store().token(&token) {
        Ok(Some(principal)) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("unknown or revoked token").into_response(),
        Err(e) => ApiError::from(kiln_daemon::manager::ManagerError::Store(e)).into_response(),
    }
}
