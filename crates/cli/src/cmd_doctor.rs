//! `kiln doctor`: checks the host and says what to fix.

use clap::Args;
use kiln_core::snapshot::free_bytes;
use kiln_image::Home;
use kiln_vmm::{AccelChoice, Qemu};

/// Arguments of `kiln doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also probe the accelerator by booting a guest (slow the first time).
    #[arg(long)]
    probe: bool,
}

struct Report {
    failed: bool,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("  ok    {what:<14} {detail}");
    }
    fn warn(&self, what: &str, detail: impl std::fmt::Display) {
        println!("  warn  {what:<14} {detail}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failed = true;
        println!("  FAIL  {what:<14} {detail}");
    }
}

fn tool(r: &mut Report, name: &str, pkg: &str) {
    match std::process::Command::new("sh").arg("-c").arg(format!("command -v {name}")).output() {
        Ok(o) if o.status.success() => r.ok(name, String::from_utf8_lossy(&o.stdout).trim()),
        _ => r.fail(name, format!("not found: apt-get install {pkg}")),
    }
}

/// Runs `kiln doctor`.
pub async fn run(a: DoctorArgs) -> i32 {
    let home = Home::from_env();
    let mut r = Report { failed: false };
    println!("kiln doctor (home {}, run folders {})", home.root().display(), home.run().display());
    let confined = matches!(kiln_vmm::confine::Policy::from_env(), Ok(kiln_vmm::confine::Policy::Required));
    let qemu = Qemu::default();
    match kiln_vmm::version::of(&qemu.binary).map(|v| (v.line, v.version)) {
        Ok((line, v)) if v.maps_frozen_ram_readonly() => {
            r.ok("qemu", format!("{line} ({})", qemu.binary.display()));
            r.ok("frozen RAM", "mapped read-only by clones (readonly=on,rom=off): no VMM can write the RAM later clones start from");
        }
        Ok((line, v)) => {
            let why = kiln_vmm::version::old_qemu(v);
            if confined {
                r.fail("qemu", format!("{line}: {why}"));
                r.fail("frozen RAM", "would be opened read-write by every clone's VMM; kiln refuses to confine it");
            } else {
                r.warn("qemu", format!("{line}: {why}"));
                r.warn("frozen RAM", "opened read-write by clones (QEMU < 8.2; unconfined VMMs, trusted code only)");
            }
        }
        Err(e) => r.fail("qemu", e),
    }
    match std::process::Command::new("qemu-img").arg("--version").output() {
        Ok(o) if o.status.success() => r.ok("qemu-img", String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim()),
        _ => r.fail("qemu-img", "not found: apt-get install qemu-utils"),
    }
    tool(&mut r, "mkfs.ext4", "e2fsprogs");
    tool(&mut r, "apt-get", "apt");
    tool(&mut r, "mmdebstrap", "mmdebstrap (only for Debian templates like base)");
    match kiln_image::initramfs::find_agent() {
        Ok(p) => r.ok("agent", p.display()),
        Err(e) => r.fail("agent", e),
    }
    match kiln_image::kernel::Kernel::ensure(&home, &|m| eprintln!("kiln: {m}")) {
        Ok(k) => r.ok("kernel", format!("{} ({})", k.release, k.vmlinuz.short())),
        Err(e) => r.fail("kernel", format!("{e}; run `apt-get update` and retry")),
    }
    match kiln_image::kernel::host_tsc_khz() {
        Some(khz) => r.ok("tsc", format!("{khz} kHz (lpj and tsc_early_khz derived from it)")),
        None => r.warn("tsc", "unknown; guests calibrate their delay loop (may hang under TCG); set KILN_TSC_KHZ"),
    }
    match kiln_vmm::accel::kvm_device_usable() {
        Ok(()) if confined && kiln_vmm::confine::kvm_reachable_when_confined().is_err() => {
            r.warn("/dev/kvm", kiln_vmm::confine::kvm_reachable_when_confined().unwrap_err())
        }
        Ok(()) => r.ok("/dev/kvm", "opens read-write (whether guests boot on it is probed by `auto`)"),
        Err(e) => r.warn("/dev/kvm", format!("{e}; guests run under TCG (slow)")),
    }
    match (kiln_vmm::confine::Policy::from_env(), kiln_vmm::confine::host()) {
        (Err(e), _) => r.fail("confinement", e),
        (Ok(kiln_vmm::confine::Policy::Off), _) => r.warn("confinement", "off (KILN_CONFINE=off): VMMs run unconfined as kiln's user; trusted code only"),
        (Ok(_), Ok(c)) => r.ok(
            "confinement",
            format!("own uid per VMM (group {}), mount/net/IPC/UTS namespaces, {}, QEMU seccomp", c.gid(), c.layout.describe()),
        ),
        (Ok(_), Err(e)) => r.fail("confinement", format!("{e}; kiln refuses to start VMs (KILN_CONFINE=off opts out, for trusted code only)")),
    }
    if a.probe {
        match kiln_core::accel::resolve(&home, AccelChoice::Auto).await {
            Ok((accel, why)) => r.ok("accelerator", format!("{accel}: {why}")),
            Err(e) => r.fail("accelerator", e),
        }
    }
    match free_bytes(std::path::Path::new("/dev/shm")) {
        Some(b) if b >= 1 << 30 => r.ok("/dev/shm", format!("{} MiB free", b >> 20)),
        Some(b) => r.warn("/dev/shm", format!("only {} MiB free; snapshots keep guest RAM there", b >> 20)),
        None => r.fail("/dev/shm", "missing; mount a tmpfs there"),
    }
    let _ = std::fs::create_dir_all(home.root());
    match free_bytes(home.root()) {
        Some(b) if b >= 4 << 30 => r.ok("disk", format!("{} GiB free in {}", b >> 30, home.root().display())),
        Some(b) => r.warn("disk", format!("only {} MiB free in {}; templates need ~3 GiB", b >> 20, home.root().display())),
        None => r.warn("disk", "cannot tell free space"),
    }
    if r.failed {
        println!("some checks failed: fix them (`make deps` installs the Debian packages) and run kiln doctor again");
        1
    } else {
        println!("all good");
        0
    }
}
