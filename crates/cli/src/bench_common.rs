//! What the benchmarks share: their common options, percentiles and summaries, and the table
//! they print.

use std::time::Duration;

use clap::Args;
use kiln_core::SandboxOptions;
use serde_json::json;

/// Options shared by the benchmarks.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Template to measure.
    #[arg(long, default_value = "tiny")]
    pub(crate) template: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Nearest-rank percentile of sorted milliseconds.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// n, p50, p90, p99, min and max of a set of milliseconds.
pub(crate) fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    json!({ "n": ms.len(), "p50_ms": pct(&ms, 50.0), "p90_ms": pct(&ms, 90.0), "p99_ms": pct(&ms, 99.0), "min_ms": ms.first(), "max_ms": ms.last() })
}

/// Milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sandbox options for a template.
pub(crate) fn opts(template: &str) -> SandboxOptions {
    SandboxOptions { template: template.into(), ..SandboxOptions::default() }
}

/// Progress to stderr.
pub(crate) fn progress(m: &str) {
    eprintln!("kiln: {m}");
}

/// Prints a benchmark's result as a table: title, rows of n/p50/p90/p99, summary lines.
pub(crate) fn print_table(v: &serde_json::Value) {
    println!("{}", v["title"].as_str().unwrap_or(""));
    if let Some(rows) = v["rows"].as_array() {
        println!("  {:<34} {:>6} {:>10} {:>10} {:>10}", "", "n", "p50", "p90", "p99");
        for r in rows {
            let s = &v[r.as_str().unwrap_or("")];
            let f = |k: &str| s[k].as_f64().map(|x| format!("{x:.1} ms")).unwrap_or_else(|| "-".into());
            println!("  {:<34} {:>6} {:>10} {:>10} {:>10}", r.as_str().unwrap_or(""), s["n"], f("p50_ms"), f("p90_ms"), f("p99_ms"));
        }
    }
    if let Some(lines) = v["summary"].as_array() {
        for l in lines {
            println!("  {}", l.as_str().unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 50.0);
        assert_eq!(pct(&v, 99.0), 99.0);
        assert_eq!(pct(&[7.0], 99.0), 7.0);
    }
}
