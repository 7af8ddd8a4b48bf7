//! `kiln ci run --step-summary FILE`: the run as Markdown, appended to a CI system's job
//! summary (GitHub's `$GITHUB_STEP_SUMMARY`). Cell names come from the caller, but artifact
//! paths, differences and egress hosts come from the guest: every string is escaped so that it
//! renders as text, never as Markdown or HTML.

use std::io::Write as _;
use std::path::Path;

use kiln_ci::Report;

/// Most denied egress attempts listed.
const DENIALS_SHOWN: usize = 20;
/// Most differences listed per cell.
const DIFFERENCES_SHOWN: usize = 20;

/// Appends the summary of `r` to `file` (created if absent; a link is not followed).
pub fn append(file: &Path, r: &Report) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().append(true).create(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(file)?;
    f.write_all(markdown(r).as_bytes())
}

/// Text as Markdown that shows exactly that text: one line, no markup, no HTML.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().take(300) {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '|' | '!' | '~' | '{' | '}' | '+' | '-' | '.' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The summary.
pub fn markdown(r: &Report) -> String {
    let mut m = String::new();
    let commit = if r.commit.is_empty() { "?" } else { &r.commit[..r.commit.len().min(12)] };
    m += &format!("### kiln ci: {} @ {} ({})\n\n", text(&r.repo), text(&r.git_ref), text(commit));
    if let Some(code) = r.setup_exit_code {
        m += &format!("Setup: exit {code}\n\n");
    }
    let rebuilding = r.cells.iter().any(|c| c.reproducible.is_some());
    m += if rebuilding { "| Cell | Exit | Time | Artifacts | Reproducible |\n|---|---|---|---|---|\n" } else { "| Cell | Exit | Time | Artifacts |\n|---|---|---|---|\n" };
    for c in &r.cells {
        let exit = if c.timed_out { format!("{} (timed out)", c.exit_code) } else { c.exit_code.to_string() };
        let exit = match &c.error { Some(e) => format!("{exit}: {}", text(e)), None => exit };
        m += &format!("| {} | {} | {:.1} s | {} |", text(&c.name), exit, c.duration_ms as f64 / 1000.0, c.artifacts.len());
        if rebuilding {
            let builds = c.rebuilds.len() + 1;
            m += &match c.reproducible {
                Some(true) => format!(" yes ({builds} builds) |"),
                Some(false) => format!(" **no** ({} of {builds} builds agree) |", c.agreed.unwrap_or(0)),
                None => " |".into(),
            };
        }
        m += "\n";
    }
    for c in r.cells.iter().filter(|c| !c.differences.is_empty()) {
        m += &format!("\nNot reproducible in cell {}:\n", text(&c.name));
        for d in c.differences.iter().take(DIFFERENCES_SHOWN) {
            m += &format!("- {} differs", text(&d.path));
            if let Some(f) = &d.first_difference {
                m += &format!(": {}", text(f));
            }
            m += "\n";
        }
    }
    let attempts: Vec<kiln_api::EgressAttempt> = serde_json::from_value(r.egress["attempts"].clone()).unwrap_or_default();
    let denied: Vec<_> = attempts.iter().filter(|a| !a.allowed).collect();
    m += &format!("\nEgress: {} attempt(s), {} denied\n", attempts.len(), denied.len());
    for a in denied.iter().take(DENIALS_SHOWN) {
        m += &format!("- denied {}:{}{}\n", text(&a.host), a.port, a.reason.as_ref().map(|w| format!(": {}", text(w))).unwrap_or_default());
    }
    m += &format!("\nExit code: {}\n\n", r.exit_code);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_strings_render_as_text() {
        let t = text("<script>alert(1)</script> | **x** [a](b)\n`c`");
        assert!(!t.contains('<') && !t.contains('\n'), "{t}");
        assert_eq!(t, "&lt;script&gt;alert\\(1\\)&lt;/script&gt; \\| \\*\\*x\\*\\* \\[a\\]\\(b\\) \\`c\\`");
    }

    #[test]
    fn a_report_becomes_a_table() {
        let report: Report = serde_json::from_value(serde_json::json!({
            "repo": "/src/app", "git_ref": "HEAD", "commit": "0123456789abcdef", "template": "base", "setup": null,
            "setup_exit_code": null, "build": "make", "cache": null, "exit_code": 3, "duration_ms": 10,
            "egress": { "attempts": [{ "method": "CONNECT", "host": "evil.invalid", "port": 443, "allowed": false,
                "reason": "not in the allowlist", "bytes_up": 0, "bytes_down": 0, "started_unix_ms": 0, "duration_ms": 0 }], "dropped": 0 },
            "cells": [{ "name": "default", "env": {}, "exit_code": 0, "timed_out": false, "duration_ms": 1500, "log": "build/build.log",
                "artifacts": [{ "path": "app", "size": 1, "sha256": "00" }], "provenance": null, "error": null,
                "reproducible": false, "agreed": 1,
                "differences": [{ "path": "app", "sha256": ["00", "11"], "first_difference": "line 1: build 1 has \"<b>\"" }],
                "rebuilds": [{ "exit_code": 0, "timed_out": false, "duration_ms": 1, "log": "build/rebuild-2/build.log", "artifacts": [], "error": null }] }]
        }))
        .unwrap();
        let m = markdown(&report);
        assert!(m.contains("| default | 0 | 1.5 s | 1 | **no** (1 of 2 builds agree) |"), "{m}");
        assert!(m.contains("- app differs: line 1: build 1 has \"&lt;b&gt;\""), "{m}");
        assert!(m.contains("- denied evil\\.invalid:443: not in the allowlist"), "{m}");
        assert!(m.contains("Exit code: 3"), "{m}");
    }
}
