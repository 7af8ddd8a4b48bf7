//! `kiln bench load`: N sandboxes under a mixed exec and file load for a while, against a
//! lone-sandbox baseline taken in the same run. Reports throughput, latency, failures, peak
//! host memory, and what was left behind after teardown (processes, fds, files, cgroups).
//!
//! Leaks are the difference between the host before the N sandboxes and after they are gone,
//! so nothing else should create sandboxes in the same `KILN_HOME` during the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use kiln_core::leaks::{HostState, Leaks};
use kiln_core::{ExecRequest, Output, Sandbox, SandboxError};
use kiln_image::Home;
use serde_json::json;

use crate::bench_common::{ms, opts, pct, print_table, progress, summary, Common};
use crate::exit;

/// Sandboxes created at once (creation is CPU-bound).
const CREATE_AT_ONCE: usize = 4;
/// Round trips of each kind in the baseline.
const BASELINE_OPS: usize = 20;
/// Size of the file written and read back by each file op.
const FILE_BYTES: usize = 4096;
/// An op that takes longer than this is a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Error messages kept.
const ERRORS_KEPT: usize = 5;
/// How long teardown may take to settle before what is left counts as leaked.
const SETTLE: Duration = Duration::from_secs(5);
/// Memory sampling interval.
const SAMPLE_EVERY: Duration = Duration::from_millis(1000);

/// `kiln bench load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Sandboxes running at once (1 to 64), each looping an exec and a file write+read.
    #[arg(long, value_name = "N", default_value = "10", value_parser = clap::value_parser!(u32).range(1..=64))]
    sandboxes: u32,
    /// Seconds of load (1 to 3600).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
}

/// Runs the load benchmark; exit code 0 only with no failures and no leaks.
pub async fn run(home: &Home, a: &LoadArgs) -> i32 {
    let v = match load(home, a).await {
        Ok(v) => v,
        Err(e) => return exit::report(&e),
    };
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print_table(&v);
    }
    let failures = v["failures"]["count"].as_u64().unwrap_or(u64::MAX);
    let leaks = v["leaks"]["total"].as_u64().unwrap_or(u64::MAX);
    if failures == 0 && leaks == 0 {
        return 0;
    }
    eprintln!("kiln: bench load failed: {failures} failed operation(s), {leaks} leaked resource(s) (see above)");
    exit::KILN_FAILED
}

/// What one sandbox (or the creation phase) did.
#[derive(Debug, Default)]
struct Tally {
    exec_ms: Vec<f64>,
    file_ms: Vec<f64>,
    execs: u64,
    files: u64,
    failures: u64,
    /// (seconds into the run, message).
    errors: Vec<(f64, String)>,
}

impl Tally {
    fn fail(&mut self, t0: Instant, msg: String) {
        self.failures += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push((t0.elapsed().as_secs_f64(), msg));
        }
    }

    fn merge(&mut self, o: Tally) {
        self.exec_ms.extend(o.exec_ms);
        self.file_ms.extend(o.file_ms);
        self.execs += o.execs;
        self.files += o.files;
        self.failures += o.failures;
        self.errors.extend(o.errors);
        self.errors.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.errors.truncate(ERRORS_KEPT);
    }
}

/// Deterministic bytes for file op `n` of sandbox `i` (xorshift; different every op).
fn payload(i: usize, n: u64) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (0..FILE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, SandboxError>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer after {} s", OP_TIMEOUT.as_secs())),
    }
}

/// `echo TAG` in the guest; checks the exit code and the output.
async fn exec_echo(s: &Sandbox, tag: &str) -> Result<(), String> {
    let mut out = Vec::new();
    let req = ExecRequest::argv(["echo".to_string(), tag.to_string()]).timeout(OP_TIMEOUT / 2);
    let o = timed(s.exec(req, |o| {
        if let Output::Stdout(b) = o {
            out.extend_from_slice(b);
        }
    }))
    .await?;
    let want = format!("{tag}\n");
    if o.exit_code() != 0 || out != want.as_bytes() {
        return Err(format!("echo {tag}: exit {} and stdout {:?}", o.exit_code(), String::from_utf8_lossy(&out)));
    }
    Ok(())
}

