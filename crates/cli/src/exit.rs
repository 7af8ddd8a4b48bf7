//! Exit codes and how errors map onto them (documented in `kiln --help`).

use kiln_core::{Fault, SandboxError};

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
    eprintln!("kiln: {}", e.with_causes());
    code_for(e)
}

/// The exit code for an error.
pub fn code_for(e: &SandboxError) -> i32 {
    match e.fault() {
        Fault::GuestNotFound => NOT_FOUND,
        Fault::GuestDenied => NOT_EXECUTABLE,
        f if f.is_user_error() => USAGE,
        _ => KILN_FAILED,
    }
}
