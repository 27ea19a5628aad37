//! Rate limits and quotas: `ratelimit.*` and `quota.usage`.
//!
//! Every decision is one atomic Lua script per algorithm (`lua/rl_*.lua`) that
//! reads Redis `TIME`, so the whole fleet counts on one clock and N daemons
//! hammering one key admit exactly what one would. The daemon resolves the
//! numbers in force for a key (policy, config override, runtime override) and
//! passes them to the script; runtime overrides live in Redis and every daemon
//! refreshes them in the background ([`RateLimits::run`]).
//!
//! Around the scripts, per daemon:
//! - a **local deny cache** ([`deny`]): a key Redis declared denied until T is
//!   answered here, without Redis, until T;
//! - **fail modes** when Redis is unreachable (`on_unavailable`): `open` allows,
//!   `closed` denies, `local` counts this daemon's share ([`local`]). While Redis
//!   is known down, one request per [`PROBE_EVERY`] tries it; the others take the
//!   fail mode at once instead of each waiting for the deadline;
//! - **reservations** (`ratelimit.reserve`) that book the next free slot, and a
//!   **concurrency limiter** with expiring leases.
//!
//! Tests can replace Redis `TIME` with a clock they set (`test-clock` feature),
//! passed to the scripts as an extra argument; production builds never send it.

mod deny;
mod local;
mod policy;
mod scripts;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_client::proto::{
    encode_ok, ClearOverrideResult, ConcurrentResult, ErrorCode, Frame, Op, OverrideResult,
    QuotaKeyUsage, QuotaUsageResult, RatelimitDecisionExt, ReleaseResult, ReserveResult,
    ResetResult,
};
use tokio_util::sync::CancellationToken;

use crate::config::{Algorithm, Config, FailMode};
use crate::ops::stats::Stats;
use crate::server::dispatch::OpError;
use crate::store::{Store, StoreError};

pub use policy::{algorithm_name, Numbers};

use deny::{CachedDenial, DenyBudget, DenyCache};
use local::Rule;
use policy::Policy;
use scripts::{Mode, Scripts};

/// `ratelimit.reserve` books at most this many windows ahead unless the policy
/// sets `max_reserve_ahead`.
pub const RESERVE_AHEAD_WINDOWS: u64 = 3;
/// While Redis is known down, at most one request per this interval tries it.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// `closed` fail mode: the retry-after suggested while Redis is unreachable
/// (capped by the policy's window).
pub const CLOSED_RETRY_MS: u64 = 1000;
/// `quota.usage`: keys listed when the caller gives no `max_keys`, and the cap.
pub const QUOTA_DEFAULT_KEYS: u64 = 1000;
pub const QUOTA_MAX_KEYS: u64 = 10_000;
/// `quota.usage`: most SCAN round trips (each `COUNT` [`QUOTA_SCAN_COUNT`]).
pub const QUOTA_MAX_SCANS: usize = 1000;
pub const QUOTA_SCAN_COUNT: u64 = 1000;
/// `quota.usage`: peeks in flight at once.
const QUOTA_PARALLEL: usize = 32;

/// Why a rate-limit op failed.
#[derive(Debug, thiserror::Error)]
pub enum RatelimitError {
    #[error("unknown rate-limit policy `{0}`")]
    UnknownPolicy(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RatelimitError> for OpError {
    fn from(e: RatelimitError) -> Self {
        match e {
            RatelimitError::UnknownPolicy(_) => {
                OpError::new(ErrorCode::UnknownPolicy, e.to_string())
            }
            RatelimitError::BadRequest(msg) => OpError::new(ErrorCode::BadRequest, msg),
            RatelimitError::Store(s) => s.into(),
        }
    }
}

/// One decision, from a script or a fail mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    /// 0 when allowed (for a reservation: the wait before the booked slot).
    pub retry_after_ms: u64,
}

impl Verdict {
    pub fn allowed(limit: u64, remaining: u64, reset_after_ms: u64) -> Verdict {
        Verdict {
            allowed: true,
            limit,
            remaining,
            reset_after_ms,
            retry_after_ms: 0,
        }
    }

