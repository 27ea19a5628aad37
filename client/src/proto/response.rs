//! Responses: `{"id", "ok"}` or `{"id", "err": {"code", "msg"}}`, and the typed results.
//!
//! The daemon encodes a result once, straight into a complete frame (header
//! included), so a hit costs one allocation. Clients first read only the `id` to
//! route a response to its caller, then the caller decodes its own result type.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{encode_frame_header, ErrorCode, ProtoError, FRAME_HEADER_LEN};

/// A complete encoded frame: header and body.
pub type Frame = Vec<u8>;

/// Which level of the cache answered a `cache.get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    L1,
    L2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    pub version: u64,
    pub server: String,
    pub node: String,
    pub max_frame: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GetResult {
    pub hit: bool,
    pub value: Option<Bytes>,
    pub from: Option<Source>,
    pub ttl_ms: Option<u64>,
    pub lease: Option<String>,
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetResult {
    pub stored: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidateResult {
    pub seq: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidateTagsResult {
    pub seq: String,
    pub keys: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub token: String,
    pub expires_at_ms: u64,
    pub absolute_expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub user: String,
    pub data: Bytes,
    pub created_at_ms: u64,
    pub last_seen_ms: u64,
    pub expires_at_ms: u64,
    pub absolute_expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatedResult {
    pub updated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateResult {
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedResult {
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeUserResult {
    pub revoked: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionListEntry {
    pub session_id: String,
    pub created_at_ms: u64,
    pub last_seen_ms: u64,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatelimitDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetResult {
    pub reset: bool,
}

/// `ratelimit.check` / `ratelimit.peek` as shoald answers them: the five fields of
/// [`RatelimitDecision`] plus optional extras (a client that knows only the five
/// ignores the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatelimitDecisionExt {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
    /// The policy's window (for the `RateLimit-Policy` header).
    #[serde(default)]
    pub window_ms: Option<u64>,
    /// Set when Redis was unreachable and the policy's `on_unavailable` mode
    /// decided instead: `"open"`, `"closed"` or `"local"`.
    #[serde(default)]
    pub fallback: Option<String>,
    /// The policy's header style (`"draft-7"`, `"draft-8"`, `"legacy"`) when it
    /// sets one; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
}

/// `ratelimit.reserve`: the slot is booked when `granted`; the caller sleeps
/// `wait_ms` and then goes. Not granted: nothing was booked, and `wait_ms` is how
/// far away the next slot was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveResult {
    pub granted: bool,
    pub wait_ms: u64,
}

/// `ratelimit.acquire_concurrent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrentResult {
    pub acquired: bool,
    /// The lease to give back with `ratelimit.release` (nil when not acquired).
    pub lease: Option<String>,
    pub limit: u64,
    /// In-flight slots left after this one.
    pub remaining: u64,
    /// Not acquired: until the oldest lease expires (an upper bound: a release
    /// frees a slot sooner). 0 when acquired.
    pub retry_after_ms: u64,
    /// Acquired: how long the lease lives if never released.
    pub lease_ms: u64,
}

/// `ratelimit.release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResult {
    /// False when the lease had already expired or been released.
    pub released: bool,
}

/// `lock.acquire`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockAcquireResult {
    pub acquired: bool,
    /// The holder's token, for `lock.extend` and `lock.release` (nil when not acquired).
    pub token: Option<String>,
    /// Strictly increasing per lock name: a resource that remembers the newest
    /// fence it saw can refuse a paused holder's late write (nil when not acquired).
    pub fence: Option<u64>,
    /// Acquired: the lock's lifetime. Not acquired: 0.
    pub ttl_ms: u64,
    /// Not acquired: how long the current holder's lock has left. 0 when acquired.
    pub retry_after_ms: u64,
}

/// `lock.extend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockExtendResult {
    /// False when the token no longer holds the lock (expired, or taken by another).
    pub extended: bool,
}

/// `lock.release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReleaseResult {
    /// False when the token no longer held the lock.
    pub released: bool,
}

/// `ratelimit.set_override`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideResult {
    /// True when a runtime override of that key was replaced.
    pub replaced: bool,
}

/// `ratelimit.clear_override`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearOverrideResult {
    pub cleared: bool,
}

/// One key of a `quota.usage` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaKeyUsage {
    pub key: String,
    /// Consumed capacity (in-flight leases for a `concurrency` policy).
    pub used: u64,
    /// The key's effective limit (burst for token bucket and GCRA), overrides applied.
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
}

/// `admin.info` (extension): where this daemon keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminInfo {
    /// `redis.url` without credentials: `redis://host:port/db`.
    pub redis: String,
    /// `redis.prefix`: every key, channel and stream starts with it.
    pub prefix: String,
    pub node: String,
    /// `shoald/<version>`, as in `hello`.
    pub server: String,
}

