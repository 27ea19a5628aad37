//! Operations (issue 7), end to end against real redis-server processes: the
//! admin routes while Redis goes away and comes back, `/metrics` moving with
//! traffic and parsing as OpenMetrics text, the Redis health watch seeing
//! evictions, the quota page in a real headless Chromium (screenshot checked
//! pixel by pixel) and as JSON, `shoalctl` (doctor against a dangerously
//! configured Redis; sessions, quotas and overrides through a daemon), and
//! trace continuity from a client span to the daemon's span (in memory, and
//! over OTLP/HTTP from the real binary).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shoal_client::proto::{Op, QuotaUsageResult, RatelimitDecision, SessionCreated};
use shoal_tests::{http_get, test_config, workspace_bin, Daemon, RedisServer};

/// A config for an in-process daemon with the admin server on a free port and
/// a fast Redis health watch.
fn ops_config(redis: &RedisServer, dir: &Path, node: &str) -> shoald::Config {
    let mut c = test_config(redis, dir, node);
    c.admin.listen = "127.0.0.1:0".into();
    c.redis.watch_interval = Duration::from_millis(100);
    // These tests assert on what Redis holds (quota rows, decisions): a slow
    // moment of a loaded CI machine must not turn into a fallback answer.
    c.redis.timeout = Duration::from_secs(2);
    c
}

