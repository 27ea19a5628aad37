//! `Client`: the public handle, its configuration, reconnects, and the raw and typed API.
//!
//! A `Client` owns at most one connection at a time and multiplexes every call over
//! it (see `conn`). Clones share that connection, so an application creates one
//! `Client` at startup and clones it freely. When the connection dies, the next call
//! reconnects; reconnects are serialised so a burst of callers makes one attempt,
//! and failed attempts back off exponentially so a missing daemon costs one
//! `connect` per backoff interval, not one per call.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio::time::Instant;

use crate::conn::{current_traceparent, encode_frame_traced, Conn};
use crate::error::{Error, Result};
use crate::proto::{
    self, decode_response, GetResult, HelloResult, InvalidateResult, InvalidateTagsResult, Op,
    SetResult, FRAME_HEADER_LEN,
};

/// The socket shoald listens on unless configured otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/shoal/shoal.sock";

/// Settings of a [`Client`]. Start from [`ClientConfig::new`] (or use
/// [`Client::builder`]) and change the fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The daemon's Unix socket.
    pub socket_path: PathBuf,
    /// Upper bound on one call, reconnecting included. Default 5 s.
    pub timeout: Duration,
    /// Upper bound on connecting plus the `hello` handshake. Default 1 s.
    pub connect_timeout: Duration,
    /// Wait after the first failed connect attempt; doubles per failure. Default 10 ms.
    pub reconnect_backoff_min: Duration,
    /// Longest wait between connect attempts. Default 1 s.
    pub reconnect_backoff_max: Duration,
    /// Sent in `hello`; shows up in the daemon's logs. Default
    /// `shoal-client-rust/<crate version>`.
    pub client_name: String,
    /// How long `get_or_load` waits for another caller's fill before loading
    /// itself. Default 1 s.
    pub lease_wait_max: Duration,
    /// Map the daemon's shared-memory L1 (when it offers one) and answer `get`
    /// hits from it without a system call, under the same staleness bound;
    /// anything doubtful goes to the socket. Default true.
    pub shm: bool,
}

impl ClientConfig {
    /// Defaults for the daemon listening on `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        ClientConfig {
            socket_path: socket_path.into(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_secs(1),
            client_name: concat!("shoal-client-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            lease_wait_max: Duration::from_secs(1),
            shm: true,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new(DEFAULT_SOCKET_PATH)
    }
}

/// Builds a [`Client`] with non-default settings.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    config: ClientConfig,
}

impl ClientBuilder {
    /// Per-call timeout (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Timeout of connecting plus the handshake (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Backoff between failed connect attempts (default 10 ms doubling up to 1 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.reconnect_backoff_min = min;
        self.config.reconnect_backoff_max = max.max(min);
        self
    }

    /// Name sent in `hello`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.config.client_name = name.into();
        self
    }

    /// Longest `get_or_load` waits for another caller's fill (default 1 s).
    pub fn lease_wait_max(mut self, wait: Duration) -> Self {
        self.config.lease_wait_max = wait;
        self
    }

    /// Whether to read hits from the daemon's shared-memory L1 (default true).
    pub fn shm(mut self, on: bool) -> Self {
        self.config.shm = on;
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Connects and performs the handshake, as [`Client::connect`].
    pub async fn connect(self) -> Result<Client> {
        Client::with_config(self.config).await
    }
}

/// Options of [`Client::set_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Time to live; `None` means the daemon's `cache.default_ttl`.
    pub ttl: Option<Duration>,
    /// A fill lease from [`Client::get_full`]: the value is stored only if the
    /// lease is still held, so a fill racing an invalidation cannot resurrect
    /// stale data.
    pub lease: Option<String>,
    /// Tags for [`Client::invalidate_tags`].
    pub tags: Vec<String>,
}

