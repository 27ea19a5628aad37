//! Error codes of the protocol and the error type of encoding and decoding.

use std::fmt;

/// Every error code PROTOCOL.md defines. `as_str` is the wire spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    UnknownOp,
    UnsupportedVersion,
    FrameTooLarge,
    NotFound,
    UnknownPolicy,
    Unavailable,
    Timeout,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::NotFound,
        ErrorCode::UnknownPolicy,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownPolicy => "unknown_policy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses a wire code; unknown codes (from a newer server) are `None`.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Timeout)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value could not be encoded or a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}