/// Writes `bytes` to `path` in the guest and reads them back. Errors go through
/// [`Sandbox::map_err`] (as exec's do), so a dead VM reads "the sandbox died".
async fn file_cycle(s: &Sandbox, path: &str, bytes: &[u8]) -> Result<(), String> {
    let write = async { s.map_err(s.agent().write_bytes(path, 0o644, bytes).await).await };
    timed(write).await.map_err(|e| format!("write {path}: {e}"))?;
    let read = async { s.map_err(s.agent().read_bytes(path, 2 * FILE_BYTES as u64).await).await };
    let back = timed(read).await.map_err(|e| format!("read {path}: {e}"))?;
    if back != bytes {
        return Err(format!("read {path}: {} bytes back, not the {} written", back.len(), bytes.len()));
    }
    Ok(())
}

/// Loops exec + file cycle on one sandbox until `deadline`.
async fn drive(i: usize, s: Arc<Sandbox>, t0: Instant, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    let path = format!("/tmp/kiln-load-{i}");
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let start = Instant::now();
        t.execs += 1;
        match exec_echo(&s, &format!("{i}-{n}")).await {
            Ok(()) => t.exec_ms.push(ms(start.elapsed())),
            Err(e) => t.fail(t0, format!("sandbox {} ({}): {e}", i, s.id())),
        }
        let bytes = payload(i, n);
        let start = Instant::now();
        t.files += 1;
        match file_cycle(&s, &path, &bytes).await {
            Ok(()) => t.file_ms.push(ms(start.elapsed())),
            Err(e) => t.fail(t0, format!("sandbox {} ({}): {e}", i, s.id())),
        }
        if s.has_died() {
            t.fail(t0, format!("sandbox {} ({}): its VM died; it stopped here", i, s.id()));
            break;
        }
    }
    t
}

/// p50 of exec `true` and of a file cycle on one sandbox alone.
async fn baseline(home: &Home, template: &str) -> Result<(Vec<f64>, Vec<f64>), SandboxError> {
    let s = Sandbox::create(home, &opts(template), &progress).await?;
    let bad = |e: String| SandboxError::Unexpected(format!("baseline: {e}"));
    for _ in 0..3 {
        s.exec(ExecRequest::argv(["true"]), |_| {}).await?;
    }
    let mut exec = Vec::new();
    for _ in 0..BASELINE_OPS {
        let t = Instant::now();
        let o = s.exec(ExecRequest::argv(["true"]), |_| {}).await?;
        exec.push(ms(t.elapsed()));
        if o.exit_code() != 0 {
            return Err(bad(format!("`true` exited {}", o.exit_code())));
        }
    }
    let mut file = Vec::new();
    for n in 0..BASELINE_OPS as u64 {
        let bytes = payload(usize::MAX, n);
        let t = Instant::now();
        file_cycle(&s, "/tmp/kiln-load-baseline", &bytes).await.map_err(bad)?;
        file.push(ms(t.elapsed()));
    }
    let pid = s.vmm_pid();
    s.destroy();
    // Let it go completely (reaped, watchdog done) before the "before" picture is taken.
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((exec, file))
}

/// Peak host memory seen while sampling, in KiB.
#[derive(Debug, Default, Clone, Copy)]
struct MemPeak {
    vmm_pss: u64,
    vmm_rss: u64,
    kiln_rss: u64,
    samples: u64,
}