impl SetOptions {
    /// Options with a time to live.
    pub fn with_ttl(ttl: Duration) -> Self {
        SetOptions {
            ttl: Some(ttl),
            ..SetOptions::default()
        }
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// Converts a duration to the protocol's integer milliseconds. Rounds up, so a
/// sub-millisecond duration becomes 1 ms instead of the invalid 0.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A handle to shoald. Cheap to clone: clones share one multiplexed connection.
///
/// Every call is bounded by the configured timeout. When the connection is lost,
/// in-flight calls fail with [`Error::ConnectionLost`] and the next call
/// reconnects. While the daemon stays unreachable, at most one connect is attempted
/// per backoff interval; calls in between fail at once with the last connect
/// error (retryable), so callers can fall back instead of queueing.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// The current connection. Held only to clone or replace the `Arc`.
    conn: Mutex<Option<Arc<Conn>>>,
    /// Serialises reconnects, and remembers how the last one went.
    reconnect: tokio::sync::Mutex<ReconnectState>,
    /// Finished connect attempts, so a caller that waited for another's attempt
    /// can tell that one happened while it waited.
    attempts: AtomicU64,
    hello: Mutex<HelloResult>,
    /// The daemon's shared-memory L1, when attached (`shm_local.rs`).
    shm: crate::shm_local::Local,
}

#[derive(Default)]
struct ReconnectState {
    failures: u32,
    retry_at: Option<Instant>,
    /// The error of the last attempt, if it failed.
    last_error: Option<Error>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a clone or an assignment: a panic cannot
    // leave the data half-updated, so poisoning carries no information.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hello = lock(&self.inner.hello);
        f.debug_struct("Client")
            .field("socket_path", &self.inner.config.socket_path)
            .field("server", &hello.server)
            .field("node", &hello.node)
            .field("connected", &self.inner.current().is_some())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn current(&self) -> Option<Arc<Conn>> {
        lock(&self.conn)
            .as_ref()
            .filter(|c| c.is_alive())
            .map(Arc::clone)
    }

    async fn conn(&self) -> Result<Arc<Conn>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        match self.current() {
            Some(c) => Ok(c),
            None => self.reconnect().await,
        }
    }

    async fn reconnect(&self) -> Result<Arc<Conn>> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut st = self.reconnect.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some(err) = &st.last_error {
            // An attempt failed while we queued for the lock: share its outcome
            // rather than hammering a daemon that just refused.
            if self.attempts.load(Ordering::Acquire) != seen {
                return Err(err.duplicate());
            }
            if st.retry_at.is_some_and(|at| Instant::now() < at) {
                return Err(err.duplicate());
            }
        }
        // Release the dead connection's socket now rather than at the next success.
        drop(lock(&self.conn).take());
        let result = self.establish().await;
        self.attempts.fetch_add(1, Ordering::Release);
        match result {
            Ok(conn) => {
                *st = ReconnectState::default();
                let conn = Arc::new(conn);
                *lock(&self.hello) = conn.hello.clone();
                *lock(&self.conn) = Some(Arc::clone(&conn));
                if self.closed.load(Ordering::Acquire) {
                    // `close` ran while we were connecting and could not see this one.
                    conn.kill(&Error::Closed);
                    *lock(&self.conn) = None;
                    return Err(Error::Closed);
                }
                tracing::debug!(node = %conn.hello.node, "reconnected to shoald");
                // Possibly another daemon process: its segment, not the old one.
                self.shm.attach(&self.config).await;
                Ok(conn)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let delay = backoff(&self.config, st.failures);
                tracing::debug!(error = %e, failures = st.failures, ?delay, "connecting to shoald failed");
                st.retry_at = Some(Instant::now() + delay);
                st.last_error = Some(e.duplicate());
                Err(e)
            }
        }
    }

    async fn establish(&self) -> Result<Conn> {
        let c = &self.config;
        match tokio::time::timeout(
            c.connect_timeout,
            Conn::establish(&c.socket_path, &c.client_name),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no handshake with {} within {:?}",
                    c.socket_path.display(),
                    c.connect_timeout
                ),
            ))),
        }
    }
}

/// Delay before the next attempt after `failures` consecutive failures: doubling
/// from the minimum, capped, with jitter so clients of a restarting daemon spread
/// their attempts.
fn backoff(config: &ClientConfig, failures: u32) -> Duration {
    let min = config.reconnect_backoff_min;
    let max = config.reconnect_backoff_max.max(min);
    let exp = failures.saturating_sub(1).min(20);
    let base = min.saturating_mul(1 << exp).min(max);
    let half = base / 2;
    half + base.saturating_sub(half).mul_f64(rand::random::<f64>())
}

impl Client {
    /// Connects to the daemon at `socket_path` with default settings and performs
    /// the handshake. Fails if the daemon cannot be reached now; once connected,
    /// later connection losses are repaired by the next call.
    pub async fn connect(socket_path: impl AsRef<Path>) -> Result<Client> {
        Client::with_config(ClientConfig::new(socket_path.as_ref())).await
    }

    /// Starts building a client with non-default settings.
    pub fn builder(socket_path: impl Into<PathBuf>) -> ClientBuilder {
        ClientBuilder {
            config: ClientConfig::new(socket_path),
        }
    }

