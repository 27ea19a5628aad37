//! The socket server: accepting connections and serving each one.
//!
//! One task per connection, no extra task per request: the task parses every
//! complete frame it has, runs each request as a future in a `FuturesUnordered`,
//! and writes responses in completion order, so an L1 hit is answered while a slow
//! Redis call of the same connection is still out (pipelining). Backpressure: with
//! `socket.max_inflight` requests pending the task stops reading, and the client's
//! writes block in the kernel instead of queueing in our memory. Output is bounded
//! too: no more frames are taken in while about [`OUT_HIGH`] bytes of answers wait,
//! and each batch of answers must be written within `socket.write_timeout`, so a
//! peer that stops reading is disconnected and what was buffered for it freed.
//! Accept errors from running out of descriptors or memory, or from a peer that
//! left first, are transient: logged, backed off, never fatal.

pub mod dispatch;
pub mod socket;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use shoal_client::proto::{encode_err, ErrorCode, FrameCodec, FrameError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ctx::Ctx;
use dispatch::Next;

/// Accepts until `shutdown`, then drains connections within `shutdown.grace` and
/// removes the socket file.
pub async fn serve(
    listener: UnixListener,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
    let limit = Arc::new(Semaphore::new(ctx.config.socket.max_connections));
    let conns = TaskTracker::new();
    let drain = CancellationToken::new();
    let shown = path.as_deref().unwrap_or(&ctx.config.socket.path);
    tracing::info!(
        socket = %shown.display(),
        redis = %ctx.store.address(),
        prefix = %ctx.config.redis.prefix,
        node = %ctx.config.node.id,
        version = env!("CARGO_PKG_VERSION"),
        "shoald serving"
    );
    let mut accept_errors = 0u32;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let result = loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                accept_errors = 0;
                backoff = ACCEPT_BACKOFF_MIN;
                s
            }
            Err(e) if accept_error_is_transient(&e) => {
                // EMFILE and friends: back off instead of spinning (the pending
                // connection stays in the backlog), and never give up: descriptors
                // come back when connections close.
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                // Anything else means the listener itself may be broken: give up
                // if it keeps failing.
                accept_errors += 1;
                tracing::error!(error = %e, "accept failed");
                if accept_errors > 100 {
                    break Err(e);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            conns.spawn(refuse(stream, ctx.config.socket.max_connections));
            continue;
        };
        let ctx = ctx.clone();
        let drain = drain.child_token();
        conns.spawn(async move {
            ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
            ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
            serve_conn(stream, &ctx, drain).await;
            ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    };
    drop(listener);
    if let Some(p) = &path {
        let _ = std::fs::remove_file(p);
    }
    // Stop reading new requests everywhere; answer what was received.
    drain.cancel();
    conns.close();
    let grace = ctx.config.shutdown.grace;
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!(?grace, "grace period over; closing remaining connections");
    }
    result
}

/// First and longest wait after a transient accept error.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Accept errors that say nothing about the listener: out of descriptors or
/// memory (they come back), or a peer that gave up before we accepted it.
fn accept_error_is_transient(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    if matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::OutOfMemory
    ) {
        return true;
    }
    e.raw_os_error().is_some_and(|code| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EPROTO,
            Errno::EPERM,
        ]
        .contains(&Errno::from_raw(code))
    })
}

/// Answers waiting to be written past which no more frames are taken in until
/// they are: one connection's buffered output stays near this plus one answer.
const OUT_HIGH: usize = 1 << 20;

/// Tells a connection over the limit why it is closed.
async fn refuse(mut stream: UnixStream, max: usize) {
    let frame = encode_err(
        0,
        ErrorCode::Unavailable,
        &format!("too many connections (socket.max_connections = {max})"),
    );
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.write_all(&frame)).await;
    let _ = stream.shutdown().await;
}

type Pending = FuturesUnordered<futures::future::BoxFuture<'static, Vec<u8>>>;

