//! Sessions (issue #5): opaque tokens, keyed-hash storage in Redis, idle and
//! absolute expiry, and revocations mirrored to every daemon through a stream.
//!
//! A token is 32 bytes from the OS CSPRNG (base64url). Redis only ever sees its
//! keyed hash ([`keys`]), which is also the `session_id` that `session.list` shows.
//! Each daemon keeps the sessions it validated in a bounded local cache
//! ([`local`]), so a hot session is answered without Redis; sliding-expiry writes
//! are coalesced (Redis is refreshed only when `session.touch_fraction` of the idle
//! window has passed). Every revocation, rotation, data update and "revoke all of a
//! user" is one atomic script that changes Redis and appends to the revocation
//! stream; every daemon tails that stream with `XREAD BLOCK` from its own cursor
//! ([`reader`]) and evicts, and follows the coherence gap rules: while the reader
//! is down the local cache is not trusted; a trimmed cursor or a changed Redis
//! identity flushes it.
//!
//! The bound: the local cache answers only while the reader's newest proof of
//! delivery is younger than Δ (`cache.max_staleness`), so no daemon accepts a
//! session more than Δ after its revocation returned (except in the opt-in
//! `on_unavailable = "cached"` mode, which trades that for availability).
//! A session created before its user's last `revoke_user` is refused by Redis
//! itself (its epoch), whether or not the user index listed it.
//!
//! Tokens are never logged, traced, counted or put in error messages: the code
//! below only ever passes them to the hasher.
//!
//! This file: `Sessions` and the ops on one session (create, get, update,
//! rotate). Beside it: `revoke.rs` (revoke, revoke_user, list), `hash_key.rs`
//! (the fleet's hash key), `keys.rs`, `local.rs`, `reader.rs`, `scripts.rs`.

mod counters;
mod hash_key;
mod keys;
mod local;
mod reader;
mod revoke;
mod scripts;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_client::proto::{
    encode_ok, ErrorCode, Frame, Op, RevokeUserResult, RevokedResult, RotateResult, SessionCreated,
    SessionInfo, UpdatedResult,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SessionUnavailable};
use crate::error::OpError;
use crate::ops::stats::{Stats, LAG_BUCKETS_MS};
use crate::store::streamid::StreamId;
use crate::store::{Store, StoreError};

use counters::{bump, Counters};
use keys::FleetKey;
pub use keys::{plausible_session_id, plausible_token, SessionKeys, TokenHasher};
pub use local::FlushReason;
use local::{Cached, LocalCache};
use scripts::{Context, Got, Record, Rotated, Scripts, Updated};

/// Random bytes in a token: 256 bits.
pub const TOKEN_BYTES: usize = 32;
/// How many user-index members one script call names (`session.revoke_user`'s
/// deletions, `session.list`'s reads): a user with 100k sessions costs many
/// small calls, never one that blocks Redis past its timeout.
pub const INDEX_PAGE: usize = 500;
/// The most entries `session.list` returns: the live sessions with the latest
/// absolute expiry first.
pub const LIST_MAX: usize = 1000;

/// Settings of the session service, from `[session]` and friends.
#[derive(Debug, Clone)]
struct Settings {
    idle_ms: u64,
    absolute_ms: u64,
    on_unavailable: SessionUnavailable,
    max_stale: Duration,
    touch_fraction: f64,
    /// Longest `XREAD BLOCK`: also how fast a silently dead reader is noticed.
    block: Duration,
    timeout: Duration,
    /// `CLIENT SETNAME` of the reader connection (operators and tests find it by it).
    reader_name: String,
}

/// What the revocation reader shares with the request path and with tests.
#[derive(Debug)]
struct ReaderState {
    ready_tx: watch::Sender<bool>,
    cursor_tx: watch::Sender<StreamId>,
    /// Redis identity (epoch, run_id) the cursor belongs to.
    identity: Mutex<Option<(String, String)>>,
}

/// Clears the sliding-touch flag of a cached session when the request that set
/// it ends, however it ends (answered, failed, or dropped mid-flight).
struct Touching<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Touching<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Attempts of a script that may ask for the session's user first.
const USER_ROUNDS: usize = 3;

