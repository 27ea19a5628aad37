//! One multiplexed connection to shoald: handshake, writes, and the reader task.
//!
//! Writes are cancel-safe without a task hop on the hot path. A caller that finds
//! nobody writing becomes the writer and writes with non-blocking `try_write`,
//! synchronously: [`Conn::send`] has no await point, so no caller can be dropped
//! while it holds the writer. Callers arriving meanwhile queue their frames and
//! the writer drains the queue in one write before letting go (batching). When
//! the socket is full, the unwritten rest is handed to a flusher task that owns
//! it from then on: a frame that was started is always completed, never torn.
//! A frame still queued belongs to its caller until taken for writing: a caller
//! that gives up (timeout, dropped future) withdraws it, so a request abandoned
//! before any of it was written is never sent, in particular never after a newer
//! request of the same client. Responses come back in any order, so one reader
//! task per connection routes each to its caller by `id` through a oneshot
//! channel registered before the request was written.
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
use tokio::sync::{oneshot, Notify};
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

/// The write side, shared by callers and the flusher task.
struct Writer {
    /// Only written to by whoever holds `WriteState::busy`.
    half: OwnedWriteHalf,
    state: Mutex<WriteState>,
    /// Wakes the flusher when a caller hands it the rest of a write.
    wake: Notify,
}

#[derive(Default)]
struct WriteState {
    /// Someone is writing: a caller inside [`Conn::send`] or the flusher task.
    /// Whoever holds it drains `queued` before clearing it, so `busy == false`
    /// implies an empty queue.
    busy: bool,
    /// Frames waiting for the writer, back to back, oldest first...
    queued: Vec<u8>,
    /// ...and their request ids and lengths, so a caller that gives up can
    /// withdraw its own frame.
    frames: Vec<(u64, usize)>,
    /// Bytes a caller could not write without waiting, handed to the flusher.
    handoff: Vec<u8>,
    /// A spare batch buffer, kept to avoid an allocation per drain.
    spare: Vec<u8>,
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        // Every critical section leaves the state consistent (a push, a swap, a
        // drain), so poisoning carries no information.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes as much of `buf` as the socket takes now; the count written.
    fn try_write_all(&self, buf: &[u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.half.try_write(&buf[n..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Passes the writer role, with `rest` still to write, to the flusher.
    fn hand_off(&self, rest: &[u8]) {
        self.lock().handoff.extend_from_slice(rest);
        self.wake.notify_one();
    }

    /// Takes the queued frames for writing (into `batch`), or releases the writer
    /// role if there are none. `false` when released.
    fn take_queued(&self, batch: &mut Vec<u8>) -> bool {
        let mut st = self.lock();
        if st.frames.is_empty() {
            st.busy = false;
            return false;
        }
        batch.clear();
        std::mem::swap(&mut st.queued, batch);
        st.frames.clear();
        true
    }

    /// Removes `id`'s frame if it is still queued: its caller gave up before any
    /// of it was written, so it must never be.
    fn withdraw(&self, id: u64) {
        let mut st = self.lock();
        let mut start = 0;
        for i in 0..st.frames.len() {
            let (fid, len) = st.frames[i];
            if fid == id {
                st.queued.drain(start..start + len);
                st.frames.remove(i);
                return;
            }
            start += len;
        }
    }
}

/// A live (or dead, not yet replaced) connection.
pub(crate) struct Conn {
    writer: Arc<Writer>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    flusher: JoinHandle<()>,
    pub(crate) hello: HelloResult,
    /// The server's `max_frame`, as a usize: the largest request body it accepts.
    pub(crate) max_frame: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The tasks own only `Shared` and `Writer`, not the `Conn`, so without
        // this they would keep the socket open after the last `Client` clone is gone.
        self.reader.abort();
        self.flusher.abort();
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
/// write), so abandoned ids do not accumulate for the life of the connection, and
/// withdraws the request's frame if none of it was written yet.
pub(crate) struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
    pub(crate) answered: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.conn.writer.withdraw(self.id);
            drop(self.conn.shared.take(self.id));
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
        let writer = Arc::new(Writer {
            half: wr,
            state: Mutex::new(WriteState::default()),
            wake: Notify::new(),
        });
        let flusher = tokio::spawn(flush_loop(Arc::clone(&writer), Arc::clone(&shared)));
        Ok(Conn {
            writer,
            shared,
            reader,
            flusher,
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
        self.flusher.abort();
    }

    /// Registers `id` as awaiting a response; `None` if the connection is dead (and
    /// nothing has been sent on it, so the caller may use another one).
    pub(crate) fn register(&self, id: u64) -> Option<(PendingGuard<'_>, oneshot::Receiver<Reply>)> {
        let rx = self.shared.register(id)?;
        let guard = PendingGuard {
            conn: self,
            id,
            answered: false,
        };
        Some((guard, rx))
    }

    /// Sends request `id`'s complete frame, or queues it for the writer. Never
    /// waits, so it cannot be cancelled halfway: once it returns `Ok`, the frame
    /// is on the wire, or will be (completed by the flusher if it was started),
    /// or is queued until its caller's [`PendingGuard`] withdraws it. A failed
    /// write kills the connection.
    pub(crate) fn send(&self, id: u64, frame: &[u8]) -> Result<()> {
        {
            let mut st = self.writer.lock();
            if !self.is_alive() {
                return Err(Error::ConnectionLost);
            }
            if st.busy {
                st.queued.extend_from_slice(frame);
                st.frames.push((id, frame.len()));
                return Ok(());
            }
            st.busy = true;
        }
        // The writer role is ours until handed on or released.
        let n = self.write_or_kill(frame)?;
        if n < frame.len() {
            self.writer.hand_off(&frame[n..]);
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.writer.lock().spare);
        while self.writer.take_queued(&mut batch) {
            let n = self.write_or_kill(&batch)?;
            if n < batch.len() {
                self.writer.hand_off(&batch[n..]);
                return Ok(());
            }
        }
        if batch.capacity() <= 1 << 20 {
            batch.clear();
            self.writer.lock().spare = batch;
        }
        Ok(())
    }

    fn write_or_kill(&self, buf: &[u8]) -> Result<usize> {
        self.writer.try_write_all(buf).map_err(|e| {
            self.kill(&Error::ConnectionLost);
            Error::Io(e)
        })
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

/// Completes what callers handed off when the socket was full, then everything
/// queued behind it, then releases the writer role and waits for the next hand-off.
async fn flush_loop(writer: Arc<Writer>, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        writer.wake.notified().await;
        std::mem::swap(&mut writer.lock().handoff, &mut buf);
        if buf.is_empty() {
            // Every wake-up comes with a hand-off; without one, the writer role
            // is not ours to drain or release.
            continue;
        }
        loop {
            let mut off = 0;
            while off < buf.len() {
                let written = match writer.half.writable().await {
                    Ok(()) => writer.try_write_all(&buf[off..]),
                    Err(e) => Err(e),
                };
                match written {
                    Ok(n) => off += n,
                    Err(e) => {
                        tracing::debug!(error = %e, "writing to shoald failed");
                        // `busy` stays set: nothing more is written on this socket.
                        shared.fail_all(&Error::ConnectionLost);
                        return;
                    }
                }
            }
            if !writer.take_queued(&mut buf) {
                break;
            }
        }
        buf.clear();
        if buf.capacity() > 1 << 20 {
            buf.shrink_to(READ_RESERVE);
        }
    }
}
