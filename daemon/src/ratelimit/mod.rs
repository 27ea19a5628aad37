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
//!   is known down, one request per `PROBE_EVERY` tries it; the others take the
//!   fail mode at once instead of each waiting for the deadline;
//! - **reservations** (`ratelimit.reserve`) that book the next free slot, and a
//!   **concurrency limiter** with expiring leases.
//!
//! Tests can replace Redis `TIME` with a clock they set (`test-clock` feature),
//! passed to the scripts as an extra argument; production builds never send it.
//!
//! This file: `RateLimits` (its state, the op dispatch, counters). The ops:
//! `decide.rs` (check, peek, reset, penalty/reward, reserve), `concurrency.rs`,
//! `overrides.rs`, `quota.rs`, `fallback.rs` (fail modes). What they share:
//! `types.rs`, `policy.rs`, `scripts.rs`, `deny.rs`, `local.rs`.

mod concurrency;
mod decide;
mod deny;
mod fallback;
mod local;
mod overrides;
mod policy;
mod quota;
mod scripts;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_client::proto::{
    encode_ok, ClearOverrideResult, ErrorCode, Frame, Op, OverrideResult, RatelimitDecisionExt,
    ReleaseResult, ResetResult,
};
use tokio_util::sync::CancellationToken;

use crate::config::{Algorithm, Config};
use crate::error::OpError;
use crate::ops::stats::Stats;
use crate::store::Store;

pub use policy::algorithm_name;
pub use types::{Numbers, RatelimitError, Verdict};

use deny::{DenyBudget, DenyCache};
use policy::Policy;
use scripts::{Mode, Scripts};

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
