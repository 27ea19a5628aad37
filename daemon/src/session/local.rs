//! The local cache of validated sessions, and the rules that decide when it may
//! answer (the session counterpart of `l1.rs`).
//!
//! - `ready`: the revocation reader is connected and caught up. While it is not,
//!   the cache is not trusted: reads go to Redis, and a fill taken before the gap
//!   is void (`generation`).
//! - change marks: per stripe of session hashes and of user names, the highest
//!   revocation-stream id this daemon applied. A read made at stream position P is
//!   kept only if no revocation of its stripe later than P was applied, checked
//!   before and after the insert, so a revocation racing a read is never undone by
//!   the read's fill. Striping may refuse a good fill, never admit a bad one.
//!   Every hit checks the marks again (and the flush count the entry was filled
//!   under): moka's `invalidate_entries_if` is housekeeping, not the guarantee,
//!   because it can leave a matching entry readable when its predicate is retired
//!   while the entry's insert is still queued (the `race` test below found 6,000
//!   such reads in 8 s before the hit path checked the marks).
//! - `proof`: the newest moment as of which the reader proved it had seen every
//!   revocation (the send time of an `XREAD` that returned not full, followed by
//!   a passing identity and trim check). The cache answers only while that proof
//!   is younger than Δ (`cache.max_staleness`), checked on every hit: so a
//!   session revoked more than Δ ago is never answered from here, whatever
//!   happened to Redis or to the reader's connection.
//!   In `on_unavailable = "cached"` mode, entries may be served for `max_stale`
//!   after the proof, never later, and never one a revocation already evicted.
//!
//! Deadlines are kept on the monotonic clock, computed from the remaining time
//! Redis reported, so no wall clock is compared with Redis's.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;

use crate::store::streamid::StreamId;

const STRIPES: usize = 1 << 14;

/// A session as this daemon last validated it.
#[derive(Debug)]
pub struct Cached {
    pub user: String,
    pub data: Bytes,
    pub created_at_ms: u64,
    /// Start of the idle window as Redis records it (the last sliding refresh).
    pub last_seen_ms: u64,
    pub idle_ms: u64,
    pub absolute_expires_at_ms: u64,
    /// The user's revocation epoch when the session was created.
    pub epoch: u64,
    /// The revocation-stream position the read saw.
    pub pos: StreamId,
    /// When Redis drops the session (as far as the read could tell), on our clock.
    pub deadline: Instant,
    /// When the idle window started, on our clock (decides the next refresh).
    pub window_started: Instant,
    /// Set while one request refreshes the idle expiry, so others do not.
    pub touching: AtomicBool,
}

impl Cached {
    /// `min(last_seen + idle, absolute)`: exactly when Redis will drop it.
    pub fn expires_at_ms(&self) -> u64 {
        self.last_seen_ms
            .saturating_add(self.idle_ms)
            .min(self.absolute_expires_at_ms)
    }

    /// Whether a `touch` should refresh the idle expiry in Redis now.
    pub fn touch_due(&self, fraction: f64, now: Instant) -> bool {
        let window = Duration::from_millis(self.idle_ms).mul_f64(fraction.clamp(0.0, 1.0));
        now.saturating_duration_since(self.window_started) >= window
    }
}

/// A cached session with the flush count it was filled under.
#[derive(Clone)]
struct Slot {
    entry: Arc<Cached>,
    flushes: u64,
}

struct CachedExpiry;

impl Expiry<Arc<str>, Slot> for CachedExpiry {
    fn expire_after_create(&self, _k: &Arc<str>, v: &Slot, now: Instant) -> Option<Duration> {
        Some(v.entry.deadline.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _k: &Arc<str>,
        v: &Slot,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.entry.deadline.saturating_duration_since(now))
    }
}

