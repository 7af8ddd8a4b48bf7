//! The warm pool: anyone may look (`GET /v1/pool`); setting it (`PUT /v1/pool`) needs the
//! admin scope, since pooled VMs hold the host's memory.

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use kiln_api::{PoolStatus, SetPool};
use kiln_daemon::Scope;

use crate::auth::require_scope;
use crate::error::{parse_json, ApiResult};
use crate::{Actor, AppState};

/// `GET /v1/pool`.
pub async fn get(State(st): State<AppState>) -> Json<PoolStatus> {
    Json(st.manager.pool_status())
}

/// `PUT /v1/pool`.
pub async fn set(State(st): State<AppState>, Extension(actor): Extension<Actor>, body: Bytes) -> ApiResult<Json<PoolStatus>> {
    require_scope(&st, &actor, Scope::Admin, "setting the warm pool")?;
    let b: SetPool = parse_json(&body)?;
    Ok(Json(st.manager.set_pool(&b.pools, &actor)?))
}