/// The session service of one daemon.
#[derive(Debug)]
pub struct Sessions {
    store: Store,
    scripts: Scripts,
    cx: Context,
    settings: Settings,
    /// The token hash key: from `session.token_hash_key`, or the fleet's in Redis.
    hasher: RwLock<Option<FleetKey>>,
    key_configured: bool,
    local: LocalCache,
    counters: Counters,
    reader: ReaderState,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn not_found() -> OpError {
    OpError::new(
        ErrorCode::NotFound,
        "no such session (unknown, expired or revoked)",
    )
}

fn info(c: &Cached) -> SessionInfo {
    SessionInfo {
        user: c.user.clone(),
        data: c.data.clone(),
        created_at_ms: c.created_at_ms,
        last_seen_ms: c.last_seen_ms,
        expires_at_ms: c.expires_at_ms(),
        absolute_expires_at_ms: c.absolute_expires_at_ms,
    }
}

/// A script's record as a cache entry. `sent` is when the request left: Redis's
/// "now" is later than that, so deadlines computed from it are never late.
fn cached_from(r: Record, sent: Instant) -> Cached {
    let expires = r
        .last_seen_ms
        .saturating_add(r.idle_ms)
        .min(r.absolute_expires_at_ms);
    let left = Duration::from_millis(expires.saturating_sub(r.now_ms));
    let since_seen = Duration::from_millis(r.now_ms.saturating_sub(r.last_seen_ms));
    Cached {
        user: r.user,
        data: r.data,
        created_at_ms: r.created_at_ms,
        last_seen_ms: r.last_seen_ms,
        idle_ms: r.idle_ms,
        absolute_expires_at_ms: r.absolute_expires_at_ms,
        epoch: r.epoch,
        pos: r.pos,
        deadline: sent + left,
        window_started: sent.checked_sub(since_seen).unwrap_or(sent),
        touching: std::sync::atomic::AtomicBool::new(false),
    }
}

impl Sessions {
    pub fn new(config: &Config, store: Store, _stats: Arc<Stats>) -> Sessions {
        let s = &config.session;
        let configured = (!s.token_hash_key.is_empty())
            .then(|| FleetKey::new(s.token_hash_key.expose()))
            .flatten();
        let node: String = config
            .node
            .id
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        let session_keys = store.session_keys();
        Sessions {
            store,
            scripts: Scripts::load(),
            cx: Context {
                keys: SessionKeys::new(session_keys.prefix()),
                log_len: s.revocation_log_len.max(1),
                node: config.node.id.clone(),
                touch_fraction: format!("{}", s.touch_fraction.clamp(0.0, 1.0)),
                epoch_keep_ms: ms(s.absolute_ttl),
            },
            settings: Settings {
                idle_ms: ms(s.idle_ttl),
                absolute_ms: ms(s.absolute_ttl),
                on_unavailable: s.on_unavailable,
                max_stale: s.max_stale,
                touch_fraction: s.touch_fraction.clamp(0.0, 1.0),
                block: config.cache.heartbeat.max(Duration::from_millis(10)),
                timeout: config.redis.timeout,
                reader_name: format!("shoal-srev:{node}"),
            },
            key_configured: configured.is_some(),
            hasher: RwLock::new(configured),
            local: LocalCache::new(s.local_max_entries, config.cache.max_staleness),
            counters: Counters::default(),
            reader: ReaderState {
                ready_tx: watch::channel(false).0,
                cursor_tx: watch::channel(StreamId::ZERO).0,
                identity: Mutex::new(None),
            },
        }
    }

