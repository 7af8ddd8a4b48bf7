//! JSON schemas of the wire types, for the OpenAPI document.

use serde_json::Value;

/// A wire type with a name and a JSON schema (OpenAPI 3.0's dialect).
pub trait Schema {
    /// Its name under `#/components/schemas`.
    const NAME: &'static str;
    /// Its schema, self-contained (nested types are written out, not referenced).
    fn schema() -> Value;
}