/// Polls `GET path` until `pred` holds for the response.
async fn wait_http(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    pred: impl Fn(&shoal_tests::HttpResponse) -> bool,
) -> Result<shoal_tests::HttpResponse> {
    let deadline = Instant::now() + within;
    loop {
        let r = http_get(addr, path, &[]).await?;
        if pred(&r) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!(
                "GET {path}: still {} {:?} after {within:?}",
                r.status,
                r.text().unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readiness_follows_redis_and_liveness_does_not() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(ops_config(&redis, dir.path(), "ops-ready")).await?;
    let addr = d.admin_addr(Duration::from_secs(5)).await?;

    let live = http_get(addr, "/healthz", &[]).await?;
    assert_eq!(live.status, 200);
    assert_eq!(live.json()?["status"], "ok");
    let ready = wait_http(addr, "/readyz", Duration::from_secs(5), |r| r.status == 200).await?;
    let body = ready.json()?;
    assert_eq!(body["ready"], true);
    assert_eq!(body["reasons"].as_array().map(Vec::len), Some(0));

    // Redis goes away: readiness fails with a reason, liveness does not.
    redis.stop();
    d.wait_unready(Duration::from_secs(10)).await?;
    let down = wait_http(addr, "/readyz", Duration::from_secs(5), |r| r.status == 503).await?;
    assert!(
        down.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        down.headers
    );
    let body = down.json()?;
    assert_eq!(body["ready"], false);
    let reasons = body["reasons"].as_array().context("reasons")?;
    assert!(!reasons.is_empty(), "{body}");
    assert!(
        reasons.iter().any(|r| r.as_str().is_some_and(
            |s| s.contains("invalidation subscriber") || s.contains("redis unreachable")
        )),
        "{body}"
    );
    assert_eq!(body["checks"]["invalidations"], false, "{body}");
    // The health watch sees it too.
    let m = wait_metrics(addr, |m| m.get("shoal_redis_up") == 0.0).await?;
    assert_eq!(m.get("shoal_redis_up"), 0.0);
    assert!(m.get("shoal_redis_health_poll_failures_total") >= 1.0);
    assert_eq!(m.get("shoal_ready"), 0.0);
    let live = http_get(addr, "/healthz", &[]).await?;
    assert_eq!(live.status, 200, "liveness must not depend on Redis");

    // Redis comes back (empty): readiness recovers on its own.
    redis.restart().await?;
    d.wait_ready(Duration::from_secs(10)).await?;
    let back = wait_http(addr, "/readyz", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .await?;
    assert_eq!(back.json()?["ready"], true);
    // The outage left its marks in /metrics.
    let m = wait_metrics(addr, |m| m.get("shoal_redis_up") == 1.0).await?;
    assert!(m.get(r#"shoal_redis_reconnects_total{connection="subscriber"}"#) >= 1.0);
    assert_eq!(m.get("shoal_redis_up"), 1.0);

    // Unknown routes are 404, not a page.
    assert_eq!(http_get(addr, "/nope", &[]).await?.status, 404);
    d.stop().await
}

#[tokio::test]
async fn readiness_fails_while_draining() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(ops_config(&redis, dir.path(), "ops-drain")).await?;
    let addr = d.admin_addr(Duration::from_secs(5)).await?;
    wait_http(addr, "/readyz", Duration::from_secs(5), |r| r.status == 200).await?;
    // What /readyz answers once SIGTERM started the drain (the server itself
    // stops only after it): not ready, and why.
    let r = shoald::ops::admin::readiness(&d.ctx, true);
    assert!(!r.ready);
    assert!(r.checks.draining);
    assert!(r.reasons.iter().any(|s| s.contains("draining")), "{r:?}");
    assert!(shoald::ops::admin::readiness(&d.ctx, false).ready);
    d.stop().await?;
    // Stopped means stopped: the admin port is closed with the daemon.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test]
async fn a_taken_admin_port_stops_the_daemon() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut config = ops_config(&redis, dir.path(), "ops-taken");
    config.admin.listen = taken.local_addr()?.to_string();
    let d = Daemon::start(config).await?;
    let err = d
        .stop()
        .await
        .expect_err("the daemon must refuse to run without its admin port");
    assert!(err.to_string().contains("admin.listen"), "{err:#}");
    Ok(())
}

// ---------------------------------------------------------------- /metrics

/// One parsed exposition: samples by `name{labels}` and each family's type.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(f64::NAN)
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict OpenMetrics text parser: every line is a HELP/TYPE/UNIT comment
/// or a sample of the family declared last, names and labels are well formed,
/// values are numbers, counters end `_total`, histogram buckets are
/// cumulative and end with `+Inf` equal to `_count`, and the text ends with
/// `# EOF`. Anything else is an error naming the line.
fn parse_openmetrics(text: &str) -> Result<Exposition> {
    let mut exp = Exposition::default();
    let mut family: Option<(String, String)> = None;
    // (le, cumulative count) of the bucket before, within one histogram.
    let mut last_bucket: Option<(f64, f64)> = None;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.last() == Some(&"# EOF"),
        "exposition must end with # EOF"
    );
    for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts.next().with_context(at)?;
            ensure!(valid_name(name), "bad metric name, {}", at());
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().with_context(at)?;
                    ensure!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "unknown",
                            "stateset",
                            "summary",
                            "gaugehistogram"
                        ]
                        .contains(&t),
                        "bad type, {}",
                        at()
                    );
                    ensure!(
                        !exp.types.contains_key(name),
                        "family declared twice, {}",
                        at()
                    );
                    exp.types.insert(name.to_string(), t.to_string());
                    family = Some((name.to_string(), t.to_string()));
                    last_bucket = None;
                }
                _ => bail!("unknown comment, {}", at()),
            }
            continue;
        }
        ensure!(!line.is_empty(), "empty line, {}", at());
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').with_context(at)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().with_context(at)?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').with_context(at)?)),
            None => (series, None),
        };
        ensure!(valid_name(name), "bad sample name, {}", at());
        let mut le = None;
        if let Some(l) = labels {
            for pair in l.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').with_context(at)?;
                ensure!(valid_name(k), "bad label name, {}", at());
                ensure!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "unquoted label, {}",
                    at()
                );
                if k == "le" {
                    let v = &v[1..v.len() - 1];
                    le = Some(if v == "+Inf" {
                        f64::INFINITY
                    } else {
                        v.parse().with_context(at)?
                    });
                }
            }
        }
        let (fam, t) = family
            .as_ref()
            .with_context(|| format!("sample before TYPE, {}", at()))?;
        let suffix = name
            .strip_prefix(fam.as_str())
            .with_context(|| format!("sample outside its family {fam}, {}", at()))?;
        let allowed: &[&str] = match t.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        ensure!(
            allowed.contains(&suffix),
            "suffix {suffix:?} not allowed for a {t}, {}",
            at()
        );
        if suffix == "_bucket" {
            let le = le.with_context(|| format!("bucket without le, {}", at()))?;
            if let Some((prev_le, prev)) = last_bucket {
                ensure!(le > prev_le, "bucket bounds not increasing, {}", at());
                ensure!(value >= prev, "histogram buckets not cumulative, {}", at());
            }
            last_bucket = Some((le, value));
        }
        ensure!(
            exp.samples.insert(series.to_string(), value).is_none(),
            "duplicate series, {}",
            at()
        );
    }
    // Every (unlabelled) histogram ends with +Inf, which counts everything.
    for (name, t) in &exp.types {
        if t == "histogram" {
            let inf = exp.samples.get(&format!("{name}_bucket{{le=\"+Inf\"}}"));
            let count = exp.samples.get(&format!("{name}_count"));
            ensure!(
                inf.is_some() && inf == count,
                "{name}: +Inf bucket {inf:?} differs from _count {count:?}"
            );
        }
    }
    Ok(exp)
}

async fn scrape(addr: SocketAddr) -> Result<Exposition> {
    let r = http_get(addr, "/metrics", &[]).await?;
    ensure!(r.status == 200, "GET /metrics: {}", r.status);
    let ct = r.header("content-type").unwrap_or("");
    ensure!(
        ct.starts_with("application/openmetrics-text"),
        "content-type {ct}"
    );
    parse_openmetrics(r.text()?)
}

