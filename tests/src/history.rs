//! The campaign's history and its oracle: every cache and session operation with
//! its invocation and completion time on one monotonic clock, and the check that
//! decides whether the history respects shoal's staleness bound Δ.
//!
//! The oracle is exact with respect to what the history proves, and its tolerance
//! is Δ, nothing more:
//! - Every written value is a unique version. A write `w` of version `v` took
//!   effect in Redis no later than `effect_by(v)`: its completion if the client
//!   saw one, else the earliest completion of any read that returned `v` (a value
//!   can be observed only after it was written). Writes whose outcome is unknown
//!   (errors, timeouts, fills inside `get_or_load`) and that nobody observed have
//!   no such bound and can never be proved overwritten.
//! - A later write `w2` (a set, an invalidation, a tag invalidation, or a data
//!   loss such as `FLUSHALL`) that was invoked after `effect_by(v)` took effect
//!   after `v` did, so from `w2`'s completion on, `v` is gone from Redis for good
//!   (versions are never written twice).
//! - A read that began at `r` and returned `v` is **stale** iff such a `w2`
//!   completed before `r - Δ`. Its *staleness* is `r - completion(w2)` for the
//!   earliest such `w2`; the largest staleness of any read is reported (it must
//!   stay below Δ). Misses are never stale (data loss may empty Redis).
//! - A read returning a version never written, written under another key, or
//!   written only after the read completed is a **phantom** (always a failure).
//! - Sessions: a `session.get` that began at `r`, more than Δ after a revocation
//!   of its token completed (`session.revoke`, `session.rotate` of the old token,
//!   or `session.revoke_user` invoked after the session's creation completed), and
//!   accepted the token is a failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Nanoseconds since the history's start, on the test process's monotonic clock.
pub type Nanos = u64;

/// What kind of write, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteKind {
    /// `cache.set` through a daemon.
    Set,
    /// The fill of `get_or_load` (its outcome is never seen by the caller).
    Fill,
    /// `cache.invalidate` through a daemon.
    Invalidate,
    /// `cache.invalidate_tags` through a daemon.
    InvalidateTags,
    /// `lua/cache_set.lua` called directly by an external writer.
    ExternalSet,
    /// `lua/cache_invalidate.lua` called directly by an external writer.
    ExternalInvalidate,
    /// Redis lost every key (`FLUSHALL`, restart without persistence).
    DataLoss,
}

/// Which keys a write affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Keys(Vec<u32>),
    /// Every key (data loss).
    All,
}

/// One write. `version` is the value written (`None`: a deletion).
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: WriteKind,
    pub target: Target,
    pub version: Option<u64>,
    pub inv: Nanos,
    /// `None` when the outcome is unknown (error, timeout, unobserved fill).
    pub comp: Option<Nanos>,
}

/// What kind of read, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadKind {
    Get,
    Mget,
    GetOrLoad,
    Probe,
}

/// One successful read of one key (an `mget` of n keys is n reads).
#[derive(Debug, Clone)]
pub struct Read {
    pub kind: ReadKind,
    pub key: u32,
    pub inv: Nanos,
    pub comp: Nanos,
    /// The version returned; `None` for a miss.
    pub got: Option<Got>,
    pub daemon: u8,
    pub from_l1: bool,
}

/// A returned value: its version, and the key the value says it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    pub version: u64,
    pub written_for: u32,
}

/// A session creation (or the new token of a rotation) that completed.
#[derive(Debug, Clone)]
pub struct SessionCreate {
    pub token: u32,
    pub user: u32,
    pub comp: Nanos,
}

/// A revocation that completed.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub target: Revoked,
    pub inv: Nanos,
    pub comp: Nanos,
    /// The op (`session.revoke`, `session.rotate`, `session.revoke_user`), for reports.
    pub op: &'static str,
    /// The daemon that answered it.
    pub daemon: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// `session.revoke`, or the old token of `session.rotate`.
    Token(u32),
    /// `session.revoke_user`.
    User(u32),
}

/// A `session.get` that answered (found or not found).
#[derive(Debug, Clone)]
pub struct SessionRead {
    pub token: u32,
    pub inv: Nanos,
    pub comp: Nanos,
    pub accepted: bool,
    pub daemon: u8,
}

/// Everything recorded; the oracle's input.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
    pub creates: Vec<SessionCreate>,
    pub revocations: Vec<Revocation>,
    pub session_reads: Vec<SessionRead>,
}