/// Serves one connection until the peer leaves, a fatal frame, idleness or drain.
async fn serve_conn(mut stream: UnixStream, ctx: &Arc<Ctx>, drain: CancellationToken) {
    let codec = FrameCodec::new(ctx.max_frame);
    let max_inflight = ctx.config.socket.max_inflight;
    let idle = ctx.config.socket.idle_timeout;
    let write_timeout = ctx.config.socket.write_timeout;
    let mut inbuf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut pending: Pending = FuturesUnordered::new();
    let mut conn = dispatch::ConnState::default();
    let mut closing = false; // a fatal frame: answer what we have, then close
    let mut draining = false; // shutdown: no new reads
    let mut peer_done = false; // EOF from the peer
    let mut last_activity = Instant::now();

    loop {
        // Every complete frame already received becomes a request (bounded by
        // requests in flight and by answers waiting to be written).
        let mut frames_left = false;
        while !closing && pending.len() < max_inflight {
            if out.len() >= OUT_HIGH {
                // Write these first; what is left in `inbuf` is taken in after.
                frames_left = true;
                break;
            }
            match codec.decode_frame(&mut inbuf) {
                Ok(Some(body)) => {
                    last_activity = Instant::now();
                    match dispatch::handle_frame(ctx, &mut conn, &body, &mut out) {
                        Next::Reply(frame) => out.extend_from_slice(&frame),
                        Next::Written => {}
                        Next::Pending(fut) => {
                            ctx.stats.inflight.fetch_add(1, Ordering::Relaxed);
                            pending.push(fut);
                        }
                        Next::Close(frame) => {
                            out.extend_from_slice(&frame);
                            closing = true;
                        }
                        Next::ReplyFd(frame, fd) => {
                            // The descriptor rides on its answer's first byte, so
                            // what is buffered goes first (shm.rs).
                            let sent = crate::cache::shm::send_with_fd(
                                &mut stream,
                                &mut out,
                                &frame,
                                &fd,
                                write_timeout,
                            )
                            .await;
                            if sent.is_err() {
                                closing = true;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let (code, msg) = match e {
                        FrameError::TooLarge { .. } => (ErrorCode::FrameTooLarge, e.to_string()),
                        FrameError::Empty => (ErrorCode::BadRequest, e.to_string()),
                    };
                    tracing::debug!(error = %msg, "closing connection after a bad frame");
                    out.extend_from_slice(&encode_err(0, code, &msg));
                    closing = true;
                }
            }
        }
        // Collect whatever finished without waiting (L1 hits finish on first poll).
        while out.len() < OUT_HIGH {
            let Some(Some(frame)) = pending.next().now_or_never() else {
                break;
            };
            ctx.stats.inflight.fetch_sub(1, Ordering::Relaxed);
            out.extend_from_slice(&frame);
        }
        if !out.is_empty() {
            match tokio::time::timeout(write_timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::warn!(
                        ?write_timeout,
                        buffered = out.len(),
                        "peer stopped reading; disconnecting it"
                    );
                    break;
                }
            }
            out.clear();
            if out.capacity() > 2 * OUT_HIGH {
                out.shrink_to(8 * 1024);
            }
        }
        if frames_left {
            continue;
        }
        let stop_reading = closing || draining || peer_done;
        if stop_reading && pending.is_empty() {
            break;
        }
        if inbuf.capacity() > 1 << 20 && inbuf.is_empty() {
            inbuf = BytesMut::with_capacity(8 * 1024);
        }
        let idle_deadline = tokio::time::Instant::from_std(last_activity + idle);
        let can_read = !stop_reading && pending.len() < max_inflight;
        tokio::select! {
            Some(frame) = pending.next(), if !pending.is_empty() => {
                ctx.stats.inflight.fetch_sub(1, Ordering::Relaxed);
                out.extend_from_slice(&frame);
            }
            r = stream.read_buf(&mut inbuf), if can_read => match r {
                Ok(0) => {
                    if !inbuf.is_empty() {
                        tracing::debug!(bytes = inbuf.len(), "peer disconnected mid-frame");
                    }
                    peer_done = true;
                }
                Ok(_) => {}
                Err(_) => peer_done = true,
            },
            _ = drain.cancelled(), if !draining => draining = true,
            _ = tokio::time::sleep_until(idle_deadline), if pending.is_empty() && !stop_reading => {
                tracing::debug!("closing idle connection");
                break;
            }
        }
    }
    // Requests abandoned here (peer gone) still count down.
    let left = pending.len() as u64;
    if left > 0 {
        ctx.stats.inflight.fetch_sub(left, Ordering::Relaxed);
    }
    let _ = stream.shutdown().await;
}