    pub fn denied(limit: u64, remaining: u64, reset_after_ms: u64, retry_after_ms: u64) -> Verdict {
        Verdict {
            allowed: false,
            limit,
            remaining,
            reset_after_ms,
            retry_after_ms: retry_after_ms.max(1),
        }
    }
}

impl From<CachedDenial> for Verdict {
    fn from(d: CachedDenial) -> Verdict {
        Verdict::denied(d.limit, d.remaining, d.reset_after_ms, d.retry_after_ms)
    }
}

impl From<Verdict> for CachedDenial {
    fn from(v: Verdict) -> CachedDenial {
        CachedDenial {
            limit: v.limit,
            remaining: v.remaining,
            reset_after_ms: v.reset_after_ms,
            retry_after_ms: v.retry_after_ms,
        }
    }
}

/// Counters merged into the `stats` op (all `ratelimit_*`).
#[derive(Debug, Default)]
struct Counters {
    checks: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    /// Denials answered by the deny cache: no Redis call.
    denied_local: AtomicU64,
    /// Scripts run (every Redis round trip of a decision, reservation or lease).
    redis_calls: AtomicU64,
    fallback_open: AtomicU64,
    fallback_closed: AtomicU64,
    fallback_local: AtomicU64,
    reservations_granted: AtomicU64,
    reservations_refused: AtomicU64,
    concurrent_acquired: AtomicU64,
    concurrent_refused: AtomicU64,
    concurrent_released: AtomicU64,
    resets: AtomicU64,
    override_loads: AtomicU64,
    override_refresh_errors: AtomicU64,
    quota_scans: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The clock of local decisions (deny cache, fail modes): monotonic, or the
/// test clock when a test set one.
#[derive(Debug)]
struct Clock {
    base: Instant,
    /// 0: Redis TIME for scripts and the monotonic clock locally.
    test_now_ms: AtomicU64,
}

impl Clock {
    fn mono_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn local_us(&self) -> u64 {
        match self.test_now_ms.load(Ordering::Relaxed) {
            0 => self.mono_us(),
            ms => ms.saturating_mul(1000),
        }
    }

    fn local_ms(&self) -> u64 {
        self.local_us() / 1000
    }

    /// The scripts' time argument: empty (use Redis TIME) unless a test set one.
    fn script_arg(&self) -> String {
        match self.test_now_ms.load(Ordering::Relaxed) {
            0 => String::new(),
            ms => ms.to_string(),
        }
    }
}

/// The rate-limit service of one daemon.
#[derive(Debug)]
pub struct RateLimits {
    store: Store,
    policies: HashMap<String, Policy>,
    scripts: Scripts,
    clock: Clock,
    counters: Counters,
    deny_budget: Arc<DenyBudget>,
    refresh_every: Duration,
    /// Runtime overrides loaded at least once.
    loaded: AtomicBool,
    last_probe_us: AtomicU64,
}

impl RateLimits {
    pub fn new(config: &Config, store: Store, _stats: Arc<Stats>) -> RateLimits {
        let deny_budget = DenyBudget::new(config.ratelimit.deny_cache_entries);
        let policies = config
            .ratelimit
            .policies
            .iter()
            .map(|(name, p)| {
                let deny = DenyCache::with_budget(deny_budget.clone());
                let mut policy = Policy::new(name, p, &config.redis.prefix, deny);
                policy.local = local::LocalLimits::new(config.ratelimit.local_max_entries);
                (name.clone(), policy)
            })
            .collect::<HashMap<_, _>>();
        RateLimits {
            store,
            loaded: AtomicBool::new(policies.is_empty()),
            policies,
            scripts: Scripts::load(),
            clock: Clock {
                base: Instant::now(),
                test_now_ms: AtomicU64::new(0),
            },
            counters: Counters::default(),
            deny_budget,
            refresh_every: config.ratelimit.override_refresh,
            last_probe_us: AtomicU64::new(0),
        }
    }

    /// Test builds only: every decision from now on uses `now_ms` instead of
    /// Redis TIME (and the local caches follow it). `None` goes back to TIME.
    #[cfg(feature = "test-clock")]
    pub fn set_test_now(&self, now_ms: Option<u64>) {
        // 0 means "no test clock", so a test time of 0 is taken as 1 ms.
        self.clock
            .test_now_ms
            .store(now_ms.map_or(0, |ms| ms.max(1)), Ordering::Relaxed);
    }

    /// Background work: loads runtime overrides at once, then refreshes them
    /// every `ratelimit.override_refresh`, and purges expired local state.
    /// Returns when `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if self.policies.is_empty() {
            cancel.cancelled().await;
            return;
        }
        let mut tick = tokio::time::interval(self.refresh_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh_overrides().await {
                Ok(()) => {
                    if !self.loaded.swap(true, Ordering::Relaxed) {
                        self.preload_scripts().await;
                    }
                }
                Err(e) => {
                    inc(&self.counters.override_refresh_errors);
                    tracing::debug!(error = %e, "rate-limit override refresh failed");
                }
            }
            if last_purge.elapsed() >= Duration::from_secs(1) {
                last_purge = Instant::now();
                let (us, ms) = (self.clock.local_us(), self.clock.local_ms());
                for p in self.policies.values() {
                    p.deny.purge(us);
                    p.local.purge(ms);
                }
            }
        }
    }

