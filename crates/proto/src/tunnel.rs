//! The egress tunnel: TCP connections made inside the guest to the agent's proxy listener
//! (`127.0.0.1:3128` in the guest, named by `HTTP_PROXY`/`HTTPS_PROXY`) are carried, multiplexed,
//! over a second virtio-serial port ([`NET_PORT`]) to kiln's egress proxy on the host. The guest
//! has no network device at all; this tunnel is its only way out, and only through the proxy.
//!
//! Frames are the same `[u32 LE length][postcard]` as the control channel, carrying [`NetMsg`].
//! Flow control is by credit: each side may have at most [`WINDOW`] bytes of one connection in
//! flight toward the other; the receiver returns credit ([`NetMsg::Credit`]) as it consumes
//! them. A side that exceeds its credit has broken the protocol (the host drops the tunnel).

use serde::{Deserialize, Serialize};

/// Name of the virtio-serial port that carries the tunnel.
pub const NET_PORT: &str = "kiln.net";
/// Address of the agent's proxy listener inside the guest.
pub const GUEST_PROXY_ADDR: &str = "127.0.0.1:3128";
/// Bytes one side may send on one connection before it gets credit back.
pub const WINDOW: u32 = 256 * 1024;
/// Most connections open at once in one guest.
pub const MAX_CONNS: usize = 256;

/// One message on the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetMsg {
    /// Guest → host: a process opened connection `conn` (ids chosen by the guest, never reused
    /// while open).
    Open {
        /// Connection id.
        conn: u32,
    },
    /// Either way: bytes of `conn` (at most [`crate::MAX_CHUNK`]).
    Data {
        /// Connection id.
        conn: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Either way: the sender will send no more bytes on `conn` (half close). When both
    /// sides have sent `Close`, the connection is gone and its id may be reused.
    Close {
        /// Connection id.
        conn: u32,
    },
    /// Either way: the sender consumed `bytes` more of `conn`; the other side may send them.
    Credit {
        /// Connection id.
        conn: u32,
        /// Bytes granted.
        bytes: u32,
    },
    /// Either way: drop `conn` at once, in both directions.
    Reset {
        /// Connection id.
        conn: u32,
    },
}

impl NetMsg {
    /// The connection the message is about.
    pub fn conn(&self) -> u32 {
        match self {
            NetMsg::Open { conn } | NetMsg::Data { conn, .. } | NetMsg::Close { conn } | NetMsg::Credit { conn, .. } | NetMsg::Reset { conn } => *conn,
        }
    }

    /// Checks bounds the host relies on.
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        match self {
            NetMsg::Data { data, .. } if data.len() > crate::MAX_CHUNK => Err(crate::Invalid("tunnel chunk too large")),
            NetMsg::Credit { bytes, .. } if *bytes > WINDOW => Err(crate::Invalid("credit above the window")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, FrameDecoder};

    #[test]
    fn round_trip_and_bounds() {
        let m = NetMsg::Data { conn: 3, data: b"GET / HTTP/1.1\r\n".to_vec() };
        let mut d = FrameDecoder::new();
        d.push(&encode(&m));
        assert_eq!(d.next::<NetMsg>().unwrap(), Some(m.clone()));
        assert_eq!(m.conn(), 3);
        assert!(NetMsg::Data { conn: 1, data: vec![0; crate::MAX_CHUNK + 1] }.validate().is_err());
        assert!(NetMsg::Credit { conn: 1, bytes: WINDOW + 1 }.validate().is_err());
        assert!(NetMsg::Open { conn: 1 }.validate().is_ok());
    }
}