/// `shm.attach` (extension): the shared-memory segment's size; its descriptor
/// rides on the answer's first byte (SCM_RIGHTS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmAttachResult {
    /// Bytes of the segment.
    pub bytes: u64,
    /// The daemon's CLOCK_MONOTONIC (ns) when it answered. The segment's
    /// deadlines are on that clock: a reader whose clock reads less after the
    /// answer arrived (another time namespace) must not use the segment.
    pub mono_ns: u64,
}

/// `quota.usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsageResult {
    pub policy: String,
    pub algorithm: String,
    /// The policy's own limit and window (before per-key overrides).
    pub limit: u64,
    pub window_ms: u64,
    /// Keys with state in Redis, sorted by key.
    pub keys: Vec<QuotaKeyUsage>,
    /// True when the scan stopped at `max_keys` (or its work bound) before the end.
    pub truncated: bool,
}

/// The `err` member of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub msg: String,
}

impl ErrorBody {
    /// The code as an enum; `None` for a code this crate does not know.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

/// Starts a frame: reserves the header and writes the envelope up to the result.
fn begin(id: u64, member: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let _ = rmp::encode::write_map_len(&mut out, 2);
    let _ = rmp::encode::write_str(&mut out, "id");
    let _ = rmp::encode::write_uint(&mut out, id);
    let _ = rmp::encode::write_str(&mut out, member);
    out
}

fn finish(mut out: Vec<u8>) -> Frame {
    let len = out.len() - FRAME_HEADER_LEN;
    out[..FRAME_HEADER_LEN].copy_from_slice(&encode_frame_header(len));
    out
}

/// [`encode_ok`] appended to `out` (a connection's output buffer), so the frame
/// is written where it will be sent instead of copied there.
pub fn encode_ok_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    id: u64,
    result: &T,
    max_frame: usize,
) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let _ = rmp::encode::write_map_len(out, 2);
    let _ = rmp::encode::write_str(out, "id");
    let _ = rmp::encode::write_uint(out, id);
    let _ = rmp::encode::write_str(out, "ok");
    let mut ser = rmp_serde::Serializer::new(&mut *out).with_struct_map();
    let len = match result.serialize(&mut ser) {
        Ok(()) => out.len() - start - FRAME_HEADER_LEN,
        Err(e) => {
            out.truncate(start);
            let frame = encode_err(
                id,
                ErrorCode::Internal,
                &format!("cannot encode result: {e}"),
            );
            out.extend_from_slice(&frame);
            return;
        }
    };
    if len > max_frame {
        out.truncate(start);
        let frame = encode_err(
            id,
            ErrorCode::FrameTooLarge,
            &format!("the result is {len} bytes, above max_frame ({max_frame} bytes)"),
        );
        out.extend_from_slice(&frame);
        return;
    }
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&encode_frame_header(len));
}

/// Encodes `{"id": id, "ok": result}` as a complete frame. A result that would make
/// the frame larger than `max_frame` becomes `frame_too_large` for the same id.
pub fn encode_ok<T: Serialize + ?Sized>(id: u64, result: &T, max_frame: usize) -> Frame {
    let mut out = begin(id, "ok");
    let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
    if let Err(e) = result.serialize(&mut ser) {
        return encode_err(
            id,
            ErrorCode::Internal,
            &format!("cannot encode result: {e}"),
        );
    }
    if out.len() - FRAME_HEADER_LEN > max_frame {
        let len = out.len() - FRAME_HEADER_LEN;
        return encode_err(
            id,
            ErrorCode::FrameTooLarge,
            &format!("the result is {len} bytes, above max_frame ({max_frame} bytes)"),
        );
    }
    finish(out)
}

