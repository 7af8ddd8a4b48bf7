//! The routing table, the OpenAPI document, error answers, and what each token scope may do,
//! without VMs (`oneshot` on the router, as in axum's testing example).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kiln_daemon::manager::{Limits, Manager};
use kiln_daemon::store::CiRunRecord;
use kiln_daemon::Scope;
use kiln_image::Home;
use kiln_server::{app, routes::ROUTES, AppState};
use tower::ServiceExt;

fn state(require_token: bool) -> (AppState, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let home = Home::at(t.path(), t.path().join("run"));
    let manager = Manager::open(home, Limits::default()).unwrap();
    (AppState::new(manager, require_token), t)
}

async fn call(st: &AppState, method: &str, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    call_as(st, None, method, uri, body).await
}

/// A request with `token` as its bearer token (if any); the status and the JSON answer.
async fn call_as(st: &AppState, token: Option<&str>, method: &str, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let (status, bytes) = raw_as(st, token, method, uri, body).await;
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// The same, with the answer's bytes.
async fn raw_as(st: &AppState, token: Option<&str>, method: &str, uri: &str, body: &str) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app(st.clone()).oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

fn message(v: &serde_json::Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

/// Every name and file in a folder, recursively (to show that nothing was made).
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        v.push(e.path().display().to_string());
        if e.file_type().unwrap().is_dir() {
            v.extend(tree(&e.path()));
        }
    }
    v.sort();
    v
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
    let secret = st.manager.store().create_token("ci", Scope::Untrusted).unwrap();
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

#[tokio::test]
async fn scopes_gate_templates_and_trusted_runs() {
    let (st, _t) = state(true);
    let store = st.manager.store();
    let (untrusted, trusted, admin) = (
        store.create_token("pr-bot", Scope::Untrusted).unwrap(),
        store.create_token("main-ci", Scope::Trusted).unwrap(),
        store.create_token("ops", Scope::Admin).unwrap(),
    );
    for token in [&untrusted, &trusted] {
        for (uri, what) in [("/v1/templates/tiny/build", "building a template"), ("/v1/templates/tiny/bake", "baking a template")] {
            let (status, v) = call_as(&st, Some(token), "POST", uri, "{}").await;
            assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{uri}: {v}");
            assert!(message(&v).contains(what) && message(&v).contains("admin scope") && message(&v).contains("kiln token create NAME --scope admin"), "{v}");
        }
    }
    // An admin gets past the scope (and is told the template is unknown).
    let (status, v) = call_as(&st, Some(&admin), "POST", "/v1/templates/no-such-template/build", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("unknown template"), "{v}");

    // A trusted run needs the trusted scope; a trusted token gets past it (to the next rule).
    let run = r#"{"repo": "https://example.com/r.git", "build": "true", "trusted": true, "out": "/tmp/x"}"#;
    let (status, v) = call_as(&st, Some(&untrusted), "POST", "/v1/ci/runs", run).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("trusted scope") && message(&v).contains("--scope trusted"), "{v}");
    let (status, v) = call_as(&st, Some(&trusted), "POST", "/v1/ci/runs", run).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("out names a folder"), "{v}");

    // Egress past the public internet (the host's loopback, its networks) is an admin's.
    for (method, uri, body) in [
        ("POST", "/v1/sandboxes", r#"{"template": "tiny", "allow": ["mirror.example.test:443", "127.0.0.1:7777"]}"#),
        ("POST", "/v1/ci/runs", r#"{"repo": "https://example.com/r.git", "build": "true", "allow": ["[::1]:22"]}"#),
        ("POST", "/v1/ci/runs", r#"{"repo": "http://10.0.0.5:8080/internal.git", "build": "true"}"#),
    ] {
        for token in [&untrusted, &trusted] {
            let (status, v) = call_as(&st, Some(token), method, uri, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri} {body}: {v}");
            assert!(message(&v).contains("non-public address") && message(&v).contains("admin scope"), "{v}");
        }
    }

    // Every refusal is in the audit log under the token's name.
    let denied: Vec<(String, String)> =
        store.events(None, 100).unwrap().into_iter().filter(|e| e.kind == "denied").map(|e| (e.actor, e.detail)).collect();
    assert_eq!(denied.iter().filter(|(a, _)| a == "pr-bot").count(), 6, "{denied:?}");
    assert_eq!(denied.iter().filter(|(a, _)| a == "main-ci").count(), 5, "{denied:?}");
    assert!(denied.iter().all(|(a, _)| a != "ops"), "{denied:?}");
}

#[tokio::test]
async fn templates_are_named_never_given_as_paths() {
    let (st, t) = state(true);
    let token = st.manager.store().create_token("pr-bot", Scope::Untrusted).unwrap();
    let admin = st.manager.store().create_token("ops", Scope::Admin).unwrap();
    // A template file whose build would leave a mark (its commands run as root at build time).
    let evil = tempfile::tempdir().unwrap();
    let file = evil.path().join("evil.toml");
    std::fs::write(&file, "run = [\"touch /kiln-template-ran\"]\n[rootfs]\nkind = \"busybox\"\nsize_mib = 64\n").unwrap();
    let home_before = tree(t.path());
    let path = file.display().to_string();
    for template in [path.as_str(), "evil.toml", "./evil", "../templates/tiny", "templates/tiny", "~/evil"] {
        for who in [&token, &admin] {
            let body = serde_json::json!({ "template": template }).to_string();
            let (status, v) = call_as(&st, Some(who), "POST", "/v1/sandboxes", &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{template}: {v}");
            assert!(message(&v).contains("looks like a path") && message(&v).contains("kiln template build"), "{template}: {v}");
            let ci = serde_json::json!({ "repo": "https://example.com/r.git", "build": "true", "template": template }).to_string();
            let (status, v) = call_as(&st, Some(who), "POST", "/v1/ci/runs", &ci).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{template}: {v}");
            assert!(message(&v).contains("looks like a path"), "{template}: {v}");
        }
    }
    // Nor through the build route's name, percent-encoded into one segment.
    let uri = format!("/v1/templates/{}/build", path.replace('/', "%2F"));
    let (status, v) = call_as(&st, Some(&admin), "POST", &uri, "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("looks like a path"), "{v}");
    // Nothing was built or written: the home and the template's folder are as they were.
    assert_eq!(tree(t.path()).into_iter().filter(|p| !p.contains("kiln.db")).collect::<Vec<_>>(), home_before.into_iter().filter(|p| !p.contains("kiln.db")).collect::<Vec<_>>());
    assert_eq!(tree(evil.path()), [file.display().to_string()]);
    assert!(!std::path::Path::new("/kiln-template-ran").exists());
    // A named template that is not built: building it is an admin's.
    let (status, v) = call_as(&st, Some(&token), "POST", "/v1/sandboxes", r#"{"template": "tiny"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("not built") && message(&v).contains("kiln template build tiny"), "{v}");
}

#[tokio::test]
async fn ci_runs_from_tokens_name_no_host_paths() {
    let (st, t) = state(true);
    let places = tempfile::tempdir().unwrap();
    let sh = |cmd: &str| assert!(std::process::Command::new("sh").arg("-c").arg(cmd).current_dir(places.path()).status().unwrap().success(), "{cmd}");
    // outer/ is a repository; the root is a folder inside it; elsewhere/ is a repository outside.
    sh("git init -q outer && mkdir -p outer/roots/plain && git init -q elsewhere && ln -s ../../elsewhere outer/roots/link");
    let root = std::fs::canonicalize(places.path().join("outer/roots")).unwrap();
    let st = st.with_repo_roots(vec![root.clone()]);
    let token = st.manager.store().create_token("pr-bot", Scope::Untrusted).unwrap();
    let run = |fields: serde_json::Value| {
        let mut body = serde_json::json!({ "repo": "https://example.com/r.git", "build": "true" });
        body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        body.to_string()
    };
    let elsewhere = places.path().join("elsewhere").display().to_string();
    let not_beneath = "is not a git repository beneath this daemon's repository roots";
    let cases = [
        (serde_json::json!({ "repo": elsewhere }), not_beneath),
        (serde_json::json!({ "repo": root.join("link").display().to_string() }), not_beneath),
        (serde_json::json!({ "repo": root.join("no-such-repo").display().to_string() }), not_beneath),
        (serde_json::json!({ "repo": root.join("../../elsewhere").display().to_string() }), not_beneath),
        // Beneath the root, but git finds the repository above it.
        (serde_json::json!({ "repo": root.join("plain").display().to_string() }), not_beneath),
        (serde_json::json!({ "repo": "/etc" }), not_beneath),
        (serde_json::json!({ "out": places.path().join("out").display().to_string() }), "out names a folder on the daemon's host"),
        (serde_json::json!({ "cache_keys": ["/etc/shadow"] }), "send cache_key_digests instead"),
        (serde_json::json!({ "cache_key_digests": ["/etc/shadow"] }), "not sha256:"),
    ];
    for (fields, want) in cases {
        let (status, v) = call_as(&st, Some(&token), "POST", "/v1/ci/runs", &run(fields.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields}: {v}");
        assert!(message(&v).contains(want), "{fields}: {v}");
    }
    // A daemon without roots takes no path from a token at all.
    let no_roots = st.clone().with_repo_roots(Vec::new());
    let (status, v) = call_as(&no_roots, Some(&token), "POST", "/v1/ci/runs", &run(serde_json::json!({ "repo": root.display().to_string() }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("--repo-root DIR"), "{v}");
    // Nothing was made: no out folder, no run folder of the daemon's.
    assert!(!places.path().join("out").exists());
    assert!(!t.path().join("ci-runs").exists());
    // The socket's owner still names host paths, absolute ones.
    let local = st.clone();
    let local = AppState { require_token: false, ..local };
    let (status, v) = call_as(&local, None, "POST", "/v1/ci/runs", &run(serde_json::json!({ "out": "relative/out" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("must be an absolute path"), "{v}");
}

#[tokio::test]
async fn ci_run_files_are_their_callers_and_never_follow_links() {
    let (st, t) = state(true);
    let store = st.manager.store();
    let alice = store.create_token("alice", Scope::Untrusted).unwrap();
    let bob = store.create_token("bob", Scope::Trusted).unwrap();
    let admin = store.create_token("ops", Scope::Admin).unwrap();
    let id = "ci-0123456789ab";
    store.put_ci_run(&CiRunRecord { id: id.into(), owner: "alice".into(), started_at: 1 }).unwrap();
    let run = t.path().join("ci-runs").join(id);
    std::fs::create_dir_all(run.join("build")).unwrap();
    std::fs::write(run.join("build/build.log"), "built\n").unwrap();
    std::fs::write(run.join("report.json"), "{}").unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "HOST-SECRET").unwrap();
    std::os::unix::fs::symlink(secret.path(), run.join("leak")).unwrap();
    std::os::unix::fs::symlink(secret.path().parent().unwrap(), run.join("up")).unwrap();
    // A run whose folder is itself a link.
    let linked = "ci-0000000000ff";
    store.put_ci_run(&CiRunRecord { id: linked.into(), owner: "alice".into(), started_at: 1 }).unwrap();
    std::os::unix::fs::symlink(&run, t.path().join("ci-runs").join(linked)).unwrap();

    let get = |token: &str, run: &str, path: &str| {
        let (st, token, uri) = (st.clone(), token.to_owned(), format!("/v1/ci/runs/{run}/files?path={path}"));
        async move { raw_as(&st, Some(&token), "GET", &uri, "").await }
    };
    for who in [&alice, &admin] {
        assert_eq!(get(who, id, "build/build.log").await, (StatusCode::OK, b"built\n".to_vec()));
        assert_eq!(get(who, id, "report.json").await, (StatusCode::OK, b"{}".to_vec()));
    }
    // Another token's run is not found, in the words of one that does not exist.
    let (status, theirs) = get(&bob, id, "build/build.log").await;
    let (_, missing) = get(&bob, "ci-ffffffffffff", "build/build.log").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace(id, "ID").replace("ci-ffffffffffff", "ID");
    assert_eq!(text(&theirs), text(&missing));
    for (path, status, want) in [
        ("../../kiln.db", StatusCode::BAD_REQUEST, "must be relative"),
        ("%2Fetc%2Fpasswd", StatusCode::BAD_REQUEST, "must be relative"),
        ("leak", StatusCode::BAD_REQUEST, "link"),
        ("up/passwd", StatusCode::BAD_REQUEST, "link"),
        ("build", StatusCode::BAD_REQUEST, "not a regular file"),
        ("no-such-file", StatusCode::NOT_FOUND, "has no file"),
        ("", StatusCode::BAD_REQUEST, "must be relative"),
    ] {
        let (got, body) = get(&alice, id, path).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(want) && !body.contains("HOST-SECRET"), "{path}: {body}");
    }
    assert_eq!(get(&alice, linked, "report.json").await.0, StatusCode::NOT_FOUND);
    // Reads are in the audit log under the reader's name.
    let reads: Vec<String> = store.events(None, 100).unwrap().into_iter().filter(|e| e.kind == "ci_file").map(|e| e.actor).collect();
    assert_eq!(reads, ["alice", "alice", "ops", "ops"]);
}

#[tokio::test]
async fn a_token_sees_no_sandbox_but_its_own() {
    let (st, _t) = state(true);
    let token = st.manager.store().create_token("pr-bot", Scope::Untrusted).unwrap();
    assert_eq!(call_as(&st, Some(&token), "GET", "/v1/sandboxes", "").await, (StatusCode::OK, serde_json::json!([])));
    // Without a VM, a missing sandbox stands for another's (the VM test in kiln-cli's
    // attacks_api.rs checks one that exists): every route answers 404, and never 403.
    let id = "sbx-000000000000";
    for (method, uri, body) in [
        ("GET", format!("/v1/sandboxes/{id}"), ""),
        ("DELETE", format!("/v1/sandboxes/{id}"), ""),
        ("POST", format!("/v1/sandboxes/{id}/extend"), r#"{"ttl_seconds": 60}"#),
        ("POST", format!("/v1/sandboxes/{id}/fork"), "{}"),
        ("GET", format!("/v1/sandboxes/{id}/egress"), ""),
        ("POST", format!("/v1/sandboxes/{id}/exec"), r#"{"cmd": "true"}"#),
        ("GET", format!("/v1/sandboxes/{id}/files?path=/etc/hostname"), ""),
        ("PUT", format!("/v1/sandboxes/{id}/files?path=/tmp/x"), "x"),
    ] {
        let (status, v) = call_as(&st, Some(&token), method, &uri, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {v}");
    }
}

/// A CI run's VMs (setup VM and one per cell) count against the daemon's limits like
/// sandboxes, and a matrix over the cap is refused before it is expanded: both before any VM
/// starts or any folder is made.
#[tokio::test]
async fn ci_runs_count_against_the_daemon_s_limits() {
    let t = tempfile::tempdir().unwrap();
    let home = Home::at(t.path(), t.path().join("run"));
    let manager = Manager::open(home, Limits { max_sandboxes: 2, ..Limits::default() }).unwrap();
    let st = AppState::new(manager, false);
    let body = |matrix: serde_json::Value| serde_json::json!({ "repo": "https://example.com/r.git", "build": "true", "template": "tiny", "matrix": matrix }).to_string();
    let (status, v) = call(&st, "POST", "/v1/ci/runs", &body(serde_json::json!({ "V": ["1", "2"] }))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(message(&v).contains("--max-sandboxes"), "{v}");
    let axes: serde_json::Map<String, serde_json::Value> = (0..30).map(|i| (format!("A{i}"), serde_json::json!(["0", "1"]))).collect();
    let (status, v) = call(&st, "POST", "/v1/ci/runs", &body(serde_json::Value::Object(axes))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("more than 64 cells"), "{v}");
    assert!(!t.path().join("ci-runs").exists(), "a run folder was made: {:?}", tree(t.path()));
}
