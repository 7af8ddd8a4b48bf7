//! What one route of the API is (the table itself is [`crate::routes::ROUTES`]).

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method (upper case).
    pub method: &'static str,
    /// Path with `{param}` placeholders.
    pub path: &'static str,
    /// OpenAPI operationId.
    pub op: &'static str,
    /// One line for the document.
    pub summary: &'static str,
}

/// A route.
pub(crate) const fn r(method: &'static str, path: &'static str, op: &'static str, summary: &'static str) -> Route {
    Route { method, path, op, summary }
}
