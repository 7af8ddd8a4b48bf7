//! Length-prefixed framing: `[u32 LE length][postcard payload]`.

use serde::{de::DeserializeOwned, Serialize};

use crate::MAX_FRAME;

/// Why bytes could not be turned into a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announced more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    Oversized(usize),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// The payload is not a valid message (unknown type, bad field).
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes one message as a complete frame.
///
/// # Panics
/// If the encoded message exceeds [`MAX_FRAME`]; senders split data into chunks of at most
/// [`crate::MAX_CHUNK`] bytes so this cannot happen for well-formed messages.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut framed = postcard::to_extend(msg, vec![0u8; 4]).expect("serializing to a Vec cannot fail");
    let len = framed.len() - 4;
    assert!(len <= MAX_FRAME, "message of {len} bytes exceeds MAX_FRAME");
    framed[..4].copy_from_slice(&(len as u32).to_le_bytes());
    framed
}

/// Incremental decoder: feed it bytes as they arrive, take whole messages out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete message, if one is buffered.
    #[allow(clippy::should_implement_trait)] // fallible, and generic over the message type
    ///
    /// An oversized length prefix is an error as soon as the prefix is seen, so a hostile peer
    /// cannot make the decoder buffer more than one maximal frame.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::Oversized(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = postcard::from_bytes(&self.buf[4..4 + len]).map_err(|e| DecodeError::Malformed(e.to_string()));
        self.buf.drain(..4 + len);
        msg.map(Some)
    }

    /// Call when the stream has ended: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Truncated(self.buf.len()))
        }
    }

    /// Drops everything before the first complete frame that decodes as a message `accept`
    /// approves of, and returns that message. Used to find the start of a new conversation in a
    /// stream that may begin with the tail of an old one (bytes a guest wrote to a host that
    /// has gone). Returns `None` (keeping the bytes) if no such frame is complete yet.
    pub fn resync<T: DeserializeOwned>(&mut self, accept: impl Fn(&T) -> bool) -> Option<T> {
        // Positions before the first frame that is still incomplete can never start the
        // wanted frame once rejected, so they are dropped: the buffer stays near one frame.
        let mut keep_from = None;
        for start in 0..self.buf.len().saturating_sub(3) {
            let b = &self.buf[start..];
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if len == 0 || len > MAX_FRAME {
                continue;
            }
            if b.len() < 4 + len {
                keep_from.get_or_insert(start);
                continue;
            }
            if let Ok(msg) = postcard::from_bytes::<T>(&b[4..4 + len]) {
                if accept(&msg) {
                    self.buf.drain(..start + 4 + len);
                    return Some(msg);
                }
            }
        }
        let drop_to = keep_from.unwrap_or(self.buf.len().saturating_sub(3));
        self.buf.drain(..drop_to);
        None
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestMsg, HostMsg};

    #[test]
    fn round_trip_split_at_every_byte() {
        let msg = GuestMsg::Stdout { id: 7, data: b"hello\nworld".to_vec() };
        let bytes = encode(&msg);
        for split in 0..bytes.len() {
            let mut d = FrameDecoder::new();
            d.push(&bytes[..split]);
            assert_eq!(d.next::<GuestMsg>().unwrap(), None);
            d.push(&bytes[split..]);
            assert_eq!(d.next::<GuestMsg>().unwrap(), Some(msg.clone()));
            d.finish().unwrap();
        }
    }

    #[test]
    fn oversized_frame_rejected_before_body() {
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME as u32) + 1).to_le_bytes());
        assert_eq!(d.next::<GuestMsg>(), Err(DecodeError::Oversized(MAX_FRAME + 1)));
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_le_bytes());
        assert!(matches!(d.next::<GuestMsg>(), Err(DecodeError::Oversized(_))));
    }

    #[test]
    fn truncated_frame_reported_at_end() {
        let bytes = encode(&GuestMsg::Pong { id: 1 });
        let mut d = FrameDecoder::new();
        d.push(&bytes[..bytes.len() - 1]);
        assert_eq!(d.next::<GuestMsg>().unwrap(), None);
        assert_eq!(d.finish(), Err(DecodeError::Truncated(bytes.len() - 1)));
    }

    #[test]
    fn unknown_message_type_is_malformed() {
        // Variant index 200 does not exist.
        let mut d = FrameDecoder::new();
        d.push(&[2, 0, 0, 0, 200, 1]);
        assert!(matches!(d.next::<GuestMsg>(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn garbage_payload_is_malformed() {
        let mut d = FrameDecoder::new();
        d.push(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next::<HostMsg>(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn resync_skips_a_stale_tail() {
        let mut stale = encode(&GuestMsg::Stdout { id: 3, data: vec![7; 100] });
        stale.drain(..10); // the head went to the previous host
        let mut d = FrameDecoder::new();
        d.push(&stale);
        let hello = GuestMsg::HelloAck { id: 99, version: 1, agent: "a".into(), kernel: "k".into() };
        let ok = |m: &GuestMsg| matches!(m, GuestMsg::HelloAck { id: 99, .. });
        assert_eq!(d.resync::<GuestMsg>(ok), None);
        d.push(&encode(&hello));
        d.push(&encode(&GuestMsg::Pong { id: 100 }));
        assert_eq!(d.resync::<GuestMsg>(ok), Some(hello));
        assert_eq!(d.next::<GuestMsg>().unwrap(), Some(GuestMsg::Pong { id: 100 }));
    }

    #[test]
    fn several_frames_in_one_push() {
        let mut bytes = encode(&GuestMsg::Pong { id: 1 });
        bytes.extend(encode(&GuestMsg::Pong { id: 2 }));
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        assert_eq!(d.next::<GuestMsg>().unwrap(), Some(GuestMsg::Pong { id: 1 }));
        assert_eq!(d.next::<GuestMsg>().unwrap(), Some(GuestMsg::Pong { id: 2 }));
        assert_eq!(d.next::<GuestMsg>().unwrap(), None);
    }
}
