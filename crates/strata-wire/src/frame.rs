use prost::Message;

use crate::WireError;

/// Largest frame either side accepts: a batch reply carries one chunk of at
/// most 256 KiB, so this leaves ample room and bounds what a peer can make
/// us buffer.
pub const MAX_FRAME: usize = 4 << 20;

const HEADER: usize = 4;

/// `message` as one frame.
pub fn encode_frame(message: &impl Message) -> Result<Vec<u8>, WireError> {
    let len = message.encoded_len();
    if len > MAX_FRAME {
        return Err(WireError::TooLarge { len, max: MAX_FRAME });
    }
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode(&mut out).map_err(|e| WireError::BadFrame(e.to_string()))?;
    Ok(out)
}

/// Splits a byte stream into frames, whatever pieces it arrives in. A frame
/// over the limit is refused as soon as its length is read, before its body
/// is buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's body, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(header) = self.buf.get(..HEADER) else { return Ok(None) };
        let mut len = [0u8; HEADER];
        len.copy_from_slice(header);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLarge { len, max: MAX_FRAME });
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let body = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(body))
    }

    /// Bytes received that do not yet make a frame (at the end of a stream:
    /// a truncated frame).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}
