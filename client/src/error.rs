//! The client's error type, and which failures are worth retrying.
//!
//! Callers mostly need one decision from an error: try again later (or fall back
//! to the database), or give up because retrying cannot help. `Error::is_retryable`
//! encodes that decision once, so `get_or_load` and application retry loops agree:
//! transport trouble and the server's `unavailable`/`timeout` are retryable; a bad
//! request, a value that does not decode, or a misbehaving server are not.

use std::io;

use crate::proto::{ErrorBody, ErrorCode, ProtoError};

/// Everything a call to shoald can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be connected, or the `hello` handshake did not complete
    /// (daemon not running, socket missing, connect timeout). Retryable.
    #[error("cannot connect to shoald: {0}")]
    Connect(#[source] io::Error),
    /// Writing the request failed; the connection is dropped. Retryable.
    #[error("I/O error on the shoald connection: {0}")]
    Io(#[source] io::Error),
    /// The connection died (EOF, read error) while the call was in flight. The
    /// request may or may not have been applied. Retryable.
    #[error("connection to shoald lost")]
    ConnectionLost,
    /// No answer within the per-call timeout. Retryable.
    #[error("shoald did not answer within the call timeout")]
    Timeout,
    /// shoald answered with an error. Retryable iff the code is (`unavailable`,
    /// `timeout`). `code` is `None` for a code newer than this crate; `raw_code` is
    /// the wire spelling either way.
    #[error("shoald error `{raw_code}`: {msg}")]
    Server {
        code: Option<ErrorCode>,
        raw_code: String,
        msg: String,
    },
    /// The request is larger than the server's `max_frame`; refused before sending.
    #[error("request of {len} bytes exceeds the server's max_frame ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    /// shoald sent something the protocol does not allow. Not retryable: the same
    /// server will do it again.
    #[error("protocol violation by shoald: {0}")]
    Protocol(String),
    /// A typed value could not be encoded, or a cached value could not be decoded
    /// into the requested type. Not retryable.
    #[error("cannot encode or decode a cache value: {0}")]
    Codec(#[source] ProtoError),
    /// `Client::close` was called.
    #[error("the shoal client was closed")]
    Closed,
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(_) | Error::Io(_) | Error::ConnectionLost | Error::Timeout => true,
            Error::Server { code, .. } => code.is_some_and(ErrorCode::is_retryable),
            Error::TooLarge { .. } | Error::Protocol(_) | Error::Codec(_) | Error::Closed => false,
        }
    }

    /// The server's error code, for errors shoald answered with.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => *code,
            _ => None,
        }
    }

    pub(crate) fn from_body(body: ErrorBody) -> Error {
        Error::Server {
            code: body.code(),
            raw_code: body.code,
            msg: body.msg,
        }
    }

    /// A copy of this error. One failure (a dead connection, a failed reconnect)
    /// is reported to many waiting callers, but `io::Error` is not `Clone`: its kind
    /// and message survive, which is all a caller can act on.
    pub(crate) fn duplicate(&self) -> Error {
        let io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            Error::Connect(e) => Error::Connect(io(e)),
            Error::Io(e) => Error::Io(io(e)),
            Error::ConnectionLost => Error::ConnectionLost,
            Error::Timeout => Error::Timeout,
            Error::Server {
                code,
                raw_code,
                msg,
            } => Error::Server {
                code: *code,
                raw_code: raw_code.clone(),
                msg: msg.clone(),
            },
            Error::TooLarge { len, max } => Error::TooLarge {
                len: *len,
                max: *max,
            },
            Error::Protocol(m) => Error::Protocol(m.clone()),
            Error::Codec(e) => Error::Codec(match e {
                ProtoError::Encode(m) => ProtoError::Encode(m.clone()),
                ProtoError::Decode(m) => ProtoError::Decode(m.clone()),
                ProtoError::TooLarge { len, max } => ProtoError::TooLarge {
                    len: *len,
                    max: *max,
                },
            }),
            Error::Closed => Error::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability() {
        let server = |code: ErrorCode| Error::Server {
            code: Some(code),
            raw_code: code.as_str().into(),
            msg: String::new(),
        };
        assert!(Error::Connect(io::ErrorKind::NotFound.into()).is_retryable());
        assert!(Error::Io(io::ErrorKind::BrokenPipe.into()).is_retryable());
        assert!(Error::ConnectionLost.is_retryable());
        assert!(Error::Timeout.is_retryable());
        assert!(server(ErrorCode::Unavailable).is_retryable());
        assert!(server(ErrorCode::Timeout).is_retryable());
        assert!(!server(ErrorCode::BadRequest).is_retryable());
        assert!(!server(ErrorCode::FrameTooLarge).is_retryable());
        assert_eq!(
            server(ErrorCode::NotFound).code(),
            Some(ErrorCode::NotFound)
        );
        let unknown = Error::Server {
            code: None,
            raw_code: "from_the_future".into(),
            msg: String::new(),
        };
        assert!(!unknown.is_retryable());
        assert!(!Error::Protocol("x".into()).is_retryable());
        assert!(!Error::Codec(ProtoError::Decode("x".into())).is_retryable());
        assert!(!Error::TooLarge { len: 2, max: 1 }.is_retryable());
        assert!(!Error::Closed.is_retryable());
    }

    #[test]
    fn duplicate_keeps_what_callers_act_on() {
        let e = Error::Connect(io::Error::new(io::ErrorKind::NotFound, "no socket"));
        let d = e.duplicate();
        assert!(matches!(&d, Error::Connect(io) if io.kind() == io::ErrorKind::NotFound));
        assert_eq!(d.to_string(), e.to_string());
    }
}
