//! `kiln bench create|fork|exec|load`: each measurement beside a baseline taken in the same run.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kiln_core::{ExecRequest, Sandbox, SandboxError, SandboxOptions};
use kiln_image::Home;
use serde_json::json;

use crate::bench_common::{ms, opts, print_table, progress, summary, Common};
use crate::exit;
use crate::smaps;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Create by snapshot restore vs cold boot: spawn to the agent's first reply.
    Create(CreateArgs),
    /// Fork a running sandbox into clones: time to all answering, and memory.
    Fork(ForkArgs),
    /// Exec round trip of `true` in a running sandbox vs spawning `true` on the host.
    Exec(ExecArgs),
    /// N sandboxes under exec and file load: throughput, latency vs one alone, memory, leaks.
    Load(crate::cmd_bench_load::LoadArgs),
}

/// `kiln bench create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    common: Common,
    /// Restores to measure.
    #[arg(short = 'n', long, default_value = "20")]
    count: usize,
    /// Cold boots to measure (default: as many as restores).
    #[arg(long)]
    cold: Option<usize>,
}

/// `kiln bench fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    #[command(flatten)]
    common: Common,
    /// Clones.
    #[arg(short = 'n', long, default_value = "10")]
    count: usize,
}

/// `kiln bench exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    common: Common,
    /// Round trips.
    #[arg(short = 'n', long, default_value = "200")]
    count: usize,
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCmd) -> i32 {
    let home = Home::from_env();
    let (json_out, result) = match cmd {
        BenchCmd::Create(a) => (a.common.json, create(&home, &a).await),
        BenchCmd::Fork(a) => (a.common.json, fork(&home, &a).await),
        BenchCmd::Exec(a) => (a.common.json, exec(&home, &a).await),
        BenchCmd::Load(a) => return crate::cmd_bench_load::run(&home, &a).await,
    };
    match result {
        Ok(v) => {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                print_table(&v);
            }
            0
        }
        Err(e) => exit::report(&e),
    }
}

async fn create(home: &Home, a: &CreateArgs) -> Result<serde_json::Value, SandboxError> {
    let template = &a.common.template;
    // Make sure the snapshot exists (a first bake is not a create).
    drop(Sandbox::create(home, &opts(template), &progress).await?);
    let mut restore = Vec::new();
    let mut restore_total = Vec::new();
    for i in 0..a.count {
        let t = Instant::now();
        let s = Sandbox::create(home, &opts(template), &progress).await?;
        restore_total.push(ms(t.elapsed()));
        restore.push(ms(s.timings().boot));
        s.destroy();
        eprint!("\rkiln: restores {}/{}", i + 1, a.count);
    }
    eprintln!();
    let n_cold = a.cold.unwrap_or(a.count);
    let mut cold = Vec::new();
    for i in 0..n_cold {
        let s = Sandbox::create(home, &SandboxOptions { cold: true, ..opts(template) }, &progress).await?;
        cold.push(ms(s.timings().boot));
        s.destroy();
        eprint!("\rkiln: cold boots {}/{}", i + 1, n_cold);
    }
    eprintln!();
    let r = summary(restore);
    let c = summary(cold);
    let ratio = r["p50_ms"].as_f64().unwrap_or(f64::NAN) / c["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let tail = r["p99_ms"].as_f64().unwrap_or(f64::NAN) / r["p50_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "title": format!("kiln bench create: template {template}, spawn to first agent reply"),
        "rows": ["restore", "restore_total", "cold_boot"],
        "restore": r,
        "restore_total": summary(restore_total),
        "cold_boot": c,
        "ratio_restore_to_cold_p50": ratio,
        "ratio_p99_to_p50_restore": tail,
        "summary": [
            format!("restore p50 / cold boot p50 = {ratio:.4} (1/{:.1}); target <= 1/15", 1.0 / ratio),
            format!("restore p99 / p50 = {tail:.2}; target <= 2"),
            "restore_total = the whole create (artifact checks, overlay, spawn, state load, first reply, identity)".to_string(),
        ],
    }))
}

