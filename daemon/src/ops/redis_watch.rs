//! The Redis health watch: a background task that polls `INFO` (and times a
//! `PING`) every `redis.watch_interval`, keeps what it saw for `/metrics`, and
//! warns in the log when Redis starts evicting keys.
//!
//! Why a watch at all: shoal keeps sessions and rate-limit state in Redis, and a
//! Redis that reaches `maxmemory` with an evicting policy drops them without an
//! error anywhere. From the application's side that looks like users being
//! logged out at random, which nobody connects to Redis memory unless something
//! says so. This task is that something; `shoalctl doctor` says it up front.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Upper bounds (seconds) of the `PING` latency histogram buckets.
pub const PING_BUCKETS_S: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// At most one eviction (or memory) warning per this long: during an eviction
/// storm the log should say so once a minute with a count, not once a poll.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Share of `maxmemory` above which the watch warns that evictions are near.
const MEMORY_WARN_RATIO: f64 = 0.9;

/// What the last polls saw. Cloned out for every scrape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthSnapshot {
    /// At least one poll has completed (successfully or not).
    pub polled: bool,
    /// The last poll got answers.
    pub up: bool,
    pub last_error: Option<String>,
    pub polls: u64,
    pub poll_failures: u64,
    pub redis_version: String,
    pub used_memory_bytes: u64,
    /// 0 means no limit.
    pub maxmemory_bytes: u64,
    pub maxmemory_policy: String,
    /// Redis's own `evicted_keys` (since its last start).
    pub evicted_keys: u64,
    /// Evictions this daemon has observed, summed over polls; unlike
    /// `evicted_keys` it never goes back when Redis restarts, so it is a counter.
    pub evicted_keys_observed: u64,
    /// Evictions per second over the last interval.
    pub evicted_per_sec: f64,
    /// Round trip of the last `PING`, in seconds.
    pub ping_seconds: f64,
    /// Per-bucket counts of `PING` round trips (`PING_BUCKETS_S`, then +Inf).
    pub ping_buckets: Vec<u64>,
    pub ping_sum_seconds: f64,
    pub ping_count: u64,
}

/// Shared between the watch task (writer) and the admin server (reader).
#[derive(Debug)]
pub struct RedisHealth {
    inner: Mutex<HealthSnapshot>,
}

impl Default for RedisHealth {
    fn default() -> Self {
        RedisHealth {
            inner: Mutex::new(HealthSnapshot {
                ping_buckets: vec![0; PING_BUCKETS_S.len() + 1],
                ..HealthSnapshot::default()
            }),
        }
    }
}

impl RedisHealth {
    pub fn snapshot(&self) -> HealthSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, HealthSnapshot> {
        // Every update is a set of plain assignments: a panic cannot leave the
        // snapshot half-written in a way that matters, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_ping(&self, seconds: f64) {
        let mut s = self.lock();
        let i = PING_BUCKETS_S
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(PING_BUCKETS_S.len());
        if let Some(b) = s.ping_buckets.get_mut(i) {
            *b += 1;
        }
        s.ping_seconds = seconds;
        s.ping_sum_seconds += seconds;
        s.ping_count += 1;
    }
}

/// Parses `INFO` output (`name:value` lines, `#` section headers) into a map.
/// Lines that are not `name:value` are skipped: the text comes from the server
/// and its format varies across versions and forks.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `INFO` as one parsed map: a standalone server's text, or on a cluster (where
/// redis-rs asks every primary and answers node → text) the primaries' figures
/// merged: integers summed (memory, evictions, clients; a flag such as
/// `loading` is then non-zero if any primary is loading), anything else taken
/// from the first primary.
pub fn merge_info(v: &redis::Value) -> Option<BTreeMap<String, String>> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    };
    if let Some(t) = text(v) {
        return Some(parse_info(&t));
    }
    let Value::Map(nodes) = v else { return None };
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for (_, node) in nodes {
        for (k, val) in parse_info(&text(node)?) {
            match merged.get_mut(&k) {
                None => {
                    merged.insert(k, val);
                }
                Some(have) => {
                    if let (Ok(a), Ok(b)) = (have.parse::<u64>(), val.parse::<u64>()) {
                        *have = (a + b).to_string();
                    }
                }
            }
        }
    }
    Some(merged)
}

/// A field of a parsed `INFO` as an integer (absent or malformed: `None`).
pub fn info_u64(info: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    info.get(key).and_then(|v| v.parse().ok())
}

/// The watch task.
#[derive(Debug)]
pub struct Watcher {
    pub store: Store,
    pub health: Arc<RedisHealth>,
    pub interval: Duration,
}

/// Warning state kept between polls (not exported).
#[derive(Debug, Default)]
struct WarnState {
    last_evicted: Option<u64>,
    last_poll: Option<Instant>,
    /// Evictions seen since the last eviction warning.
    pending_evictions: u64,
    last_eviction_warning: Option<Instant>,
    last_memory_warning: Option<Instant>,
}

