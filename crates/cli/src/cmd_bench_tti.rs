//! `kiln bench tti`: time to interactive, the user's view of a fresh VM. Each round creates a
//! sandbox, runs `true` in it to its result, and destroys it: over the API from a warm pool,
//! over the API without one (each create restores), and through `kiln run` (a process of its
//! own, the whole command timed). All three in one run, on the same machine.

use std::time::{Duration, Instant};

use clap::Args;
use kiln_client::{CreateSandbox, ExecRequest};
use kiln_core::SandboxError;
use kiln_image::Home;
use serde_json::json;

use crate::bench_common::{ms, summary, Common};
use crate::bench_daemon::BenchDaemon;

/// `kiln bench tti`.
#[derive(Debug, Args)]
pub struct TtiArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Rounds of each kind.
    #[arg(short = 'n', long, default_value = "20", value_parser = clap::value_parser!(u32).range(1..=10000))]
    count: u32,
    /// Sandboxes in the warm pool (each pooled round waits for it to be full again).
    #[arg(long, value_name = "N", default_value = "2", value_parser = clap::value_parser!(u32).range(1..=64))]
    pool: u32,
}

fn api(e: kiln_client::ClientError) -> SandboxError {
    SandboxError::Unexpected(format!("the benchmark's daemon: {e}"))
}

/// Create, first result, destroy over the API: (to the first result, the whole round) in ms.
async fn round(d: &BenchDaemon, template: &str) -> Result<(f64, f64, String), SandboxError> {
    let t = Instant::now();
    let s = d.client.create_sandbox(&CreateSandbox { template: template.into(), ..Default::default() }).await.map_err(api)?;
    let r = d.client.exec(&s.id, &ExecRequest::argv(vec!["true".into()])).await.map_err(api)?;
    let first = ms(t.elapsed());
    d.client.delete_sandbox(&s.id).await.map_err(api)?;
    let whole = ms(t.elapsed());
    if r.exit_code != 0 {
        return Err(SandboxError::Unexpected(format!("`true` exited {} in {}", r.exit_code, s.id)));
    }
    Ok((first, whole, s.mode))
}

/// Runs the benchmark.
pub async fn tti(home: &Home, a: &TtiArgs) -> Result<serde_json::Value, SandboxError> {
    let template = &a.common.template;
    let n = a.count as usize;
    let d = BenchDaemon::start(home).await?;
    let r = async {
        // A first create bakes the snapshot if it must (not a round).
        round(&d, template).await?;
        let (mut restore_first, mut restore_whole) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (f, w, _) = round(&d, template).await?;
            restore_first.push(f);
            restore_whole.push(w);
            eprint!("\rkiln: over the API, restoring: {}/{n}", i + 1);
        }
        eprintln!();
        d.set_pool(template, a.pool as usize).await?;
        let (mut pool_first, mut pool_whole, mut misses) = (Vec::new(), Vec::new(), 0usize);
        for i in 0..n {
            d.pool_full(Duration::from_secs(600)).await?;
            let (f, w, mode) = round(&d, template).await?;
            pool_first.push(f);
            pool_whole.push(w);
            misses += usize::from(mode != "pooled");
            eprint!("\rkiln: over the API, from a pool of {}: {}/{n}", a.pool, i + 1);
        }
        eprintln!();
        Ok::<_, SandboxError>((restore_first, restore_whole, pool_first, pool_whole, misses))
    }
    .await;
    d.stop().await;
    let (restore_first, restore_whole, pool_first, pool_whole, misses) = r?;

    let exe = std::env::current_exe().map_err(|source| SandboxError::Io { what: "find the kiln binary".into(), source })?;
    let mut embedded = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let st = tokio::process::Command::new(&exe)
            .args(["run", "--template", template, "--", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .map_err(|source| SandboxError::Io { what: format!("run {}", exe.display()), source })?;
        embedded.push(ms(t.elapsed()));
        if !st.success() {
            return Err(SandboxError::Unexpected(format!("kiln run --template {template} -- true: {st}")));
        }
        eprint!("\rkiln: kiln run: {}/{n}", i + 1);
    }
    eprintln!();

    let (pf, rf, e) = (summary(pool_first), summary(restore_first), summary(embedded));
    let p50 = |v: &serde_json::Value| v["p50_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "title": format!("kiln bench tti: template {template}, create -> first result of `true` -> destroy"),
        "rows": ["api_pool", "api_pool_first_result", "api_restore", "api_restore_first_result", "embedded"],
        "api_pool": summary(pool_whole),
        "api_pool_first_result": pf,
        "api_restore": summary(restore_whole),
        "api_restore_first_result": rf,
        "embedded": e,
        "pool_size": a.pool,
        "pool_misses": misses,
        "ratio_restore_to_pool_first_result_p50": p50(&rf) / p50(&pf),
        "summary": [
            format!("create + first result from the pool: p50 {:.1} ms (target <= 25 ms); without the pool {:.1} ms ({:.1}x)", p50(&pf), p50(&rf), p50(&rf) / p50(&pf)),
            format!("kiln run --template {template} -- true, the whole process: p50 {:.1} ms (target <= 150 ms)", p50(&e)),
            format!("over the API = a daemon in this process on a unix socket; pool of {}, {misses} misses", a.pool),
        ],
    }))
}
