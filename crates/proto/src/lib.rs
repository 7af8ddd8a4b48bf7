//! The protocol between kiln on the host and `kiln-agent`, the guest's PID 1.
//!
//! Both sides exchange length-prefixed frames over a virtio-serial port. A frame is a
//! little-endian `u32` payload length followed by that many bytes of a [postcard]-encoded
//! message: [`HostMsg`] from the host, [`GuestMsg`] from the guest. Every request carries an
//! id chosen by the host; every reply and event carries the id it belongs to, so several
//! requests can be in flight at once.
//!
//! The guest is hostile. [`frame::FrameDecoder`] refuses a frame longer than [`MAX_FRAME`]
//! before reading its body, and [`GuestMsg::validate`] bounds every field the host keeps.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod limits;
pub mod messages;
pub mod tunnel;

pub use frame::{encode, DecodeError, FrameDecoder};
pub use limits::*;
pub use messages::*;

/// Version of this protocol. The host sends it in [`HostMsg::Hello`]; an agent that speaks
/// another version answers with an error and the host refuses to use it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port that carries the control channel.
pub const CONTROL_PORT: &str = "kiln";
