//! One multiplexed connection to shoald: handshake, writes, and the reader task.
//!
//! Callers write their own frames under an async mutex on the write half instead of
//! handing them to a writer task: on the hot path (an L1 hit, a few microseconds)
//! a task hop per request would be a large share of the round trip. Responses come
//! back in any order, so one reader task per connection routes each to its caller
//! by `id` through a oneshot channel registered before the request was written.
//!
//! A connection dies once (EOF, read or write error, a connection-level error from
//! the server, a malformed frame). Death is recorded under the same lock as the
//! pending map, so a caller either registers before the death and is failed by it,
//! or sees the connection dead and never sends on it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::proto::{
    decode_response, decode_response_id, encode_frame_header, FrameCodec, HelloResult, Op, Request,
    FRAME_HEADER_LEN, VERSION,
};

/// What a caller receives: the response body, or why it will never come.
type Reply = Result<BytesMut>;

/// Below this much free buffer space the reader grows the buffer before reading, so
/// a burst of small responses is taken in with one syscall.
const READ_RESERVE: usize = 16 * 1024;

/// Encodes `op` with `id` as a complete frame (header included), so the write is
/// one `write_all` of one buffer.
pub(crate) fn encode_frame(id: u64, op: Op) -> Vec<u8> {
    encode_frame_traced(id, op, None)
}

/// [`encode_frame`] with the caller's W3C `traceparent` in the `trace` field.
pub(crate) fn encode_frame_traced(id: u64, op: Op, trace: Option<String>) -> Vec<u8> {
    let req = Request { id, trace, op };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    req.encode_into(&mut out);
    let len = out.len() - FRAME_HEADER_LEN;
    out[..FRAME_HEADER_LEN].copy_from_slice(&encode_frame_header(len));
    out
}

/// The W3C `traceparent` of the current `tracing` span's OpenTelemetry context
/// (feature `otel`), so the daemon's span for this request joins the caller's
/// trace. `None` when the current span has no valid OpenTelemetry context (no
/// OpenTelemetry layer installed, or no current span).
#[cfg(feature = "otel")]
pub(crate) fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Without the `otel` feature no trace context is sent.
#[cfg(not(feature = "otel"))]
#[inline]
pub(crate) fn current_traceparent() -> Option<String> {
    None
}

/// Ids are sequential and chosen by us, so they need mixing, not DoS resistance:
/// a Fibonacci multiply spreads them over the high bits hashbrown probes with, at a
/// fraction of SipHash's cost.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type PendingMap = HashMap<u64, oneshot::Sender<Reply>, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct Pending {
    calls: PendingMap,
    dead: bool,
}

/// The part of a connection the reader task shares with callers.
#[derive(Default)]
pub(crate) struct Shared {
    /// Mirror of `Pending::dead` readable without the lock, for the fast "is the
    /// current connection usable" check.
    dead: AtomicBool,
    pending: Mutex<Pending>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves the map consistent (every
        // operation is a single insert/remove), so poisoning carries no information.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, id: u64) -> Option<oneshot::Receiver<Reply>> {
        let mut p = self.lock();
        if p.dead {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        p.calls.insert(id, tx);
        Some(rx)
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        self.lock().calls.remove(&id)
    }

    /// Marks the connection dead and fails every pending call with `reason`. Only
    /// the first death counts: later reasons are consequences of it.
    fn fail_all(&self, reason: &Error) {
        let calls = {
            let mut p = self.lock();
            if p.dead {
                return;
            }
            p.dead = true;
            self.dead.store(true, Ordering::Release);
            std::mem::take(&mut p.calls)
        };
        tracing::debug!(pending = calls.len(), %reason, "shoald connection closed");
        for (_, tx) in calls {
            let _ = tx.send(Err(reason.duplicate()));
        }
    }

    /// Routes one response to its caller. An `Err` means the connection must die.
    fn dispatch(&self, body: BytesMut) -> std::result::Result<(), Error> {
        let id = decode_response_id(&body).map_err(|e| Error::Protocol(e.to_string()))?;
        if id == 0 {
            // Our requests never use id 0 after the handshake, so this is about the
            // connection itself (frame_too_large, bad_request): the server closes it.
            return Err(match decode_response::<serde::de::IgnoredAny>(&body) {
                Ok(Err(body)) => Error::from_body(body),
                Ok(Ok(_)) => Error::Protocol("unsolicited response with id 0".into()),
                Err(e) => Error::Protocol(e.to_string()),
            });
        }
        match self.take(id) {
            Some(tx) => {
                // The caller may have given up in between; nothing to do then.
                let _ = tx.send(Ok(body));
            }
            None => tracing::trace!(id, "response for a call that already gave up"),
        }
        Ok(())
    }
}

/// A live (or dead, not yet replaced) connection.
pub(crate) struct Conn {
    /// The write half and a spare buffer, held by whichever caller is writing.
    writer: tokio::sync::Mutex<(OwnedWriteHalf, Vec<u8>)>,
    /// Frames waiting to be written. Callers append here, and whoever holds
    /// `writer` writes everything queued in one syscall: with many callers on one
    /// connection, requests leave in batches instead of one write each.
    outq: Mutex<Vec<u8>>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    pub(crate) hello: HelloResult,
    /// The server's `max_frame`, as a usize: the largest request body it accepts.
    pub(crate) max_frame: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The reader owns only `Shared`, not the `Conn`, so without this it would
        // keep the socket open after the last `Client` clone is gone.
        self.reader.abort();
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("node", &self.hello.node)
            .field("max_frame", &self.max_frame)
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

/// Removes a pending entry when the call gives up (timeout, cancellation, failed
/// write), so abandoned ids do not accumulate for the life of the connection.
pub(crate) struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
    pub(crate) answered: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.answered {
            drop(self.shared.take(self.id));
        }
    }
}

