//! The shoal wire protocol, version 1: framing, requests, responses, error codes.
//!
//! This module is the only place in shoal that knows MessagePack. The daemon imports
//! it to parse requests and encode replies; the client uses it the other way round.
//! Keeping both directions here means a change to the contract is one diff, and the
//! property tests below exercise exactly the code that both sides run.
//!
//! The contract itself is `PROTOCOL.md`: a 4-byte big-endian length, then one
//! MessagePack map per frame; `hello` first; responses matched by `id`.

mod error;
mod frame;
pub mod fuzz;
mod request;
mod response;
mod value;

pub use error::{ErrorCode, ProtoError};
pub use frame::{encode_frame_header, FrameCodec, FrameError, FrameErrorIo, FRAME_HEADER_LEN};
pub use request::MAX_DURATION_MS;
pub use request::{parse_request, Limits, Op, ParseError, Request, RevokeTarget};
pub use response::{
    decode_response, decode_response_id, encode_err, encode_ok, encode_ok_into, ErrorBody, Frame,
    GetResult, HelloResult, InvalidateResult, InvalidateTagsResult, RatelimitDecision, ResetResult,
    RevokeUserResult, RevokedResult, RotateResult, SessionCreated, SessionInfo, SessionListEntry,
    SetResult, Source, UpdatedResult,
};
pub use response::{
    AdminInfo, ClearOverrideResult, ConcurrentResult, LockAcquireResult, LockExtendResult,
    LockReleaseResult, OverrideResult, QuotaKeyUsage, QuotaUsageResult, RatelimitDecisionExt,
    ReleaseResult, ReserveResult, ShmAttachResult,
};
pub use value::{from_value, to_value};

/// The protocol version this crate speaks.
pub const VERSION: u64 = 1;
/// Default largest frame body either side accepts (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Default longest key or name, in bytes.
pub const DEFAULT_MAX_KEY: usize = 4096;