    /// Background work (the revocation reader); returns when `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if !self.key_configured {
            tracing::warn!(
                key = %self.cx.keys.hash_key(),
                "session.token_hash_key is not set: sessions are named with a random key kept in Redis \
                 (checked on every reader loop; if it changes, sessions hashed with the old one are lost). \
                 Set it in production"
            );
        }
        self.follow(cancel).await;
    }

    /// Adds this service's counters to a `stats` snapshot.
    pub fn stats_into(&self, m: &mut BTreeMap<String, u64>) {
        let c = &self.counters;
        let mut put = |k: &str, v: &AtomicU64| {
            m.insert(format!("session_{k}"), v.load(Ordering::Relaxed));
        };
        put("local_hits", &c.local_hits);
        put("local_misses", &c.local_misses);
        put("redis_reads", &c.redis_reads);
        put("touches", &c.touches);
        put("creates", &c.creates);
        put("updates", &c.updates);
        put("revocations", &c.revocations);
        put("rotations", &c.rotations);
        put("user_revocations", &c.user_revocations);
        put("events_applied", &c.events_applied);
        put("evictions", &c.evictions);
        put("fills_rejected", &c.fills_rejected);
        put("served_stale", &c.served_stale);
        put("denied_unavailable", &c.denied_unavailable);
        put("local_untrusted", &c.local_untrusted);
        put("user_lookups", &c.user_lookups);
        put("flushes_hash_key", &c.flushes_hash_key);
        put("reader_reconnects", &c.reader_reconnects);
        put("flushes_trimmed", &c.flushes_trimmed);
        put("flushes_redis_identity", &c.flushes_identity);
        put("flushes_bad_entry", &c.flushes_bad_entry);
        put("revocation_lag_ms_sum", &c.lag_sum_ms);
        put("revocation_lag_count", &c.lag_count);
        for (i, b) in LAG_BUCKETS_MS.iter().enumerate() {
            put(&format!("revocation_lag_ms_le_{b}"), &c.lag_buckets[i]);
        }
        put(
            "revocation_lag_ms_le_inf",
            &c.lag_buckets[LAG_BUCKETS_MS.len()],
        );
        let cursor = self.cursor();
        m.insert("session_local_entries".into(), self.local.entry_count());
        m.insert("session_reader_ready".into(), u64::from(self.ready()));
        m.insert(
            "session_proof_age_ms".into(),
            self.local.proof_age(Instant::now()).map_or(u64::MAX, |a| {
                u64::try_from(a.as_millis()).unwrap_or(u64::MAX)
            }),
        );
        m.insert("session_cursor_ms".into(), cursor.ms);
        m.insert("session_cursor_seq".into(), cursor.seq);
    }

    /// Whether the revocation reader is caught up (for readiness).
    pub fn ready(&self) -> bool {
        self.local.is_ready()
    }

    /// A receiver that sees every change of the reader's readiness.
    pub fn watch_ready(&self) -> watch::Receiver<bool> {
        self.reader.ready_tx.subscribe()
    }

    /// A receiver that sees every move of the reader's stream cursor (the id of
    /// the last revocation this daemon applied).
    pub fn watch_cursor(&self) -> watch::Receiver<StreamId> {
        self.reader.cursor_tx.subscribe()
    }

    /// The id of the last revocation this daemon applied.
    pub fn cursor(&self) -> StreamId {
        *self.reader.cursor_tx.borrow()
    }

    /// The name of the reader's Redis connection (`CLIENT LIST`).
    pub fn reader_name(&self) -> &str {
        &self.settings.reader_name
    }

    /// Executes a `session.*` op.
    pub async fn handle(&self, id: u64, op: Op, max_frame: usize) -> Result<Frame, OpError> {
        Ok(match op {
            Op::SessionCreate {
                user,
                data,
                idle_ttl_ms,
                absolute_ttl_ms,
            } => encode_ok(
                id,
                &self
                    .create(&user, &data, idle_ttl_ms, absolute_ttl_ms)
                    .await?,
                max_frame,
            ),
            Op::SessionGet { token, touch } => {
                encode_ok(id, &self.get(&token, touch).await?, max_frame)
            }
            Op::SessionUpdate { token, data } => encode_ok(
                id,
                &UpdatedResult {
                    updated: self.update(&token, &data).await?,
                },
                max_frame,
            ),
            Op::SessionRotate { token } => encode_ok(
                id,
                &RotateResult {
                    token: self.rotate(&token).await?,
                },
                max_frame,
            ),
            Op::SessionRevoke { target } => encode_ok(
                id,
                &RevokedResult {
                    revoked: self.revoke(target).await?,
                },
                max_frame,
            ),
            Op::SessionRevokeUser { user } => encode_ok(
                id,
                &RevokeUserResult {
                    revoked: self.revoke_user(&user).await?,
                },
                max_frame,
            ),
            Op::SessionList { user } => encode_ok(id, &self.list(&user).await?, max_frame),
            other => {
                return Err(OpError::new(
                    ErrorCode::Internal,
                    format!("`{}` is not a session op", other.name()),
                ))
            }
        })
    }

    fn cached_mode(&self) -> bool {
        self.settings.on_unavailable == SessionUnavailable::Cached
    }

    /// Reads a session from Redis and keeps it locally if the coherence rules
    /// allow. `user`: who owns it, if this daemon knows (saves a round trip).
    async fn read(
        &self,
        hash: &str,
        touch: bool,
        mut user: Option<String>,
    ) -> Result<Option<Arc<Cached>>, StoreError> {
        bump(&self.counters.redis_reads);
        for _ in 0..USER_ROUNDS {
            let ticket = self.local.ticket();
            let sent = Instant::now();
            let got = self
                .scripts
                .get(&self.store, &self.cx, hash, touch, user.as_deref())
                .await?;
            let record = match got {
                Got::Missing => {
                    self.local.evict(hash);
                    return Ok(None);
                }
                Got::AskUser(u) => {
                    bump(&self.counters.user_lookups);
                    user = Some(u);
                    continue;
                }
                Got::Found(record) => record,
            };
            if record.touched {
                bump(&self.counters.touches);
            }
            let entry = Arc::new(cached_from(record, sent));
            if ticket.is_some() && !self.local.fill(hash, entry.clone(), ticket) {
                bump(&self.counters.fills_rejected);
            }
            return Ok(Some(entry));
        }
        Err(StoreError::Redis(
            "session_get kept naming another user".into(),
        ))
    }

    async fn create(
        &self,
        user: &str,
        data: &Bytes,
        idle_ttl_ms: Option<u64>,
        absolute_ttl_ms: Option<u64>,
    ) -> Result<SessionCreated, OpError> {
        let idle = idle_ttl_ms.unwrap_or(self.settings.idle_ms);
        let absolute = absolute_ttl_ms.unwrap_or(self.settings.absolute_ms);
        let hasher = self.hasher().await?;
        // A collision of 256-bit tokens does not happen; the loop only makes the
        // script's refusal to overwrite an existing session total.
        for _ in 0..4 {
            let token = crate::random::random_token(TOKEN_BYTES);
            let hash = hasher.session_hash(&token);
            let ticket = self.local.ticket();
            let sent = Instant::now();
            let created = self
                .scripts
                .create(&self.store, &self.cx, &hash, user, data, idle, absolute)
                .await?;
            let Some(record) = created else { continue };
            bump(&self.counters.creates);
            let entry = Arc::new(cached_from(record, sent));
            let result = SessionCreated {
                token,
                expires_at_ms: entry.expires_at_ms(),
                absolute_expires_at_ms: entry.absolute_expires_at_ms,
            };
            self.local.fill(&hash, entry, ticket);
            return Ok(result);
        }
        Err(OpError::new(
            ErrorCode::Internal,
            "could not draw an unused session token",
        ))
    }

    async fn get(&self, token: &str, touch: bool) -> Result<SessionInfo, OpError> {
        if !plausible_token(token) {
            return Err(not_found());
        }
        let hash = match self.hasher().await {
            Ok(h) => h.session_hash(token),
            Err(e) => return Err(self.deny(e)),
        };
        if let Some(entry) = self.local.get(&hash) {
            bump(&self.counters.local_hits);
            if touch
                && entry.touch_due(self.settings.touch_fraction, Instant::now())
                && entry
                    .touching
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                let fresh = {
                    // Released however this ends, including a dropped request.
                    let _touching = Touching(&entry.touching);
                    self.read(&hash, true, Some(entry.user.clone())).await
                };
                match fresh {
                    Ok(Some(fresh)) => return Ok(info(&fresh)),
                    Ok(None) => return Err(not_found()),
                    // The cache is trusted (the reader is caught up) and the entry
                    // is within its deadline: answer from it, refresh next time.
                    Err(e) => tracing::debug!(error = %e, "sliding refresh failed"),
                }
            }
            return Ok(info(&entry));
        }
        bump(&self.counters.local_misses);
        if !self.local.trusted(Instant::now()) {
            bump(&self.counters.local_untrusted);
        }
        if self.cached_mode() && !self.local.is_ready() && self.store.is_down() {
            // Known outage: do not wait for a deadline before the fallback.
            if let Some(entry) = self.local.get_stale(&hash, self.settings.max_stale) {
                bump(&self.counters.served_stale);
                return Ok(info(&entry));
            }
        }
        match self.read(&hash, touch, self.local.peek_user(&hash)).await {
            Ok(Some(entry)) => Ok(info(&entry)),
            Ok(None) => Err(not_found()),
            Err(e) if e.is_retryable() => {
                if self.cached_mode() {
                    if let Some(entry) = self.local.get_stale(&hash, self.settings.max_stale) {
                        bump(&self.counters.served_stale);
                        return Ok(info(&entry));
                    }
                }
                Err(self.deny(e))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The answer when a session cannot be validated because Redis is unreachable.
    fn deny(&self, e: StoreError) -> OpError {
        if !e.is_retryable() {
            return e.into();
        }
        bump(&self.counters.denied_unavailable);
        OpError::new(
            ErrorCode::Unavailable,
            format!("cannot validate the session: {e}"),
        )
    }

    async fn update(&self, token: &str, data: &[u8]) -> Result<bool, OpError> {
        if !plausible_token(token) {
            return Ok(false);
        }
        let hash = self.hasher().await?.session_hash(token);
        let mut user = self.local.peek_user(&hash);
        for _ in 0..USER_ROUNDS {
            match self
                .scripts
                .update(&self.store, &self.cx, &hash, data, user.as_deref())
                .await?
            {
                Updated::Done(id) => {
                    bump(&self.counters.updates);
                    // This daemon serves the new data at once; others on the event.
                    self.local.apply_session(&hash, id);
                    return Ok(true);
                }
                Updated::Missing => {
                    self.local.evict(&hash);
                    return Ok(false);
                }
                Updated::AskUser(u) => {
                    bump(&self.counters.user_lookups);
                    user = Some(u);
                }
            }
        }
        Err(StoreError::Redis("session_update kept naming another user".into()).into())
    }

    async fn rotate(&self, token: &str) -> Result<String, OpError> {
        if !plausible_token(token) {
            return Err(not_found());
        }
        let hasher = self.hasher().await?;
        let old = hasher.session_hash(token);
        let mut user = self.local.peek_user(&old);
        for _ in 0..4 {
            let u = match user.take() {
                Some(u) => u,
                None => {
                    let read: Option<String> = self
                        .store
                        .cmd(redis::cmd("HGET").arg(self.cx.keys.session(&old)).arg("u"))
                        .await?;
                    match read {
                        Some(u) => u,
                        None => {
                            self.local.evict(&old);
                            return Err(not_found());
                        }
                    }
                }
            };
            let new_token = crate::random::random_token(TOKEN_BYTES);
            let new = hasher.session_hash(&new_token);
            let ticket = self.local.ticket();
            let sent = Instant::now();
            match self
                .scripts
                .rotate(&self.store, &self.cx, &old, &new, &u)
                .await?
            {
                Rotated::Done { id, record } => {
                    bump(&self.counters.rotations);
                    self.local.apply_session(&old, id);
                    self.local
                        .fill(&new, Arc::new(cached_from(record, sent)), ticket);
                    return Ok(new_token);
                }
                Rotated::NotFound => {
                    self.local.evict(&old);
                    return Err(not_found());
                }
                Rotated::UserChanged | Rotated::HashTaken => continue,
            }
        }
        Err(OpError::new(
            ErrorCode::Internal,
            "the session kept changing during rotation; try again",
        ))
    }

    fn flush(&self, reason: FlushReason) {
        self.local.flush();
        let c = match reason {
            FlushReason::Trimmed => &self.counters.flushes_trimmed,
            FlushReason::Identity => &self.counters.flushes_identity,
            FlushReason::BadEntry => &self.counters.flushes_bad_entry,
            FlushReason::HashKey => &self.counters.flushes_hash_key,
        };
        bump(c);
        tracing::warn!(reason = reason.as_str(), "local session cache flushed");
    }
}
