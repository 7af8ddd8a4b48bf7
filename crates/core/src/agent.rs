//! Typed requests to the guest agent over an [`AgentChannel`]. Every reply is checked for
//! the shape the request expects; anything else is a protocol error.

use std::time::Duration;

use kiln_proto::{GuestMsg, HostMsg, Identity, PROTOCOL_VERSION};
use kiln_vmm::channel::Replies;
use kiln_vmm::AgentChannel;

use crate::error::SandboxError;

/// How long a hello waits for its answer before it is sent again.
const HELLO_RESEND: Duration = Duration::from_secs(5);

/// Commands that may run at once in one sandbox; more are refused (429 through the API).
pub const MAX_CONCURRENT_EXECS: usize = 64;

/// The agent of one sandbox.
#[derive(Debug, Clone)]
pub struct Agent {
    pub(crate) channel: AgentChannel,
    /// Execs running now.
    pub(crate) running: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// What the agent said about itself.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    /// Agent build version.
    pub agent: String,
    /// Guest kernel release.
    pub kernel: String,
}

/// Turns an unexpected reply into an error.
pub(crate) fn unexpected(msg: GuestMsg) -> SandboxError {
    match msg {
        GuestMsg::Error { kind, message, .. } => SandboxError::Guest { kind, message },
        other => SandboxError::Protocol(format!("unexpected reply {other:?}")),
    }
}

impl Agent {
    /// Wraps a channel.
    pub fn new(channel: AgentChannel) -> Agent {
        Agent { channel, running: Default::default() }
    }

    /// The channel.
    pub fn channel(&self) -> &AgentChannel {
        &self.channel
    }

    /// Sends a request and returns the stream of its replies.
    pub(crate) async fn call(&self, make: impl FnOnce(u32) -> HostMsg) -> Result<Replies, SandboxError> {
        let replies = self.channel.request();
        self.channel.send(&make(replies.id())).await?;
        Ok(replies)
    }

    async fn expect_done(&self, make: impl FnOnce(u32) -> HostMsg) -> Result<(), SandboxError> {
        let mut r = self.call(make).await?;
        match r.next().await? {
            GuestMsg::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Says hello; the first reply of a booted or restored guest.
    pub async fn hello(&self) -> Result<AgentInfo, SandboxError> {
        let mut r = self.call(|id| HostMsg::Hello { id, version: PROTOCOL_VERSION }).await?;
        let id = r.id();
        let reply = loop {
            // A hello that crossed the guest reopening its port (right after a restore) may
            // be lost; ask again with the same id (an extra answer is ignored).
            match tokio::time::timeout(HELLO_RESEND, r.next()).await {
                Ok(reply) => break reply?,
                Err(_) => self.channel.send(&HostMsg::Hello { id, version: PROTOCOL_VERSION }).await?,
            }
        };
        match reply {
            GuestMsg::HelloAck { version, agent, kernel, .. } if version == PROTOCOL_VERSION => Ok(AgentInfo { agent, kernel }),
            GuestMsg::HelloAck { version, .. } => {
                Err(SandboxError::Protocol(format!("agent speaks protocol {version}, kiln speaks {PROTOCOL_VERSION}; rebuild the template")))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Round trip with no work.
    pub async fn ping(&self) -> Result<(), SandboxError> {
        let mut r = self.call(|id| HostMsg::Ping { id }).await?;
        match r.next().await? {
            GuestMsg::Pong { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the guest who it is.
    pub async fn set_identity(&self, identity: Identity) -> Result<(), SandboxError> {
        self.expect_done(|id| HostMsg::SetIdentity { id, identity }).await
    }

    /// Flushes the guest's filesystems.
    pub async fn sync(&self) -> Result<(), SandboxError> {
        self.expect_done(|id| HostMsg::Sync { id }).await
    }

    /// Asks the guest to power off; waits at most `wait` for the acknowledgement.
    pub async fn shutdown(&self, wait: Duration) -> Result<(), SandboxError> {
        tokio::time::timeout(wait, self.expect_done(|id| HostMsg::Shutdown { id }))
            .await
            .unwrap_or(Ok(()))
    }
}