fn vm_rss_kib(status_path: &str) -> u64 {
    let text = std::fs::read_to_string(status_path).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Samples VMM Pss/RSS sums and kiln's RSS until `stop`.
async fn sample_memory(pids: Vec<u32>, stop: Arc<AtomicBool>) -> MemPeak {
    let mut peak = MemPeak::default();
    loop {
        let (mut pss, mut rss) = (0, 0);
        for &pid in &pids {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            pss += crate::smaps::parse(&rollup, "").pss_kib;
            rss += vm_rss_kib(&format!("/proc/{pid}/status"));
        }
        peak.vmm_pss = peak.vmm_pss.max(pss);
        peak.vmm_rss = peak.vmm_rss.max(rss);
        peak.kiln_rss = peak.kiln_rss.max(vm_rss_kib("/proc/self/status"));
        peak.samples += 1;
        if stop.load(Ordering::Relaxed) {
            return peak;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Creates `n` sandboxes, `CREATE_AT_ONCE` at a time; the ones that failed are in the tally.
async fn create_all(home: &Home, template: &str, n: usize, t0: Instant, tally: &mut Tally) -> (Vec<Arc<Sandbox>>, Vec<f64>, f64) {
    let sem = Arc::new(tokio::sync::Semaphore::new(CREATE_AT_ONCE));
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (sem, home, o) = (sem.clone(), home.clone(), opts(template));
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore never closed");
                let t = Instant::now();
                let r = Sandbox::create(&home, &o, &progress).await;
                (ms(t.elapsed()), r)
            })
        })
        .collect();
    let mut made = Vec::new();
    let mut times = Vec::new();
    for (k, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok((t, Ok(s))) => {
                times.push(t);
                made.push(Arc::new(s));
            }
            Ok((_, Err(e))) => tally.fail(t0, format!("create: {e}")),
            Err(e) => tally.fail(t0, format!("create: the task failed: {e}")),
        }
        eprint!("\rkiln: created {}/{n}", k + 1);
    }
    eprintln!();
    (made, times, ms(start.elapsed()))
}

fn p50(v: &serde_json::Value) -> f64 {
    v["p50_ms"].as_f64().unwrap_or(f64::NAN)
}