#[tokio::test]
async fn metrics_move_with_traffic_and_parse() -> Result<()> {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]).await?;
    let dir = tempfile::tempdir()?;
    let mut c1config = ops_config(&redis, dir.path(), "ops-m1");
    c1config.ratelimit.policies.insert(
        "login".into(),
        policy(serde_json::json!({"algorithm": "fixed_window", "limit": 2, "window": "1m"})),
    );
    let d1 = Daemon::start_ready(c1config).await?;
    let d2 = Daemon::start_ready(ops_config(&redis, dir.path(), "ops-m2")).await?;
    let a1 = d1.admin_addr(Duration::from_secs(5)).await?;
    let a2 = d2.admin_addr(Duration::from_secs(5)).await?;
    let before = scrape(a1).await?;
    for name in before.types.keys() {
        assert!(
            name.starts_with("shoal_"),
            "metric {name} is not named shoal_*"
        );
    }
    assert_eq!(
        before
            .types
            .get("shoal_propagation_lag_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        before.types.get("shoal_l1_hits").map(String::as_str),
        Some("counter")
    );

    let c1 = d1.client().await?;
    let c2 = d2.client().await?;
    c1.set("m:k", &1u32, Some(Duration::from_secs(60))).await?;
    assert_eq!(c1.get::<u32>("m:k").await?, Some(1)); // L1 hit on d1 (its own set)
    assert_eq!(c1.get::<u32>("m:missing").await?, None); // L2 miss
    assert_eq!(c2.get::<u32>("m:k").await?, Some(1)); // L2 hit, fills d2's L1
    let seq = c1.invalidate(["m:k"]).await?;
    d2.wait_applied(&seq, Duration::from_secs(5)).await?;
    // Rate-limit decisions: two allowed, then denied.
    for _ in 0..3 {
        let _: serde::de::IgnoredAny = c1
            .call(Op::RatelimitCheck {
                policy: "login".into(),
                key: "ip:10.0.0.1".into(),
                cost: 1,
            })
            .await?;
    }
    // Sessions: a create, then validations.
    let created: SessionCreated = c1
        .call(Op::SessionCreate {
            user: "alice".into(),
            data: bytes::Bytes::from_static(b"{}"),
            idle_ttl_ms: None,
            absolute_ttl_ms: None,
        })
        .await?;
    for _ in 0..2 {
        let _: serde::de::IgnoredAny = c1
            .call(Op::SessionGet {
                token: created.token.clone(),
                touch: false,
            })
            .await?;
    }

    let after = wait_metrics(a1, |m| m.get("shoal_redis_up") == 1.0).await?;
    let grew = |name: &str| after.get(name) > before.get(name);
    for counter in [
        "shoal_requests_total",
        "shoal_l1_hits_total",
        "shoal_l2_misses_total",
        "shoal_cache_sets_total",
        "shoal_invalidations_sent_total",
        "shoal_connections_accepted_total",
    ] {
        assert!(
            grew(counter),
            "{counter}: {} -> {}",
            before.get(counter),
            after.get(counter)
        );
    }
    // Each decision once, by policy, outcome and fallback.
    let decisions = |outcome: &str| -> f64 {
        let want = format!(r#"outcome="{outcome}""#);
        after
            .samples
            .iter()
            .filter(|(k, _)| k.starts_with("shoal_ratelimit_decisions_total{") && k.contains(&want))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(decisions("allowed"), 2.0);
    assert_eq!(decisions("denied"), 1.0);
    assert_eq!(
        after.get(r#"shoal_session_operations_total{op="create"}"#),
        1.0
    );
    let validations: f64 = after
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("shoal_session_validations_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(validations, 2.0, "two session.get, each an outcome");
    assert!(after.get("shoal_connections") >= 1.0);
    assert_eq!(after.get("shoal_ready"), 1.0);
    assert!(after.get("shoal_redis_health_polls_total") >= 1.0);
    assert_eq!(
        after.get(r#"shoal_redis_maxmemory_policy{policy="noeviction"}"#),
        1.0
    );
    assert!(after.get("shoal_redis_used_memory_bytes") > 0.0);
    assert!(after.get("shoal_redis_ping_seconds_count") >= 1.0);

    // The daemon that applied the fleet's change measured its propagation lag.
    let m2 = scrape(a2).await?;
    assert!(m2.get("shoal_invalidations_applied_total") >= 1.0);
    assert!(
        m2.get("shoal_propagation_lag_seconds_count") >= 1.0,
        "{:?}",
        m2.samples.get("shoal_propagation_lag_seconds_count")
    );
    assert!(m2.get("shoal_l2_hits_total") >= 1.0);
    d1.stop().await?;
    d2.stop().await
}

/// The `le` bounds of a histogram's buckets, in exposition order.
fn bucket_bounds(m: &Exposition, name: &str) -> Vec<String> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut les: Vec<(f64, String)> = m
        .samples
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix("\"}"))
        .map(|le| (le.parse().unwrap_or(f64::NAN), le.to_string()))
        .collect();
    les.sort_by(|a, b| a.0.total_cmp(&b.0));
    les.into_iter().map(|(_, le)| le).collect()
}

#[tokio::test]
async fn revocation_lag_is_a_histogram_with_the_invalidation_buckets() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d1 = Daemon::start_ready(ops_config(&redis, dir.path(), "ops-r1")).await?;
    let d2 = Daemon::start_ready(ops_config(&redis, dir.path(), "ops-r2")).await?;
    let a2 = d2.admin_addr(Duration::from_secs(5)).await?;
    let name = "shoal_session_revocation_lag_seconds";
    let count = format!("{name}_count");
    let before = scrape(a2).await?;
    assert_eq!(
        before.types.get(name).map(String::as_str),
        Some("histogram")
    );
    assert_eq!(before.get(&count), 0.0);
    // The same buckets as the invalidation lag, +Inf included.
    let bounds = bucket_bounds(&before, name);
    assert_eq!(
        bounds,
        bucket_bounds(&before, "shoal_propagation_lag_seconds")
    );
    assert_eq!(bounds.len(), 13, "{bounds:?}");

    // A revocation on d1; d2's revocation reader applies it.
    let c1 = d1.client().await?;
    let created: SessionCreated = c1
        .call(Op::SessionCreate {
            user: "rita".into(),
            data: bytes::Bytes::from_static(b"{}"),
            idle_ttl_ms: None,
            absolute_ttl_ms: None,
        })
        .await?;
    assert!(c1.session_revoke(&created.token).await?);
    let after = wait_metrics(a2, |m| m.get(&count) >= 1.0).await?;
    assert_eq!(after.get(&count), 1.0, "one revocation applied on d2");
    // Cumulative: the +Inf bucket holds it (the parser checked every bucket
    // is at least the one before and +Inf equals _count), and the first bucket
    // at or above the measured lag does too.
    let inf = after.get(&format!("{name}_bucket{{le=\"+Inf\"}}"));
    assert_eq!(inf, 1.0);
    let sum = after.get(&format!("{name}_sum"));
    assert!(sum >= 0.0, "{sum}");
    let holding: Vec<&String> = bounds
        .iter()
        .filter(|le| after.get(&format!("{name}_bucket{{le=\"{le}\"}}")) == 1.0)
        .collect();
    let first = bounds
        .iter()
        .position(|le| le.parse::<f64>().is_ok_and(|b| b >= sum))
        .unwrap_or(bounds.len() - 1);
    assert_eq!(
        holding,
        bounds[first..].iter().collect::<Vec<_>>(),
        "sum {sum}"
    );
    assert_eq!(
        after.get("shoal_session_revocation_lag_measurements_total"),
        1.0
    );
    d1.stop().await?;
    d2.stop().await
}

async fn wait_metrics(addr: SocketAddr, pred: impl Fn(&Exposition) -> bool) -> Result<Exposition> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(addr).await?;
        if pred(&m) || Instant::now() > deadline {
            return Ok(m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_metrics_checker_rejects_bad_text() {
    assert!(parse_openmetrics("# TYPE a counter\na_total 1\n# EOF").is_ok());
    assert!(
        parse_openmetrics("# TYPE a counter\na_total 1\n").is_err(),
        "no EOF"
    );
    assert!(
        parse_openmetrics("# TYPE a counter\na 1\n# EOF").is_err(),
        "counter without _total"
    );
    assert!(
        parse_openmetrics("a_total 1\n# EOF").is_err(),
        "sample before TYPE"
    );
    assert!(
        parse_openmetrics("# TYPE a gauge\na{x=1} 1\n# EOF").is_err(),
        "unquoted label"
    );
    assert!(
        parse_openmetrics("# TYPE a gauge\na one\n# EOF").is_err(),
        "not a number"
    );
    assert!(parse_openmetrics(
        "# TYPE h histogram\nh_sum 1\nh_count 3\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n# EOF"
    )
    .is_err(), "buckets must be cumulative");
    assert!(
        parse_openmetrics("# TYPE h histogram\nh_sum 1\nh_count 3\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF")
            .is_err(),
        "+Inf must equal _count"
    );
}

/// A `tracing` writer into a shared buffer, to read the daemon's log lines.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

// current_thread: the daemon's tasks log through this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn the_redis_watch_reports_evictions() -> Result<()> {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    // A small Redis that evicts anything: what doctor warns about.
    let redis =
        RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"])
            .await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(ops_config(&redis, dir.path(), "ops-evict")).await?;
    let addr = d.admin_addr(Duration::from_secs(5)).await?;
    let before = wait_metrics(addr, |m| m.get("shoal_redis_health_polls_total") >= 1.0).await?;
    assert_eq!(before.get("shoal_redis_evicted_keys_total"), 0.0);
    assert_eq!(
        before.get(r#"shoal_redis_maxmemory_policy{policy="allkeys-lru"}"#),
        1.0
    );
    assert_eq!(
        before.get("shoal_redis_maxmemory_bytes"),
        4.0 * 1024.0 * 1024.0
    );

    // Write well past maxmemory, straight to Redis (as other users of a shared
    // Redis would): Redis evicts to make room.
    let mut conn = redis.conn().await?;
    let value = vec![b'x'; 16 * 1024];
    for i in 0..1000 {
        let _: () = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&value)
            .query_async(&mut conn)
            .await?;
    }
    let after = wait_metrics(addr, |m| m.get("shoal_redis_evicted_keys_total") > 0.0).await?;
    assert!(
        after.get("shoal_redis_evicted_keys_total") > 0.0,
        "evictions not seen"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !logs.text().contains("redis is evicting keys") {
        ensure!(
            Instant::now() < deadline,
            "no eviction warning; log:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        logs.text().contains("maxmemory_policy=allkeys-lru"),
        "{}",
        logs.text()
    );
    d.stop().await
}

// ---------------------------------------------------------------- /quotas

/// Where Debian's chromium is, or why not.
fn chromium() -> Result<PathBuf> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("chromium is not installed (apt-get install chromium; scripts/test installs it)")
}

/// Renders `url` in headless Chromium and returns the screenshot's RGB pixels.
async fn screenshot(url: &str, dir: &Path) -> Result<(u32, u32, Vec<[u8; 3]>)> {
    let png_path = dir.join("quotas.png");
    let profile = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(chromium()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting chromium")?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("chromium did not finish within 60 s")??;
    ensure!(status.success(), "chromium failed: {status}");
    ensure!(png_path.exists(), "chromium wrote no screenshot");
    // To look at it: SHOAL_TEST_SCREENSHOTS=/some/dir cargo test --test ops quota
    if let Some(keep) = std::env::var_os("SHOAL_TEST_SCREENSHOTS") {
        std::fs::copy(&png_path, Path::new(&keep).join("quotas.png"))?;
    }
    decode_png(&png_path)
}

fn decode_png(path: &Path) -> Result<(u32, u32, Vec<[u8; 3]>)> {
    let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("image too large")?];
    let info = reader.next_frame(&mut buf)?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => bail!("unexpected PNG colour type {other:?}"),
    };
    let px = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    Ok((info.width, info.height, px))
}

/// Horizontal bands (runs of pixel rows) that contain at least `min_px`
/// pixels of `colour` (±3 per channel): one band per drawn bar.
fn colour_bands(width: u32, px: &[[u8; 3]], colour: (u8, u8, u8), min_px: usize) -> usize {
    let near = |p: &[u8; 3]| {
        p[0].abs_diff(colour.0) <= 3 && p[1].abs_diff(colour.1) <= 3 && p[2].abs_diff(colour.2) <= 3
    };
    let mut bands = 0;
    let mut inside = false;
    for row in px.chunks_exact(width as usize) {
        let hit = row.iter().filter(|p| near(p)).count() >= min_px;
        if hit && !inside {
            bands += 1;
        }
        inside = hit;
    }
    bands
}

fn policy(json: serde_json::Value) -> shoald::config::PolicyConfig {
    serde_json::from_value(json).unwrap()
}

#[tokio::test]
async fn quota_page_in_chromium_and_as_json() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = ops_config(&redis, dir.path(), "ops-quotas");
    config.ratelimit.policies.insert(
        "api".into(),
        policy(serde_json::json!({"algorithm": "fixed_window", "limit": 10, "window": "10m"})),
    );
    let d = Daemon::start_ready(config).await?;
    let addr = d.admin_addr(Duration::from_secs(5)).await?;
    let c = d.client().await?;
    // Usage 10 %, 20 % (green), 80 % (amber), 100 % (red).
    for (tenant, cost) in [
        ("tenant-a", 1),
        ("tenant-d", 2),
        ("tenant-b", 8),
        ("tenant-c", 10),
    ] {
        let _: serde::de::IgnoredAny = c
            .call(Op::RatelimitCheck {
                policy: "api".into(),
                key: tenant.into(),
                cost,
            })
            .await?;
    }

    // JSON, by query and by Accept.
    let by_query = http_get(addr, "/quotas?format=json", &[]).await?;
    assert_eq!(by_query.status, 200);
    let by_accept = http_get(addr, "/quotas", &[("Accept", "application/json")]).await?;
    assert!(by_accept
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    for r in [&by_query, &by_accept] {
        let report: shoald::ops::admin::QuotaReport = serde_json::from_slice(&r.body)?;
        assert_eq!(report.node, "ops-quotas");
        let api = &report.policies[0];
        assert_eq!(api.policy, "api");
        assert_eq!(api.error, None, "{api:?}");
        assert_eq!(api.limit, 10);
        let used: BTreeMap<&str, u64> = api.keys.iter().map(|k| (k.key.as_str(), k.used)).collect();
        assert_eq!(
            used,
            BTreeMap::from([
                ("tenant-a", 1),
                ("tenant-b", 8),
                ("tenant-c", 10),
                ("tenant-d", 2)
            ]),
            "{api:?}"
        );
    }
    // The same numbers the quota.usage op gives a client.
    let u: QuotaUsageResult = c
        .call(Op::QuotaUsage {
            policy: "api".into(),
            prefix: None,
            max_keys: None,
        })
        .await?;
    assert_eq!(u.keys.len(), 4);

    // HTML for people: a browser's Accept gets the page.
    let html = http_get(
        addr,
        "/quotas",
        &[(
            "Accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )],
    )
    .await?;
    assert!(html
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    let page = html.text()?;
    assert!(page.contains("http-equiv=refresh"), "auto-refresh");
    for t in ["tenant-a", "tenant-b", "tenant-c", "tenant-d"] {
        assert!(page.contains(t), "{t} missing from the page");
    }

    // Rendered by a real browser: one bar per tenant, in its level's colour.
    let (w, h, px) = screenshot(&format!("http://{addr}/quotas"), dir.path()).await?;
    assert!(w >= 1000 && h >= 600, "{w}x{h}");
    use shoald::ops::admin::Level;
    let bands = [
        colour_bands(w, &px, Level::Full.colour(), 20),
        colour_bands(w, &px, Level::Warn.colour(), 20),
        colour_bands(w, &px, Level::Ok.colour(), 5),
    ];
    if bands != [1, 1, 2] {
        // Say what the browser was shown, not just that the pixels differ.
        let page = http_get(addr, "/quotas?format=html", &[]).await?;
        bail!(
            "expected one red, one amber and two green bars, found {bands:?}; the page:\n{}",
            page.text().unwrap_or("")
        );
    }
    d.stop().await
}

// ---------------------------------------------------------------- doctor

/// The workspace binaries, built fresh once per test process: a stale
/// `shoalctl` from an older build would test old code.
fn fresh_bin(name: &str) -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cmd = Command::new(env!("CARGO"));
            // The same command scripts/test runs first, so in CI this is a no-op.
            cmd.args(["build", "--workspace", "--bins", "--quiet"]);
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            match cmd.status() {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("cargo build failed: {s}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    workspace_bin(name)
}

fn write_config(dir: &Path, name: &str, redis: &RedisServer) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"{}\"\n[socket]\npath = \"{}\"\n",
            redis.url(),
            dir.join("none.sock").display()
        ),
    )?;
    Ok(path)
}

fn shoalctl(config: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(fresh_bin("shoalctl")?)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[tokio::test]
async fn doctor_reports_an_evicting_redis() -> Result<()> {
    let redis = RedisServer::start_with(&[
        "--maxmemory-policy",
        "allkeys-lru",
        "--client-output-buffer-limit",
        "pubsub 64kb 16kb 10",
    ])
    .await?;
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), "bad.toml", &redis)?;

    let (code, out, err) = shoalctl(&cfg, &["doctor"])?;
    assert_eq!(code, 1, "doctor must fail on problems\n{out}\n{err}");
    assert!(out.contains("PROBLEM"), "{out}");
    assert!(out.contains("allkeys-lru"), "{out}");
    assert!(out.contains("sessions"), "says why it matters: {out}");
    assert!(out.contains("NOT safe"), "{out}");

    let (code, out, _) = shoalctl(&cfg, &["doctor", "--json"])?;
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["ok"], false);
    let severity = |check: &str| {
        report["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["check"] == check)
            .map(|f| f["severity"].as_str().unwrap_or("").to_string())
            .max()
    };
    assert_eq!(
        severity("eviction_policy").as_deref(),
        Some("problem"),
        "{report:#}"
    );
    assert_eq!(
        severity("pubsub_buffer").as_deref(),
        Some("problem"),
        "{report:#}"
    );
    // The harness runs Redis without persistence and with no sessions yet.
    assert_eq!(
        severity("persistence").as_deref(),
        Some("warning"),
        "{report:#}"
    );
    assert_eq!(report["facts"]["maxmemory_policy"], "allkeys-lru");
    Ok(())
}

#[tokio::test]
async fn doctor_passes_a_safe_redis_and_fails_an_unreachable_one() -> Result<()> {
    let mut redis = RedisServer::start_with(&[
        "--maxmemory-policy",
        "noeviction",
        "--maxmemory",
        "256mb",
        "--appendonly",
        "yes",
    ])
    .await?;
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), "good.toml", &redis)?;
    let (code, out, err) = shoalctl(&cfg, &["doctor"])?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 problem(s)"), "{out}");

    let (code, out, _) = shoalctl(&cfg, &["doctor", "--json"])?;
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["ok"], true, "{report:#}");

    redis.stop();
    let (code, out, _) = shoalctl(&cfg, &["doctor"])?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot connect"), "{out}");
    Ok(())
}

