//! Template resources: list (anyone), build and bake (the admin scope: a build runs the
//! template's commands as root). Templates are named, never given as paths.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use kiln_api::{Baked, BuildTemplate, TemplateInfo};
use kiln_image::{rootfs, BuiltTemplate, TemplateDef};

use kiln_daemon::Scope;

use crate::auth::require_scope;
use crate::error::{parse_json, ApiError, ApiResult};
use crate::{Actor, AppState};

/// What the API shows of a built template.
fn template_info(t: &BuiltTemplate) -> TemplateInfo {
    TemplateInfo {
        name: t.name.clone(),
        digest: Some(t.rootfs.hex().to_owned()),
        size_bytes: Some(t.size_bytes),
        built_at: Some(t.built_at),
        cpus: Some(t.cpus),
        memory_mib: Some(t.memory_mib),
        description: Some(t.description.clone()),
        built: true,
    }
}

/// `GET /v1/templates`.
pub async fn list(State(st): State<AppState>) -> Json<Vec<TemplateInfo>> {
    let home = st.manager.home();
    let built = BuiltTemplate::list(home);
    let mut v: Vec<TemplateInfo> = built.iter().map(template_info).collect();
    for n in TemplateDef::known_names() {
        if !built.iter().any(|t| t.name == n) {
            v.push(TemplateInfo::unbuilt(n));
        }
    }
    Json(v)
}

/// `POST /v1/templates/{name}/build`.
pub async fn build(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(name): Path<String>, body: Bytes) -> ApiResult<Json<TemplateInfo>> {
    require_scope(&st, &actor, Scope::Admin, "building a template")?;
    let b: BuildTemplate = parse_json(&body)?;
    let def = st.manager.template(&name, &actor)?;
    let home = st.manager.home().clone();
    let built = tokio::task::spawn_blocking(move || rootfs::build(&home, &def, b.force, &kiln_image::quiet))
        .await
        .map_err(|e| ApiError::bad_request(format!("build task failed: {e}")))?
        .map_err(kiln_core::SandboxError::from)?;
    let store = st.manager.store();
    let _ = store.put_template(&built.name, built.rootfs.hex(), built.size_bytes, built.built_at);
    let _ = store.event(None, "template_built", &format!("{} {}", built.name, built.rootfs), &actor.name);
    Ok(Json(template_info(&built)))
}

/// `POST /v1/templates/{name}/bake`.
pub async fn bake(State(st): State<AppState>, Extension(actor): Extension<Actor>, Path(name): Path<String>) -> ApiResult<Json<Baked>> {
    require_scope(&st, &actor, Scope::Admin, "baking a template")?;
    let def = st.manager.template(&name, &actor)?;
    let home = st.manager.home();
    let artifacts = kiln_core::artifacts::prepare(home, &def.name, &kiln_image::quiet)?;
    let (accel, _) = kiln_core::accel::resolve(home, Default::default()).await?;
    let (cpus, mem) = (artifacts.template.cpus, artifacts.template.memory_mib);
    let snap = kiln_core::sandbox::ensure_snapshot(home, &artifacts, accel, cpus, mem, std::time::Duration::from_secs(120), &kiln_image::quiet).await?;
    let snap_name = snap.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let store = st.manager.store();
    let _ = store.put_snapshot(&snap_name, &name, snap.meta.created_at, snap.meta.bake_ms);
    let _ = store.event(None, "template_baked", &snap_name, &actor.name);
    Ok(Json(Baked { template: name, snapshot: snap_name, bake_ms: snap.meta.bake_ms }))
}