async fn load(home: &Home, a: &LoadArgs) -> Result<serde_json::Value, SandboxError> {
    let template = &a.common.template;
    let n = a.sandboxes as usize;
    progress(&format!("baseline: one {template} sandbox alone, {BASELINE_OPS} execs and {BASELINE_OPS} file cycles"));
    let (base_exec, base_file) = baseline(home, template).await?;
    let before = HostState::now(home);
    let cgroups_checked = kiln_vmm::confine::host().map(|_| true).unwrap_or(false);

    let t0 = Instant::now();
    let mut tally = Tally::default();
    progress(&format!("creating {n} sandboxes, {CREATE_AT_ONCE} at a time"));
    let (sandboxes, create_ms, create_wall) = create_all(home, template, n, t0, &mut tally).await;
    let ids: Vec<String> = sandboxes.iter().map(|s| s.id().to_string()).collect();

    progress(&format!("{} sandboxes under load for {} s", sandboxes.len(), a.duration));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_memory(sandboxes.iter().map(|s| s.vmm_pid()).collect(), stop.clone()));
    let load_start = Instant::now();
    let deadline = load_start + Duration::from_secs(a.duration);
    let drivers: Vec<_> = sandboxes.iter().enumerate().map(|(i, s)| tokio::spawn(drive(i, s.clone(), t0, deadline))).collect();
    for d in drivers {
        match d.await {
            Ok(t) => tally.merge(t),
            Err(e) => tally.fail(t0, format!("a load task failed: {e}")),
        }
    }
    let load_wall = load_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mem = sampler.await.unwrap_or_default();

    progress("tearing down");
    for s in &sandboxes {
        s.kill();
    }
    drop(sandboxes);
    let settle_start = Instant::now();
    let mut after = HostState::now(home);
    while Leaks::between(&before, &after).total() > 0 && settle_start.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = HostState::now(home);
    }
    let settle_ms = ms(settle_start.elapsed());
    let leaks = Leaks::between(&before, &after);

    let be = summary(base_exec);
    let bf = summary(base_file);
    let ex = summary(tally.exec_ms.clone());
    let fi = summary(tally.file_ms.clone());
    let mut sorted_create = create_ms.clone();
    sorted_create.sort_by(|a, b| a.total_cmp(b));
    let ops = tally.execs + tally.files;
    let ok_ops = (tally.exec_ms.len() + tally.file_ms.len()) as u64;
    let per_s = ok_ops as f64 / load_wall;
    let exec_ratio = p50(&ex) / p50(&be);
    let file_ratio = p50(&fi) / p50(&bf);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let errors: Vec<String> = tally.errors.iter().map(|(t, m)| format!("at {t:.1} s: {m}")).collect();
    let mut summary_lines = vec![
        format!(
            "{} of {n} sandboxes created in {:.1} s ({CREATE_AT_ONCE} at a time); per create p50 {:.0} ms, p99 {:.0} ms",
            ids.len(),
            create_wall / 1e3,
            pct(&sorted_create, 50.0),
            pct(&sorted_create, 99.0)
        ),
        format!("load {load_wall:.1} s: {ops} ops ({} exec, {} file write+read), {per_s:.1} ok ops/s", tally.execs, tally.files),
        format!("exec p50 {:.1} ms, p99 {:.1} ms = {exec_ratio:.1}x the lone sandbox's p50 ({:.1} ms)", p50(&ex), ex["p99_ms"].as_f64().unwrap_or(f64::NAN), p50(&be)),
        format!("file p50 {:.1} ms, p99 {:.1} ms = {file_ratio:.1}x the lone sandbox's p50 ({:.1} ms)", p50(&fi), fi["p99_ms"].as_f64().unwrap_or(f64::NAN), p50(&bf)),
        format!(
            "peak host memory: VMMs {:.0} MiB Pss ({:.0} MiB RSS) in total, {:.1} MiB Pss each; kiln {:.1} MiB RSS",
            mib(mem.vmm_pss),
            mib(mem.vmm_rss),
            mib(mem.vmm_pss) / ids.len().max(1) as f64,
            mib(mem.kiln_rss)
        ),
        format!("failures: {}", tally.failures),
    ];
    summary_lines.extend(errors.iter().map(|e| format!("  {e}")));
    summary_lines.push(format!(
        "leaks after {:.1} s: processes {}, fds {}, run folder entries {}, shm files {}, cgroups {}{}",
        settle_ms / 1e3,
        leaks.processes.len(),
        leaks.fds,
        leaks.run.len(),
        leaks.shm.len(),
        leaks.cgroups.len(),
        if cgroups_checked { "" } else { " (confinement unavailable: cgroups not checked)" }
    ));
    for (kind, list) in [("process", &leaks.processes), ("run folder entry", &leaks.run), ("shm file", &leaks.shm), ("cgroup", &leaks.cgroups)] {
        summary_lines.extend(list.iter().take(ERRORS_KEPT).map(|x| format!("  leaked {kind}: {x}")));
    }
    Ok(json!({
        "title": format!("kiln bench load: {n} {template} sandboxes, {} s of exec + file ops each", a.duration),
        "rows": ["baseline_exec", "baseline_file", "create", "exec", "file"],
        "template": template,
        "sandboxes": n,
        "sandboxes_created": ids.len(),
        "duration_s": a.duration,
        "load_wall_s": load_wall,
        "create_wall_ms": create_wall,
        "create": summary(create_ms),
        "baseline_exec": be,
        "baseline_file": bf,
        "exec": ex,
        "file": fi,
        "ops": { "total": ops, "exec": tally.execs, "file": tally.files, "ok": ok_ops, "per_s": per_s },
        "ratio_exec_p50_to_baseline": exec_ratio,
        "ratio_file_p50_to_baseline": file_ratio,
        "memory_peak_mib": { "vmm_pss_total": mib(mem.vmm_pss), "vmm_rss_total": mib(mem.vmm_rss), "kiln_rss": mib(mem.kiln_rss), "samples": mem.samples },
        "failures": { "count": tally.failures, "first": errors },
        "leaks": {
            "total": leaks.total(),
            "processes": leaks.processes.len(),
            "fds": leaks.fds,
            "run_files": leaks.run.len(),
            "shm_files": leaks.shm.len(),
            "cgroups": leaks.cgroups.len(),
            "cgroups_checked": cgroups_checked,
            "settle_ms": settle_ms,
            "fds_before": before.fds,
            "fds_after": after.fds,
            "details": { "processes": leaks.processes, "run": leaks.run, "shm": leaks.shm, "cgroups": leaks.cgroups },
        },
        "summary": summary_lines,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_per_op() {
        assert_eq!(payload(1, 1).len(), FILE_BYTES);
        assert_eq!(payload(1, 1), payload(1, 1));
        assert_ne!(payload(1, 1), payload(1, 2));
        assert_ne!(payload(1, 1), payload(2, 1));
    }
}
