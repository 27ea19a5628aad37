//! `/metrics`: the daemon's numbers in the Prometheus (OpenMetrics) text format.
//!
//! Nothing here counts anything. The hot path already pays one relaxed atomic
//! increment per event into [`Stats`](crate::ops::stats::Stats); a second set of
//! counters would double that cost and could drift from the `stats` op. So the
//! registry holds one custom [`Collector`] that reads those atomics, the L1, the
//! coherence state, the Redis health watch and the session / rate-limit
//! services' `stats_into` maps at scrape time and writes them out. Every metric
//! is named `shoal_*`; the names are a public interface, like config keys.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::ctx::Ctx;
use crate::ops::redis_watch::PING_BUCKETS_S;
use crate::ops::stats::LAG_BUCKETS_MS;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry of one daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(ctx: Arc<Ctx>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ShoalCollector { ctx }));
        Metrics { registry }
    }

    /// The current values, as OpenMetrics text (ends with `# EOF`).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the daemon's state at scrape time.
#[derive(Debug)]
struct ShoalCollector {
    ctx: Arc<Ctx>,
}

/// Small helpers over `DescriptorEncoder` so each metric below is one line.
struct Out<'a> {
    enc: DescriptorEncoder<'a>,
}

impl Out<'_> {
    /// A counter; the text encoder appends `_total` to `name`.
    fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        let c = ConstCounter::new(v);
        let m = self
            .enc
            .encode_descriptor(name, help, None, c.metric_type())?;
        c.encode(m)
    }

    fn gauge(&mut self, name: &str, help: &str, v: i64) -> fmt::Result {
        let g = ConstGauge::new(v);
        let m = self
            .enc
            .encode_descriptor(name, help, None, g.metric_type())?;
        g.encode(m)
    }

    fn gauge_f(&mut self, name: &str, help: &str, v: f64) -> fmt::Result {
        let g = ConstGauge::new(v);
        let m = self
            .enc
            .encode_descriptor(name, help, None, g.metric_type())?;
        g.encode(m)
    }

    /// A counter family with one label.
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (value, v) in values {
            let labels = [(label, *value)];
            ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A classic histogram from per-bucket (not cumulative) counts; the last
    /// count is the +Inf bucket.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> fmt::Result {
        let mut buckets: Vec<(f64, u64)> =
            bounds.iter().copied().zip(counts.iter().copied()).collect();
        buckets.push((
            f64::INFINITY,
            counts.get(bounds.len()).copied().unwrap_or(0),
        ));
        // The count is the buckets' total, read from the same snapshot, so the
        // exposition is self-consistent even while events are recorded.
        let count = buckets.iter().map(|(_, c)| c).sum();
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for ShoalCollector {
    fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
        let ctx = &self.ctx;
        let s = &ctx.stats;
        let mut o = Out { enc };

        // Readiness, as /readyz sees it.
        o.gauge(
            "shoal_ready",
            "1 when Redis answers and every mirror is caught up (what /readyz reports)",
            i64::from(ctx.ready()),
        )?;

        // L1 and L2.
        let l1 = ctx.cache.l1();
        o.counter(
            "shoal_l1_hits",
            "reads answered from L1",
            s.l1_hits.load(Ordering::Relaxed),
        )?;
        o.counter(
            "shoal_l1_misses",
            "reads L1 could not answer",
            load(&s.l1_misses),
        )?;
        o.counter(
            "shoal_l2_hits",
            "L2 (Redis) reads that found a value",
            load(&s.l2_hits),
        )?;
        o.counter(
            "shoal_l2_misses",
            "L2 (Redis) reads that found nothing",
            load(&s.l2_misses),
        )?;
        o.counter(
            "shoal_l1_bypassed_reads",
            "reads sent to L2 because L1 was not trusted (subscriber not caught up)",
            load(&s.bypassed_reads),
        )?;
        o.counter(
            "shoal_l1_fills_rejected",
            "L2 reads not stored in L1 because a newer change of the key was applied",
            load(&s.fills_rejected),
        )?;
        o.counters(
            "shoal_l1_evictions",
            "L1 entries evicted, by cause (a change from the fleet, or room for newer entries)",
            "cause",
            &[
                ("invalidated", load(&s.l1_evictions_invalidated)),
                ("size", load(&s.l1_evictions_size)),
            ],
        )?;
        o.counters(
            "shoal_l1_flushes",
            "whole-L1 flushes, by reason",
            "reason",
            &[
                ("log_trimmed", load(&s.flush_log_trimmed)),
                ("redis_identity", load(&s.flush_redis_identity)),
                ("bad_message", load(&s.flush_bad_message)),
            ],
        )?;
        o.gauge(
            "shoal_l1_entries",
            "entries in L1",
            as_i64(l1.entry_count()),
        )?;
        o.gauge(
            "shoal_l1_bytes",
            "bytes L1 holds (keys, values and per-entry overhead)",
            as_i64(l1.weighted_size()),
        )?;
        o.gauge(
            "shoal_l1_max_bytes",
            "configured bound of L1 (cache.l1_max_bytes)",
            as_i64(l1.max_bytes()),
        )?;
        o.gauge(
            "shoal_l1_trusted",
            "1 when L1 may serve reads",
            i64::from(l1.is_ready()),
        )?;
        o.counter(
            "shoal_singleflight_joined",
            "reads that joined another caller's in-flight L2 read of the same key",
            load(&s.singleflight_joined),
        )?;
        o.counter("shoal_cache_sets", "cache.set requests", load(&s.sets))?;
        o.counter(
            "shoal_stale_fills_refused",
            "lease fills refused because the lease was invalidated (stale sets prevented)",
            load(&s.stale_fills_refused),
        )?;
        o.counter(
            "shoal_leases_granted",
            "fill leases granted",
            load(&s.leases_granted),
        )?;

        // Coherence.
        o.counter(
            "shoal_invalidations_sent",
            "keys this daemon changed or invalidated for the fleet",
            load(&s.invalidations_sent),
        )?;
        o.counter(
            "shoal_invalidations_applied",
            "keys evicted here because the fleet changed them",
            load(&s.invalidations_applied),
        )?;
        o.counter(
            "shoal_invalidation_messages",
            "invalidation messages received on the subscriber",
            load(&s.invalidation_messages),
        )?;
        o.counter(
            "shoal_log_entries_replayed",
            "invalidation log entries replayed after a gap",
            load(&s.log_entries_replayed),
        )?;
        let lag_counts: Vec<u64> = s.lag_buckets.iter().map(load).collect();
        let lag_bounds: Vec<f64> = LAG_BUCKETS_MS
            .iter()
            .map(|ms| *ms as f64 / 1000.0)
            .collect();
        o.histogram(
            "shoal_propagation_lag_seconds",
            "time from a change entering the invalidation log to its application here",
            &lag_bounds,
            &lag_counts,
            load(&s.lag_sum_ms) as f64 / 1000.0,
        )?;
        let lat = ctx.store.latency();
        let lat_counts: Vec<u64> = lat.buckets.iter().map(load).collect();
        let lat_bounds: Vec<f64> = crate::store::LATENCY_BUCKETS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .collect();
        o.histogram(
            "shoal_redis_command_seconds",
            "latency of every Redis call shoal makes (scripts and commands), timeouts included",
            &lat_bounds,
            &lat_counts,
            load(&lat.sum_us) as f64 / 1e6,
        )?;
        let applied = ctx.coherence.applied();
        o.gauge(
            "shoal_applied_position_ms",
            "millisecond part of the last applied invalidation log id",
            as_i64(applied.ms),
        )?;

        // Redis connections. The session reader's reconnects join the
        // subscriber's in one family, so it leaves the session map here.
        let mut sessions = BTreeMap::new();
        ctx.sessions.stats_into(&mut sessions);
        let mut reconnects = vec![("subscriber", load(&s.subscriber_reconnects))];
        if let Some(v) = sessions.remove("session_reader_reconnects") {
            reconnects.push(("session_reader", v));
        }
        o.counters(
            "shoal_redis_reconnects",
            "reconnects of shoal's Redis connections, by connection",
            "connection",
            &reconnects,
        )?;
        o.counter(
            "shoal_heartbeat_timeouts",
            "subscriber heartbeats missed three times in a row (subscription presumed dead)",
            load(&s.heartbeat_timeouts),
        )?;
        o.counter(
            "shoal_redis_errors",
            "requests answered unavailable, timeout or internal",
            load(&s.redis_errors),
        )?;
        o.counters(
            "shoal_redis_command_errors",
            "failed Redis calls by kind: error replies that mean Redis cannot serve now \
             (oom, loading, readonly, masterdown, busy, ...), timeout, unreachable, \
             circuit_open (failed at once: the circuit breaker is open), other",
            "kind",
            &ctx.store.errors().snapshot(),
        )?;
        o.counter(
            "shoal_redis_circuit_opens",
            "times the circuit breaker opened (redis.circuit_timeouts deadlines in a row)",
            ctx.store.circuit().opens(),
        )?;
        o.gauge(
            "shoal_redis_circuit_open",
            "1 while the circuit breaker is open (requests take their fail mode at once)",
            i64::from(ctx.store.circuit().is_open()),
        )?;
        self.redis_health(&mut o)?;

        // The socket.
        o.gauge(
            "shoal_connections",
            "open client connections",
            as_i64(load(&s.connections)),
        )?;
        o.counter(
            "shoal_connections_accepted",
            "client connections accepted",
            load(&s.connections_total),
        )?;
        o.counter(
            "shoal_connections_refused",
            "client connections refused (socket.max_connections)",
            load(&s.connections_refused),
        )?;
        o.gauge(
            "shoal_inflight_requests",
            "requests being executed",
            as_i64(load(&s.inflight)),
        )?;
        o.counter(
            "shoal_requests",
            "requests received",
            s.requests.load(Ordering::Relaxed),
        )?;
        o.counter(
            "shoal_request_errors",
            "requests answered with an error",
            load(&s.errors),
        )?;

        // Sessions and rate limits report maps; see `service_metrics`.
        // The revocation lag, a histogram with the invalidation lag's buckets.
        let rev_sum = sessions
            .remove("session_revocation_lag_ms_sum")
            .unwrap_or(0);
        let mut rev_counts: Vec<u64> = LAG_BUCKETS_MS
            .iter()
            .map(|b| {
                sessions
                    .remove(&format!("session_revocation_lag_ms_le_{b}"))
                    .unwrap_or(0)
            })
            .collect();
        rev_counts.push(
            sessions
                .remove("session_revocation_lag_ms_le_inf")
                .unwrap_or(0),
        );
        o.histogram(
            "shoal_session_revocation_lag_seconds",
            "time from a session change (revoke, revoke_user, rotate, update) entering \
             the revocation stream to its application here (Redis's clock against ours)",
            &lag_bounds,
            &rev_counts,
            rev_sum as f64 / 1000.0,
        )?;
        service_metrics(&mut o, SESSION_KEYS, sessions)?;
        let mut m = BTreeMap::new();
        ctx.ratelimits.stats_into(&mut m);
        // Decisions come per policy, each counted once (the stats op's
        // allowed/denied/fallback_* overlap: a fallback is also allowed or denied).
        for k in [
            "ratelimit_allowed",
            "ratelimit_denied",
            "ratelimit_fallback_open",
            "ratelimit_fallback_closed",
            "ratelimit_fallback_local",
        ] {
            m.remove(k);
        }
        {
            let mut fam = o.enc.encode_descriptor(
                "shoal_ratelimit_decisions",
                "rate-limit decisions, each counted once: by policy, outcome (allowed, \
                 denied) and fallback (none: Redis decided or the deny cache answered; \
                 open, closed, local: Redis could not, the policy's on_unavailable did)",
                None,
                MetricType::Counter,
            )?;
            for (policy, outcome, fallback, v) in ctx.ratelimits.decision_counts() {
                let labels = [
                    ("policy", policy.as_str()),
                    ("outcome", outcome),
                    ("fallback", fallback),
                ];
                ConstCounter::new(v).encode(fam.encode_family(&labels)?)?;
            }
        }
        service_metrics(&mut o, RATELIMIT_KEYS, m)?;
        Ok(())
    }
}