fn shoalctl_stdin(config: &Path, args: &[&str], stdin: &str) -> Result<(i32, String, String)> {
    use std::io::Write as _;
    let mut child = Command::new(fresh_bin("shoalctl")?)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// `shoalctl` commands that talk to the daemon over its socket.
// Multi-threaded: shoalctl blocks this test while the in-process daemon answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoalctl_sessions_quotas_and_overrides() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = ops_config(&redis, dir.path(), "ops-ctl");
    config.ratelimit.policies.insert(
        "api".into(),
        policy(serde_json::json!({"algorithm": "fixed_window", "limit": 5, "window": "1m"})),
    );
    let d = Daemon::start_ready(config).await?;
    let c = d.client().await?;
    let cfg = dir.path().join("ctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "[redis]\nurl = \"{}\"\n[socket]\npath = \"{}\"\n\
             [ratelimit.policies.api]\nalgorithm = \"fixed_window\"\nlimit = 5\nwindow = \"1m\"\n",
            redis.url(),
            d.socket.display()
        ),
    )?;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let s: SessionCreated = c
            .call(Op::SessionCreate {
                user: "bob".into(),
                data: bytes::Bytes::new(),
                idle_ttl_ms: None,
                absolute_ttl_ms: None,
            })
            .await?;
        tokens.push(s.token);
    }
    let ctl = |args: &[&str]| shoalctl(&cfg, args);

    // sessions list: ids, never tokens.
    let (code, out, err) = ctl(&["sessions", "list", "bob"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 session(s)"), "{out}");
    for t in &tokens {
        assert!(!out.contains(t.as_str()), "a token was printed");
    }
    let (_, out, _) = ctl(&["--json", "sessions", "list", "bob"])?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    assert_eq!(list.len(), 3);

    // revoke by token on stdin, then by id one the list still shows (sessions
    // created in the same millisecond list in any order, so an id taken before
    // could be the token's), then the rest of the user.
    let (code, out, err) = shoalctl_stdin(
        &cfg,
        &["--json", "sessions", "revoke", "--token"],
        &tokens[1],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)?["revoked"],
        true
    );
    let (_, out, _) = ctl(&["--json", "sessions", "list", "bob"])?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    assert_eq!(list.len(), 2, "{out}");
    let id = list[0]["session_id"]
        .as_str()
        .context("session_id")?
        .to_string();
    // Ids are base64url: one starting with `-` is an id, not a flag.
    let dashed = format!("-{}", "A".repeat(42));
    let (code, out, err) = ctl(&["sessions", "revoke", &dashed])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no such session"), "{out}");
    let (code, out, err) = ctl(&["sessions", "revoke", &id])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("revoked"), "{out}");
    let (code, out, _) = ctl(&["--json", "sessions", "revoke", &id])?;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)?["revoked"],
        false
    );
    let (code, out, _) = ctl(&["sessions", "revoke-user", "bob"])?;
    assert_eq!(code, 0);
    assert!(out.contains("revoked 1 session(s) of bob"), "{out}");
    let get = c
        .call::<serde::de::IgnoredAny>(Op::SessionGet {
            token: tokens[2].clone(),
            touch: false,
        })
        .await;
    assert!(get.is_err(), "the session must be gone");

    // override: the key's limit changes at once on this daemon.
    let (code, out, err) = ctl(&["override", "api", "tenant-x", "--limit", "50"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("limit 50"), "{out}");
    let d1: RatelimitDecision = c
        .call(Op::RatelimitCheck {
            policy: "api".into(),
            key: "tenant-x".into(),
            cost: 3,
        })
        .await?;
    assert_eq!(d1.limit, 50);

    // quotas: the tenant and its usage, for people and for scripts.
    let (code, out, err) = ctl(&["quotas"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("api") && out.contains("tenant-x") && out.contains("3/50"),
        "{out}"
    );
    let (_, out, _) = ctl(&["--json", "quotas", "api"])?;
    let q: Vec<QuotaUsageResult> = serde_json::from_str(&out)?;
    assert_eq!(q[0].keys[0].key, "tenant-x");
    assert_eq!(q[0].keys[0].used, 3);

    let (code, out, _) = ctl(&["override", "api", "tenant-x", "--clear"])?;
    assert_eq!(code, 0);
    assert!(out.contains("override cleared"), "{out}");
    let d2: RatelimitDecision = c
        .call(Op::RatelimitPeek {
            policy: "api".into(),
            key: "tenant-x".into(),
        })
        .await?;
    assert_eq!(d2.limit, 5);

    // Errors say what went wrong and exit non-zero.
    let (code, _, err) = ctl(&["override", "nope", "k", "--limit", "1"])?;
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
    d.stop().await
}

// ---------------------------------------------------------------- traces

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// A subscriber that records every span in memory, installed for this thread.
fn in_memory_tracing() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("ops-test")));
    let guard = tracing::subscriber::set_default(subscriber);
    (exporter, provider, guard)
}