/// Proof that a read was issued while the cache was trusted, in a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// Why the local cache was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// The revocation stream no longer reaches back to our cursor.
    Trimmed,
    /// Redis lost its data or was replaced (run_id or epoch changed).
    Identity,
    /// A stream entry could not be understood: it may have revoked anything.
    BadEntry,
    /// The fleet's token hash key changed: sessions are named differently now.
    HashKey,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Trimmed => "stream_trimmed",
            FlushReason::Identity => "redis_identity",
            FlushReason::BadEntry => "bad_entry",
            FlushReason::HashKey => "hash_key",
        }
    }
}

enum Domain {
    Session,
    User,
}

pub struct LocalCache {
    cache: Cache<Arc<str>, Slot>,
    ready: AtomicBool,
    generation: AtomicU64,
    /// Flushes so far; an entry filled before the latest one is never answered.
    flushes: AtomicU64,
    marks: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// Nanoseconds after `base` (plus one; 0: never) of the newest proof.
    proof: AtomicU64,
    base: Instant,
    /// Δ: hits are answered only while the proof is younger than this.
    max_staleness: Duration,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("ready", &self.is_ready())
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl LocalCache {
    pub fn new(max_entries: u64, max_staleness: Duration) -> LocalCache {
        let cache = Cache::builder()
            .max_capacity(max_entries.max(1))
            .expire_after(CachedExpiry)
            .support_invalidation_closures()
            .build();
        LocalCache {
            cache,
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            flushes: AtomicU64::new(0),
            marks: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            proof: AtomicU64::new(0),
            // Early enough that no proof predates it.
            base: Instant::now()
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or_else(Instant::now),
            max_staleness,
        }
    }

    fn stripe(&self, domain: Domain, name: &str) -> &AtomicU64 {
        let tag = match domain {
            Domain::Session => 0u8,
            Domain::User => 1u8,
        };
        &self.marks[(self.hasher.hash_one((tag, name)) as usize) & (STRIPES - 1)]
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The reader is caught up as of `at`: the cache is trusted again.
    pub fn set_ready(&self, at: Instant) {
        self.confirm(at);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// The reader lost contact: reads bypass the cache, fills in flight are void.
    pub fn set_unready(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The reader has seen every revocation issued before `at`.
    pub fn confirm(&self, at: Instant) {
        let n = u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1)
            + 1;
        self.proof.fetch_max(n, Ordering::SeqCst);
    }

    /// How old the newest proof is at `now` (`None`: never proved).
    pub fn proof_age(&self, now: Instant) -> Option<Duration> {
        match self.proof.load(Ordering::SeqCst) {
            0 => None,
            n => Some(now.saturating_duration_since(self.base + Duration::from_nanos(n - 1))),
        }
    }

    /// Whether the cache may answer at `now`: the reader is caught up and its
    /// newest proof is younger than Δ.
    pub fn trusted(&self, now: Instant) -> bool {
        self.is_ready() && self.proof_age(now).is_some_and(|a| a < self.max_staleness)
    }

    /// Taken before a Redis read whose result may fill the cache.
    pub fn ticket(&self) -> Option<Ticket> {
        let g = self.generation.load(Ordering::SeqCst);
        self.is_ready().then_some(Ticket(g))
    }

    fn ticket_valid(&self, t: Ticket) -> bool {
        self.is_ready() && self.generation.load(Ordering::SeqCst) == t.0
    }

    /// A validated session, if the cache is trusted now and holds it.
    pub fn get(&self, hash: &str) -> Option<Arc<Cached>> {
        let now = Instant::now();
        if !self.trusted(now) {
            return None;
        }
        self.get_unchecked(hash, now)
    }

    fn get_unchecked(&self, hash: &str, now: Instant) -> Option<Arc<Cached>> {
        let slot = self.cache.get(hash)?;
        let e = slot.entry;
        // No user revocation applied after the read that filled it (the user's
        // mark; a revocation of this one session removed it from moka exactly),
        // and no flush since. Mark first: a flush zeroes marks only after
        // counting itself, so a zeroed mark is always followed by a visible count.
        if self.stripe(Domain::User, &e.user).load(Ordering::SeqCst) > e.pos.pack_down()
            || self.flushes.load(Ordering::SeqCst) != slot.flushes
        {
            return None;
        }
        // moka expires on its own clock and lazily; never serve past the deadline.
        (e.deadline > now).then_some(e)
    }

    /// The user of a session this daemon holds, trusted or not: only a hint
    /// (saves a round trip; the scripts check it).
    pub fn peek_user(&self, hash: &str) -> Option<String> {
        self.cache.get(hash).map(|s| s.entry.user.clone())
    }

    /// For `on_unavailable = "cached"`: a session this daemon validated, if the
    /// newest proof that it knew of every revocation is at most `max_stale` old.
    pub fn get_stale(&self, hash: &str, max_stale: Duration) -> Option<Arc<Cached>> {
        let now = Instant::now();
        if self.proof_age(now).is_none_or(|a| a > max_stale) {
            return None;
        }
        self.get_unchecked(hash, now)
    }

    /// Keeps a session read at stream position `entry.pos`, if the rules allow.
    pub fn fill(&self, hash: &str, entry: Arc<Cached>, ticket: Option<Ticket>) -> bool {
        let Some(ticket) = ticket else {
            return false;
        };
        if entry.deadline <= Instant::now() {
            return false;
        }
        let pos = entry.pos.pack_down();
        let by_session = self.stripe(Domain::Session, hash);
        let by_user = self.stripe(Domain::User, &entry.user);
        let admissible = |c: &LocalCache| {
            c.ticket_valid(ticket)
                && by_session.load(Ordering::SeqCst) <= pos
                && by_user.load(Ordering::SeqCst) <= pos
        };
        // Read before the admission check: a flush after it voids the ticket.
        let flushes = self.flushes.load(Ordering::SeqCst);
        if !admissible(self) {
            return false;
        }
        let key: Arc<str> = Arc::from(hash);
        self.cache.insert(key.clone(), Slot { entry, flushes });
        // A revocation applied between the check and the insert did not see our
        // entry: look again and take it back out if so.
        if !admissible(self) {
            self.cache.invalidate(&key);
            return false;
        }
        true
    }

    /// Drops a session from the cache (this daemon learned it is gone).
    pub fn evict(&self, hash: &str) {
        self.cache.invalidate(hash);
    }

    /// Applies a revocation or data change of one session at stream id `id`.
    /// Returns whether a cached copy was evicted.
    pub fn apply_session(&self, hash: &str, id: StreamId) -> bool {
        self.stripe(Domain::Session, hash)
            .fetch_max(id.pack_up(), Ordering::SeqCst);
        match self.cache.get(hash) {
            Some(s) if s.entry.pos < id => {
                self.cache.invalidate(hash);
                true
            }
            _ => false,
        }
    }

    /// Applies a revocation of every session of `user` created before `epoch`.
    pub fn apply_user(&self, user: &str, epoch: u64, id: StreamId) {
        self.stripe(Domain::User, user)
            .fetch_max(id.pack_up(), Ordering::SeqCst);
        let user = user.to_string();
        // The mark above is what refuses the user's older entries from now on
        // (every hit checks it); this only frees their memory.
        if self
            .cache
            .invalidate_entries_if(move |_, v| v.entry.user == user && v.entry.epoch < epoch)
            .is_err()
        {
            self.flush_entries();
        }
    }

    /// Empties the cache and voids every fill in flight.
    pub fn flush(&self) {
        self.flush_entries();
    }

    fn flush_entries(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        // The generation bump voids fills read before this point, so old marks
        // (perhaps from a previous Redis whose ids were larger) can go.
        for m in self.marks.iter() {
            m.store(0, Ordering::SeqCst);
        }
    }

    /// Lets moka apply evictions and invalidation predicates now.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    pub(super) fn entry(user: &str, epoch: u64, pos: StreamId) -> Arc<Cached> {
        let now = Instant::now();
        Arc::new(Cached {
            user: user.into(),
            data: Bytes::from_static(b"d"),
            created_at_ms: 1,
            last_seen_ms: 1,
            idle_ms: 60_000,
            absolute_expires_at_ms: 100_000,
            epoch,
            pos,
            deadline: now + Duration::from_secs(60),
            window_started: now,
            touching: AtomicBool::new(false),
        })
    }

    fn ready() -> LocalCache {
        let c = LocalCache::new(100, Duration::from_secs(60));
        c.set_ready(Instant::now());
        c
    }

    #[test]
    fn revocation_racing_a_read_wins() {
        let c = ready();
        let t = c.ticket();
        c.apply_session("h", id(10));
        assert!(!c.fill("h", entry("u", 0, id(9)), t));
        assert!(c.get("h").is_none());
        assert!(c.fill("h", entry("u", 0, id(10)), t));
        assert!(c.get("h").is_some());
        // A later revocation evicts; an older one does not.
        assert!(!c.apply_session("h", id(10)));
        assert!(c.apply_session("h", id(11)));
        assert!(c.get("h").is_none());
    }

    #[test]
    fn user_revocation_drops_older_epochs_only() {
        let c = ready();
        let t = c.ticket();
        assert!(c.fill("old", entry("u", 1, id(5)), t));
        // Epoch 2 was set by the revocation at id 6: a session recording it was
        // read at that position or later.
        assert!(c.fill("new", entry("u", 2, id(6)), t));
        assert!(c.fill("other", entry("v", 1, id(5)), t));
        c.apply_user("u", 2, id(6));
        assert!(c.get("old").is_none());
        assert!(c.get("new").is_some());
        assert!(c.get("other").is_some());
        // A read of that user from before the revocation is refused.
        assert!(!c.fill("old2", entry("u", 1, id(5)), t));
    }

    #[test]
    fn gaps_void_fills_and_stale_window_bounds_fallback() {
        let c = ready();
        let t = c.ticket();
        assert!(c.fill("a", entry("u", 0, id(1)), t));
        c.set_unready();
        assert!(c.get("a").is_none(), "not trusted while the reader is down");
        assert!(c.get_stale("a", Duration::from_secs(60)).is_some());
        assert!(c.get_stale("a", Duration::ZERO).is_none());
        assert!(
            !c.fill("b", entry("u", 0, id(1)), t),
            "ticket from before the gap"
        );
        c.set_ready(Instant::now());
        assert!(c.get("a").is_some(), "a gap alone does not flush");
        c.flush();
        assert!(c.get("a").is_none());
    }

    #[test]
    fn hits_only_while_the_proof_is_younger_than_delta() {
        let c = LocalCache::new(100, Duration::from_millis(100));
        let t0 = Instant::now();
        c.set_ready(t0);
        let t = c.ticket();
        assert!(c.fill("a", entry("u", 0, id(1)), t));
        assert!(c.trusted(t0 + Duration::from_millis(99)));
        assert!(!c.trusted(t0 + Duration::from_millis(100)));
        // An old proof does not move the newest one back.
        c.confirm(t0 - Duration::from_millis(200));
        assert_eq!(c.proof_age(t0), Some(Duration::ZERO));
        // Once the proof is older than Δ, the cache does not answer.
        let stale = LocalCache::new(100, Duration::from_millis(100));
        stale.set_ready(Instant::now() - Duration::from_millis(150));
        let t = stale.ticket();
        assert!(stale.fill("a", entry("u", 0, id(1)), t));
        assert!(stale.get("a").is_none());
        assert_eq!(stale.peek_user("a").as_deref(), Some("u"));
        stale.confirm(Instant::now());
        assert!(stale.get("a").is_some());
        assert!(LocalCache::new(1, Duration::from_secs(1))
            .proof_age(Instant::now())
            .is_none());
    }

    #[test]
    fn touch_is_due_after_the_fraction() {
        let e = entry("u", 0, id(1));
        assert!(!e.touch_due(0.5, e.window_started + Duration::from_secs(29)));
        assert!(e.touch_due(0.5, e.window_started + Duration::from_secs(30)));
        assert!(e.touch_due(0.0, e.window_started));
        assert_eq!(e.expires_at_ms(), 60_001);
    }
}

#[cfg(test)]
mod race {
    //! Threads filling, revoking users and reading at once: once `apply_user`
    //! returned, no read returns a session of that user from an older epoch.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    const USERS: u64 = 8;
    const HASHES: u64 = 256;

    struct Redis {
        pos: u64,
        epoch: [u64; USERS as usize],
        sessions: HashMap<u64, u64>,
    }

    fn cached(user: u64, epoch: u64, pos: u64) -> Arc<Cached> {
        super::tests::entry(&format!("user{user}"), epoch, StreamId { ms: pos, seq: 0 })
    }

    #[test]
    fn no_read_returns_a_session_of_a_revoked_epoch() {
        let cache = Arc::new(LocalCache::new(200, Duration::from_secs(60)));
        cache.set_ready(Instant::now());
        let redis = Arc::new(Mutex::new(Redis {
            pos: 1,
            epoch: [0; USERS as usize],
            sessions: HashMap::new(),
        }));
        let applied: Arc<Vec<AtomicU64>> =
            Arc::new((0..USERS).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        // Fillers: read "Redis" atomically, then fill; create when missing.
        for t in 0..2u64 {
            let (cache, redis, stop) = (cache.clone(), redis.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut x = t + 1;
                while !stop.load(Ordering::Relaxed) {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let h = (x >> 33) % HASHES;
                    let u = h % USERS;
                    let ticket = cache.ticket();
                    let read = {
                        let mut r = redis.lock().unwrap();
                        let e = r.epoch[u as usize];
                        let pos = r.pos;
                        match r.sessions.get(&h).copied() {
                            Some(se) if se >= e => Some((se, pos)),
                            _ => {
                                // Refused or missing: create it anew.
                                r.sessions.insert(h, e);
                                Some((e, pos))
                            }
                        }
                    };
                    if let Some((se, pos)) = read {
                        cache.fill(&h.to_string(), cached(u, se, pos), ticket);
                    }
                }
            }));
        }
        // Readers.
        for _ in 0..2 {
            let (cache, applied, stop, violations, reads) = (
                cache.clone(),
                applied.clone(),
                stop.clone(),
                violations.clone(),
                reads.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut h = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    h = (h + 7) % HASHES;
                    let u = h % USERS;
                    let floor = applied[u as usize].load(Ordering::SeqCst);
                    if let Some(e) = cache.get(&h.to_string()) {
                        reads.fetch_add(1, Ordering::Relaxed);
                        if e.epoch < floor && violations.fetch_add(1, Ordering::SeqCst) < 5 {
                            eprintln!(
                                "violation: h={h} epoch={} pos={:?} floor={floor}",
                                e.epoch, e.pos
                            );
                        }
                    }
                }
            }));
        }
        // The revoker (the reader task in the daemon): bump, then apply.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut n = 0u64;
        while Instant::now() < deadline {
            n += 1;
            let u = n % USERS;
            let (e, id) = {
                let mut r = redis.lock().unwrap();
                r.pos += 1;
                r.epoch[u as usize] = n;
                (n, r.pos)
            };
            cache.apply_user(&format!("user{u}"), e, StreamId { ms: id, seq: 0 });
            applied[u as usize].store(e, Ordering::SeqCst);
            if n % 3 == 0 {
                cache.run_pending_tasks();
            }
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        eprintln!(
            "{n} user revocations, {} hits",
            reads.load(Ordering::Relaxed)
        );
        assert_eq!(
            violations.load(Ordering::SeqCst),
            0,
            "revoked sessions read back"
        );
    }
}
