//! Length-prefixed framing: a 4-byte big-endian length `N`, then `N` bytes.
//!
//! The codec checks the announced length before buffering the body, so a peer that
//! announces 4 GiB costs us four bytes of memory, not four gigabytes.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// A frame that cannot be accepted. Both variants end the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds max_frame ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("zero-length frame")]
    Empty,
}

impl From<std::io::Error> for FrameErrorIo {
    fn from(e: std::io::Error) -> Self {
        FrameErrorIo::Io(e)
    }
}

/// `tokio_util` codecs need an error that can carry I/O errors too.
#[derive(Debug, thiserror::Error)]
pub enum FrameErrorIo {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(std::io::Error),
}

/// Encodes the 4-byte header for a body of `len` bytes.
pub fn encode_frame_header(len: usize) -> [u8; FRAME_HEADER_LEN] {
    // Callers bound `len` by max_frame (<= u32::MAX) before they get here.
    (u32::try_from(len).unwrap_or(u32::MAX)).to_be_bytes()
}

/// Incremental frame decoder (and encoder of already-encoded bodies).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Takes one complete frame body off the front of `buf`, if there is one.
    pub fn decode_frame(&self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            // Reserve what the rest of this frame needs so the next read can fill it
            // without repeated reallocation.
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        Ok(Some(buf.split_to(len)))
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameErrorIo;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameErrorIo> {
        Ok(self.decode_frame(src)?)
    }
}

/// Encodes a body (without header) into a frame.
impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameErrorIo;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameErrorIo> {
        if body.len() > self.max_frame {
            return Err(FrameError::TooLarge {
                len: body.len(),
                max: self.max_frame,
            }
            .into());
        }
        dst.reserve(FRAME_HEADER_LEN + body.len());
        dst.put_slice(&encode_frame_header(body.len()));
        dst.put_slice(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_oversized_before_buffering() {
        let codec = FrameCodec::new(10);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(codec.decode_frame(&mut buf), Err(FrameError::Empty));
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            codec.decode_frame(&mut buf),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 10
            })
        );
    }

    #[test]
    fn waits_for_a_whole_frame() {
        let codec = FrameCodec::new(10);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2][..]);
        assert_eq!(codec.decode_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&[3, 0, 0]);
        assert_eq!(
            codec.decode_frame(&mut buf).unwrap().unwrap().as_ref(),
            &[1, 2, 3]
        );
        assert_eq!(buf.as_ref(), &[0, 0]);
    }
}
