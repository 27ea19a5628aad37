//! `OpError`: the error one request is answered with (a wire error code and a
//! message), and how a Redis failure becomes one. Every op's handler returns it.

use shoal_client::proto::ErrorCode;

use crate::store::StoreError;

/// An error answered for one request.
#[derive(Debug)]
pub struct OpError {
    pub code: ErrorCode,
    pub msg: String,
}

impl OpError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        OpError {
            code,
            msg: msg.into(),
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Timeout(_) => ErrorCode::Timeout,
            StoreError::Redis(_) => ErrorCode::Internal,
        };
        OpError::new(code, e.to_string())
    }
}