impl ShoalCollector {
    fn redis_health(&self, o: &mut Out<'_>) -> fmt::Result {
        let h = self.ctx.redis_health.snapshot();
        o.gauge(
            "shoal_redis_up",
            "1 when the last health poll (PING + INFO) got answers",
            i64::from(h.up),
        )?;
        o.counter("shoal_redis_health_polls", "health polls of Redis", h.polls)?;
        o.counter(
            "shoal_redis_health_poll_failures",
            "health polls Redis did not answer",
            h.poll_failures,
        )?;
        o.histogram(
            "shoal_redis_ping_seconds",
            "round trip of the health watch's PING on the command connection",
            &PING_BUCKETS_S,
            &h.ping_buckets,
            h.ping_sum_seconds,
        )?;
        o.gauge(
            "shoal_redis_used_memory_bytes",
            "Redis used_memory (INFO)",
            as_i64(h.used_memory_bytes),
        )?;
        o.gauge(
            "shoal_redis_maxmemory_bytes",
            "Redis maxmemory (INFO); 0 means no limit",
            as_i64(h.maxmemory_bytes),
        )?;
        o.counter(
            "shoal_redis_evicted_keys",
            "keys Redis evicted, as observed by this daemon's polls (sessions may be among them)",
            h.evicted_keys_observed,
        )?;
        o.gauge_f(
            "shoal_redis_evicted_keys_per_second",
            "Redis evictions per second over the last poll interval",
            h.evicted_per_sec,
        )?;
        // The policy is a string: exported the Prometheus way, as a label of a
        // constant 1, so alerts can match `policy=~"allkeys-.*"`.
        let policy = if h.maxmemory_policy.is_empty() {
            "unknown"
        } else {
            h.maxmemory_policy.as_str()
        };
        let mut m = o.enc.encode_descriptor(
            "shoal_redis_maxmemory_policy",
            "Redis maxmemory-policy (label); allkeys-* evicts sessions under memory pressure",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("policy", policy)];
        ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        Ok(())
    }
}

