//! Request dispatch: from a frame body to a response frame.
//!
//! Answers that need nothing but the request (handshake, errors, `ping`, `stats`)
//! are produced at once; everything else becomes a future the connection polls.
//! The handshake rules of PROTOCOL.md live here: `hello` first, version 1 only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use shoal_client::proto::{
    encode_err, encode_ok, encode_ok_into, parse_request, ErrorCode, Frame, HelloResult,
    InvalidateResult, InvalidateTagsResult, Op, ParseError, SetResult, VERSION,
};
use tracing::Instrument;

use crate::ctx::Ctx;
use crate::error::OpError;

/// Name and version sent in `hello`.
pub const SERVER_NAME: &str = concat!("shoald/", env!("CARGO_PKG_VERSION"));

/// What the connection does next with a frame.
pub enum Next {
    /// Write this response now.
    Reply(Frame),
    /// The response was already appended to the connection's output.
    Written,
    /// Write this response when the future completes.
    Pending(BoxFuture<'static, Frame>),
    /// Write this response, answer what is in flight, then close.
    Close(Frame),
    /// Write what is buffered, then this response with the descriptor attached
    /// to its first byte (`shm.attach`).
    ReplyFd(Frame, std::os::fd::OwnedFd),
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Next::Reply(_) => "Reply",
            Next::Written => "Written",
            Next::Pending(_) => "Pending",
            Next::Close(_) => "Close",
            Next::ReplyFd(..) => "ReplyFd",
        })
    }
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct ConnState {
    greeted: bool,
}

/// Turns one frame into what the connection does next. Answers known at once
/// may be appended to `out` directly (`Next::Written`).
pub fn handle_frame(ctx: &Arc<Ctx>, conn: &mut ConnState, body: &[u8], out: &mut Vec<u8>) -> Next {
    ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
    let req = match parse_request(body, &ctx.limits) {
        Ok(r) => r,
        Err(ParseError::Unusable(msg)) => {
            ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Next::Close(encode_err(0, ErrorCode::BadRequest, &msg));
        }
        Err(ParseError::Invalid { id, code, msg }) => {
            ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
            if !conn.greeted {
                return Next::Close(encode_err(
                    id,
                    ErrorCode::BadRequest,
                    &format!("{msg} (and the first request must be a valid hello)"),
                ));
            }
            return Next::Reply(encode_err(id, code, &msg));
        }
    };
    let id = req.id;
    let trace = req.trace;
    match req.op {
        Op::Hello { version, .. } => {
            if conn.greeted {
                return Next::Reply(encode_err(
                    id,
                    ErrorCode::BadRequest,
                    "hello was already received on this connection",
                ));
            }
            if version != VERSION {
                return Next::Close(encode_err(
                    id,
                    ErrorCode::UnsupportedVersion,
                    &format!(
                        "protocol version {version} is not supported; this server speaks {VERSION}"
                    ),
                ));
            }
            conn.greeted = true;
            Next::Reply(encode_ok(
                id,
                &HelloResult {
                    version: VERSION,
                    server: SERVER_NAME.to_string(),
                    node: ctx.config.node.id.clone(),
                    max_frame: ctx.max_frame as u64,
                },
                ctx.max_frame,
            ))
        }
        _ if !conn.greeted => Next::Close(encode_err(
            id,
            ErrorCode::BadRequest,
            "the first request on a connection must be hello",
        )),
        Op::Ping => {
            encode_ok_into(out, id, "pong", ctx.max_frame);
            Next::Written
        }
        // The hot path: an L1 hit is answered here, encoded straight into the
        // connection's output, with no future, task or span. Anything else (a
        // miss, L1 untrusted, a traced request, debug logging on, which wants the
        // request span) takes the normal path.
        Op::CacheGet { ref key, .. }
            if trace.is_none() && !tracing::enabled!(tracing::Level::DEBUG) =>
        {
            match ctx.cache.l1_hit_now(key) {
                Some(hit) => {
                    encode_ok_into(out, id, &hit, ctx.max_frame);
                    Next::Written
                }
                None => pending(ctx, id, req.op, trace),
            }
        }
        Op::Stats => Next::Reply(encode_ok(id, &stats(ctx), ctx.max_frame)),
        Op::AdminInfo => Next::Reply(encode_ok(
            id,
            &shoal_client::proto::AdminInfo {
                redis: ctx.store.address().to_string(),
                prefix: ctx.config.redis.prefix.clone(),
                node: ctx.config.node.id.clone(),
                server: SERVER_NAME.to_string(),
            },
            ctx.max_frame,
        )),
        Op::ShmAttach => shm_attach(ctx, id),
        op => pending(ctx, id, op, trace),
    }
}

fn pending(ctx: &Arc<Ctx>, id: u64, op: Op, trace: Option<String>) -> Next {
    let ctx = ctx.clone();
    Next::Pending(async move { run_op(&ctx, id, op, trace).await }.boxed())
}

/// `shm.attach`: the segment's descriptor rides on the answer.
fn shm_attach(ctx: &Ctx, id: u64) -> Next {
    let Some(shm) = &ctx.shm else {
        return Next::Reply(encode_err(
            id,
            ErrorCode::Unavailable,
            "shared memory is off on this daemon (cache.shm_bytes = 0)",
        ));
    };
    match shm.share() {
        Ok((fd, bytes)) => {
            let result = shoal_client::proto::ShmAttachResult {
                bytes,
                mono_ns: shoal_client::shm::mono_now_ns().unwrap_or(u64::MAX),
            };
            Next::ReplyFd(encode_ok(id, &result, ctx.max_frame), fd)
        }
        Err(e) => Next::Reply(encode_err(
            id,
            ErrorCode::Internal,
            &format!("cannot share the segment: {e}"),
        )),
    }
}

