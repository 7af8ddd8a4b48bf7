//! The routing table. The router, the OpenAPI document and the fuzz targets are all built from
//! [`ROUTES`]: each entry carries its handler and the `kiln-api` types it takes and answers.

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use kiln_api::{
    Baked, BuildTemplate, CiRunRequest, CreateSandbox, EgressLog, ErrorDetail, ExecExit, ExecRequest, ExecResult, ExtendSandbox, FileInfo, ForkSandbox,
    Forked, Health, OutputChunk, PoolStatus, SandboxInfo, SetPool, TemplateInfo,
};

use crate::route::{json, json_optional, list, one, r, shape, Answer, Body, Param, Route, Shape};
use crate::{auth, ci, exec, files, meta, openapi, pool, sandboxes, templates, AppState};

const PATH: Param = Param { name: "path", required: true, ty: "string" };
const MODE: Param = Param { name: "mode", required: false, ty: "integer" };
const RECURSIVE: Param = Param { name: "recursive", required: false, ty: "boolean" };

/// The exec stream's events and their data.
const EXEC_EVENTS: &[(&str, Shape)] =
    &[("stdout", shape::<OutputChunk>()), ("stderr", shape::<OutputChunk>()), ("exit", shape::<ExecExit>()), ("error", shape::<ErrorDetail>())];

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", "healthz", "Liveness", || get(meta::healthz)).answers(200, one::<Health>()),
    r("GET", "/metrics", "metrics", "Prometheus metrics", || get(meta::metrics)).answers(200, Answer::Raw("text/plain")),
    r("GET", "/openapi.json", "openapi", "This API as OpenAPI 3", || get(|| async { axum::Json(openapi::document(ROUTES)) }))
        .answers(200, Answer::Object("this document")),
    r("GET", "/v1/templates", "listTemplates", "Templates: built ones and known ones", || get(templates::list)).answers(200, list::<TemplateInfo>()),
    r("POST", "/v1/templates/{name}/build", "buildTemplate", "Build a template's root filesystem", || post(templates::build))
        .takes(json_optional::<BuildTemplate>())
        .answers(200, one::<TemplateInfo>()),
    r("POST", "/v1/templates/{name}/bake", "bakeTemplate", "Bake a template's snapshot", || post(templates::bake)).answers(200, one::<Baked>()),
    r("GET", "/v1/pool", "getPool", "The warm pool: templates and shapes kept ready, hits and misses", || get(pool::get)).answers(200, one::<PoolStatus>()),
    r("PUT", "/v1/pool", "setPool", "Set the warm pool (admin): every template and shape to keep ready", || put(pool::set))
        .takes(json::<SetPool>())
        .answers(200, one::<PoolStatus>()),
    r("POST", "/v1/ci/runs", "ciRun", "Run a CI job (kiln ci run) in the daemon; the report", || post(ci::run))
        .takes(json::<CiRunRequest>())
        .answers(200, Answer::Object("the run's report, as `kiln ci run --json` prints it, with its run_id")),
    r("GET", "/v1/ci/runs/{id}/files", "ciRunFile", "Read an output file of a CI run (path relative to its folder)", || get(ci::file))
        .query(&[PATH])
        .answers(200, Answer::Raw("application/octet-stream")),
    r("POST", "/v1/sandboxes", "createSandbox", "Create a sandbox from a template", || post(sandboxes::create))
        .takes(json::<CreateSandbox>())
        .answers(201, one::<SandboxInfo>()),
    r("GET", "/v1/sandboxes", "listSandboxes", "Live sandboxes", || get(sandboxes::list)).answers(200, list::<SandboxInfo>()),
    r("GET", "/v1/sandboxes/{id}", "getSandbox", "One sandbox", || get(sandboxes::get)).answers(200, one::<SandboxInfo>()),
    r("DELETE", "/v1/sandboxes/{id}", "deleteSandbox", "Destroy a sandbox", || delete(sandboxes::delete)).answers(204, Answer::Empty),
    r("POST", "/v1/sandboxes/{id}/extend", "extendSandbox", "Set the deadline to now + ttl_seconds", || post(sandboxes::extend))
        .takes(json::<ExtendSandbox>())
        .answers(200, one::<SandboxInfo>()),
    r("POST", "/v1/sandboxes/{id}/fork", "forkSandbox", "Fork a forkable sandbox into count clones", || post(sandboxes::fork))
        .takes(json_optional::<ForkSandbox>())
        .answers(201, one::<Forked>()),
    r("GET", "/v1/sandboxes/{id}/egress", "egressLog", "Connection attempts through the egress proxy", || get(sandboxes::egress))
        .answers(200, one::<EgressLog>()),
    r("POST", "/v1/sandboxes/{id}/exec", "exec", "Run a command; JSON result", || post(exec::exec))
        .takes(json::<ExecRequest>())
        .answers(200, one::<ExecResult>()),
    r("POST", "/v1/sandboxes/{id}/exec/stream", "execStream", "Run a command; server-sent events", || post(exec::exec_stream))
        .takes(json::<ExecRequest>())
        .answers(200, Answer::Events(EXEC_EVENTS)),
    r("GET", "/v1/sandboxes/{id}/files", "readFile", "Read a file's bytes", || get(files::read))
        .query(&[PATH])
        .answers(200, Answer::Raw("application/octet-stream")),
    // File writes stream their body to the guest; the size cap is the file API's.
    r("PUT", "/v1/sandboxes/{id}/files", "writeFile", "Write a file from the body", || put(files::write).layer(DefaultBodyLimit::disable()))
        .query(&[PATH, MODE])
        .takes(Body::Bytes)
        .answers(204, Answer::Empty),
    r("DELETE", "/v1/sandboxes/{id}/files", "removeFile", "Remove a file or folder", || delete(files::remove))
        .query(&[PATH, RECURSIVE])
        .answers(204, Answer::Empty),
    r("GET", "/v1/sandboxes/{id}/files/list", "listFiles", "List a folder", || get(files::list)).query(&[PATH]).answers(200, list::<FileInfo>()),
    r("GET", "/v1/sandboxes/{id}/files/stat", "statFile", "Metadata of a path", || get(files::stat)).query(&[PATH]).answers(200, one::<FileInfo>()),
    r("POST", "/v1/sandboxes/{id}/files/mkdir", "mkdir", "Create a folder (and parents)", || post(files::mkdir))
        .query(&[PATH, MODE])
        .answers(204, Answer::Empty),
];

/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// The application: every route, auth, body limits, a JSON 404 for unknown paths.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, (route.handler)());
    }
    router
        .fallback(meta::no_route)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require))
        .with_state(state)
}
