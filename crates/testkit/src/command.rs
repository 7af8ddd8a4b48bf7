//! The `kiln` command of a test: the binary cargo built, pointed at a test home.

use std::ffi::OsStr;
use std::process::Command;

use crate::TestHome;

/// A `kiln` command for binary `bin` with `th`'s environment (see [`TestHome::env`]) set.
/// Only the kiln-cli crate's own tests know where cargo put the binary
/// (`env!("CARGO_BIN_EXE_kiln")`), which [`kiln!`](crate::kiln!) passes for them.
pub fn kiln(bin: impl AsRef<OsStr>, th: &TestHome) -> Command {
    let mut c = Command::new(bin);
    c.envs(th.env());
    c
}

/// A `std::process::Command` of the `kiln` binary that cargo built for this test crate:
/// `kiln!()` bare, `kiln!(&th)` with test home `th`'s environment (see [`kiln()`](crate::kiln())).
/// Usable in the kiln-cli crate's integration tests, where `CARGO_BIN_EXE_kiln` is set.
#[macro_export]
macro_rules! kiln {
    () => {
        ::std::process::Command::new(::std::env!("CARGO_BIN_EXE_kiln"))
    };
    ($th:expr) => {
        $crate::kiln(::std::env!("CARGO_BIN_EXE_kiln"), $th)
    };
}
