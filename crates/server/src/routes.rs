//! The routing table. The router and the OpenAPI document are both built from [`ROUTES`], so
//! they cannot disagree.

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

use crate::route::{r, Route};
use crate::{auth, ci, exec, files, meta, openapi, sandboxes, templates, AppState};

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", "healthz", "Liveness"),
    r("GET", "/metrics", "metrics", "Prometheus metrics"),
    r("GET", "/openapi.json", "openapi", "This API as OpenAPI 3"),
    r("GET", "/v1/templates", "listTemplates", "Templates: built ones and known ones"),
    r("POST", "/v1/templates/{name}/build", "buildTemplate", "Build a template's root filesystem"),
    r("POST", "/v1/templates/{name}/bake", "bakeTemplate", "Bake a template's snapshot"),
    r("POST", "/v1/ci/runs", "ciRun", "Run a CI job (kiln ci run) in the daemon; the report"),
    r("POST", "/v1/sandboxes", "createSandbox", "Create a sandbox from a template"),
    r("GET", "/v1/sandboxes", "listSandboxes", "Live sandboxes"),
    r("GET", "/v1/sandboxes/{id}", "getSandbox", "One sandbox"),
    r("DELETE", "/v1/sandboxes/{id}", "deleteSandbox", "Destroy a sandbox"),
    r("POST", "/v1/sandboxes/{id}/extend", "extendSandbox", "Set the deadline to now + ttl_seconds"),
    r("POST", "/v1/sandboxes/{id}/fork", "forkSandbox", "Fork a forkable sandbox into count clones"),
    r("GET", "/v1/sandboxes/{id}/egress", "egressLog", "Connection attempts through the egress proxy"),
    r("POST", "/v1/sandboxes/{id}/exec", "exec", "Run a command; JSON result"),
    r("POST", "/v1/sandboxes/{id}/exec/stream", "execStream", "Run a command; server-sent events"),
    r("GET", "/v1/sandboxes/{id}/files", "readFile", "Read a file's bytes"),
    r("PUT", "/v1/sandboxes/{id}/files", "writeFile", "Write a file from the body"),
    r("DELETE", "/v1/sandboxes/{id}/files", "removeFile", "Remove a file or folder"),
    r("GET", "/v1/sandboxes/{id}/files/list", "listFiles", "List a folder"),
    r("GET", "/v1/sandboxes/{id}/files/stat", "statFile", "Metadata of a path"),
    r("POST", "/v1/sandboxes/{id}/files/mkdir", "mkdir", "Create a folder (and parents)"),
];

/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 1 << 20;

fn handler(op: &str) -> MethodRouter<AppState> {
    match op {
        "healthz" => get(meta::healthz),
        "metrics" => get(meta::metrics),
        "openapi" => get(|| async { axum::Json(openapi::document(ROUTES)) }),
        "listTemplates" => get(templates::list),
        "buildTemplate" => post(templates::build),
        "bakeTemplate" => post(templates::bake),
        "ciRun" => post(ci::run),
        "createSandbox" => post(sandboxes::create),
        "listSandboxes" => get(sandboxes::list),
        "getSandbox" => get(sandboxes::get),
        "deleteSandbox" => delete(sandboxes::delete),
        "extendSandbox" => post(sandboxes::extend),
        "forkSandbox" => post(sandboxes::fork),
        "egressLog" => get(sandboxes::egress),
        "exec" => post(exec::exec),
        "execStream" => post(exec::exec_stream),
        // File writes stream their body to the guest; the size cap is the file API's.
        "readFile" => get(files::read),
        "writeFile" => put(files::write).layer(DefaultBodyLimit::disable()),
        "removeFile" => delete(files::remove),
        "listFiles" => get(files::list),
        "statFile" => get(files::stat),
        "mkdir" => post(files::mkdir),
        other => panic!("route {other} has no handler"),
    }
}

/// The application: every route, auth, body limits, a JSON 404 for unknown paths.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, handler(route.op));
    }
    router
        .fallback(meta::no_route)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require))
        .with_state(state)
}