/// Kills the connection if a write is abandoned halfway: the peer would read the
/// next request's bytes as the rest of this one.
struct PartialWriteGuard<'a> {
    conn: &'a Conn,
    written: usize,
    len: usize,
}

impl Drop for PartialWriteGuard<'_> {
    fn drop(&mut self) {
        if self.written > 0 && self.written < self.len {
            self.conn.kill(&Error::ConnectionLost);
        }
    }
}

impl Conn {
    /// Connects, performs the `hello` handshake and starts the reader task.
    pub(crate) async fn establish(path: &std::path::Path, client_name: &str) -> Result<Conn> {
        let mut stream = UnixStream::connect(path).await.map_err(Error::Connect)?;
        let hello = encode_frame(
            0,
            Op::Hello {
                version: VERSION,
                client: Some(client_name.to_owned()),
            },
        );
        stream.write_all(&hello).await.map_err(Error::Connect)?;

        // The hello reply is small; the server's real limit is only known after it.
        let codec = FrameCodec::new(crate::proto::DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::with_capacity(READ_RESERVE);
        let body = loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(body)) => break body,
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(format!("bad hello reply frame: {e}"))),
            }
            let n = stream.read_buf(&mut buf).await.map_err(Error::Connect)?;
            if n == 0 {
                return Err(Error::Connect(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "shoald closed the connection during the handshake",
                )));
            }
        };
        let hello = match decode_response::<HelloResult>(&body) {
            Ok(Ok(hello)) => hello,
            Ok(Err(e)) => return Err(Error::from_body(e)),
            Err(e) => return Err(Error::Protocol(format!("bad hello reply: {e}"))),
        };
        if hello.max_frame == 0 {
            return Err(Error::Protocol("hello reply announces max_frame 0".into()));
        }
        // Frame lengths are 32-bit on the wire whatever the server announces.
        let max_frame =
            usize::try_from(hello.max_frame.min(u64::from(u32::MAX))).unwrap_or(usize::MAX);

        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_loop(
            rd,
            buf,
            FrameCodec::new(max_frame),
            Arc::clone(&shared),
        ));
        Ok(Conn {
            writer: tokio::sync::Mutex::new((wr, Vec::with_capacity(READ_RESERVE))),
            outq: Mutex::new(Vec::with_capacity(READ_RESERVE)),
            shared,
            reader,
            hello,
            max_frame,
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire)
    }

    /// Fails all pending calls with `reason` and stops reading. The socket closes
    /// when the `Conn` is dropped (replaced by a reconnect, or the client dropped).
    pub(crate) fn kill(&self, reason: &Error) {
        self.shared.fail_all(reason);
        self.reader.abort();
    }

    /// Registers `id` as awaiting a response; `None` if the connection is dead (and
    /// nothing has been sent on it, so the caller may use another one).
    pub(crate) fn register(&self, id: u64) -> Option<(PendingGuard<'_>, oneshot::Receiver<Reply>)> {
        let rx = self.shared.register(id)?;
        let guard = PendingGuard {
            shared: &self.shared,
            id,
            answered: false,
        };
        Some((guard, rx))
    }

    /// Queues one complete frame and makes sure it is written: either by this
    /// caller (taking the writer and flushing everything queued, its own frame and
    /// others'), or by the caller that holds the writer now, which drains the queue
    /// before letting go. A failed or abandoned write kills the connection: part
    /// of a frame may be on the wire.
    pub(crate) async fn send(&self, frame: &[u8]) -> Result<()> {
        self.outq
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(frame);
        let mut guard = self.writer.lock().await;
        let (wr, batch) = &mut *guard;
        loop {
            {
                let mut q = self.outq.lock().unwrap_or_else(PoisonError::into_inner);
                if q.is_empty() {
                    // Our frame went out with an earlier batch.
                    return Ok(());
                }
                std::mem::swap(&mut *q, batch);
            }
            let mut partial = PartialWriteGuard {
                conn: self,
                written: 0,
                len: batch.len(),
            };
            while partial.written < batch.len() {
                match wr.write(&batch[partial.written..]).await {
                    Ok(0) => {
                        self.kill(&Error::ConnectionLost);
                        return Err(Error::Io(io::ErrorKind::WriteZero.into()));
                    }
                    Ok(n) => partial.written += n,
                    Err(e) => {
                        self.kill(&Error::ConnectionLost);
                        return Err(Error::Io(e));
                    }
                }
            }
            drop(partial);
            batch.clear();
            if batch.capacity() > 1 << 20 {
                batch.shrink_to(READ_RESERVE);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.shared.lock().calls.len()
    }
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    codec: FrameCodec,
    shared: Arc<Shared>,
) {
    let reason = 'conn: loop {
        loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(body)) => {
                    if let Err(reason) = shared.dispatch(body) {
                        break 'conn reason;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn Error::Protocol(format!("bad frame from shoald: {e}")),
            }
        }
        if buf.capacity() - buf.len() < READ_RESERVE {
            buf.reserve(READ_RESERVE);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break Error::ConnectionLost,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "reading from shoald failed");
                break Error::ConnectionLost;
            }
        }
    };
    shared.fail_all(&reason);
}