/// A labelled counter family that several keys of a service's map feed.
#[derive(Clone, Copy)]
struct Family {
    name: &'static str,
    help: &'static str,
    label: &'static str,
}

/// How a key of a service's `stats_into` map is exported.
#[derive(Clone, Copy)]
enum Export {
    /// A counter of its own (`_total` is appended): (name, help).
    Counter(&'static str, &'static str),
    /// One member of a family, with its label value.
    Member(Family, &'static str),
    /// (name, help).
    Gauge(&'static str, &'static str),
}

use Export::{Counter, Gauge, Member};

const VALIDATIONS: Family = Family {
    name: "shoal_session_validations",
    help: "session.get outcomes",
    label: "outcome",
};
const SESSION_OPS: Family = Family {
    name: "shoal_session_operations",
    help: "session changes, by operation",
    label: "op",
};
const SESSION_FLUSHES: Family = Family {
    name: "shoal_session_flushes",
    help: "local session cache flushes, by reason",
    label: "reason",
};
const RESERVATIONS: Family = Family {
    name: "shoal_ratelimit_reservations",
    help: "ratelimit.reserve outcomes",
    label: "outcome",
};
const CONCURRENCY: Family = Family {
    name: "shoal_ratelimit_concurrency",
    help: "concurrency lease outcomes",
    label: "outcome",
};

/// The session service's keys (daemon/src/session: `session_*`).
#[rustfmt::skip]
const SESSION_KEYS: &[(&str, Export)] = &[
    ("session_local_hits", Member(VALIDATIONS, "local_hit")),
    ("session_local_misses", Member(VALIDATIONS, "local_miss")),
    ("session_served_stale", Member(VALIDATIONS, "served_stale")),
    ("session_denied_unavailable", Member(VALIDATIONS, "denied_unavailable")),
    ("session_creates", Member(SESSION_OPS, "create")),
    ("session_updates", Member(SESSION_OPS, "update")),
    ("session_rotations", Member(SESSION_OPS, "rotate")),
    ("session_revocations", Member(SESSION_OPS, "revoke")),
    ("session_user_revocations", Member(SESSION_OPS, "revoke_user")),
    ("session_touches", Member(SESSION_OPS, "touch")),
    ("session_flushes_trimmed", Member(SESSION_FLUSHES, "log_trimmed")),
    ("session_flushes_redis_identity", Member(SESSION_FLUSHES, "redis_identity")),
    ("session_flushes_bad_entry", Member(SESSION_FLUSHES, "bad_entry")),
    ("session_flushes_hash_key", Member(SESSION_FLUSHES, "hash_key")),
    ("session_local_untrusted", Counter("shoal_session_local_untrusted", "session reads that skipped the local cache because it was not trusted (reader behind, or its last proof of delivery older than cache.max_staleness)")),
    ("session_user_lookups", Counter("shoal_session_user_lookups", "extra script calls of cold session reads that first learned the session's user")),
    ("session_proof_age_ms", Gauge("shoal_session_proof_age_ms", "age of the revocation reader's newest proof of delivery (the local cache answers only below cache.max_staleness)")),
    ("session_redis_reads", Counter("shoal_session_redis_reads", "session reads that went to Redis")),
    ("session_events_applied", Counter("shoal_session_events_applied", "revocations and updates applied from the stream")),
    ("session_evictions", Counter("shoal_session_local_evictions", "local session cache entries evicted by the fleet's changes")),
    ("session_fills_rejected", Counter("shoal_session_fills_rejected", "Redis reads not cached because a newer change was applied")),
    ("session_revocation_lag_count", Counter("shoal_session_revocation_lag_measurements", "revocations whose propagation lag was measured")),
    ("session_local_entries", Gauge("shoal_session_local_entries", "sessions in the local cache")),
    ("session_reader_ready", Gauge("shoal_session_reader_ready", "1 when the revocation reader is caught up")),
    ("session_cursor_ms", Gauge("shoal_session_cursor_position_ms", "millisecond part of the revocation stream position")),
    ("session_cursor_seq", Gauge("shoal_session_cursor_position_seq", "sequence part of the revocation stream position")),
];

/// The rate-limit service's keys (daemon/src/ratelimit: `ratelimit_*`).
#[rustfmt::skip]
const RATELIMIT_KEYS: &[(&str, Export)] = &[
    ("ratelimit_reservations_granted", Member(RESERVATIONS, "granted")),
    ("ratelimit_reservations_refused", Member(RESERVATIONS, "refused")),
    ("ratelimit_concurrent_acquired", Member(CONCURRENCY, "acquired")),
    ("ratelimit_concurrent_refused", Member(CONCURRENCY, "refused")),
    ("ratelimit_concurrent_released", Member(CONCURRENCY, "released")),
    ("ratelimit_denied_local", Counter("shoal_ratelimit_denied_from_cache", "denials answered by the local deny cache without Redis (part of shoal_ratelimit_decisions_total{outcome=\"denied\",fallback=\"none\"})")),
    ("ratelimit_checks", Counter("shoal_ratelimit_checks", "ratelimit.check requests")),
    ("ratelimit_redis_calls", Counter("shoal_ratelimit_redis_calls", "rate-limit scripts run in Redis")),
    ("ratelimit_resets", Counter("shoal_ratelimit_resets", "ratelimit.reset requests")),
    ("ratelimit_override_loads", Counter("shoal_ratelimit_override_loads", "loads of runtime overrides from Redis")),
    ("ratelimit_override_refresh_errors", Counter("shoal_ratelimit_override_refresh_errors", "failed refreshes of runtime overrides")),
    ("ratelimit_quota_scans", Counter("shoal_ratelimit_quota_scans", "quota.usage scans")),
    ("ratelimit_deny_cache_entries", Gauge("shoal_ratelimit_deny_cache_entries", "keys in the local deny cache")),
    ("ratelimit_runtime_overrides", Gauge("shoal_ratelimit_runtime_overrides", "runtime overrides in force")),
    ("ratelimit_local_entries", Gauge("shoal_ratelimit_local_entries", "keys counted locally (local fail mode)")),
    ("ratelimit_policies", Gauge("shoal_ratelimit_policies", "configured rate-limit policies")),
    ("ratelimit_ready", Gauge("shoal_ratelimit_ready", "1 when runtime overrides are loaded")),
];

/// Exports a service's `stats_into` map: the keys `table` knows with their
/// type and labels, grouped into families; any key it does not know (a
/// counter added later) still appears, as a gauge named `shoal_<key>` (a
/// truthful type for any value read at scrape time), so nothing is lost
/// silently. Keys handled elsewhere must be removed from `m` first.
fn service_metrics(
    o: &mut Out<'_>,
    table: &[(&str, Export)],
    mut m: BTreeMap<String, u64>,
) -> fmt::Result {
    // Families in table order, members in table order.
    let mut families: Vec<(Family, Vec<(&str, u64)>)> = Vec::new();
    for (key, export) in table {
        let Some(v) = m.remove(*key) else { continue };
        match *export {
            Counter(name, help) => o.counter(name, help, v)?,
            Gauge(name, help) => o.gauge(name, help, as_i64(v))?,
            Member(family, value) => match families.iter_mut().find(|f| f.0.name == family.name) {
                Some(f) => f.1.push((value, v)),
                None => families.push((family, vec![(value, v)])),
            },
        }
    }
    for (f, values) in &families {
        o.counters(f.name, f.help, f.label, values)?;
    }
    for (key, v) in m {
        let name = format!("shoal_{}", sanitize(&key));
        o.gauge(&name, &format!("`{key}` of the stats op"), as_i64(v))?;
    }
    Ok(())
}

/// A metric name component: `[a-zA-Z0-9_]`, anything else becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("local.hits-1"), "local_hits_1");
    }
}
