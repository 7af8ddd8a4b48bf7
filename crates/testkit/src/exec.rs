//! Running a command in a test sandbox and collecting what it printed.

use kiln_core::{ExecOutcome, ExecRequest, Output, Sandbox, SandboxError};

/// What one exec printed, and how it ended.
#[derive(Debug)]
pub struct Collected {
    /// Its stdout (invalid UTF-8 replaced).
    pub stdout: String,
    /// Its stderr (invalid UTF-8 replaced).
    pub stderr: String,
    /// The chunks as they came, `'o'` for stdout and `'e'` for stderr.
    pub log: Vec<(char, String)>,
    /// How the exec ended.
    pub result: Result<ExecOutcome, SandboxError>,
}

impl Collected {
    /// The outcome; panics, with what the command printed, when the exec failed.
    pub fn outcome(&self) -> &ExecOutcome {
        match &self.result {
            Ok(o) => o,
            Err(e) => panic!("exec failed: {e}\nstdout: {}\nstderr: {}", self.stdout, self.stderr),
        }
    }

    /// Itself, once checked that the exec did not fail (panics as [`Collected::outcome`] does).
    pub fn checked(self) -> Collected {
        self.outcome();
        self
    }

    /// The exit code; panics as [`Collected::outcome`] does.
    pub fn exit_code(&self) -> i32 {
        self.outcome().exit_code()
    }
}

/// Runs `req` in `sbx` and collects its output.
pub async fn exec(sbx: &Sandbox, req: ExecRequest) -> Collected {
    let (mut out, mut err, mut log) = (Vec::new(), Vec::new(), Vec::new());
    let result = sbx
        .exec(req, |o| match o {
            Output::Stdout(d) => {
                out.extend_from_slice(d);
                log.push(('o', String::from_utf8_lossy(d).into_owned()));
            }
            Output::Stderr(d) => {
                err.extend_from_slice(d);
                log.push(('e', String::from_utf8_lossy(d).into_owned()));
            }
        })
        .await;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Collected { stdout: text(out), stderr: text(err), log, result }
}

/// Runs shell `script` in `sbx` (no timeout of its own) and collects its output; panics, with
/// that output, when the exec fails (the script's own exit code is no failure).
pub async fn sh(sbx: &Sandbox, script: &str) -> Collected {
    exec(sbx, ExecRequest::shell(script)).await.checked()
}
