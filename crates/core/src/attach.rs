//! Attaching to a just-started VM: its agent's channel and hello, a watchdog for the VMM, and
//! what the console says when the guest died.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_vmm::{AgentChannel, Vm};

use crate::agent::{Agent, AgentInfo};
use crate::error::SandboxError;

/// What the guest kernel's last words on the console say happened to it, if anything.
pub fn guest_fate(console: &str) -> Option<&'static str> {
    [
        ("Kernel panic", "the guest kernel panicked"),
        ("reboot: System halted", "the guest halted"),
        ("reboot: Power down", "the guest powered off"),
        ("reboot: Restarting system", "the guest rebooted"),
    ]
    .iter()
    .find(|(needle, _)| console.contains(needle))
    .map(|(_, fate)| *fate)
}

/// Connects to a just-started VM's agent, waits for its hello, and starts a watchdog that
/// notices when the VMM dies. On failure the VM is killed (by dropping it).
/// What [`attach`] yields: the agent, what it said of itself, and the watchdog's "died" slot.
pub(crate) type Attached = (Agent, AgentInfo, Arc<Mutex<Option<String>>>);

pub(crate) async fn attach(vm: &dyn Vm, timeout: Duration) -> Result<Attached, SandboxError> {
    let died = Arc::new(Mutex::new(None));
    let exited = vm.exit_watch()?;
    let channel = AgentChannel::connect(&vm.control_socket(), Duration::from_secs(10)).await?;
    {
        let died = died.clone();
        let ch = channel.clone();
        let console = vm.console_log();
        tokio::spawn(async move {
            exited.await;
            let tail = kiln_vmm::driver::console_tail(&console);
            *died.lock().unwrap_or_else(|e| e.into_inner()) = Some(tail);
            ch.poison("the VM exited");
        });
    }
    let agent = Agent::new(channel);
    let hello = tokio::time::timeout(timeout, agent.hello()).await;
    let info = match hello {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(console) = died.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return Err(SandboxError::Died { status: "during boot".into(), console });
            }
            return Err(e);
        }
        Err(_) => return Err(SandboxError::BootTimeout { secs: timeout.as_secs(), console: vm.console_tail() }),
    };
    Ok((agent, info, died))
}
