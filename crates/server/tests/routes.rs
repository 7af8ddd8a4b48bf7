//! The routing table, the OpenAPI document and error answers, without VMs (`oneshot` on the
//! router, as in axum's testing example).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kiln_daemon::manager::{Limits, Manager};
use kiln_image::Home;
use kiln_server::{app, routes::ROUTES, AppState};
use tower::ServiceExt;

fn state(require_token: bool) -> (AppState, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let home = Home::at(t.path(), t.path().join("run"));
    let manager = Manager::open(home, Limits::default()).unwrap();
    (AppState { manager, require_token }, t)
}

async fn call(st: &AppState, method: &str, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::builder().method(method).uri(uri).header("content-type", "application/json").body(Body::from(body.to_owned())).unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn every_route_is_documented_and_routed() {
    let (st, _t) = state(false);
    let (status, doc) = call(&st, "GET", "/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, ROUTES.len());
    for r in ROUTES {
        assert!(paths[r.path][r.method.to_lowercase()].is_object(), "{} {} not documented", r.method, r.path);
        let uri = r.path.replace("{id}", "sbx-000000000000").replace("{name}", "no-such-template");
        let uri = if uri.contains("/files") { format!("{uri}?path=/x") } else { uri };
        let (status, body) = call(&st, r.method, &uri, "{}").await;
        assert_ne!(body["error"]["code"], "no_route", "{} {} is not routed", r.method, r.path);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{} {}", r.method, r.path);
    }
    // And an undocumented one is not routed.
    let (status, body) = call(&st, "GET", "/v1/nope", "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_route")));
}

#[tokio::test]
async fn bad_requests_get_4xx_with_a_message() {
    let (st, _t) = state(false);
    let cases = [
        ("POST", "/v1/sandboxes", "{\"template\": \"nope\"}", StatusCode::BAD_REQUEST, "unknown template 'nope'"),
        ("POST", "/v1/sandboxes", "{\"template\": \"tiny\", \"ttl_seconds\": -5}", StatusCode::BAD_REQUEST, "ttl_seconds must be positive"),
        ("POST", "/v1/sandboxes", "{not json", StatusCode::BAD_REQUEST, "invalid JSON"),
        ("POST", "/v1/sandboxes", "{\"template\": \"tiny\", \"bogus\": 1}", StatusCode::BAD_REQUEST, "bogus"),
        ("GET", "/v1/sandboxes/sbx-000000000000", "", StatusCode::NOT_FOUND, "no sandbox sbx-000000000000"),
        ("GET", "/v1/sandboxes/sbx-000000000000/files?path=../etc/passwd", "", StatusCode::BAD_REQUEST, "absolute"),
        ("POST", "/v1/sandboxes/sbx-000000000000/exec", "{}", StatusCode::BAD_REQUEST, "exactly one of"),
    ];
    for (method, uri, body, want, text) in cases {
        let (status, v) = call(&st, method, uri, body).await;
        assert_eq!(status, want, "{method} {uri}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(text), "{method} {uri}: {msg}");
    }
    // A huge body is refused before it is read.
    let big = format!("{{\"template\": \"{}\"}}", "x".repeat(2 << 20));
    let (status, v) = call(&st, "POST", "/v1/sandboxes", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

#[tokio::test]
async fn tcp_listeners_need_a_token() {
    let (st, _t) = state(true);
    let (status, _) = call(&st, "GET", "/healthz", "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = call(&st, "GET", "/v1/sandboxes", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let secret = st.manager.store().create_token("ci").unwrap();
    let req = Request::builder().uri("/v1/sandboxes").header("authorization", format!("Bearer {secret}")).body(Body::empty()).unwrap();
    assert_eq!(app(st.clone()).oneshot(req).await.unwrap().status(), StatusCode::OK);
    let req = Request::builder().uri("/v1/sandboxes").header("authorization", "Bearer kiln_wrong").body(Body::empty()).unwrap();
    assert_eq!(app(st.clone()).oneshot(req).await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (st, _t) = state(false);
    let req = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
    let resp = app(st).oneshot(req).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for m in ["kiln_sandboxes_running 0", "kiln_creates_total", "kiln_create_seconds_bucket", "kiln_ttl_reaps_total", "kiln_failures_total", "kiln_execs_total"] {
        assert!(text.contains(m), "{m} missing:\n{text}");
    }
}

#[tokio::test]
async fn answers_are_the_api_shapes() {
    let (st, _t) = state(false);
    assert_eq!(call(&st, "GET", "/healthz", "").await, (StatusCode::OK, serde_json::json!({ "status": "ok" })));
    assert_eq!(call(&st, "GET", "/v1/sandboxes", "").await, (StatusCode::OK, serde_json::json!([])));
    // Nothing is built in a fresh home: every known template is just its name.
    let (status, templates) = call(&st, "GET", "/v1/templates", "").await;
    assert_eq!(status, StatusCode::OK);
    let templates: Vec<kiln_api::TemplateInfo> = serde_json::from_value(templates.clone()).unwrap_or_else(|e| panic!("{e}: {templates}"));
    assert!(!templates.is_empty());
    for t in &templates {
        assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!({ "name": t.name, "built": false }));
    }
    // Errors: exactly {"error": {"code", "message"}}.
    let (status, v) = call(&st, "GET", "/v1/sandboxes/sbx-000000000000", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let e: kiln_api::ErrorBody = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&e).unwrap(), v);
    assert_eq!(e.error.code, "not_found");
}
