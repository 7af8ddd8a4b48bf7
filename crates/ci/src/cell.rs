//! One matrix cell: its build in one VM, or with `--rebuild N` the same build in N sibling
//! VMs (each a fork of the same setup, with its own identity, clock and RNG) and the verdict
//! on their artifacts ([`crate::reproduce`]).
//!
//! Layout beneath the out folder: `<cell>/build.log`, `<cell>/artifacts/`,
//! `<cell>/provenance.intoto.json` for the first build; `<cell>/rebuild-<k>/build.log` and
//! `<cell>/rebuild-<k>/artifacts/` for build k ≥ 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use kiln_core::Sandbox;
use kiln_fs::Dir;
use kiln_provenance::{BuildFacts, Reproduced};

use crate::mask::Masker;
use crate::reproduce::{self, Build};
use crate::run::{CellReport, Signer, Sink};
use crate::{artifacts, CiConfig};

/// What a cell's builds share.
pub(crate) struct Cell<'a> {
    /// The run's config.
    pub cfg: &'a CiConfig,
    /// The cell's matrix values.
    pub env: BTreeMap<String, String>,
    /// The build step's environment.
    pub build_env: Vec<(String, String)>,
    /// The cell's name ("default", "V=1").
    pub name: String,
    /// Its folder beneath the out folder.
    pub dir_name: String,
    /// Its output's prefix on the terminal ("" for a lone cell).
    pub label: String,
    /// Where the build runs in the guest.
    pub workdir: String,
    /// The provenance facts but the artifacts and the finish time.
    pub facts: BuildFacts,
}

/// What every cell's builds use.
pub(crate) struct Shared<'a> {
    pub out_dir: &'a Dir,
    pub masker: &'a Masker,
    pub sink: &'a Sink,
    pub sign: &'a Signer,
    pub sem: &'a tokio::sync::Semaphore,
}

/// Runs the cell's build in each of `sandboxes` (one, or N for `--rebuild N`), at most
/// `parallel` builds of the run at once, and reports it.
pub(crate) async fn run(cell: Cell<'_>, sandboxes: &[Sandbox], s: &Shared<'_>) -> CellReport {
    let rebuilding = sandboxes.len() > 1;
    let builds = sandboxes.iter().enumerate().map(|(i, sbx)| {
        let rel = if i == 0 { PathBuf::from(&cell.dir_name) } else { Path::new(&cell.dir_name).join(format!("rebuild-{}", i + 1)) };
        let label = match (i, cell.label.is_empty()) {
            (0, _) => cell.label.clone(),
            (_, true) => format!("rebuild-{}", i + 1),
            (_, false) => format!("{} rebuild-{}", cell.label, i + 1),
        };
        build(&cell, sbx, rel, label, REBUILD_CLOCK_STEP * i as u32, s)
    });
    let results: Vec<(Build, Option<Dir>)> = futures_util::future::join_all(builds).await;
    let mut report = CellReport::from_build(cell.name.clone(), cell.env.clone(), &results[0].0);
    let cell_dir = s.out_dir.open_dir(Path::new(&cell.dir_name)).ok();
    if rebuilding {
        let dirs: Vec<Option<Dir>> = results.iter().map(|(_, d)| d.as_ref().and_then(|d| d.open_dir(Path::new("artifacts")).ok())).collect();
        let judged: Vec<(&Build, Option<&Dir>)> = results.iter().zip(&dirs).map(|((b, _), d)| (b, d.as_ref())).collect();
        let mut verdict = reproduce::judge(&judged);
        for d in &mut verdict.differences {
            d.first_difference = d.first_difference.take().map(|t| s.masker.mask_str(&t));
        }
        report.reproducible = Some(verdict.reproducible);
        report.agreed = Some(verdict.agreed);
        report.differences = verdict.differences;
        report.rebuilds = results[1..].iter().map(|(b, _)| b.clone()).collect();
        // A failing rebuild fails the cell as a failing build would.
        if report.exit_code == 0 && report.error.is_none() {
            if let Some(b) = report.rebuilds.iter().find(|b| b.exit_code != 0) {
                report.exit_code = b.exit_code;
                report.timed_out = b.timed_out;
            }
        }
    }
    if !report.artifacts.is_empty() {
        if let Some(dir) = &cell_dir {
            let mut facts = cell.facts.clone();
            facts.finished = SystemTime::now();
            facts.artifacts = report.artifacts.iter().map(|a| (a.path.clone(), a.sha256.clone())).collect();
            facts.reproduced = report.agreed.map(|agreed| Reproduced { builds: sandboxes.len() as u32, agreed });
            match (s.sign)(&facts, dir) {
                Ok(p) => report.provenance = Some(p),
                Err(e) => report.error = Some(s.masker.mask_str(&format!("provenance: {e}"))),
            }
        }
    }
    report
}

/// How far ahead of the previous build's clock each rebuild's runs: builds that embed the
/// time then differ even when they run in the same second (an hour: certificates checked by
/// the guest are still valid).
pub(crate) const REBUILD_CLOCK_STEP: Duration = Duration::from_secs(3600);

/// One build in one VM, its clock `ahead` of the host's: its log and artifacts beneath `rel`
/// of the out folder.
async fn build(cell: &Cell<'_>, sbx: &Sandbox, rel: PathBuf, label: String, ahead: Duration, s: &Shared<'_>) -> (Build, Option<Dir>) {
    let _permit = s.sem.acquire().await;
    let clock = if ahead.is_zero() { Ok(()) } else { sbx.set_clock_ahead(ahead).await };
    let dir = s.out_dir.create_dirs(&rel);
    let masks = Mutex::new((s.masker.clone(), s.masker.clone()));
    let mut log = Vec::new();
    let t = Instant::now();
    let r = match clock {
        Ok(()) => crate::run::step(sbx, &cell.cfg.build, &cell.workdir, cell.build_env.clone(), cell.cfg.timeout, &label, &masks, s.sink, &mut log).await,
        Err(e) => Err(e),
    };
    let mut b = Build {
        exit_code: 125,
        timed_out: false,
        duration_ms: t.elapsed().as_millis() as u64,
        log: s.out_dir.path().join(&rel).join("build.log"),
        artifacts: vec![],
        error: None,
    };
    let dir = match dir.and_then(|d| d.write_new(Path::new("build.log"), &log).map(|_| d)) {
        Ok(d) => d,
        Err(e) => {
            b.error = Some(s.masker.mask_str(&format!("writing the cell's output: {e}")));
            return (b, None);
        }
    };
    match r {
        Ok(o) => {
            b.exit_code = o.exit_code();
            b.timed_out = o.timed_out;
            match artifacts::collect(sbx, &cell.workdir, &cell.cfg.artifacts, &dir, s.masker).await {
                Ok(a) => b.artifacts = a,
                Err(e) => b.error = Some(s.masker.mask_str(&format!("collecting artifacts: {e}"))),
            }
        }
        Err(e) => b.error = Some(s.masker.mask_str(&e.to_string())),
    }
    (b, Some(dir))
}

impl CellReport {
    /// A cell's report from its (first) build.
    fn from_build(name: String, env: BTreeMap<String, String>, b: &Build) -> CellReport {
        CellReport {
            name,
            env,
            exit_code: b.exit_code,
            timed_out: b.timed_out,
            duration_ms: b.duration_ms,
            log: b.log.clone(),
            artifacts: b.artifacts.clone(),
            provenance: None,
            error: b.error.clone(),
            reproducible: None,
            agreed: None,
            differences: vec![],
            rebuilds: vec![],
        }
    }
}
