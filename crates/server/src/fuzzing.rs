//! Entry points for the fuzz targets (`make fuzz`): the request bodies every route parses.

use crate::error::{parse_json, ApiResult};

/// The routes with a JSON body.
pub const OPS: [&str; 6] = ["createSandbox", "extendSandbox", "forkSandbox", "exec", "buildTemplate", "ciRun"];

/// Parses `body` as route `op` would, discarding the result.
pub fn parse_body(op: &str, body: &[u8]) -> ApiResult<()> {
    match op {
        "createSandbox" => parse_json::<kiln_api::CreateSandbox>(body).map(drop),
        "extendSandbox" => parse_json::<kiln_api::ExtendSandbox>(body).map(drop),
        "forkSandbox" => parse_json::<kiln_api::ForkSandbox>(body).map(drop),
        "exec" => parse_json::<kiln_api::ExecRequest>(body).map(drop),
        "buildTemplate" => parse_json::<kiln_api::BuildTemplate>(body).map(drop),
        "ciRun" => parse_json::<kiln_api::CiRunRequest>(body).map(drop),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_or_fail_cleanly() {
        assert!(parse_body("createSandbox", b"{\"template\":\"tiny\"}").is_ok());
        for op in OPS {
            assert!(parse_body(op, b"\xff\x00{").is_err());
        }
    }
}
