//! Templates: the listing, and the bodies of build and bake.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// A template as `GET /v1/templates` and the build answer show it. A known template that was
/// not built has only `name` and `built` (false).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// Name.
    pub name: String,
    /// Digest of its root filesystem image (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Size of that image in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// When it was built, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_at: Option<u64>,
    /// Default vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Default memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// One line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether its root filesystem is built.
    pub built: bool,
}

impl TemplateInfo {
    /// A known template that is not built.
    pub fn unbuilt(name: impl Into<String>) -> TemplateInfo {
        TemplateInfo { name: name.into(), digest: None, size_bytes: None, built_at: None, cpus: None, memory_mib: None, description: None, built: false }
    }
}

/// Body of `POST /v1/templates/{name}/build` (may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildTemplate {
    /// Build again even if it is up to date.
    #[serde(default)]
    pub force: bool,
}

/// Answer of `POST /v1/templates/{name}/bake`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baked {
    /// The template.
    pub template: String,
    /// The snapshot's name.
    pub snapshot: String,
    /// How long baking took (0 when an up-to-date snapshot was already there).
    pub bake_ms: u64,
}

impl Schema for TemplateInfo {
    const NAME: &'static str = "Template";
    fn schema() -> Value {
        json!({ "type": "object", "required": ["name", "built"], "properties": {
            "name": { "type": "string" }, "digest": { "type": "string" }, "size_bytes": { "type": "integer" },
            "built_at": { "type": "integer" }, "cpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
            "description": { "type": "string" }, "built": { "type": "boolean" } } })
    }
}

impl Schema for BuildTemplate {
    const NAME: &'static str = "BuildTemplate";
    fn schema() -> Value {
        json!({ "type": "object", "properties": { "force": { "type": "boolean" } } })
    }
}

impl Schema for Baked {
    const NAME: &'static str = "Baked";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "template": { "type": "string" }, "snapshot": { "type": "string" }, "bake_ms": { "type": "integer" } } })
    }
}
