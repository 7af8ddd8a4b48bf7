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
    /// Time to interactive: create, the first result of `true`, destroy; over the API with and
    /// without the warm pool, and through `kiln run`.
    Tti(crate::cmd_bench_tti::TtiArgs),
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
    /// Also measure creates over the API from a warm pool of N sandboxes (a daemon in this
    /// process, on a home of its own; each create waits for the pool to be full again).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pool: Option<u32>,
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
        BenchCmd::Tti(a) => (a.common.json, crate::cmd_bench_tti::tti(&home, &a).await),
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
    let p50 = |v: &serde_json::Value| v["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let ratio = p50(&r) / p50(&c);
    let tail = r["p99_ms"].as_f64().unwrap_or(f64::NAN) / p50(&r);
    let mut v = json!({
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
    });
    if let Some(n) = a.pool {
        let p = pooled_creates(home, template, n as usize, a.count).await?;
        let pool = summary(p.creates);
        let ratio = p50(&pool) / p50(&v["cold_boot"]);
        v["rows"].as_array_mut().expect("rows").insert(0, json!("pool"));
        let lines = v["summary"].as_array_mut().expect("summary");
        lines.insert(0, json!(format!(
            "pool p50 {:.1} ms, p99 {:.1} ms (targets <= 10 and <= 25 ms); cold boot p50 / pool p50 = {:.0}x (target >= 150x)",
            p50(&pool), pool["p99_ms"].as_f64().unwrap_or(f64::NAN), 1.0 / ratio
        )));
        lines.push(json!(format!(
            "pool = POST /v1/sandboxes to its answer, from a pool of {n} (a daemon in this process; {} misses); \
             QEMU CPU while waiting: paused {:.1} ms/s each, idle (running) {:.1} ms/s",
            p.misses, p.paused_cpu_ms_per_s, p.idle_cpu_ms_per_s
        )));
        v["pool"] = pool;
        v["ratio_pool_to_cold_p50"] = json!(ratio);
        v["pool_misses"] = json!(p.misses);
        v["pool_paused_cpu_ms_per_s"] = json!(p.paused_cpu_ms_per_s);
        v["idle_cpu_ms_per_s"] = json!(p.idle_cpu_ms_per_s);
    }
    Ok(v)
}

/// What creating from a warm pool took.
struct Pooled {
    creates: Vec<f64>,
    misses: usize,
    paused_cpu_ms_per_s: f64,
    idle_cpu_ms_per_s: f64,
}

/// `count` creates over the API from a pool of `n`, each once the pool is full, and the CPU a
/// pooled (paused) VM uses against a restored one left idle (running).
async fn pooled_creates(home: &Home, template: &str, n: usize, count: usize) -> Result<Pooled, SandboxError> {
    let d = crate::bench_daemon::BenchDaemon::start(home).await?;
    let r = async {
        d.set_pool(template, n).await?;
        let wait = Duration::from_secs(600);
        d.pool_full(wait).await?;
        let window = Duration::from_secs(2);
        let pids = kiln_core::leaks::processes_mentioning(d.run_dir());
        let before = kiln_core::leaks::cpu_ms(&pids);
        tokio::time::sleep(window).await;
        let paused = (kiln_core::leaks::cpu_ms(&pids) - before) / window.as_secs_f64() / pids.len().max(1) as f64;
        let mut creates = Vec::new();
        let mut misses = 0;
        let api = |e: kiln_client::ClientError| SandboxError::Unexpected(format!("the benchmark's daemon: {e}"));
        for i in 0..count {
            d.pool_full(wait).await?;
            let t = Instant::now();
            let s = d.client.create_sandbox(&kiln_client::CreateSandbox { template: template.into(), ..Default::default() }).await.map_err(api)?;
            creates.push(ms(t.elapsed()));
            misses += usize::from(s.mode != "pooled");
            d.client.delete_sandbox(&s.id).await.map_err(api)?;
            eprint!("\rkiln: creates from the pool {}/{count}", i + 1);
        }
        eprintln!();
        d.set_pool(template, 0).await?;
        // The baseline: a restored sandbox left idle, its guest running.
        let s = Sandbox::create(home, &opts(template), &progress).await?;
        let before = kiln_core::leaks::cpu_ms(&[s.vmm_pid()]);
        tokio::time::sleep(window).await;
        let idle = (kiln_core::leaks::cpu_ms(&[s.vmm_pid()]) - before) / window.as_secs_f64();
        s.destroy();
        Ok(Pooled { creates, misses, paused_cpu_ms_per_s: paused, idle_cpu_ms_per_s: idle })
    }
    .await;
    d.stop().await;
    r
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
