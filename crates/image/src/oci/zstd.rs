//! A zstd stream read frame after frame (a stream may hold several, as concatenated files do),
//! by the pure-Rust decoder.

use std::io::{self, BufRead, BufReader, Read};

use ruzstd::decoding::StreamingDecoder;

/// Decompresses every frame of a zstd stream in turn; an empty stream is an error, as is
/// anything after the last frame that is not a frame.
pub(super) struct Frames<R: Read> {
    /// The frame being read; `None` between two frames.
    frame: Option<StreamingDecoder<BufReader<R>, ruzstd::decoding::FrameDecoder>>,
    /// The stream, between two frames.
    source: Option<BufReader<R>>,
    started: bool,
}

impl<R: Read> Frames<R> {
    pub(super) fn new(source: R) -> Self {
        Frames { frame: None, source: Some(BufReader::new(source)), started: false }
    }
}

impl<R: Read> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(frame) = self.frame.as_mut() {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.source = self.frame.take().map(StreamingDecoder::into_inner);
            }
            let Some(mut source) = self.source.take() else { return Ok(0) };
            if source.fill_buf()?.is_empty() {
                if !self.started {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "an empty zstd stream"));
                }
                return Ok(0);
            }
            self.started = true;
            let frame = StreamingDecoder::new(source).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
            self.frame = Some(frame);
        }
    }
}