    /// Connects with `config` and performs the handshake.
    pub async fn with_config(config: ClientConfig) -> Result<Client> {
        let inner = Inner {
            config,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            conn: Mutex::new(None),
            reconnect: tokio::sync::Mutex::new(ReconnectState::default()),
            attempts: AtomicU64::new(0),
            hello: Mutex::new(HelloResult {
                version: 0,
                server: String::new(),
                node: String::new(),
                max_frame: 0,
            }),
            shm: crate::shm_local::Local::default(),
        };
        let conn = Arc::new(inner.establish().await?);
        inner.shm.attach(&inner.config).await;
        *lock(&inner.hello) = conn.hello.clone();
        *lock(&inner.conn) = Some(conn);
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// What the daemon said in the latest handshake: version, server name, node id,
    /// `max_frame`.
    pub fn server_info(&self) -> HelloResult {
        lock(&self.inner.hello).clone()
    }

    /// Closes the connection. In-flight and later calls fail with [`Error::Closed`].
    /// Dropping every clone has the same effect on the connection; `close` is for
    /// stopping while clones are still around.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(conn) = lock(&self.inner.conn).take() {
            conn.kill(&Error::Closed);
        }
    }

    /// Sends `op` and decodes its `ok` result as `T`. Every typed method goes
    /// through here; use it directly for ops without a dedicated method (sessions,
    /// rate limits), with the result types in [`proto`].
    ///
    /// ```no_run
    /// # async fn demo(client: shoal_client::Client) -> shoal_client::Result<()> {
    /// use shoal_client::proto::{Op, RatelimitDecision};
    /// let d: RatelimitDecision = client
    ///     .call(Op::RatelimitCheck { policy: "login".into(), key: "ip:10.0.0.1".into(), cost: 1 })
    ///     .await?;
    /// if !d.allowed { /* retry after d.retry_after_ms */ }
    /// # Ok(()) }
    /// ```
    pub async fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T> {
        let name = op.name();
        let body = self.roundtrip(op).await?;
        match decode_response::<T>(&body) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::from_body(e)),
            Err(e) => Err(Error::Protocol(format!("bad `{name}` response: {e}"))),
        }
    }

    async fn roundtrip(&self, op: Op) -> Result<BytesMut> {
        match tokio::time::timeout(self.inner.config.timeout, self.roundtrip_inner(op)).await {
            Ok(r) => r,
            // Dropping the inner future dropped its `PendingGuard`: the id is gone
            // from the pending map, and a late response is discarded.
            Err(_) => Err(Error::Timeout),
        }
    }

    async fn roundtrip_inner(&self, op: Op) -> Result<BytesMut> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Read here, in the caller's task, so the caller's current span is the one sent.
        let frame = encode_frame_traced(id, op, current_traceparent());
        let mut retried = false;
        loop {
            let conn = self.inner.conn().await?;
            let len = frame.len() - FRAME_HEADER_LEN;
            if len > conn.max_frame {
                // The server would answer frame_too_large and close the connection,
                // failing everyone else's calls too.
                return Err(Error::TooLarge {
                    len,
                    max: conn.max_frame,
                });
            }
            let Some((mut guard, rx)) = conn.register(id) else {
                // Died between the liveness check and now; nothing was sent on it,
                // so one more try on a fresh connection is safe.
                if retried {
                    return Err(Error::ConnectionLost);
                }
                retried = true;
                continue;
            };
            conn.send(id, &frame)?;
            let reply = rx.await;
            guard.answered = true;
            return match reply {
                Ok(r) => r,
                // Every path that ends the reader answers the pending calls first,
                // so an unanswered drop means it died abnormally (a panic): treat
                // the connection as lost so the next call replaces it.
                Err(_) => {
                    conn.kill(&Error::ConnectionLost);
                    Err(Error::ConnectionLost)
                }
            };
        }
    }

    /// Round trip with no payload: checks the daemon is up and answering.
    pub async fn ping(&self) -> Result<()> {
        self.call::<serde::de::IgnoredAny>(Op::Ping).await.map(drop)
    }

    /// The value of `key`, or `None` on a miss.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Bytes>> {
        let r = self.get_full(key, false).await?;
        Ok(hit_value(r))
    }

    /// The full `cache.get` result. With `lease`, a miss carries either a fill
    /// lease (you should load and [`set_with`](Self::set_with) it) or `wait_ms`
    /// (someone else is filling). [`get_or_load`](Self::get_or_load) does all that.
    pub async fn get_full(&self, key: &str, lease: bool) -> Result<GetResult> {
        // A hit needs no lease; a miss asks the daemon (with the lease, if asked).
        if let Some(hit) = self.inner.shm.get(key) {
            return Ok(hit);
        }
        self.call(Op::CacheGet {
            key: key.to_owned(),
            lease,
        })
        .await
    }

    /// The values of `keys`, in order, `None` for misses.
    pub async fn mget_raw<I>(&self, keys: I) -> Result<Vec<Option<Bytes>>>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let rs = self.mget_full(keys).await?;
        Ok(rs.into_iter().map(hit_value).collect())
    }

    /// The full `cache.get` results for `keys`, in order.
    pub async fn mget_full<I>(&self, keys: I) -> Result<Vec<GetResult>>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let keys = strings(keys);
        if keys.is_empty() {
            // The protocol requires a non-empty list; the answer is known anyway.
            return Ok(Vec::new());
        }
        // Hits from shared memory first; the rest in one `cache.mget`.
        let mut out: Vec<Option<GetResult>> = keys.iter().map(|k| self.inner.shm.get(k)).collect();
        let missing: Vec<String> = keys
            .into_iter()
            .zip(&out)
            .filter(|(_, r)| r.is_none())
            .map(|(k, _)| k)
            .collect();
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let n = missing.len();
        let rs: Vec<GetResult> = self.call(Op::CacheMget { keys: missing }).await?;
        if rs.len() != n {
            return Err(Error::Protocol(format!(
                "cache.mget of {n} keys answered {} results",
                rs.len()
            )));
        }
        let mut rs = rs.into_iter();
        for slot in out.iter_mut().filter(|r| r.is_none()) {
            *slot = rs.next();
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Stores `value` under `key` for the whole fleet, replacing any value and
    /// cancelling fill leases. `ttl: None` is the daemon's default TTL.
    pub async fn set_raw(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.set_with(
            key,
            value,
            SetOptions {
                ttl,
                ..SetOptions::default()
            },
        )
        .await
        .map(drop)
    }

    /// `cache.set` with every option. Returns whether the value was stored: false
    /// only for a fill whose lease was lost (invalidated, expired, replaced).
    pub async fn set_with(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        opts: SetOptions,
    ) -> Result<bool> {
        let r: SetResult = self
            .call(Op::CacheSet {
                key: key.to_owned(),
                value: value.into(),
                ttl_ms: opts.ttl.map(duration_ms),
                lease: opts.lease,
                tags: opts.tags,
            })
            .await?;
        Ok(r.stored)
    }

    /// Deletes `keys` fleet-wide. Returns the invalidation log position.
    pub async fn invalidate<I>(&self, keys: I) -> Result<String>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let r: InvalidateResult = self
            .call(Op::CacheInvalidate {
                keys: strings(keys),
            })
            .await?;
        Ok(r.seq)
    }

    /// Deletes every key tagged with any of `tags`. Returns the invalidation log
    /// position and how many keys were deleted.
    pub async fn invalidate_tags<I>(&self, tags: I) -> Result<(String, u64)>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let r: InvalidateTagsResult = self
            .call(Op::CacheInvalidateTags {
                tags: strings(tags),
            })
            .await?;
        Ok((r.seq, r.keys))
    }

    /// How this client's shared-memory reads went: attached or not, hits served
    /// from it, lookups that went to the socket.
    pub fn shm_stats(&self) -> crate::shm_local::ShmStats {
        self.inner.shm.stats()
    }

    /// The daemon's counters (a free-form map).
    pub async fn stats(&self) -> Result<rmpv::Value> {
        self.call(Op::Stats).await
    }

    /// Extension `admin.info`: the daemon's Redis (address without credentials),
    /// key prefix, node id and version.
    pub async fn admin_info(&self) -> Result<proto::AdminInfo> {
        self.call(Op::AdminInfo).await
    }

    /// The value of `key` decoded as `T`, or `None` on a miss. A value that does
    /// not decode as `T` is [`Error::Codec`].
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_raw(key).await? {
            Some(bytes) => proto::from_value(&bytes).map(Some).map_err(Error::Codec),
            None => Ok(None),
        }
    }

    /// Stores `value` (encoded with [`proto::to_value`]) under `key`.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = proto::to_value(value).map_err(Error::Codec)?;
        self.set_raw(key, bytes, ttl).await
    }

    /// The values of `keys` decoded as `T`, in order, `None` for misses.
    pub async fn mget<T, I>(&self, keys: I) -> Result<Vec<Option<T>>>
    where
        T: DeserializeOwned,
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.mget_raw(keys)
            .await?
            .into_iter()
            .map(|v| match v {
                Some(bytes) => proto::from_value(&bytes).map(Some).map_err(Error::Codec),
                None => Ok(None),
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.inner.current().map_or(0, |c| c.pending_len())
    }
}

fn hit_value(r: GetResult) -> Option<Bytes> {
    r.hit.then(|| r.value.unwrap_or_default())
}

fn strings<I>(items: I) -> Vec<String>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

#[cfg(test)]
mod tests;
