//! What one route of the API is: method and path, its handler, and the shapes of what it takes
//! and answers (the table itself is [`crate::routes::ROUTES`]). The router, the OpenAPI
//! document and the fuzz targets are all built from these entries.

use axum::routing::MethodRouter;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{parse_json, ApiResult};
use crate::AppState;

/// A `kiln-api` type as the table names it: its schema, and how the server parses it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Its name under `#/components/schemas`.
    pub name: &'static str,
    /// Its JSON schema.
    pub schema: fn() -> Value,
    /// Parses a body as this type (as the handlers do), discarding the value.
    pub parse: fn(&[u8]) -> ApiResult<()>,
}

/// The shape of `T`.
pub const fn shape<T: kiln_api::Schema + DeserializeOwned>() -> Shape {
    Shape { name: T::NAME, schema: T::schema, parse: parse_as::<T> }
}

fn parse_as<T: DeserializeOwned>(body: &[u8]) -> ApiResult<()> {
    parse_json::<T>(body).map(drop)
}

/// What a route takes in its body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// Nothing (a body is ignored).
    None,
    /// JSON of this shape. `required`: whether the document says a body must be sent (an
    /// empty body is read as `{}` either way).
    Json {
        /// The type.
        shape: Shape,
        /// Marked required in the document.
        required: bool,
    },
    /// Raw bytes (`application/octet-stream`), streamed.
    Bytes,
}

/// A JSON body of type `T` that must be sent.
pub const fn json<T: kiln_api::Schema + DeserializeOwned>() -> Body {
    Body::Json { shape: shape::<T>(), required: true }
}

/// A JSON body of type `T` that may be left out.
pub const fn json_optional<T: kiln_api::Schema + DeserializeOwned>() -> Body {
    Body::Json { shape: shape::<T>(), required: false }
}

/// What a route answers with on success.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// No body.
    Empty,
    /// JSON of this shape.
    Json(Shape),
    /// A JSON list of this shape.
    List(Shape),
    /// A JSON object whose type is not `kiln-api`'s (described in words).
    Object(&'static str),
    /// Bytes of this media type.
    Raw(&'static str),
    /// Server-sent events: each event's name and the shape of its data.
    Events(&'static [(&'static str, Shape)]),
}

/// An answer of type `T`.
pub const fn one<T: kiln_api::Schema + DeserializeOwned>() -> Answer {
    Answer::Json(shape::<T>())
}

/// An answer that is a list of `T`.
pub const fn list<T: kiln_api::Schema + DeserializeOwned>() -> Answer {
    Answer::List(shape::<T>())
}

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// Whether it must be given.
    pub required: bool,
    /// JSON schema type (`string`, `integer`, `boolean`).
    pub ty: &'static str,
}

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
    /// Its handler, for this method.
    pub handler: fn() -> MethodRouter<AppState>,
    /// Query parameters.
    pub query: &'static [Param],
    /// What it takes.
    pub body: Body,
    /// Status on success.
    pub status: u16,
    /// What it answers with on success.
    pub answer: Answer,
}

/// A route without query or body answering 200 with no body; see [`Route::query`],
/// [`Route::takes`] and [`Route::answers`].
pub(crate) const fn r(method: &'static str, path: &'static str, op: &'static str, summary: &'static str, handler: fn() -> MethodRouter<AppState>) -> Route {
    Route { method, path, op, summary, handler, query: &[], body: Body::None, status: 200, answer: Answer::Empty }
}

impl Route {
    /// With these query parameters.
    pub(crate) const fn query(self, query: &'static [Param]) -> Route {
        Route { query, ..self }
    }

    /// Taking this body.
    pub(crate) const fn takes(self, body: Body) -> Route {
        Route { body, ..self }
    }

    /// Answering `status` with this on success.
    pub(crate) const fn answers(self, status: u16, answer: Answer) -> Route {
        Route { status, answer, ..self }
    }
}