/// Encodes `{"id": id, "err": {"code": code, "msg": msg}}` as a complete frame.
pub fn encode_err(id: u64, code: ErrorCode, msg: &str) -> Frame {
    let mut out = begin(id, "err");
    let _ = rmp::encode::write_map_len(&mut out, 2);
    let _ = rmp::encode::write_str(&mut out, "code");
    let _ = rmp::encode::write_str(&mut out, code.as_str());
    let _ = rmp::encode::write_str(&mut out, "msg");
    // Messages are ours and short; cap them anyway so an error can never be the
    // frame that breaks max_frame.
    let msg = if msg.len() > 1024 {
        &msg[..msg.floor_char_boundary_compat(1024)]
    } else {
        msg
    };
    let _ = rmp::encode::write_str(&mut out, msg);
    finish(out)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

/// Reads only the `id` of a response body.
pub fn decode_response_id(body: &[u8]) -> Result<u64, ProtoError> {
    // shoald writes `id` first: read just that, without walking the result.
    if let Some(id) = leading_id(body) {
        return Ok(id);
    }
    rmp_serde::from_slice::<IdOnly>(body)
        .map(|r| r.id)
        .map_err(|e| ProtoError::Decode(format!("response without a usable id: {e}")))
}

/// The id of a response map whose first key is `id` (as shoald writes them).
fn leading_id(body: &[u8]) -> Option<u64> {
    let mut rd = body;
    rmp::decode::read_map_len(&mut rd).ok()?;
    let mut key = [0u8; 2];
    let k = rmp::decode::read_str(&mut rd, &mut key).ok()?;
    if k != "id" {
        return None;
    }
    rmp::decode::read_int(&mut rd).ok()
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct Envelope<T> {
    #[serde(default = "none")]
    ok: Option<T>,
    #[serde(default)]
    err: Option<ErrorBody>,
}

fn none<T>() -> Option<T> {
    None
}

/// Decodes a response body into the caller's result type or the server's error.
pub fn decode_response<T: DeserializeOwned>(
    body: &[u8],
) -> Result<Result<T, ErrorBody>, ProtoError> {
    let env: Envelope<T> =
        rmp_serde::from_slice(body).map_err(|e| ProtoError::Decode(e.to_string()))?;
    match (env.ok, env.err) {
        (_, Some(e)) => Ok(Err(e)),
        (Some(v), None) => Ok(Ok(v)),
        (None, None) => Err(ProtoError::Decode(
            "response has neither `ok` nor `err`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_id_is_found_first_or_anywhere() {
        // shoald's order: `id` first (the fast path)...
        let f = encode_ok(9, "pong", 1 << 20);
        assert_eq!(decode_response_id(&f[FRAME_HEADER_LEN..]).unwrap(), 9);
        // ...any other order still decodes; a missing id is an error.
        let mut other = Vec::new();
        rmp::encode::write_map_len(&mut other, 2).unwrap();
        rmp::encode::write_str(&mut other, "ok").unwrap();
        rmp::encode::write_str(&mut other, "pong").unwrap();
        rmp::encode::write_str(&mut other, "id").unwrap();
        rmp::encode::write_uint(&mut other, 300).unwrap();
        assert_eq!(decode_response_id(&other).unwrap(), 300);
        let mut none = Vec::new();
        rmp::encode::write_map_len(&mut none, 1).unwrap();
        rmp::encode::write_str(&mut none, "ok").unwrap();
        rmp::encode::write_nil(&mut none).unwrap();
        assert!(decode_response_id(&none).is_err());
    }

    #[test]
    fn encode_ok_into_appends_the_same_frame() {
        let r = GetResult {
            hit: true,
            value: Some(Bytes::from(vec![7u8; 300])),
            from: Some(Source::L1),
            ttl_ms: Some(5),
            lease: None,
            wait_ms: None,
        };
        for max in [8192, 100] {
            let mut out = b"before".to_vec();
            encode_ok_into(&mut out, 42, &r, max);
            assert_eq!(&out[..6], b"before");
            assert_eq!(out[6..], encode_ok(42, &r, max)[..], "max_frame {max}");
        }
    }

    #[test]
    fn ok_and_err_roundtrip() {
        let r = GetResult {
            hit: true,
            value: Some(Bytes::from_static(b"v")),
            from: Some(Source::L1),
            ttl_ms: Some(5),
            lease: None,
            wait_ms: None,
        };
        let f = encode_ok(7, &r, 1 << 20);
        let body = &f[FRAME_HEADER_LEN..];
        assert_eq!(decode_response_id(body).unwrap(), 7);
        assert_eq!(decode_response::<GetResult>(body).unwrap().unwrap(), r);
        // The value travels as bin, `from` as a string, absent fields as nil.
        let v = rmpv::decode::read_value(&mut &body[..]).unwrap();
        let ok = &v.as_map().unwrap()[1].1;
        let m = ok.as_map().unwrap();
        assert!(m
            .iter()
            .any(|(k, v)| k.as_str() == Some("value") && v.is_bin()));
        assert!(m
            .iter()
            .any(|(k, v)| k.as_str() == Some("from") && v.as_str() == Some("l1")));
        assert!(m
            .iter()
            .any(|(k, v)| k.as_str() == Some("lease") && v.is_nil()));

        let f = encode_err(3, ErrorCode::NotFound, "gone");
        let e = decode_response::<GetResult>(&f[FRAME_HEADER_LEN..])
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
    }

    #[test]
    fn oversized_result_becomes_frame_too_large() {
        let r = GetResult {
            hit: true,
            value: Some(Bytes::from(vec![0u8; 100])),
            ..Default::default()
        };
        let f = encode_ok(4, &r, 50);
        let e = decode_response::<GetResult>(&f[FRAME_HEADER_LEN..])
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::FrameTooLarge));
        assert_eq!(decode_response_id(&f[FRAME_HEADER_LEN..]).unwrap(), 4);
    }
}