    /// Decisions per (policy, outcome, fallback), for `/metrics`: each decision
    /// counted once. The policy label is bounded by the config.
    pub fn decision_counts(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        let mut names: Vec<&String> = self.policies.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len() * 8);
        for name in names {
            let p = &self.policies[name];
            for (i, c) in p.decisions.iter().enumerate() {
                let outcome = if i >= 4 { "allowed" } else { "denied" };
                out.push((
                    name.clone(),
                    outcome,
                    FALLBACK_LABELS[i % 4],
                    c.load(Ordering::Relaxed),
                ));
            }
        }
        out
    }

    /// Whether runtime overrides are loaded (for readiness).
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Adds this service's counters to a `stats` snapshot.
    pub fn stats_into(&self, m: &mut BTreeMap<String, u64>) {
        let c = &self.counters;
        for (k, v) in [
            ("ratelimit_checks", &c.checks),
            ("ratelimit_allowed", &c.allowed),
            ("ratelimit_denied", &c.denied),
            ("ratelimit_denied_local", &c.denied_local),
            ("ratelimit_redis_calls", &c.redis_calls),
            ("ratelimit_fallback_open", &c.fallback_open),
            ("ratelimit_fallback_closed", &c.fallback_closed),
            ("ratelimit_fallback_local", &c.fallback_local),
            ("ratelimit_reservations_granted", &c.reservations_granted),
            ("ratelimit_reservations_refused", &c.reservations_refused),
            ("ratelimit_concurrent_acquired", &c.concurrent_acquired),
            ("ratelimit_concurrent_refused", &c.concurrent_refused),
            ("ratelimit_concurrent_released", &c.concurrent_released),
            ("ratelimit_resets", &c.resets),
            ("ratelimit_override_loads", &c.override_loads),
            (
                "ratelimit_override_refresh_errors",
                &c.override_refresh_errors,
            ),
            ("ratelimit_quota_scans", &c.quota_scans),
        ] {
            m.insert(k.to_string(), v.load(Ordering::Relaxed));
        }
        m.insert(
            "ratelimit_deny_cache_entries".into(),
            self.deny_budget.len() as u64,
        );
        let overrides: usize = self.policies.values().map(Policy::runtime_len).sum();
        m.insert("ratelimit_runtime_overrides".into(), overrides as u64);
        let local: usize = self.policies.values().map(|p| p.local.len()).sum();
        m.insert("ratelimit_local_entries".into(), local as u64);
        m.insert("ratelimit_policies".into(), self.policies.len() as u64);
        m.insert("ratelimit_ready".into(), u64::from(self.ready()));
    }

    /// Executes a `ratelimit.*` or `quota.*` op.
    pub async fn handle(&self, id: u64, op: Op, max_frame: usize) -> Result<Frame, OpError> {
        let name = op.name();
        Ok(match op {
            Op::RatelimitCheck { policy, key, cost } => {
                encode_ok(id, &self.check(&policy, &key, cost).await?, max_frame)
            }
            Op::RatelimitPeek { policy, key } => {
                encode_ok(id, &self.peek(&policy, &key).await?, max_frame)
            }
            Op::RatelimitReset { policy, key } => {
                let reset = self.reset(&policy, &key).await?;
                encode_ok(id, &ResetResult { reset }, max_frame)
            }
            Op::RatelimitPenalty {
                policy,
                key,
                points,
            } => encode_ok(
                id,
                &self.adjust(&policy, &key, Mode::Penalty, points).await?,
                max_frame,
            ),
            Op::RatelimitReward {
                policy,
                key,
                points,
            } => encode_ok(
                id,
                &self.adjust(&policy, &key, Mode::Reward, points).await?,
                max_frame,
            ),
            Op::RatelimitReserve {
                policy,
                key,
                cost,
                max_wait_ms,
            } => encode_ok(
                id,
                &self.reserve(&policy, &key, cost, max_wait_ms).await?,
                max_frame,
            ),
            Op::RatelimitAcquireConcurrent {
                policy,
                key,
                lease_ms,
            } => encode_ok(
                id,
                &self.acquire_concurrent(&policy, &key, lease_ms).await?,
                max_frame,
            ),
            Op::RatelimitRelease { policy, key, lease } => {
                let released = self.release(&policy, &key, &lease).await?;
                encode_ok(id, &ReleaseResult { released }, max_frame)
            }
            Op::RatelimitSetOverride {
                policy,
                key,
                limit,
                burst,
            } => {
                let replaced = self.set_override(&policy, &key, limit, burst).await?;
                encode_ok(id, &OverrideResult { replaced }, max_frame)
            }
            Op::RatelimitClearOverride { policy, key } => {
                let cleared = self.clear_override(&policy, &key).await?;
                encode_ok(id, &ClearOverrideResult { cleared }, max_frame)
            }
            Op::QuotaUsage {
                policy,
                prefix,
                max_keys,
            } => encode_ok(
                id,
                &self
                    .quota_usage(&policy, prefix.as_deref(), max_keys)
                    .await?,
                max_frame,
            ),
            _ => {
                return Err(OpError::new(
                    ErrorCode::Internal,
                    format!("`{name}` is not a rate-limit op"),
                ))
            }
        })
    }

    // ---- the ops ----

    /// `ratelimit.check`: decide one request of `cost` and consume it if allowed.
    pub async fn check(
        &self,
        policy: &str,
        key: &str,
        cost: u64,
    ) -> Result<RatelimitDecisionExt, RatelimitError> {
        let p = self.rate_policy(policy, "ratelimit.check")?;
        let numbers = p.numbers(key);
        check_cost(p, numbers, cost)?;
        inc(&self.counters.checks);
        if let Some(d) = p.deny.lookup(key, cost, self.clock.local_us()) {
            inc(&self.counters.denied_local);
            inc(&self.counters.denied);
            count(p, false, None);
            return Ok(answer(p, d.into(), None));
        }
        if p.config.block.is_some() {
            match self.blocked(p, key).await {
                Ok(Some(ms)) => {
                    let cap = numbers.capacity(p.algorithm);
                    let v = Verdict::denied(cap, 0, ms, ms);
                    count(p, false, None);
                    inc(&self.counters.denied);
                    p.deny.insert(key, cost, self.clock.local_us(), v.into());
                    return Ok(answer(p, v, None));
                }
                Ok(None) => {}
                Err(e) if e.is_retryable() => return Ok(self.fallback(p, key, numbers, cost, true)),
                Err(e) => return Err(e.into()),
            }
        }
        match self.decide(p, key, Mode::Check, cost, numbers, 0).await {
            Ok(mut v) => {
                if !v.allowed {
                    if let Some(ms) = self.block(p, key).await? {
                        v = Verdict::denied(v.limit, v.remaining, v.reset_after_ms.max(ms), ms);
                    }
                }
                count(p, v.allowed, None);
                if v.allowed {
                    inc(&self.counters.allowed);
                } else {
                    inc(&self.counters.denied);
                    p.deny.insert(key, cost, self.clock.local_us(), v.into());
                }
                Ok(answer(p, v, None))
            }
            Err(e) if e.is_retryable() => Ok(self.fallback(p, key, numbers, cost, true)),
            Err(e) => Err(e.into()),
        }
    }

    /// `ratelimit.peek`: what a `check` of cost 1 would answer, consuming nothing.
    pub async fn peek(
        &self,
        policy: &str,
        key: &str,
    ) -> Result<RatelimitDecisionExt, RatelimitError> {
        let p = self.policy(policy)?;
        let numbers = p.numbers(key);
        let result = if p.algorithm == Algorithm::Concurrency {
            self.leases(p, key, "peek", numbers.limit, 1, "").await
        } else {
            self.decide(p, key, Mode::Peek, 1, numbers, 0).await
        };
        match result {
            Ok(v) => Ok(answer(p, v, None)),
            Err(e) if e.is_retryable() && p.algorithm != Algorithm::Concurrency => {
                Ok(self.fallback(p, key, numbers, 1, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The lockout key of `key` (same hash tag as its state).
    fn block_key(p: &Policy, key: &str) -> String {
        format!("{}:b", p.state_key(key))
    }

    /// Block policies: the lockout left on `key`, if any (ms).
    async fn blocked(&self, p: &Policy, key: &str) -> Result<Option<u64>, StoreError> {
        let left: i64 = self
            .store
            .cmd(redis::cmd("PTTL").arg(Self::block_key(p, key)))
            .await?;
        Ok(u64::try_from(left).ok().filter(|ms| *ms > 0))
    }

    /// Block policies: `key` just went over its limit: lock it out fleet-wide
    /// for `block` (an existing lockout is not extended). Returns what is left.
    async fn block(&self, p: &Policy, key: &str) -> Result<Option<u64>, RatelimitError> {
        let Some(block) = p.config.block else {
            return Ok(None);
        };
        let ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let bk = Self::block_key(p, key);
        let _: Option<String> = self
            .store
            .cmd(
                redis::cmd("SET")
                    .arg(&bk)
                    .arg(1)
                    .arg("PX")
                    .arg(ms)
                    .arg("NX"),
            )
            .await?;
        Ok(self.blocked(p, key).await?.or(Some(ms)))
    }

    /// `ratelimit.reset`: forgets the key's state; true when there was some.
    pub async fn reset(&self, policy: &str, key: &str) -> Result<bool, RatelimitError> {
        let p = self.policy(policy)?;
        p.deny.remove(key);
        p.local.remove(key);
        let state = p.state_key(key);
        let mut del = redis::cmd("DEL");
        del.arg(&state);
        if p.algorithm == Algorithm::SlidingLog {
            // The companion key shares the hash tag, so one DEL stays in one slot.
            del.arg(format!("{state}:n"));
        }
        if p.config.block.is_some() {
            // A reset lifts the lockout too.
            del.arg(Self::block_key(p, key));
        }
        let n: u64 = self.store.cmd(&del).await?;
        // The other daemons may hold a cached denial of this key (for a daily
        // quota, until midnight): moving the policy's version makes each drop
        // its denials at its next refresh, as for an override change.
        let mut inv = self.scripts.set_override.prepare_invoke();
        inv.key(&p.overrides_key).arg("bump").arg("").arg("");
        let _: Vec<i64> = self.store.invoke_script(&inv).await?;
        inc(&self.counters.resets);
        Ok(n > 0)
    }

    /// `ratelimit.penalty` / `ratelimit.reward`: consumes `points` without
    /// asking (the key may go over its limit) or gives them back (never above
    /// full capacity); answers like `peek` after the change. There is no fail
    /// mode: without Redis the points cannot be recorded, so the error is the
    /// answer (`unavailable`, retryable).
    pub async fn adjust(
        &self,
        policy: &str,
        key: &str,
        mode: Mode,
        points: u64,
    ) -> Result<RatelimitDecisionExt, RatelimitError> {
        let op = if mode == Mode::Reward {
            "ratelimit.reward"
        } else {
            "ratelimit.penalty"
        };
        let p = self.rate_policy(policy, op)?;
        let numbers = p.numbers(key);
        // At most one full capacity per call, as for a cost: it keeps the
        // scripts' integer arithmetic exact (a bigger penalty is several calls).
        let cap = numbers.capacity(p.algorithm);
        if points > cap {
            return Err(RatelimitError::BadRequest(format!(
                "points {points} is above the capacity of policy `{}` ({cap}); \
                 penalize or reward at most {cap} per call",
                p.name
            )));
        }
        let v = self.decide(p, key, mode, points, numbers, 0).await?;
        if mode == Mode::Reward {
            // The points are back: a denial cached here, or on any other
            // daemon, may no longer hold. Moving the policy's version makes
            // every daemon drop its denials at its next refresh, as `reset` does.
            p.deny.remove(key);
            p.local.remove(key);
            let mut inv = self.scripts.set_override.prepare_invoke();
            inv.key(&p.overrides_key).arg("bump").arg("").arg("");
            let _: Vec<i64> = self.store.invoke_script(&inv).await?;
        } else if !v.allowed {
            // Other daemons ask Redis on their next check and see the denial.
            p.deny.insert(key, 1, self.clock.local_us(), v.into());
        }
        Ok(answer(p, v, None))
    }

    /// `ratelimit.reserve`: books the next slot for `cost` if it is at most
    /// `max_wait_ms` away.
    pub async fn reserve(
        &self,
        policy: &str,
        key: &str,
        cost: u64,
        max_wait_ms: u64,
    ) -> Result<ReserveResult, RatelimitError> {
        let p = self.policy(policy)?;
        if matches!(
            p.algorithm,
            Algorithm::SlidingCounter | Algorithm::Concurrency
        ) {
            return Err(RatelimitError::BadRequest(format!(
                "policy `{}` is {}, which cannot book future slots; reservations need \
                 fixed_window, sliding_log, token_bucket or gcra",
                p.name,
                algorithm_name(p.algorithm)
            )));
        }
        let numbers = p.numbers(key);
        check_cost(p, numbers, cost)?;
        // The horizon: however long the caller would wait, nothing is booked
        // further ahead than this, so a loop of reservations cannot fill a key
        // with years of bookings (a sliding log would hold one entry each).
        let horizon_ms = p.config.max_reserve_ahead.map_or_else(
            || p.window_ms.saturating_mul(RESERVE_AHEAD_WINDOWS),
            |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        );
        let max_wait_ms = max_wait_ms.min(horizon_ms);
        let v = match self
            .decide(p, key, Mode::Reserve, cost, numbers, max_wait_ms)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_retryable() => {
                // Without Redis nothing can be booked ahead: the fail mode decides
                // now or never.
                let d = self.fallback(p, key, numbers, cost, true);
                Verdict {
                    allowed: d.allowed,
                    limit: d.limit,
                    remaining: d.remaining,
                    reset_after_ms: d.reset_after_ms,
                    retry_after_ms: d.retry_after_ms,
                }
            }
            Err(e) => return Err(e.into()),
        };
        if v.allowed {
            inc(&self.counters.reservations_granted);
        } else {
            inc(&self.counters.reservations_refused);
        }
        Ok(ReserveResult {
            granted: v.allowed,
            wait_ms: v.retry_after_ms,
        })
    }

    /// `ratelimit.acquire_concurrent`: takes one in-flight slot as a lease.
    pub async fn acquire_concurrent(
        &self,
        policy: &str,
        key: &str,
        lease_ms: Option<u64>,
    ) -> Result<ConcurrentResult, RatelimitError> {
        let p = self.concurrency_policy(policy, "ratelimit.acquire_concurrent")?;
        let limit = p.numbers(key).limit;
        let lease_ms = lease_ms.unwrap_or(p.window_ms);
        let token = crate::random_token(16);
        let result = match self
            .leases(p, key, "acquire", limit, lease_ms, &token)
            .await
        {
            Ok(v) => ConcurrentResult {
                acquired: v.allowed,
                lease: v.allowed.then_some(token),
                limit,
                remaining: v.remaining,
                retry_after_ms: if v.allowed { 0 } else { v.retry_after_ms },
                lease_ms,
            },
            Err(e) if e.is_retryable() => self.lease_fallback(p, key, limit, lease_ms),
            Err(e) => return Err(e.into()),
        };
        if result.acquired {
            inc(&self.counters.concurrent_acquired);
        } else {
            inc(&self.counters.concurrent_refused);
        }
        Ok(result)
    }

    /// `ratelimit.release`: gives a lease back; false if it had expired or was
    /// already released.
    pub async fn release(
        &self,
        policy: &str,
        key: &str,
        lease: &str,
    ) -> Result<bool, RatelimitError> {
        let p = self.concurrency_policy(policy, "ratelimit.release")?;
        let released = if lease.starts_with("local.") {
            p.local.release_lease(key, lease, self.clock.local_ms())
        } else {
            let mut inv = self.scripts.release.prepare_invoke();
            inv.key(p.state_key(key))
                .arg(lease)
                .arg(self.clock.script_arg());
            inc(&self.counters.redis_calls);
            let n: i64 = self.store.invoke_script(&inv).await?;
            n == 1
        };
        if released {
            inc(&self.counters.concurrent_released);
        }
        Ok(released)
    }

    /// `ratelimit.set_override`: stores a runtime override of `key` in Redis;
    /// this daemon applies it at once, the others at their next refresh.
    pub async fn set_override(
        &self,
        policy: &str,
        key: &str,
        limit: u64,
        burst: Option<u64>,
    ) -> Result<bool, RatelimitError> {
        let p = self.policy(policy)?;
        let numbers = Numbers::new(limit, burst).ok_or_else(|| {
            RatelimitError::BadRequest("`limit` and `burst` must be at least 1".into())
        })?;
        if !numbers.fits(p.window_ms) {
            return Err(RatelimitError::BadRequest(format!(
                "`limit` (and `burst`) times the window of `{}` ({} ms) must stay below 2^53",
                p.name, p.window_ms
            )));
        }
        let existed = self
            .write_override(p, key, Some(&numbers.to_stored()))
            .await?;
        p.set_runtime(key, Some(numbers));
        p.deny.remove(key);
        Ok(existed)
    }

    /// `ratelimit.clear_override`: removes a runtime override; true if one existed.
    pub async fn clear_override(&self, policy: &str, key: &str) -> Result<bool, RatelimitError> {
        let p = self.policy(policy)?;
        let existed = self.write_override(p, key, None).await?;
        p.set_runtime(key, None);
        p.deny.remove(key);
        Ok(existed)
    }

    /// `quota.usage`: the current usage of a policy's keys (optionally only those
    /// starting with `prefix`), found with a bounded SCAN and read with peeks.
    /// On Redis Cluster this sees the keys of the node the connection reaches.
    pub async fn quota_usage(
        &self,
        policy: &str,
        prefix: Option<&str>,
        max_keys: Option<u64>,
    ) -> Result<QuotaUsageResult, RatelimitError> {
        let p = self.policy(policy)?;
        inc(&self.counters.quota_scans);
        let max_keys = max_keys.unwrap_or(QUOTA_DEFAULT_KEYS).min(QUOTA_MAX_KEYS) as usize;
        let pattern = format!(
            "{}*",
            glob_escape(&format!("{}{}", p.state_prefix(), prefix.unwrap_or("")))
        );
        let mut found = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        let mut truncated = false;
        for round in 0.. {
            let (next, batch): (u64, Vec<Vec<u8>>) = self
                .store
                .cmd(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(QUOTA_SCAN_COUNT),
                )
                .await?;
            for raw in batch {
                // Keys that are not UTF-8 or not this policy's state are not ours.
                if let Ok(k) = String::from_utf8(raw) {
                    if let Some(user) = p.key_of(&k) {
                        found.insert(user.to_string());
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
            if found.len() > max_keys || round + 1 >= QUOTA_MAX_SCANS {
                truncated = true;
                break;
            }
        }
        if found.len() > max_keys {
            truncated = true;
        }
        let keys: Vec<String> = found.into_iter().take(max_keys).collect();
        let peeks = futures::stream::iter(keys.into_iter().map(|k| async move {
            let numbers = p.numbers(&k);
            let v = if p.algorithm == Algorithm::Concurrency {
                self.leases(p, &k, "peek", numbers.limit, 1, "").await
            } else {
                self.decide(p, &k, Mode::Peek, 1, numbers, 0).await
            };
            v.map(|v| QuotaKeyUsage {
                used: v.limit.saturating_sub(v.remaining),
                limit: v.limit,
                remaining: v.remaining,
                reset_after_ms: v.reset_after_ms,
                key: k,
            })
        }))
        .buffered(QUOTA_PARALLEL)
        .collect::<Vec<_>>()
        .await;
        let keys = peeks.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(QuotaUsageResult {
            policy: p.name.clone(),
            algorithm: algorithm_name(p.algorithm).to_string(),
            limit: p.config.limit,
            window_ms: p.window_ms,
            keys,
            truncated,
        })
    }

    // ---- internals ----

    fn policy(&self, name: &str) -> Result<&Policy, RatelimitError> {
        self.policies
            .get(name)
            .ok_or_else(|| RatelimitError::UnknownPolicy(name.to_string()))
    }

    fn rate_policy(&self, name: &str, op: &str) -> Result<&Policy, RatelimitError> {
        let p = self.policy(name)?;
        if p.algorithm == Algorithm::Concurrency {
            return Err(RatelimitError::BadRequest(format!(
                "policy `{name}` is a concurrency limiter: use ratelimit.acquire_concurrent \
                 and ratelimit.release, not {op}"
            )));
        }
        Ok(p)
    }

    fn concurrency_policy(&self, name: &str, op: &str) -> Result<&Policy, RatelimitError> {
        let p = self.policy(name)?;
        if p.algorithm != Algorithm::Concurrency {
            return Err(RatelimitError::BadRequest(format!(
                "{op} needs a concurrency policy; `{name}` is {}",
                algorithm_name(p.algorithm)
            )));
        }
        Ok(p)
    }

    /// Whether to skip Redis because it is known down and another request
    /// probed it less than [`PROBE_EVERY`] ago.
    fn skip_redis(&self) -> bool {
        if !self.store.is_down() {
            return false;
        }
        let now = self.clock.mono_us();
        let last = self.last_probe_us.load(Ordering::Relaxed);
        let every = PROBE_EVERY.as_micros() as u64;
        if now.saturating_sub(last) < every {
            return true;
        }
        // One caller wins the probe; the others use the fail mode meanwhile.
        self.last_probe_us
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    }

    /// Runs the policy's decision script.
    async fn decide(
        &self,
        p: &Policy,
        key: &str,
        mode: Mode,
        cost: u64,
        numbers: Numbers,
        max_wait_ms: u64,
    ) -> Result<Verdict, StoreError> {
        if self.skip_redis() {
            return Err(StoreError::Unavailable(
                "redis is down (probing in the background)".into(),
            ));
        }
        let state = p.state_key(key);
        let mut inv = self.scripts.decision(p.algorithm).prepare_invoke();
        inv.key(&state);
        if p.algorithm == Algorithm::SlidingLog {
            // The log's companion (total and sequence), in the same slot.
            inv.key(format!("{state}:n"));
        }
        inv.arg(mode.as_str())
            .arg(cost)
            .arg(numbers.limit)
            .arg(p.window_ms)
            .arg(numbers.burst)
            .arg(max_wait_ms)
            .arg(self.clock.script_arg());
        inc(&self.counters.redis_calls);
        let reply: Vec<i64> = self.store.invoke_script(&inv).await?;
        Verdict::from_reply(&reply)
    }

    /// Runs the concurrency script (`mode` "acquire" or "peek").
    async fn leases(
        &self,
        p: &Policy,
        key: &str,
        mode: &str,
        limit: u64,
        lease_ms: u64,
        token: &str,
    ) -> Result<Verdict, StoreError> {
        if self.skip_redis() {
            return Err(StoreError::Unavailable(
                "redis is down (probing in the background)".into(),
            ));
        }
        let mut inv = self.scripts.concurrency.prepare_invoke();
        inv.key(p.state_key(key))
            .arg(mode)
            .arg(limit)
            .arg(lease_ms)
            .arg(token)
            .arg(self.clock.script_arg());
        inc(&self.counters.redis_calls);
        let reply: Vec<i64> = self.store.invoke_script(&inv).await?;
        Verdict::from_reply(&reply)
    }

    async fn write_override(
        &self,
        p: &Policy,
        key: &str,
        value: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.set_override.prepare_invoke();
        inv.key(&p.overrides_key);
        match value {
            Some(v) => inv.arg("set").arg(key).arg(v),
            None => inv.arg("clear").arg(key).arg(""),
        };
        let reply: Vec<i64> = self.store.invoke_script(&inv).await?;
        match reply.as_slice() {
            [existed, _version] => Ok(*existed == 1),
            _ => Err(StoreError::Redis(
                "rl_override returned an unexpected shape".into(),
            )),
        }
    }

    /// Loads every policy's runtime overrides whose version changed.
    async fn refresh_overrides(&self) -> Result<(), StoreError> {
        let first = !self.loaded.load(Ordering::Relaxed);
        for p in self.policies.values() {
            let version: Option<i64> = self
                .store
                .cmd(redis::cmd("HGET").arg(&p.overrides_key).arg(""))
                .await?;
            let known = *p.loaded_version.lock().unwrap_or_else(|e| e.into_inner());
            if !first && version == known {
                continue;
            }
            let raw: HashMap<Vec<u8>, Vec<u8>> = self
                .store
                .cmd(redis::cmd("HGETALL").arg(&p.overrides_key))
                .await?;
            let mut all = HashMap::with_capacity(raw.len());
            for (k, v) in raw {
                if k.is_empty() {
                    continue; // the version field
                }
                let parsed = String::from_utf8(k).ok().and_then(|k| {
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(Numbers::parse_stored)
                        .filter(|n| n.fits(p.window_ms))
                        .map(|n| (k, n))
                });
                match parsed {
                    Some((k, n)) => {
                        all.insert(k, n);
                    }
                    None => tracing::warn!(
                        policy = %p.name,
                        "ignoring a malformed runtime override in redis"
                    ),
                }
            }
            p.replace_runtime(all);
            *p.loaded_version.lock().unwrap_or_else(|e| e.into_inner()) = version;
            // A limit may have been raised: cached denials may no longer hold.
            p.deny.clear();
            inc(&self.counters.override_loads);
        }
        Ok(())
    }

    /// Loads the scripts into Redis's cache (saves a NOSCRIPT round trip later).
    async fn preload_scripts(&self) {
        for source in scripts::SOURCES {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(source);
            if let Err(e) = self.store.cmd::<String>(&load).await {
                tracing::debug!(error = %e, "cannot preload a rate-limit script");
                return;
            }
        }
    }

    /// The fail mode's decision while Redis is unreachable.
    fn fallback(
        &self,
        p: &Policy,
        key: &str,
        numbers: Numbers,
        cost: u64,
        consume: bool,
    ) -> RatelimitDecisionExt {
        let cap = numbers.capacity(p.algorithm);
        let (v, mode) = match p.config.on_unavailable {
            FailMode::Open => {
                inc(&self.counters.fallback_open);
                let used = if consume { cost } else { 0 };
                (Verdict::allowed(cap, cap.saturating_sub(used), 0), "open")
            }
            FailMode::Closed => {
                inc(&self.counters.fallback_closed);
                let retry = CLOSED_RETRY_MS.min(p.window_ms);
                (Verdict::denied(cap, 0, retry, retry), "closed")
            }
            FailMode::Local => {
                inc(&self.counters.fallback_local);
                let rule = Rule {
                    algorithm: p.algorithm,
                    share: Numbers {
                        limit: p.share(numbers.limit),
                        burst: p.share(numbers.burst),
                    },
                    window_ms: p.window_ms,
                };
                let v = p
                    .local
                    .decide(key, rule, cost, self.clock.local_ms(), consume);
                (v, "local")
            }
        };
        if consume {
            count(p, v.allowed, Some(mode));
            if v.allowed {
                inc(&self.counters.allowed);
            } else {
                inc(&self.counters.denied);
            }
        }
        answer(p, v, Some(mode))
    }

    fn lease_fallback(&self, p: &Policy, key: &str, limit: u64, lease_ms: u64) -> ConcurrentResult {
        let refused = |retry: u64| ConcurrentResult {
            acquired: false,
            lease: None,
            limit,
            remaining: 0,
            retry_after_ms: retry.max(1),
            lease_ms,
        };
        match p.config.on_unavailable {
            FailMode::Open => {
                inc(&self.counters.fallback_open);
                ConcurrentResult {
                    acquired: true,
                    // Nothing is held anywhere; releasing it is a no-op.
                    lease: Some(format!("local.open.{}", crate::random_token(12))),
                    limit,
                    remaining: limit.saturating_sub(1),
                    retry_after_ms: 0,
                    lease_ms,
                }
            }
            FailMode::Closed => {
                inc(&self.counters.fallback_closed);
                refused(CLOSED_RETRY_MS.min(lease_ms))
            }
            FailMode::Local => {
                inc(&self.counters.fallback_local);
                let share = p.share(limit);
                let l = p
                    .local
                    .acquire_lease(key, share, lease_ms, self.clock.local_ms());
                if !l.acquired {
                    return refused(l.retry_after_ms);
                }
                ConcurrentResult {
                    acquired: true,
                    lease: l.token,
                    limit: share,
                    remaining: l.remaining,
                    retry_after_ms: 0,
                    lease_ms,
                }
            }
        }
    }
}

/// The `fallback` label values of `shoal_ratelimit_decisions_total`.
pub const FALLBACK_LABELS: [&str; 4] = ["none", "open", "closed", "local"];

/// Counts one decision of `p` (once, whoever decided).
fn count(p: &Policy, allowed: bool, fallback: Option<&str>) {
    let f = FALLBACK_LABELS
        .iter()
        .position(|l| Some(*l) == fallback)
        .unwrap_or(0);
    inc(&p.decisions[usize::from(allowed) * 4 + f]);
}

/// A cost above what the key can ever allow would be denied forever: refused.
fn check_cost(p: &Policy, numbers: Numbers, cost: u64) -> Result<(), RatelimitError> {
    let cap = numbers.capacity(p.algorithm);
    if cost > cap {
        return Err(RatelimitError::BadRequest(format!(
            "cost {cost} is above what policy `{}` can ever allow at once ({cap})",
            p.name
        )));
    }
    Ok(())
}

fn answer(p: &Policy, v: Verdict, fallback: Option<&str>) -> RatelimitDecisionExt {
    RatelimitDecisionExt {
        allowed: v.allowed,
        limit: v.limit,
        remaining: v.remaining,
        reset_after_ms: v.reset_after_ms,
        retry_after_ms: if v.allowed { 0 } else { v.retry_after_ms },
        window_ms: Some(p.window_ms),
        fallback: fallback.map(str::to_string),
        headers: p.config.headers.map(|h| h.as_str().to_string()),
    }
}

/// Escapes Redis glob metacharacters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("shoal:rl.fw{api:"), "shoal:rl.fw{api:");
    }
}
