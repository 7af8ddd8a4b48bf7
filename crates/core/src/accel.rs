//! Choosing the accelerator. `auto` boots a guest on KVM once and remembers whether it
//! answered; nested or broken KVM (which opens fine and then hangs) falls back to TCG.

use std::path::PathBuf;
use std::time::Duration;

use kiln_image::Home;
use kiln_vmm::accel::kvm_device_usable;
use kiln_vmm::driver::Memory;
use kiln_vmm::{default_driver, Accel, AccelChoice, AgentChannel, VmError, VmSpec};
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::artifacts::kernel_and_initramfs;
use crate::error::SandboxError;

/// How long a KVM guest may take to answer before KVM is declared unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct ProbeRecord {
    host_kernel: String,
    qemu: String,
    kvm_boots: bool,
    detail: String,
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}

fn record_path(home: &Home) -> PathBuf {
    home.root().join("accel-probe.json")
}

/// The accelerator to use for `choice`, probing once for `auto`. Returns it and a note on
/// how it was chosen.
pub async fn resolve(home: &Home, choice: AccelChoice) -> Result<(Accel, String), SandboxError> {
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, "requested".into())),
        AccelChoice::Kvm => {
            kvm_device_usable().map_err(|e| kiln_vmm::VmError::Accel("kvm".into(), e))?;
            Ok((Accel::Kvm, "requested".into()))
        }
        AccelChoice::Auto => {
            if let Err(e) = kvm_device_usable() {
                return Ok((Accel::Tcg, format!("auto: {e}")));
            }
            let qemu = default_driver().version()?;
            let path = record_path(home);
            if let Some(r) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<ProbeRecord>(&b).ok()) {
                if r.host_kernel == host_kernel() && r.qemu == qemu {
                    let accel = if r.kvm_boots { Accel::Kvm } else { Accel::Tcg };
                    return Ok((accel, format!("auto (remembered probe: {})", r.detail)));
                }
            }
            let (kvm_boots, detail) = match probe_kvm(home).await {
                Ok(()) => (true, "a guest booted on KVM".to_owned()),
                Err(e) => (false, format!("KVM present but a guest did not boot on it: {}", first_line(&e.to_string()))),
            };
            let rec = ProbeRecord { host_kernel: host_kernel(), qemu, kvm_boots, detail: detail.clone() };
            let _ = std::fs::create_dir_all(home.root());
            let _ = kiln_image::atomic::write_atomic(&path, &serde_json::to_vec_pretty(&rec).expect("json"));
            Ok((if kvm_boots { Accel::Kvm } else { Accel::Tcg }, format!("auto (probed: {detail})")))
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// Boots kernel + initramfs (no disk) on KVM and waits for the agent's hello.
async fn probe_kvm(home: &Home) -> Result<(), SandboxError> {
    let (kernel, kernel_path, _, initrd_path) = kernel_and_initramfs(home, &kiln_image::quiet)?;
    let run_dir = home.run().join(format!("probe-{}", crate::random::hex(4)));
    crate::cleanup::make_owned_dir(&run_dir).map_err(|source| SandboxError::Io { what: format!("create {}", run_dir.display()), source })?;
    let spec = VmSpec {
        kernel: kernel_path,
        initrd: initrd_path,
        cmdline: kernel.cmdline(kiln_image::kernel::host_tsc_khz(), "kiln.hostname=probe"),
        cpus: 1,
        memory_mib: 256,
        accel: Accel::Kvm,
        disk: None,
        disk_backing: None,
        run_dir,
        memory: Memory::Anonymous,
        incoming: false,
    };
    let vm = default_driver().launch(spec)?;
    let result = tokio::time::timeout(PROBE_TIMEOUT, async {
        let ch = AgentChannel::connect(&vm.control_socket(), Duration::from_secs(5)).await?;
        let agent = Agent::new(ch);
        tokio::select! {
            r = agent.hello() => r.map(|_| ()),
            _ = vm.exited() => Err(VmError::Exited { status: "during the KVM probe".into(), console: vm.console_tail() }.into()),
        }
    })
    .await;
    drop(vm);
    match result {
        Ok(r) => r,
        Err(_) => Err(SandboxError::BootTimeout { secs: PROBE_TIMEOUT.as_secs(), console: String::new() }),
    }
}