fn attr(s: &SpanData, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

// current_thread: the daemon's tasks run on this thread, under this thread's
// subscriber, so client and daemon spans land in the same exporter.
#[tokio::test(flavor = "current_thread")]
async fn daemon_span_continues_the_client_trace() -> Result<()> {
    let (exporter, provider, _guard) = in_memory_tracing();
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "ops-trace")).await?;
    let client = d.client().await?;

    let app = tracing::info_span!("app.checkout");
    async {
        client.set("t:k", &7u32, None).await?;
        client.get::<u32>("t:k").await
    }
    .instrument(app.clone())
    .await?;
    let app_cx = app.context().span().span_context().clone();
    drop(app);
    // A call outside any span sends no trace context: the daemon's span is
    // then a root of its own.
    let _ = client.get::<u32>("t:other").await?;
    d.stop().await?;
    provider.force_flush()?;

    let spans = exporter.get_finished_spans()?;
    let app = spans
        .iter()
        .find(|s| s.name == "app.checkout")
        .context("the client span was not exported")?;
    assert_eq!(app.span_context.trace_id(), app_cx.trace_id());
    let requests: Vec<&SpanData> = spans.iter().filter(|s| s.name == "request").collect();
    let in_trace: Vec<&&SpanData> = requests
        .iter()
        .filter(|s| s.span_context.trace_id() == app_cx.trace_id())
        .collect();
    let ops: Vec<String> = in_trace.iter().filter_map(|s| attr(s, "op")).collect();
    assert_eq!(
        ops,
        ["cache.set", "cache.get"],
        "daemon spans in the client's trace: {requests:#?}"
    );
    for s in &in_trace {
        assert_eq!(
            s.parent_span_id,
            app_cx.span_id(),
            "the client span is the parent"
        );
        assert!(s.parent_span_is_remote, "the parent came over the socket");
    }
    let other = requests
        .iter()
        .find(|s| {
            attr(s, "op").as_deref() == Some("cache.get")
                && s.span_context.trace_id() != app_cx.trace_id()
        })
        .context("the untraced get has its own span")?;
    assert_eq!(other.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    Ok(())
}

