//! The OpenAPI 3 document, generated from the routing table ([`crate::routes::ROUTES`]).

use serde_json::{json, Map, Value};

use crate::route::Route;

fn schemas() -> Value {
    json!({
        "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": {
            "code": { "type": "string" }, "message": { "type": "string" } } } } },
        "Sandbox": { "type": "object", "properties": {
            "id": { "type": "string" }, "template": { "type": "string" },
            "state": { "type": "string", "enum": ["creating", "running", "paused", "stopping", "stopped", "failed"] },
            "created_at": { "type": "integer" }, "deadline": { "type": "integer" },
            "cpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
            "mode": { "type": "string", "enum": ["restored", "cold", "forked"] },
            "parent": { "type": "string", "nullable": true } } },
        "CreateSandbox": { "type": "object", "required": ["template"], "properties": {
            "template": { "type": "string" }, "ttl_seconds": { "type": "integer", "minimum": 1 },
            "cpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
            "env": { "type": "object", "additionalProperties": { "type": "string" } },
            "forkable": { "type": "boolean" },
            "allow": { "type": "array", "items": { "type": "string" }, "description": "egress allowlist, HOST[:PORT]" } } },
        "ExecRequest": { "type": "object", "properties": {
            "cmd": { "type": "string" }, "argv": { "type": "array", "items": { "type": "string" } },
            "env": { "type": "object", "additionalProperties": { "type": "string" } },
            "cwd": { "type": "string" }, "timeout_seconds": { "type": "number" }, "stdin": { "type": "string" }, "max_output_bytes": { "type": "integer", "minimum": 1 } } },
        "ExecResult": { "type": "object", "properties": {
            "stdout": { "type": "string" }, "stderr": { "type": "string" }, "exit_code": { "type": "integer" },
            "timed_out": { "type": "boolean" }, "duration_ms": { "type": "integer" },
            "stdout_truncated": { "type": "boolean" }, "stderr_truncated": { "type": "boolean" } } },
        "FileInfo": { "type": "object", "properties": {
            "name": { "type": "string" }, "kind": { "type": "string", "enum": ["file", "dir", "symlink", "other"] },
            "size": { "type": "integer" }, "mode": { "type": "integer" }, "mtime": { "type": "integer" } } }
    })
}

fn body_for(op: &str) -> Option<Value> {
    let schema = |name: &str| json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{name}") } } } });
    match op {
        "createSandbox" => Some(schema("CreateSandbox")),
        "ciRun" => Some(json!({ "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["repo", "build", "out"], "properties": {
            "repo": { "type": "string" }, "ref": { "type": "string" }, "build": { "type": "string" }, "setup": { "type": "string" },
            "timeout_seconds": { "type": "integer" }, "template": { "type": "string" },
            "secrets": { "type": "object", "additionalProperties": { "type": "string" } }, "setup_secrets": { "type": "boolean" },
            "allow": { "type": "array", "items": { "type": "string" } }, "cache_keys": { "type": "array", "items": { "type": "string" } },
            "trusted": { "type": "boolean" }, "matrix": { "type": "object", "additionalProperties": { "type": "array", "items": { "type": "string" } } },
            "artifacts": { "type": "array", "items": { "type": "string" } }, "out": { "type": "string" }, "parallel": { "type": "integer" } } } } } })),
        "exec" | "execStream" => Some(schema("ExecRequest")),
        "extendSandbox" => Some(json!({ "content": { "application/json": { "schema": { "type": "object", "properties": { "ttl_seconds": { "type": "integer" } } } } } })),
        "forkSandbox" => Some(json!({ "content": { "application/json": { "schema": { "type": "object", "properties": { "count": { "type": "integer" } } } } } })),
        "writeFile" => Some(json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } })),
        _ => None,
    }
}

fn query_for(op: &str) -> Vec<Value> {
    let q = |name: &str, required: bool, ty: &str| json!({ "name": name, "in": "query", "required": required, "schema": { "type": ty } });
    match op {
        "readFile" | "listFiles" | "statFile" => vec![q("path", true, "string")],
        "writeFile" | "mkdir" => vec![q("path", true, "string"), q("mode", false, "integer")],
        "removeFile" => vec![q("path", true, "string"), q("recursive", false, "boolean")],
        _ => vec![],
    }
}

/// The document.
pub fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let mut params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        params.extend(query_for(route.op));
        let mut op = json!({
            "operationId": route.op,
            "summary": route.summary,
            "parameters": params,
            "responses": {
                "200": { "description": "OK" },
                "default": { "description": "Error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if let Some(b) = body_for(route.op) {
            op["requestBody"] = b;
        }
        let item = paths.entry(route.path.to_owned()).or_insert_with(|| json!({}));
        item[route.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "kiln", "version": env!("CARGO_PKG_VERSION"), "description": "Disposable microVMs for untrusted CI builds. See docs/api.md." },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    })
}
