//! The JSON of every wire type, pinned against literal strings: what the server sends, the
//! client reads and the Python SDK expects must not change by accident.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::*;

/// Parses `lit` as `T`, writes it back, and checks nothing was lost, added or changed; when
/// `full` (every field present), also that the schema lists exactly those fields.
fn pin<T: Serialize + DeserializeOwned + Schema>(lit: &str, full: bool) -> T {
    let want: Value = serde_json::from_str(lit).unwrap();
    let t: T = serde_json::from_str(lit).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(serde_json::to_value(&t).unwrap(), want, "{} does not round-trip", T::NAME);
    if full {
        let schema = T::schema();
        let mut documented: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let mut sent: Vec<&String> = want.as_object().unwrap().keys().collect();
        documented.sort();
        sent.sort();
        assert_eq!(documented, sent, "{}'s schema and its JSON disagree", T::NAME);
    }
    t
}

fn json<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

#[test]
fn sandbox() {
    let s: SandboxInfo = pin(
        r#"{"id":"sbx-0123456789ab","template":"tiny","state":"running","created_at":1795965982,"deadline":1795966282,
            "cpus":1,"memory_mib":256,"mode":"restored","parent":null}"#,
        true,
    );
    assert_eq!(s.state, SandboxState::Running);
    pin::<SandboxInfo>(
        r#"{"id":"sbx-b","template":"tiny","state":"paused","created_at":1,"deadline":2,"cpus":2,"memory_mib":512,"mode":"forked","parent":"sbx-a"}"#,
        true,
    );
    for st in SandboxState::ALL {
        assert_eq!(json(&st), Value::String(st.as_str().into()));
        assert_eq!(SandboxState::parse(st.as_str()), Some(st));
        assert_eq!(format!("{st:<9}|"), format!("{:<9}|", st.as_str()));
    }
    assert!(serde_json::from_str::<SandboxState>(r#""Running""#).is_err());
}

#[test]
fn create_extend_fork() {
    // What the client sends: absent options and an empty allowlist are left out.
    let c = CreateSandbox { template: "tiny".into(), ttl_seconds: Some(300), ..Default::default() };
    assert_eq!(json(&c), serde_json::json!({ "template": "tiny", "ttl_seconds": 300, "env": {}, "forkable": false }));
    pin::<CreateSandbox>(
        r#"{"template":"tiny","image":"127.0.0.1:5000/a:1","ttl_seconds":300,"cpus":2,"memory_mib":512,"env":{"K":"V"},"forkable":true,"allow":["mirror.example.test:443"]}"#,
        true,
    );
    // What the server takes: only the template is required; unknown fields are refused.
    let c: CreateSandbox = serde_json::from_str(r#"{"template":"tiny"}"#).unwrap();
    assert_eq!(c, CreateSandbox { template: "tiny".into(), ..Default::default() });
    assert!(serde_json::from_str::<CreateSandbox>(r#"{"template":"tiny","bogus":1}"#).unwrap_err().to_string().contains("bogus"));
    // Or an image instead (the server refuses neither or both).
    let c: CreateSandbox = serde_json::from_str(r#"{"image":"127.0.0.1:5000/team/app:1"}"#).unwrap();
    assert_eq!((c.template.as_str(), c.image.as_deref()), ("", Some("127.0.0.1:5000/team/app:1")));

    assert_eq!(pin::<ExtendSandbox>(r#"{"ttl_seconds":600}"#, true).ttl_seconds, 600);
    assert!(serde_json::from_str::<ExtendSandbox>("{}").is_err());
    assert_eq!(pin::<ForkSandbox>(r#"{"count":3}"#, true).count, 3);
    assert_eq!(serde_json::from_str::<ForkSandbox>("{}").unwrap().count, 1);
    let f: Forked = pin(
        r#"{"sandboxes":[{"id":"sbx-c","template":"tiny","state":"running","created_at":1,"deadline":2,"cpus":1,"memory_mib":256,"mode":"forked","parent":"sbx-a"}]}"#,
        true,
    );
    assert_eq!(f.sandboxes[0].parent.as_deref(), Some("sbx-a"));
}

#[test]
fn exec() {
    assert_eq!(json(&ExecRequest::shell("make test").timeout(600.0)), serde_json::json!({ "cmd": "make test", "env": {}, "timeout_seconds": 600.0 }));
    assert_eq!(json(&ExecRequest::argv(vec!["make".into(), "test".into()])), serde_json::json!({ "argv": ["make", "test"], "env": {} }));
    pin::<ExecRequest>(
        r#"{"cmd":"make test","argv":["make","test"],"env":{"K":"V"},"cwd":"/src","timeout_seconds":60.5,"stdin":"text","max_output_bytes":1048576}"#,
        true,
    );
    assert_eq!(serde_json::from_str::<ExecRequest>("{}").unwrap(), ExecRequest::default());
    assert!(serde_json::from_str::<ExecRequest>(r#"{"command":"x"}"#).is_err());

    let r: ExecResult = pin(
        r#"{"stdout":"hi\n","stderr":"","exit_code":0,"timed_out":false,"duration_ms":12,"stdout_truncated":false,"stderr_truncated":true}"#,
        true,
    );
    assert!(r.stderr_truncated);
    // A daemon from before the truncation flags.
    let old: ExecResult = serde_json::from_str(r#"{"stdout":"","stderr":"","exit_code":124,"timed_out":true,"duration_ms":5}"#).unwrap();
    assert!(!old.stdout_truncated && old.timed_out);

    // The stream's events.
    pin::<OutputChunk>(r#"{"b64":"aGVsbG8K"}"#, true);
    pin::<ExecExit>(r#"{"exit_code":0,"timed_out":false,"duration_ms":12}"#, true);
    pin::<ErrorDetail>(r#"{"code":"sandbox_failed","message":"the VM exited"}"#, true);
}

#[test]
fn errors_and_health() {
    let e: ErrorBody = pin(r#"{"error":{"code":"not_found","message":"no sandbox sbx-1"}}"#, true);
    assert_eq!(e, ErrorBody::new("not_found", "no sandbox sbx-1"));
    assert_eq!(json(&Health::ok()), serde_json::json!({ "status": "ok" }));
    pin::<Health>(r#"{"status":"ok"}"#, true);
}

#[test]
fn files() {
    let f: FileInfo = pin(r#"{"name":"main.rs","kind":"file","size":120,"mode":420,"mtime":1795965982}"#, true);
    assert_eq!(f.kind, FileKind::File);
    for k in FileKind::ALL {
        assert_eq!(json(&k), Value::String(k.as_str().into()));
    }
}

#[test]
fn templates() {
    pin::<TemplateInfo>(
        r#"{"name":"tiny","digest":"ab12","size_bytes":1048576,"built_at":1795965982,"cpus":1,"memory_mib":256,"description":"busybox","built":true}"#,
        true,
    );
    // A known template that was not built: nothing but its name.
    assert_eq!(json(&TemplateInfo::unbuilt("base")), serde_json::json!({ "name": "base", "built": false }));
    pin::<TemplateInfo>(r#"{"name":"base","built":false}"#, false);
    assert!(!serde_json::from_str::<BuildTemplate>("{}").unwrap().force);
    pin::<BuildTemplate>(r#"{"force":true}"#, true);
    pin::<Baked>(r#"{"template":"tiny","snapshot":"tiny-0123abcd","bake_ms":900}"#, true);
}

#[test]
fn egress() {
    let l: EgressLog = pin(
        r#"{"attempts":[{"method":"CONNECT","host":"example.com","port":443,"allowed":true,"reason":null,"bytes_up":1,"bytes_down":2,
            "started_unix_ms":3,"duration_ms":4}],"dropped":0}"#,
        true,
    );
    pin::<EgressAttempt>(&serde_json::to_string(&l.attempts[0]).unwrap(), false);
    // Sent through an upstream proxy: its host and port, nothing else of it.
    let a: EgressAttempt = pin(
        r#"{"method":"CONNECT","host":"build-mirror.invalid","port":443,"allowed":true,"reason":null,"bytes_up":1,"bytes_down":2,
            "started_unix_ms":3,"duration_ms":4,"via":"proxy.corp.invalid:3128"}"#,
        true,
    );
    assert_eq!(a.via.as_deref(), Some("proxy.corp.invalid:3128"));
    assert_eq!(json(&EgressLog::default()), serde_json::json!({ "attempts": [], "dropped": 0 }));
}

#[test]
fn ci_run() {
    let r: CiRunRequest = serde_json::from_str(r#"{"repo":"/src","build":"make"}"#).unwrap();
    assert_eq!((r.git_ref.as_str(), r.timeout_seconds, r.template.as_str(), r.parallel, r.out), ("HEAD", 1800, "base", None, None));
    assert!(r.cache_key_digests.is_empty());
    pin::<CiRunRequest>(
        r#"{"repo":"/src","ref":"main","build":"make","setup":null,"timeout_seconds":60,"template":"base","secrets":{"TOKEN":"x"},
            "setup_secrets":false,"allow":["mirror.example.test"],"cache_keys":["/src/Cargo.lock"],"cache_key_digests":[],"trusted":true,
            "matrix":{"rust":["1.87","stable"]},"artifacts":["target/*.tar"],"out":"/out","parallel":2}"#,
        false,
    );
    // What a token sends: a URL, digests of the cache key files, no out folder.
    pin::<CiRunRequest>(
        r#"{"repo":"https://example.com/r.git","ref":"HEAD","build":"make","setup":"make deps","timeout_seconds":60,"template":"base","secrets":{},
            "setup_secrets":false,"allow":[],"cache_keys":[],"cache_key_digests":["sha256:0000000000000000000000000000000000000000000000000000000000000000"],
            "trusted":false,"matrix":{},"artifacts":[],"out":null,"parallel":null}"#,
        false,
    );
    assert!(serde_json::from_str::<CiRunRequest>(r#"{"repo":"/src","build":"make","out":"/out","git_ref":"x"}"#).is_err());
    // Rebuilds, when asked for.
    pin::<CiRunRequest>(
        r#"{"repo":"/src","ref":"HEAD","build":"make","setup":null,"timeout_seconds":60,"template":"base","secrets":{},
            "setup_secrets":false,"allow":[],"cache_keys":[],"cache_key_digests":[],"trusted":false,"matrix":{},"artifacts":["app"],
            "out":null,"parallel":null,"rebuild":2,"require_reproducible":true}"#,
        true,
    );
    assert_eq!((r.rebuild, r.require_reproducible), (None, false));
}
