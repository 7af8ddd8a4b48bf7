//! Pooled sandboxes (restored ahead of time, warmed, paused, then claimed) against real VMs:
//! two of them differ exactly as two fresh ones do, nothing of their time in the pool shows,
//! and the claim's environment is the one commands see.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_core::sandbox::CreateMode;
use kiln_core::warm::Warm;
use kiln_core::{ExecRequest, Sandbox, SandboxOptions};
use kiln_testkit::{exec, TestHome};

/// The stdout of a shell script that must exit 0.
async fn out(sbx: &Sandbox, script: &str) -> String {
    let c = exec(sbx, ExecRequest::shell(script).timeout(Duration::from_secs(120))).await;
    assert_eq!(c.exit_code(), 0, "{script}: {}", c.stderr);
    c.stdout
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

const PROBE: &str = "cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
    hostname; cat /etc/machine-id; echo \"$KILN_TEST_WHO\"; date +%s; cut -d' ' -f1 /proc/uptime";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn pooled_sandboxes_are_different_machines_with_the_claims_clock_and_env() {
    let th = TestHome::new();
    let opts = SandboxOptions::default();
    let wa = Warm::prepare(&th.home, &opts, &|m| eprintln!("kiln: {m}")).await.unwrap();
    let wb = Warm::prepare(&th.home, &opts, &|m| eprintln!("kiln: {m}")).await.unwrap();
    // Long in the pool: a clock left from then would be seconds off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a = wa.claim(vec![("KILN_TEST_WHO".into(), "a".into())]).await.unwrap();
    let b = wb.claim(vec![("KILN_TEST_WHO".into(), "b".into())]).await.unwrap();
    assert!(matches!(a.mode(), CreateMode::Pooled(_)), "{:?}", a.mode());
    let fresh = Sandbox::create(&th.home, &opts, &|m| eprintln!("kiln: {m}")).await.unwrap();
    let (oa, ob, of) = (out(&a, PROBE).await, out(&b, PROBE).await, out(&fresh, PROBE).await);
    let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
    let (la, lb, lf) = (lines(&oa), lines(&ob), lines(&of));
    assert_eq!(la.len(), 7, "{oa}");
    // boot id, urandom, hostname, machine id: unlike each other's and a fresh sandbox's.
    for i in 0..4 {
        assert_ne!(la[i], lb[i], "line {i} equal in two pooled sandboxes: {oa} / {ob}");
        assert_ne!(la[i], lf[i], "line {i} equal in a pooled and a fresh sandbox: {oa} / {of}");
    }
    assert_eq!(la[2], a.id());
    assert_eq!((la[4].as_str(), lb[4].as_str(), lf[4].as_str()), ("a", "b", ""), "environment of the claim");
    // The wall clock is the claim's (to within the seconds' rounding), not the pool's.
    for (who, l) in [("a", &la), ("b", &lb)] {
        let t: f64 = l[5].parse::<f64>().unwrap() * 1e3;
        assert!((t - now_ms()).abs() <= 2000.0, "{who}: guest clock {t} ms vs host {} ms", now_ms());
    }
    // The guest's own clock stood still while it was paused: its uptime is that of a fresh
    // restore (plus the warm-up), not four seconds more.
    let (ua, uf): (f64, f64) = (la[6].parse().unwrap(), lf[6].parse().unwrap());
    assert!(ua - uf < 2.0, "pooled uptime {ua} s vs fresh {uf} s: the time in the pool shows");
    drop((a, b, fresh));
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn a_pooled_sandbox_is_not_forkable_nor_cold() {
    let th = TestHome::new();
    for opts in [SandboxOptions { forkable: true, ..SandboxOptions::default() }, SandboxOptions { cold: true, ..SandboxOptions::default() }] {
        let e = Warm::prepare(&th.home, &opts, &|_| {}).await.unwrap_err();
        assert!(e.to_string().contains("restored from a snapshot"), "{e}");
    }
    // A pool never builds a template (a build runs its commands as root): one not built is refused.
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("kiln-pool-unbuilt.toml");
    std::fs::write(&def, "description = \"never built\"\n[rootfs]\nkind = \"busybox\"\nsize_mib = 64\n").unwrap();
    let opts = SandboxOptions { template: def.display().to_string(), ..SandboxOptions::default() };
    let e = Warm::prepare(&th.home, &opts, &|_| {}).await.unwrap_err();
    assert!(e.to_string().contains("not built") && e.to_string().contains("kiln template build"), "{e}");
    // A pooled sandbox that died while it waited says so, and claiming it fails cleanly.
    let w = Warm::prepare(&th.home, &SandboxOptions::default(), &|_| {}).await.unwrap();
    // SAFETY: kill has no memory effects; the pid is this test's own VMM.
    unsafe { libc::kill(w.vmm_pid() as i32, libc::SIGKILL) };
    assert!(kiln_testkit::wait_until(Duration::from_secs(5), || w.has_died()), "the pool did not notice its VM died");
    assert!(w.claim(Vec::new()).await.is_err());
    th.assert_clean();
}