fn stats(ctx: &Ctx) -> std::collections::BTreeMap<String, u64> {
    let mut m = ctx.stats.snapshot();
    let l1 = ctx.cache.l1();
    m.insert("l1_entries".into(), l1.entry_count());
    m.insert("l1_bytes".into(), l1.weighted_size());
    m.insert("l1_max_bytes".into(), l1.max_bytes());
    m.insert("l1_ready".into(), u64::from(l1.is_ready()));
    m.insert("ready".into(), u64::from(ctx.ready()));
    if let Some(shm) = &ctx.shm {
        m.insert("shm_attaches".into(), shm.attaches.load(Ordering::Relaxed));
        m.insert(
            "shm_published".into(),
            shm.published.load(Ordering::Relaxed),
        );
        m.insert("shm_retired".into(), shm.retired.load(Ordering::Relaxed));
    }
    let applied = ctx.coherence.applied();
    m.insert("applied_ms".into(), applied.ms);
    m.insert("applied_seq".into(), applied.seq);
    ctx.sessions.stats_into(&mut m);
    ctx.ratelimits.stats_into(&mut m);
    m
}

async fn run_op(ctx: &Arc<Ctx>, id: u64, op: Op, trace: Option<String>) -> Frame {
    let started = Instant::now();
    let name = op.name();
    let key_len = op.key_len();
    let span = tracing::debug_span!(
        "request",
        op = name,
        id,
        key_len,
        outcome = tracing::field::Empty,
        micros = tracing::field::Empty
    );
    // The caller's span (W3C traceparent) becomes this span's parent, so the
    // application's trace shows the shoal call.
    crate::ops::telemetry::continue_trace(&span, trace.as_deref());
    let result = execute(ctx, id, op).instrument(span.clone()).await;
    let (frame, outcome) = match result {
        Ok(frame) => (frame, "ok"),
        Err(e) => {
            ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
            if matches!(
                e.code,
                ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Internal
            ) {
                ctx.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
            }
            (encode_err(id, e.code, &e.msg), e.code.as_str())
        }
    };
    // Keys, values and tokens are never logged: only their sizes.
    span.record("outcome", outcome);
    span.record("micros", started.elapsed().as_micros() as u64);
    span.in_scope(|| tracing::debug!("done"));
    frame
}

async fn execute(ctx: &Arc<Ctx>, id: u64, op: Op) -> Result<Frame, OpError> {
    let max = ctx.max_frame;
    let cache = &ctx.cache;
    Ok(match op {
        Op::CacheGet { key, lease } => {
            let r = match cache.get_l1(&key).await {
                Some(hit) => hit,
                None => cache.get_l2(&key, lease).await?,
            };
            encode_ok(id, &r, max)
        }
        Op::CacheMget { keys } => encode_ok(id, &cache.mget(&keys).await?, max),
        Op::CacheSet {
            key,
            value,
            ttl_ms,
            lease,
            tags,
        } => {
            let stored = cache
                .set(&key, value, ttl_ms, lease.as_deref(), &tags)
                .await?;
            encode_ok(id, &SetResult { stored }, max)
        }
        Op::CacheInvalidate { keys } => {
            let seq = cache.invalidate(&keys).await?;
            encode_ok(
                id,
                &InvalidateResult {
                    seq: seq.to_string(),
                },
                max,
            )
        }
        Op::CacheInvalidateTags { tags } => {
            let (seq, keys) = cache.invalidate_tags(&tags).await?;
            encode_ok(
                id,
                &InvalidateTagsResult {
                    seq: seq.to_string(),
                    keys,
                },
                max,
            )
        }
        op @ (Op::SessionCreate { .. }
        | Op::SessionGet { .. }
        | Op::SessionUpdate { .. }
        | Op::SessionRotate { .. }
        | Op::SessionRevoke { .. }
        | Op::SessionRevokeUser { .. }
        | Op::SessionList { .. }) => return ctx.sessions.handle(id, op, max).await,
        op @ (Op::RatelimitCheck { .. }
        | Op::RatelimitPeek { .. }
        | Op::RatelimitReset { .. }
        | Op::RatelimitPenalty { .. }
        | Op::RatelimitReward { .. }
        | Op::RatelimitReserve { .. }
        | Op::RatelimitAcquireConcurrent { .. }
        | Op::RatelimitRelease { .. }
        | Op::RatelimitSetOverride { .. }
        | Op::RatelimitClearOverride { .. }
        | Op::QuotaUsage { .. }) => return ctx.ratelimits.handle(id, op, max).await,
        op @ (Op::LockAcquire { .. } | Op::LockExtend { .. } | Op::LockRelease { .. }) => {
            return ctx.locks.handle(id, op, max).await
        }
        Op::Hello { .. } | Op::Ping | Op::Stats | Op::AdminInfo | Op::ShmAttach => {
            return Err(OpError::new(ErrorCode::Internal, "handled before dispatch"))
        }
    })
}
