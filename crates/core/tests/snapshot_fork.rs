//! Snapshots and forks against real VMs: clones are new machines, isolated from each other and
//! from the template; damaged or foreign snapshots are never restored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_core::sandbox::{ensure_snapshot, qemu_version, CreateMode};
use kiln_core::snapshot::{self, Expected, Unusable};
use kiln_core::{ExecRequest, Sandbox, SandboxOptions};
use kiln_image::store::Digest;
use kiln_testkit::{exec, TestHome};

/// The stdout of a shell script that must exit 0 within 120 s.
async fn out(sbx: &Sandbox, script: &str) -> String {
    let c = exec(sbx, ExecRequest::shell(script).timeout(Duration::from_secs(120))).await;
    assert_eq!(c.exit_code(), 0, "{script}: {}", c.stderr);
    c.stdout
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn restored(th: &TestHome) -> Sandbox {
    let s = Sandbox::create(&th.home, &SandboxOptions::default(), &|m| eprintln!("kiln: {m}")).await.unwrap();
    assert!(matches!(s.mode(), CreateMode::Restored(_)), "{:?}", s.mode());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn clones_of_one_snapshot_are_different_machines() {
    let th = TestHome::new();
    let a = restored(&th).await;
    let b = restored(&th).await;
    let probe = "cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; cat /etc/machine-id; date +%s";
    let (oa, ob) = (out(&a, probe).await, out(&b, probe).await);
    let (la, lb): (Vec<&str>, Vec<&str>) = (oa.lines().collect(), ob.lines().collect());
    assert_eq!(la.len(), 5, "{oa}");
    for i in 0..4 {
        assert_ne!(la[i], lb[i], "line {i} equal in both clones: {oa} / {ob}");
    }
    assert_eq!(la[2], a.id());
    for clock in [la[4], lb[4]] {
        let t: i64 = clock.parse().unwrap();
        assert!((t - now()).abs() <= 2, "guest clock {t} vs host {}", now());
    }
    // A file written in one clone is absent in the other and in a new clone of the template.
    out(&a, "echo secret-of-a > /root/a.txt; sync").await;
    assert_eq!(out(&b, "ls /root/a.txt 2>/dev/null || echo absent").await, "absent\n");
    let c = restored(&th).await;
    assert_eq!(out(&c, "ls /root/a.txt 2>/dev/null || echo absent").await, "absent\n");
    drop((a, b, c));
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn template_unchanged_after_clones_write_heavily() {
    let th = TestHome::new();
    let first = restored(&th).await;
    assert!(matches!(first.mode(), CreateMode::Restored(_)));
    let artifacts = first.artifacts().clone();
    drop(first);
    let expected = Expected::new(&artifacts, qemu_version().unwrap(), kiln_core::accel::resolve(&th.home, Default::default()).await.unwrap().0, 1, 256);
    let snap = snapshot::find(&th.home, &expected).unwrap();
    let digest = |n: &str| Digest::of_file(&snap.file(n)).unwrap();
    let before: Vec<Digest> = snapshot::FILES.iter().map(|n| digest(n)).collect();
    let rootfs = kiln_image::BuiltTemplate::load(&th.home, "tiny").unwrap().rootfs;
    for round in 0..2 {
        let mut clones = Vec::new();
        for _ in 0..5 {
            clones.push(restored(&th).await);
        }
        for c in &clones {
            // Disk and RAM (tmpfs) writes in every clone.
            out(c, &format!("dd if=/dev/urandom of=/root/big{round} bs=1M count=16 2>/dev/null; dd if=/dev/zero of=/dev/shm/ram bs=1M count=32 2>/dev/null; sync; echo ok")).await;
        }
    }
    let after: Vec<Digest> = snapshot::FILES.iter().map(|n| digest(n)).collect();
    assert_eq!(before, after, "snapshot files changed");
    // The template's base image still matches its digest.
    kiln_image::Store::new(th.home.store()).get(&rootfs, true).unwrap();
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn damaged_or_foreign_snapshots_are_rebaked_never_restored() {
    let th = TestHome::isolated();
    let progress = std::sync::Mutex::new(Vec::<String>::new());
    let log = |m: &str| progress.lock().unwrap().push(m.to_owned());
    let artifacts = kiln_core::artifacts::prepare(&th.home, "tiny", &log).unwrap();
    let (accel, _) = kiln_core::accel::resolve(&th.home, Default::default()).await.unwrap();
    let expected = Expected::new(&artifacts, qemu_version().unwrap(), accel, 1, 256);
    assert_eq!(snapshot::find(&th.home, &expected).unwrap_err(), Unusable::Missing);
    let snap = ensure_snapshot(&th.home, &artifacts, accel, 1, 256, Duration::from_secs(60), &log).await.unwrap();
    let file = |n: &str| snap.file(n);
    let make = || async {
        let opts = SandboxOptions::default();
        tokio::time::timeout(Duration::from_secs(120), Sandbox::create(&th.home, &opts, &log)).await.expect("no hang").unwrap()
    };
    let unfreeze = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    };

    // Truncated memory file.
    unfreeze("memory");
    let f = std::fs::OpenOptions::new().write(true).open(file("memory")).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    match snapshot::find(&th.home, &expected) {
        Err(Unusable::Invalid(m)) => assert!(m.contains("truncated"), "{m}"),
        other => panic!("{other:?}"),
    }
    let s = make().await;
    assert_eq!(out(&s, "echo alive").await, "alive\n");
    drop(s);
    assert!(progress.lock().unwrap().iter().any(|m| m.contains("re-baking")), "{:?}", progress.lock().unwrap());

    // A flipped byte in the device state (same size).
    unfreeze("state");
    let mut bytes = std::fs::read(file("state")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(file("state"), &bytes).unwrap();
    match snapshot::find(&th.home, &expected) {
        Err(Unusable::Invalid(m)) => assert!(m.contains("checksum"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(make().await);

    // Missing disk.
    std::fs::remove_file(file("disk.qcow2")).unwrap();
    assert!(matches!(snapshot::find(&th.home, &expected), Err(Unusable::Invalid(m)) if m.contains("missing")));
    drop(make().await);

    // Metadata of another QEMU version and machine shape, with a valid checksum: refused.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(file("snapshot.json")).unwrap()).unwrap();
    v["meta"]["qemu"] = "QEMU emulator version 9.9.9".into();
    v["meta"]["memory_mib"] = 512.into();
    let sum = Digest::of_bytes(&serde_json::to_vec(&v["meta"]).unwrap());
    v["checksum"] = sum.hex().into();
    std::fs::write(file("snapshot.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    match snapshot::find(&th.home, &expected) {
        Err(Unusable::Invalid(m)) => assert!(m.contains("QEMU version is QEMU emulator version 9.9.9") && m.contains("512 MiB"), "{m}"),
        other => panic!("{other:?}"),
    }
    let s = make().await;
    assert_eq!(out(&s, "echo alive").await, "alive\n");
    drop(s);
    assert!(snapshot::find(&th.home, &expected).is_ok());
    th.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and built templates: run `make test`, or `cargo test -- --include-ignored` after `make build` and `kiln template build tiny` (and `base`)"]
async fn fork_makes_independent_clones_and_the_parent_carries_on() {
    let th = TestHome::new();
    let opts = SandboxOptions { forkable: true, ..SandboxOptions::default() };
    let mut parent = Sandbox::create(&th.home, &opts, &|m| eprintln!("kiln: {m}")).await.unwrap();
    out(&parent, "echo before-fork > /root/shared.txt; mkdir -p /root/work").await;
    let clones = parent.fork(&th.home, 3).await.unwrap();
    assert_eq!(clones.len(), 3);
    // Everyone sees what was there before the fork.
    for s in clones.iter().chain([&parent]) {
        assert_eq!(out(s, "cat /root/shared.txt").await, "before-fork\n");
    }
    // Files are private to each.
    out(&clones[0], "echo only-0 > /root/work/mine.txt").await;
    for s in clones[1..].iter().chain([&parent]) {
        assert_eq!(out(s, "cat /root/work/mine.txt 2>/dev/null || echo absent").await, "absent\n");
    }
    // Different machines.
    let ids: Vec<String> = futures_ids(&clones, &parent).await;
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), ids.len(), "{ids:?}");
    // Memory: 64 MiB written in one clone leaves the others' free memory alone.
    let before = free(&clones[1]).await;
    out(&clones[0], "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; echo ok").await;
    let after = free(&clones[1]).await;
    assert!((before - after).abs() < 16 * 1024, "clone 1 lost memory: {before} -> {after} KiB");
    // The parent can be forked again, and its clones see its newer files.
    out(&parent, "echo second > /root/second.txt").await;
    let again = parent.fork(&th.home, 1).await.unwrap();
    assert_eq!(out(&again[0], "cat /root/second.txt /root/shared.txt").await, "second\nbefore-fork\n");
    drop(again);
    drop(clones);
    drop(parent);
    th.assert_clean();
}

async fn free(s: &Sandbox) -> i64 {
    out(s, "awk '/MemAvailable/ {print $2}' /proc/meminfo").await.trim().parse().unwrap()
}

async fn futures_ids(clones: &[Sandbox], parent: &Sandbox) -> Vec<String> {
    let mut v = Vec::new();
    for s in clones.iter().chain([parent]) {
        v.push(out(s, "cat /proc/sys/kernel/random/boot_id; hostname").await);
    }
    v
}
