use strata_proto::v1::{response, ErrorCode, Response};

/// Why bytes from a peer were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// A compressed layer index that decompresses past its bound; `len`
    /// is how far decompression went (one byte past `max`).
    #[error("a compressed layer index decompresses to more than {max} bytes")]
    IndexTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    BadFrame(String),
    #[error("protocol version {0} is not one this node speaks")]
    UnknownVersion(u32),
    #[error("the request names no operation this node knows")]
    UnknownRequest,
    #[error("{what}: {count} given, at most {max} allowed")]
    OverLimit { what: &'static str, count: usize, max: usize },
}

impl WireError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::TooLarge { .. } | WireError::IndexTooLarge { .. } => ErrorCode::TooLarge,
            WireError::BadFrame(_) => ErrorCode::BadFrame,
            WireError::UnknownVersion(_) => ErrorCode::UnknownVersion,
            WireError::UnknownRequest => ErrorCode::UnknownRequest,
            WireError::OverLimit { .. } => ErrorCode::OverLimit,
        }
    }

    /// The error frame a server sends before ending the stream.
    pub fn to_response(&self) -> Response {
        Response {
            kind: Some(response::Kind::Error(strata_proto::v1::Error {
                code: self.code() as i32,
                message: self.to_string(),
            })),
        }
    }
}