/// A read the oracle refuses.
#[derive(Debug, Clone)]
pub struct StaleRead {
    pub read: Read,
    /// How long before the read began the overwriting write completed (> Δ).
    pub staleness: Duration,
    pub overwritten_by: WriteKind,
}

/// A read that returned something no write could explain.
#[derive(Debug, Clone)]
pub struct Phantom {
    pub read: Read,
    pub why: &'static str,
}

/// A revoked session accepted more than Δ after its revocation completed.
#[derive(Debug, Clone)]
pub struct AcceptedRevoked {
    pub read: SessionRead,
    pub after: Duration,
    /// The earliest revocation that surely covered the token.
    pub revocation: Revocation,
}

/// The oracle's answer.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub reads_checked: u64,
    /// Reads that returned a value some completed write had already overwritten
    /// (whatever the lag): the ones the staleness bound is about.
    pub reads_of_overwritten: u64,
    pub stale: Vec<StaleRead>,
    pub phantoms: Vec<Phantom>,
    /// Largest `r - completion(w2)` over reads returning an overwritten value.
    pub max_staleness: Duration,
    pub session_reads_checked: u64,
    pub accepted_revoked: Vec<AcceptedRevoked>,
    /// Largest lag between a revocation's completion and a read still accepting it.
    pub max_session_lag: Duration,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.stale.is_empty() && self.phantoms.is_empty() && self.accepted_revoked.is_empty()
    }
}

