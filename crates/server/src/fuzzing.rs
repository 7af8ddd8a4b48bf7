//! Entry points for the fuzz targets (`make fuzz`): the JSON bodies the routes parse, taken
//! from the routing table.

use crate::error::ApiResult;
use crate::route::{Body, Route};
use crate::routes::ROUTES;

/// The routes that take a JSON body.
pub fn json_routes() -> impl Iterator<Item = &'static Route> {
    ROUTES.iter().filter(|r| matches!(r.body, Body::Json { .. }))
}

/// Parses `body` as `route` does, discarding the value; `Ok` for a route without a JSON body.
pub fn parse_body(route: &Route, body: &[u8]) -> ApiResult<()> {
    match route.body {
        Body::Json { shape, .. } => (shape.parse)(body),
        Body::None | Body::Bytes => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_or_fail_cleanly() {
        let names: Vec<&str> = json_routes().map(|r| r.op).collect();
        assert_eq!(names, ["buildTemplate", "setPool", "ciRun", "createSandbox", "extendSandbox", "forkSandbox", "exec", "execStream"]);
        let create = json_routes().find(|r| r.op == "createSandbox").unwrap();
        assert!(parse_body(create, b"{\"template\":\"tiny\"}").is_ok());
        assert!(parse_body(create, b"{\"template\":\"tiny\",\"bogus\":1}").is_err());
        for route in json_routes() {
            assert!(parse_body(route, b"\xff\x00{").is_err(), "{}", route.op);
        }
    }
}