async fn fork(home: &Home, a: &ForkArgs) -> Result<serde_json::Value, SandboxError> {
    let template = &a.common.template;
    let mut parent = Sandbox::create(home, &SandboxOptions { forkable: true, ..opts(template) }, &progress).await?;
    parent.exec(ExecRequest::shell("sync"), |_| {}).await?;
    let t = Instant::now();
    let clones = parent.fork(home, a.count).await?;
    let wall = ms(t.elapsed());
    // Every clone answered (and got its identity) before the fork returned; check again.
    for c in &clones {
        c.agent().ping().await?;
    }
    let timing = parent.last_fork_timing().expect("just forked");
    let all_answering = ms(timing.clones_answering);
    let parent_back = ms(timing.parent_back);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut guest_private = Vec::new();
    let mut qemu_private = Vec::new();
    let mut pss = Vec::new();
    for c in &clones {
        let m = smaps::read(c.vmm_pid(), "/memory");
        guest_private.push(m.mapping_private_dirty_kib as f64 / 1024.0);
        qemu_private.push(m.private_kib as f64 / 1024.0);
        pss.push(m.pss_kib as f64 / 1024.0);
    }
    // Baseline: independent VMs (cold boots, anonymous memory), measured in this run.
    let mut indep = Vec::new();
    for _ in 0..2 {
        let s = Sandbox::create(home, &SandboxOptions { cold: true, ..opts(template) }, &progress).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = smaps::read(s.vmm_pid(), "");
        indep.push(m.private_kib as f64 / 1024.0);
        s.destroy();
    }
    let indep_each = indep.iter().sum::<f64>() / indep.len() as f64;
    let clones_total: f64 = pss.iter().sum();
    let n = a.count as f64;
    let max_guest = guest_private.iter().cloned().fold(0.0, f64::max);
    drop(clones);
    drop(parent);
    Ok(json!({
        "title": format!("kiln bench fork: a running {template} sandbox forked into {} clones", a.count),
        "fork_wall_ms": wall,
        "all_answering_ms": all_answering,
        "parent_back_ms": parent_back,
        "clone_private_guest_mib": guest_private,
        "clone_private_guest_mib_max": max_guest,
        "clone_qemu_private_mib": qemu_private,
        "clones_total_pss_mib": clones_total,
        "independent_vm_private_mib": indep_each,
        "independent_total_mib": indep_each * n,
        "ratio_clones_to_independent": clones_total / (indep_each * n),
        "summary": [
            format!("fork into {} clones: all answering after {all_answering:.0} ms (target <= 1500 ms); parent running again after {parent_back:.0} ms", a.count),
            format!("private guest memory per idle clone: max {max_guest:.1} MiB (target <= 8 MiB)"),
            format!("QEMU private memory per clone: {}", fmt_list(&qemu_private)),
            format!("{} clones: {clones_total:.0} MiB (Pss) vs {} independent VMs: {:.0} MiB ({indep_each:.0} MiB each, measured) = {:.2}x",
                a.count, a.count, indep_each * n, clones_total / (indep_each * n)),
        ],
    }))
}

fn fmt_list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ") + " MiB"
}

async fn exec(home: &Home, a: &ExecArgs) -> Result<serde_json::Value, SandboxError> {
    let s = Sandbox::create(home, &opts(&a.common.template), &progress).await?;
    for _ in 0..5 {
        s.exec(ExecRequest::argv(["true"]), |_| {}).await?;
    }
    let mut guest = Vec::new();
    let mut in_guest = Vec::new();
    for _ in 0..a.count {
        let t = Instant::now();
        let o = s.exec(ExecRequest::argv(["true"]), |_| {}).await?;
        guest.push(ms(t.elapsed()));
        in_guest.push(ms(o.duration));
        if o.exit_code() != 0 {
            return Err(SandboxError::Unexpected("`true` failed in the guest".into()));
        }
    }
    let mut ping = Vec::new();
    for _ in 0..a.count {
        let t = Instant::now();
        s.agent().ping().await?;
        ping.push(ms(t.elapsed()));
    }
    s.destroy();
    let mut host = Vec::new();
    for _ in 0..a.count {
        let t = Instant::now();
        let st = std::process::Command::new("true").status().map_err(|source| SandboxError::Io { what: "spawn true".into(), source })?;
        host.push(ms(t.elapsed()));
        assert!(st.success());
    }
    let g = summary(guest);
    let h = summary(host);
    let ratio = g["p50_ms"].as_f64().unwrap_or(f64::NAN) / h["p50_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "title": format!("kiln bench exec: `true` round trip in a {} sandbox", a.common.template),
        "rows": ["guest_exec", "guest_spawn_to_exit", "channel_ping", "host_spawn"],
        "guest_exec": g,
        "guest_spawn_to_exit": summary(in_guest),
        "channel_ping": summary(ping),
        "host_spawn": h,
        "ratio_guest_to_host_p50": ratio,
        "summary": [format!("guest exec p50 = {:.1} ms = {ratio:.1}x host spawn (target p50 <= 20 ms)", g["p50_ms"].as_f64().unwrap_or(f64::NAN))],
    }))
}