/// Checks `h` against the bound `delta`.
pub fn check(h: &Recorded, delta: Duration) -> Verdict {
    let delta = delta.as_nanos() as u64;
    let mut v = Verdict::default();

    // Versions: key and effect-by time.
    struct Ver {
        key: u32,
        inv: Nanos,
        effect_by: Option<Nanos>,
    }
    let mut versions: HashMap<u64, Ver> = HashMap::new();
    for w in &h.writes {
        if let (Some(ver), Target::Keys(keys)) = (w.version, &w.target) {
            if let Some(&key) = keys.first() {
                versions.insert(
                    ver,
                    Ver {
                        key,
                        inv: w.inv,
                        effect_by: w.comp,
                    },
                );
            }
        }
    }
    for r in &h.reads {
        if let Some(g) = r.got {
            if let Some(ver) = versions.get_mut(&g.version) {
                if ver.key == r.key && ver.inv <= r.comp {
                    ver.effect_by = Some(ver.effect_by.map_or(r.comp, |e| e.min(r.comp)));
                }
            }
        }
    }

    // Per key: completed writes (the candidates for w2) sorted by invocation,
    // with the suffix minimum of their completion.
    let mut all_keys: Vec<(Nanos, Nanos, WriteKind)> = Vec::new();
    let mut per_key: HashMap<u32, Vec<(Nanos, Nanos, WriteKind)>> = HashMap::new();
    for w in &h.writes {
        let Some(comp) = w.comp else { continue };
        match &w.target {
            Target::All => all_keys.push((w.inv, comp, w.kind)),
            Target::Keys(keys) => {
                for &k in keys {
                    per_key.entry(k).or_default().push((w.inv, comp, w.kind));
                }
            }
        }
    }
    struct Overwrites {
        inv: Vec<Nanos>,
        /// For each index i: the smallest completion among writes i.., and its kind.
        suffix_min: Vec<(Nanos, WriteKind)>,
    }
    let build = |mut ws: Vec<(Nanos, Nanos, WriteKind)>| {
        ws.sort_by_key(|w| w.0);
        let mut suffix_min = vec![(Nanos::MAX, WriteKind::Set); ws.len()];
        let mut best = (Nanos::MAX, WriteKind::Set);
        for (i, w) in ws.iter().enumerate().rev() {
            if w.1 < best.0 {
                best = (w.1, w.2);
            }
            suffix_min[i] = best;
        }
        Overwrites {
            inv: ws.iter().map(|w| w.0).collect(),
            suffix_min,
        }
    };
    let mut index: HashMap<u32, Overwrites> = HashMap::new();
    let mut keys_seen: Vec<u32> = h.reads.iter().map(|r| r.key).collect();
    keys_seen.sort_unstable();
    keys_seen.dedup();
    for k in keys_seen {
        let mut ws = per_key.remove(&k).unwrap_or_default();
        ws.extend(all_keys.iter().copied());
        index.insert(k, build(ws));
    }

    for r in &h.reads {
        v.reads_checked += 1;
        let Some(g) = r.got else { continue };
        let Some(ver) = versions.get(&g.version) else {
            v.phantoms.push(Phantom {
                read: r.clone(),
                why: "a version nobody wrote",
            });
            continue;
        };
        if ver.key != r.key || g.written_for != r.key {
            v.phantoms.push(Phantom {
                read: r.clone(),
                why: "a value written for another key",
            });
            continue;
        }
        if ver.inv > r.comp {
            v.phantoms.push(Phantom {
                read: r.clone(),
                why: "a value written only after the read completed",
            });
            continue;
        }
        let Some(effect_by) = ver.effect_by else {
            continue;
        };
        let Some(ow) = index.get(&r.key) else {
            continue;
        };
        // First write invoked strictly after v surely took effect.
        let i = ow.inv.partition_point(|&inv| inv <= effect_by);
        let Some(&(first_comp, kind)) = ow.suffix_min.get(i) else {
            continue;
        };
        if first_comp >= r.inv {
            continue; // Not overwritten before the read began: any lag is legal.
        }
        v.reads_of_overwritten += 1;
        let lag = r.inv - first_comp;
        v.max_staleness = v.max_staleness.max(Duration::from_nanos(lag));
        if lag > delta {
            v.stale.push(StaleRead {
                read: r.clone(),
                staleness: Duration::from_nanos(lag),
                overwritten_by: kind,
            });
        }
    }

    // Sessions: the earliest completed revocation that surely covers each token.
    let mut revoked_at: HashMap<u32, &Revocation> = HashMap::new();
    let mut by_user: HashMap<u32, Vec<&Revocation>> = HashMap::new();
    for rv in &h.revocations {
        match rv.target {
            Revoked::Token(t) => earliest(&mut revoked_at, t, rv),
            Revoked::User(u) => by_user.entry(u).or_default().push(rv),
        }
    }
    for c in &h.creates {
        for rv in by_user.get(&c.user).into_iter().flatten() {
            if c.comp < rv.inv {
                earliest(&mut revoked_at, c.token, rv);
            }
        }
    }
    for s in &h.session_reads {
        v.session_reads_checked += 1;
        if !s.accepted {
            continue;
        }
        let Some(&rv) = revoked_at.get(&s.token) else {
            continue;
        };
        let at = rv.comp;
        if at >= s.inv {
            continue;
        }
        let lag = s.inv - at;
        v.max_session_lag = v.max_session_lag.max(Duration::from_nanos(lag));
        if lag > delta {
            v.accepted_revoked.push(AcceptedRevoked {
                read: s.clone(),
                after: Duration::from_nanos(lag),
                revocation: rv.clone(),
            });
        }
    }
    v
}

/// Keeps, per token, the revocation that completed first.
fn earliest<'a>(at: &mut HashMap<u32, &'a Revocation>, token: u32, rv: &'a Revocation) {
    let e = at.entry(token).or_insert(rv);
    if rv.comp < e.comp {
        *e = rv;
    }
}

/// The recorder the campaign's tasks share: one clock, unique versions.
#[derive(Debug)]
pub struct History {
    base: Instant,
    next_version: AtomicU64,
    rec: Mutex<Recorded>,
}

impl Default for History {
    fn default() -> Self {
        History {
            base: Instant::now(),
            next_version: AtomicU64::new(1),
            rec: Mutex::default(),
        }
    }
}