impl Watcher {
    /// Polls until `cancel` fires. The first poll runs at once so `/metrics`
    /// has Redis figures right after start.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warn = WarnState::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.poll(&mut warn) => {}
            }
        }
    }

    async fn poll(&self, warn: &mut WarnState) {
        let started = Instant::now();
        let ping = self.store.cmd::<String>(&redis::cmd("PING")).await;
        let ping_seconds = started.elapsed().as_secs_f64();
        let info = match ping {
            Ok(_) => {
                self.health.record_ping(ping_seconds);
                self.store.cmd::<redis::Value>(&redis::cmd("INFO")).await
            }
            Err(e) => Err(e),
        };
        let info = info.and_then(|v| {
            merge_info(&v).ok_or_else(|| {
                crate::store::StoreError::Redis("INFO answered in an unexpected shape".into())
            })
        });
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                let mut s = self.health.lock();
                if s.up || !s.polled {
                    tracing::warn!(redis = %self.store.address(), error = %e, "redis health watch: redis does not answer");
                }
                s.polled = true;
                s.up = false;
                s.polls += 1;
                s.poll_failures += 1;
                s.last_error = Some(e.to_string());
                return;
            }
        };
        let now = Instant::now();
        let evicted = info_u64(&info, "evicted_keys").unwrap_or(0);
        // A counter that went back means Redis restarted: everything it shows now
        // happened since then.
        let delta = match warn.last_evicted {
            Some(prev) if evicted >= prev => evicted - prev,
            Some(_) => evicted,
            None => 0,
        };
        let per_sec = match warn.last_poll {
            Some(at) if now > at => delta as f64 / (now - at).as_secs_f64(),
            _ => 0.0,
        };
        warn.last_evicted = Some(evicted);
        warn.last_poll = Some(now);
        let used = info_u64(&info, "used_memory").unwrap_or(0);
        let max = info_u64(&info, "maxmemory").unwrap_or(0);
        let policy = info.get("maxmemory_policy").cloned().unwrap_or_default();
        {
            let mut s = self.health.lock();
            if !s.up && s.polled {
                tracing::info!(redis = %self.store.address(), "redis health watch: redis answers again");
            }
            s.polled = true;
            s.up = true;
            s.last_error = None;
            s.polls += 1;
            s.redis_version = info.get("redis_version").cloned().unwrap_or_default();
            s.used_memory_bytes = used;
            s.maxmemory_bytes = max;
            s.maxmemory_policy = policy.clone();
            s.evicted_keys = evicted;
            s.evicted_keys_observed += delta;
            s.evicted_per_sec = per_sec;
        }

        // Any eviction may have been a session: say so, with the count since the
        // last warning, at most once per WARN_EVERY.
        warn.pending_evictions += delta;
        let due = |last: Option<Instant>| last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
        if warn.pending_evictions > 0 && due(warn.last_eviction_warning) {
            tracing::warn!(
                evicted = warn.pending_evictions,
                per_sec = format!("{per_sec:.1}"),
                used_memory = used,
                maxmemory = max,
                maxmemory_policy = %policy,
                "redis is evicting keys: sessions and rate-limit state may be silently lost \
                 (users logged out); raise maxmemory or use maxmemory-policy noeviction \
                 (see `shoalctl doctor`)"
            );
            warn.pending_evictions = 0;
            warn.last_eviction_warning = Some(now);
        }
        if max > 0 && used as f64 >= max as f64 * MEMORY_WARN_RATIO && due(warn.last_memory_warning)
        {
            tracing::warn!(
                used_memory = used,
                maxmemory = max,
                maxmemory_policy = %policy,
                "redis memory is above 90% of maxmemory: evictions or write errors are near"
            );
            warn.last_memory_warning = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_parses_sections_and_skips_noise() {
        let m = parse_info(
            "# Server\r\nredis_version:7.2.4\r\n\r\n# Memory\r\nused_memory:1024\r\nmaxmemory_policy:allkeys-lru\r\ngarbage\r\n",
        );
        assert_eq!(m.get("redis_version").map(String::as_str), Some("7.2.4"));
        assert_eq!(info_u64(&m, "used_memory"), Some(1024));
        assert_eq!(
            m.get("maxmemory_policy").map(String::as_str),
            Some("allkeys-lru")
        );
        assert_eq!(info_u64(&m, "maxmemory_policy"), None);
        assert!(!m.contains_key("garbage"));
    }

    #[test]
    fn ping_histogram_buckets() {
        let h = RedisHealth::default();
        h.record_ping(0.0001);
        h.record_ping(0.003);
        h.record_ping(5.0);
        let s = h.snapshot();
        assert_eq!(s.ping_buckets[0], 1);
        assert_eq!(s.ping_buckets[3], 1);
        assert_eq!(s.ping_buckets[PING_BUCKETS_S.len()], 1);
        assert_eq!(s.ping_count, 3);
    }
}
