//! The OpenAPI 3 document, generated from the routing table ([`crate::routes::ROUTES`]): each
//! route's parameters, body and answer, and under `components` the schema of every `kiln-api`
//! type they name.

use kiln_api::ErrorBody;
use serde_json::{json, Map, Value};

use crate::route::{Answer, Body, Route, Shape};

/// The schemas named so far, by name.
#[derive(Default)]
struct Components(Map<String, Value>);

impl Components {
    /// A reference to `shape`, whose schema is added to the components.
    fn reference(&mut self, shape: &Shape) -> Value {
        self.0.entry(shape.name).or_insert_with(shape.schema);
        json!({ "$ref": format!("#/components/schemas/{}", shape.name) })
    }
}

fn request_body(body: &Body, components: &mut Components) -> Option<Value> {
    match body {
        Body::None => None,
        Body::Json { shape, required } => Some(json!({ "required": required, "content": { "application/json": { "schema": components.reference(shape) } } })),
        Body::Bytes => Some(json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } })),
    }
}

fn description(status: u16) -> &'static str {
    match status {
        201 => "Created",
        204 => "No content",
        _ => "OK",
    }
}

fn answer(status: u16, answer: &Answer, components: &mut Components) -> Value {
    let mut v = json!({ "description": description(status) });
    match answer {
        Answer::Empty => {}
        Answer::Json(shape) => v["content"] = json!({ "application/json": { "schema": components.reference(shape) } }),
        Answer::List(shape) => v["content"] = json!({ "application/json": { "schema": { "type": "array", "items": components.reference(shape) } } }),
        Answer::Object(what) => v["content"] = json!({ "application/json": { "schema": { "type": "object", "description": what } } }),
        Answer::Raw(media) => v["content"] = json!({ media.to_string(): { "schema": { "type": "string", "format": "binary" } } }),
        Answer::Events(events) => {
            let names: Vec<String> = events.iter().map(|(name, shape)| format!("`{name}` ({})", shape.name)).collect();
            v["description"] = format!("server-sent events, each with one JSON object as data: {}", names.join(", ")).into();
            v["content"] = json!({ "text/event-stream": { "schema": { "type": "string" } } });
            let refs: Map<String, Value> = events.iter().map(|(name, shape)| (name.to_string(), components.reference(shape))).collect();
            v["x-events"] = refs.into();
        }
    }
    v
}

/// The document.
pub fn document(routes: &[Route]) -> Value {
    let mut components = Components::default();
    let error = components.reference(&crate::route::shape::<ErrorBody>());
    let mut paths = Map::new();
    for route in routes {
        let mut params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        params.extend(route.query.iter().map(|q| json!({ "name": q.name, "in": "query", "required": q.required, "schema": { "type": q.ty } })));
        let mut responses = Map::new();
        responses.insert(route.status.to_string(), answer(route.status, &route.answer, &mut components));
        responses.insert("default".into(), json!({ "description": "Error", "content": { "application/json": { "schema": error } } }));
        let mut op = json!({ "operationId": route.op, "summary": route.summary, "parameters": params, "responses": responses });
        if let Some(b) = request_body(&route.body, &mut components) {
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
            "schemas": components.0,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;

    /// Every shape the table names, with the routes' bodies and answers.
    fn shapes() -> Vec<Shape> {
        let mut v = Vec::new();
        for r in ROUTES {
            if let Body::Json { shape, .. } = r.body {
                v.push(shape);
            }
            match r.answer {
                Answer::Json(s) | Answer::List(s) => v.push(s),
                Answer::Events(events) => v.extend(events.iter().map(|(_, s)| *s)),
                Answer::Empty | Answer::Object(_) | Answer::Raw(_) => {}
            }
        }
        v
    }

    #[test]
    fn every_named_type_is_in_the_components_once() {
        let doc = document(ROUTES);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in shapes() {
            assert_eq!(schemas.get(s.name), Some(&(s.schema)()), "{} is missing or has two schemas", s.name);
        }
        assert!(schemas.contains_key("Error"));
        // And every reference in the document resolves.
        let text = doc.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
    }

    #[test]
    fn bodies_answers_and_queries() {
        let doc = document(ROUTES);
        let op = |path: &str, method: &str| doc["paths"][path][method].clone();
        let create = op("/v1/sandboxes", "post");
        assert_eq!(create["requestBody"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/CreateSandbox");
        assert_eq!(create["requestBody"]["required"], true);
        assert_eq!(create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Sandbox");
        assert_eq!(op("/v1/sandboxes/{id}", "delete")["responses"]["204"]["description"], "No content");
        let write = op("/v1/sandboxes/{id}/files", "put");
        assert_eq!(write["requestBody"]["content"]["application/octet-stream"]["schema"]["format"], "binary");
        let names: Vec<&str> = write["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["id", "path", "mode"]);
        let stream = op("/v1/sandboxes/{id}/exec/stream", "post");
        assert_eq!(stream["responses"]["200"]["x-events"]["exit"]["$ref"], "#/components/schemas/ExecExit");
        assert_eq!(op("/v1/ci/runs", "post")["requestBody"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/CiRunRequest");
    }
}
