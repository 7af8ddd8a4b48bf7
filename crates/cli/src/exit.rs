//! Exit codes and how errors map onto them (documented in `kiln --help`).

use kiln_core::SandboxError;
use kiln_proto::ErrorKind;

/// Bad usage or input.
pub const USAGE: i32 = 2;
/// kiln itself failed.
pub const KILN_FAILED: i32 = 125;
/// The command could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// Interrupted.
pub const INTERRUPTED: i32 = 130;

/// Prints `kiln: <error>` (with its causes) and returns the exit code for it.
pub fn report(e: &SandboxError) -> i32 {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    eprintln!("kiln: {msg}");
    code_for(e)
}

/// The exit code for an error.
pub fn code_for(e: &SandboxError) -> i32 {
    match e {
        SandboxError::Guest { kind: ErrorKind::NotFound, .. } => NOT_FOUND,
        SandboxError::Guest { kind: ErrorKind::PermissionDenied, .. } => NOT_EXECUTABLE,
        e if e.is_user_error() => USAGE,
        _ => KILN_FAILED,
    }
}