impl History {
    pub fn now(&self) -> Nanos {
        self.base.elapsed().as_nanos() as Nanos
    }
    /// The instant `t` stands for.
    pub fn instant(&self, t: Nanos) -> Instant {
        self.base + Duration::from_nanos(t)
    }
    pub fn new_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn write(&self, w: Write) {
        self.lock().writes.push(w);
    }
    pub fn read(&self, r: Read) {
        self.lock().reads.push(r);
    }
    pub fn reads(&self, rs: impl IntoIterator<Item = Read>) {
        self.lock().reads.extend(rs);
    }
    pub fn session_create(&self, c: SessionCreate) {
        self.lock().creates.push(c);
    }
    pub fn revocation(&self, r: Revocation) {
        self.lock().revocations.push(r);
    }
    pub fn session_read(&self, r: SessionRead) {
        self.lock().session_reads.push(r);
    }
    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Recorded {
        self.lock().clone()
    }
    /// Checks what was recorded so far.
    pub fn check(&self, delta: Duration) -> Verdict {
        check(&self.lock(), delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(250);
    const MS: Nanos = 1_000_000;

    fn set(key: u32, version: u64, inv: Nanos, comp: Option<Nanos>) -> Write {
        Write {
            kind: WriteKind::Set,
            target: Target::Keys(vec![key]),
            version: Some(version),
            inv: inv * MS,
            comp: comp.map(|c| c * MS),
        }
    }
    fn del(kind: WriteKind, target: Target, inv: Nanos, comp: Nanos) -> Write {
        Write {
            kind,
            target,
            version: None,
            inv: inv * MS,
            comp: Some(comp * MS),
        }
    }
    fn read(key: u32, inv: Nanos, comp: Nanos, version: Option<u64>) -> Read {
        Read {
            kind: ReadKind::Get,
            key,
            inv: inv * MS,
            comp: comp * MS,
            got: version.map(|version| Got {
                version,
                written_for: key,
            }),
            daemon: 0,
            from_l1: true,
        }
    }
    fn history(writes: Vec<Write>, reads: Vec<Read>) -> Recorded {
        Recorded {
            writes,
            reads,
            ..Recorded::default()
        }
    }

    #[test]
    fn a_read_of_a_value_overwritten_more_than_delta_before_it_began_is_stale() {
        // v1 at 0..1, v2 at 10..11; a read at 300 (289 ms after v2 completed) returns v1.
        let h = history(
            vec![set(1, 1, 0, Some(1)), set(1, 2, 10, Some(11))],
            vec![read(1, 300, 301, Some(1))],
        );
        let v = check(&h, D);
        assert!(!v.ok());
        assert_eq!(v.stale.len(), 1);
        assert_eq!(v.stale[0].staleness, Duration::from_millis(289));
        assert_eq!(v.max_staleness, Duration::from_millis(289));
    }

    #[test]
    fn within_delta_or_overlapping_writes_are_legal() {
        let h = history(
            vec![
                set(1, 1, 0, Some(1)),
                set(1, 2, 10, Some(11)),
                // v3 is in flight during the read at 600: v2 and v3 are both legal.
                set(1, 3, 590, Some(700)),
            ],
            vec![
                // 239 ms after v2 completed: old value still allowed.
                read(1, 250, 251, Some(1)),
                // Exactly Δ after: still allowed (the bound is strict).
                read(1, 261, 262, Some(1)),
                read(1, 600, 601, Some(2)),
                read(1, 600, 601, Some(3)),
                read(1, 1000, 1001, Some(3)),
                // A miss is never stale.
                read(1, 5000, 5001, None),
            ],
        );
        let v = check(&h, D);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.reads_of_overwritten, 2);
        assert_eq!(v.max_staleness, D);
    }

    #[test]
    fn concurrent_writes_prove_no_order() {
        // w2 was invoked before v1's write completed: Redis may have run them in
        // either order, so v1 may be the newest value for ever.
        let h = history(
            vec![set(1, 1, 0, Some(20)), set(1, 2, 10, Some(11))],
            vec![read(1, 5000, 5001, Some(1))],
        );
        assert!(check(&h, D).ok());
    }

    #[test]
    fn an_unfinished_write_counts_once_someone_has_read_it() {
        // v1's writer timed out; nobody saw v1 before w2: no order is known.
        let unseen = history(
            vec![set(1, 1, 0, None), set(1, 2, 100, Some(101))],
            vec![read(1, 1000, 1001, Some(1))],
        );
        assert!(check(&unseen, D).ok());
        // A read at 50 returned v1: v1 took effect by 51 < invocation of w2.
        let seen = history(
            vec![set(1, 1, 0, None), set(1, 2, 100, Some(101))],
            vec![read(1, 50, 51, Some(1)), read(1, 1000, 1001, Some(1))],
        );
        let v = check(&seen, D);
        assert_eq!(v.stale.len(), 1, "{v:?}");
        // An unfinished overwrite proves nothing.
        let unfinished_w2 = history(
            vec![set(1, 1, 0, Some(1)), set(1, 2, 100, None)],
            vec![read(1, 1000, 1001, Some(1))],
        );
        assert!(check(&unfinished_w2, D).ok());
    }

    #[test]
    fn invalidations_tags_and_data_loss_overwrite() {
        for (kind, target) in [
            (WriteKind::Invalidate, Target::Keys(vec![1])),
            (WriteKind::InvalidateTags, Target::Keys(vec![3, 1, 2])),
            (WriteKind::ExternalInvalidate, Target::Keys(vec![1])),
            (WriteKind::DataLoss, Target::All),
        ] {
            let h = history(
                vec![set(1, 1, 0, Some(1)), del(kind, target.clone(), 10, 12)],
                vec![read(1, 200, 201, Some(1)), read(1, 263, 264, Some(1))],
            );
            let v = check(&h, D);
            assert_eq!(v.stale.len(), 1, "{kind:?}: {v:?}");
            assert_eq!(v.stale[0].overwritten_by, kind);
            assert_eq!(v.stale[0].read.inv, 263 * MS);
        }
        // Another key's invalidation does not overwrite.
        let h = history(
            vec![
                set(1, 1, 0, Some(1)),
                del(WriteKind::Invalidate, Target::Keys(vec![2]), 10, 12),
            ],
            vec![read(1, 900, 901, Some(1))],
        );
        assert!(check(&h, D).ok());
    }

    #[test]
    fn the_earliest_completed_overwrite_counts() {
        // w2 invoked early but completes late; w3 invoked later completes earlier.
        let h = history(
            vec![
                set(1, 1, 0, Some(1)),
                set(1, 2, 5, Some(400)),
                set(1, 3, 10, Some(20)),
            ],
            vec![read(1, 300, 301, Some(1))],
        );
        let v = check(&h, D);
        assert_eq!(v.stale.len(), 1);
        assert_eq!(v.stale[0].staleness, Duration::from_millis(280));
    }

    #[test]
    fn phantoms_are_failures() {
        let h = history(
            vec![set(1, 1, 0, Some(1)), set(2, 2, 500, Some(501))],
            vec![
                read(1, 10, 11, Some(9)),   // never written
                read(1, 10, 11, Some(2)),   // another key's value
                read(2, 10, 11, Some(2)),   // before its write began
                read(2, 600, 601, Some(2)), // fine
            ],
        );
        let v = check(&h, D);
        assert_eq!(v.phantoms.len(), 3, "{v:?}");
        assert!(v.stale.is_empty());
    }

    fn sread(token: u32, inv: Nanos, accepted: bool) -> SessionRead {
        SessionRead {
            token,
            inv: inv * MS,
            comp: (inv + 1) * MS,
            accepted,
            daemon: 1,
        }
    }

    #[test]
    fn revoked_sessions_accepted_after_delta_fail() {
        let h = Recorded {
            creates: vec![
                SessionCreate {
                    token: 1,
                    user: 7,
                    comp: MS,
                },
                SessionCreate {
                    token: 2,
                    user: 7,
                    comp: 2 * MS,
                },
                // Created while revoke_user ran: not surely covered.
                SessionCreate {
                    token: 3,
                    user: 7,
                    comp: 105 * MS,
                },
            ],
            revocations: vec![
                Revocation {
                    target: Revoked::Token(1),
                    inv: 10 * MS,
                    comp: 20 * MS,
                    op: "session.revoke",
                    daemon: 0,
                },
                Revocation {
                    target: Revoked::User(7),
                    inv: 100 * MS,
                    comp: 110 * MS,
                    op: "session.revoke_user",
                    daemon: 2,
                },
            ],
            session_reads: vec![
                sread(1, 200, true),  // 180 ms after: allowed
                sread(1, 271, true),  // 251 ms after: failure
                sread(1, 900, false), // refused: fine
                sread(2, 361, true),  // 251 ms after revoke_user: failure
                sread(3, 900, true),  // not provably revoked
            ],
            ..Recorded::default()
        };
        let v = check(&h, D);
        assert_eq!(v.accepted_revoked.len(), 2, "{v:?}");
        assert_eq!(v.accepted_revoked[0].read.token, 1);
        assert_eq!(v.accepted_revoked[1].read.token, 2);
        assert_eq!(v.accepted_revoked[1].revocation.op, "session.revoke_user");
        assert_eq!(v.max_session_lag, Duration::from_millis(251));
        assert!(!v.ok());
    }
}