/// Accepts OTLP/HTTP exports: records each POST and answers 200 (an empty
/// protobuf `ExportTraceServiceResponse`).
async fn otlp_receiver() -> Result<(
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let _ = tx.send((path, body));
                    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, rx))
}

#[tokio::test(flavor = "current_thread")]
async fn shoald_exports_the_continued_trace_over_otlp() -> Result<()> {
    let (_exporter, _provider, _guard) = in_memory_tracing();
    let (otlp, mut exports) = otlp_receiver().await?;
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let toml = shoal_tests::DaemonProcess::config_toml(&redis, dir.path(), "ops-otlp")
        + &format!("[telemetry]\notlp_endpoint = \"http://{otlp}\"\n");
    std::fs::write(dir.path().join("ops-otlp.toml"), toml)?;
    let child = Command::new(fresh_bin("shoald")?)
        .arg("--config")
        .arg(dir.path().join("ops-otlp.toml"))
        .env("SHOAL_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SDK_DISABLED")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut daemon = shoal_tests::DaemonProcess {
        child,
        socket: dir.path().join("ops-otlp.sock"),
    };
    let client = daemon.wait_ready(Duration::from_secs(20)).await?;
    let app = tracing::info_span!("app.request");
    client
        .set("o:k", &1u32, None)
        .instrument(app.clone())
        .await?;
    let trace_id = app.context().span().span_context().trace_id();
    drop(app);
    drop(client);
    // SIGTERM: shoald drains and flushes its buffered spans before exiting.
    daemon.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = daemon.wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "{status}");

    let needle = trace_id.to_bytes();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, exports.recv()).await {
            Ok(Some((path, body))) => {
                assert_eq!(path, "/v1/traces");
                // Protobuf carries ids as raw bytes and names as plain UTF-8.
                if body.windows(16).any(|w| w == needle) {
                    assert!(body.windows(7).any(|w| w == b"request"), "the request span");
                    assert!(body.windows(6).any(|w| w == b"shoald"), "service.name");
                    return Ok(());
                }
                seen.push(body.len());
            }
            _ => bail!("no OTLP export carried trace {trace_id} (exports seen: {seen:?})"),
        }
    }
}
