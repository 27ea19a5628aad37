//! `shoalctl doctor`: inspects the Redis a configuration points at and says
//! plainly what is unsafe for shoal, before users find out the hard way.
//!
//! Most ways Redis hurts shoal are silent: an `allkeys-*` (or `volatile-*`)
//! eviction policy drops session keys under memory pressure, a Redis without
//! persistence forgets every session on restart, a small Pub/Sub output buffer
//! limit disconnects the invalidation subscriber during bursts (every daemon
//! then replays the log or flushes L1), an old version lacks a command the
//! scripts call and fails only when that script first runs. Each check here
//! reads what Redis itself reports (`INFO`, `CONFIG GET`, `COMMAND INFO`,
//! timed `PING`s) and turns it into a finding with a fix.
//!
//! A check that cannot run (a managed Redis that denies `CONFIG`) is a
//! warning, never a silent pass.

mod checks;
mod topology;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

pub use checks::run;

/// Oldest Redis with every command shoal's scripts call (`PEXPIRETIME` is 7.0).
pub const MIN_VERSION: (u64, u64, u64) = (7, 0, 0);

/// Commands shoal sends, or calls from its scripts (a unit test below keeps
/// this in step with `lua/`).
#[rustfmt::skip]
pub const NEEDED_COMMANDS: &[&str] = &[
    // The daemon itself.
    "EVAL", "EVALSHA", "SCRIPT", "SUBSCRIBE", "PUBLISH", "XRANGE", "XREVRANGE", "XREAD",
    "SCAN", "INFO", "PING", "CLIENT", "DEL", "HGET", "HGETALL", "SUNION", "ZRANGE", "ZREM",
    // Its scripts.
    "EXISTS", "GET", "SET", "HDEL", "HEXISTS", "HINCRBY", "HMGET", "HSET", "INCR", "PEXPIRE",
    "PEXPIREAT", "PEXPIRETIME", "PTTL", "SADD", "TIME", "XADD", "ZADD", "ZCARD", "ZCOUNT",
    "ZRANGEBYSCORE", "ZREMRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZSCORE", "XINFO",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Problem,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Problem => "PROBLEM",
        }
    }
}

/// One verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier for scripts: `connect`, `version`, `commands`,
    /// `eviction_policy`, `maxmemory`, `evictions`, `persistence`,
    /// `pubsub_buffer`, `latency`, `cluster`, `role`, `sentinel`, `replicas`.
    pub check: &'static str,
    pub severity: Severity,
    pub message: String,
    /// What to do about it (absent when nothing needs doing).
    pub fix: Option<String>,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `redis.url` with any password replaced by `***`; under Sentinel, the
    /// primary the sentinels named (or `sentinel:NAME` when none was found).
    pub redis_url: String,
    /// `standalone`, `sentinel` or `cluster`.
    pub topology: &'static str,
    pub redis_version: Option<String>,
    pub ok: bool,
    pub problems: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
    /// Figures read from Redis, for scripts (`maxmemory_policy`, `used_memory`, ...).
    pub facts: BTreeMap<String, String>,
}

impl Report {
    /// Human output: one line per finding, fixes indented, a verdict last.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "shoal doctor: {}{}",
            self.redis_url,
            self.redis_version
                .as_deref()
                .map(|v| format!(" (Redis {v})"))
                .unwrap_or_default()
        );
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  {:8} {:16} {}",
                f.severity.label(),
                f.check,
                f.message
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "  {:8} {:16} fix: {fix}", "", "");
            }
        }
        let verdict = if self.problems > 0 {
            "shoal is NOT safe on this Redis"
        } else if self.warnings > 0 {
            "no problems; read the warnings"
        } else {
            "all good"
        };
        let _ = writeln!(
            out,
            "{} problem(s), {} warning(s): {verdict}",
            self.problems, self.warnings
        );
        out
    }
}

/// Collects findings in order.
#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, check: &'static str, severity: Severity, message: String, fix: Option<&str>) {
        self.0.push(Finding {
            check,
            severity,
            message,
            fix: fix.map(str::to_string),
        });
    }
}

pub use crate::config::redact_url;

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        it.next()??,
        it.next().flatten().unwrap_or(0),
        it.next().flatten().unwrap_or(0),
    ))
}

/// `client-output-buffer-limit` → (hard, soft, soft seconds) of the pubsub class.
pub fn pubsub_limits(value: &str) -> Option<(u64, u64, u64)> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("pubsub"))?;
    let n = |j: usize| words.get(i + j).and_then(|w| parse_size(w));
    Some((n(1)?, n(2)?, words.get(i + 3)?.parse().ok()?))
}

/// Redis sizes: bytes, or with k/kb/m/mb/g/gb (1000s for k/m/g, 1024s for kb/mb/gb).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// "512 B", "64.0 KiB", "32.0 MiB".
fn human_bytes(bytes: u64) -> String {
    if bytes < 1 << 10 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / f64::from(1u32 << 10))
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

/// A connection and a per-command deadline.
struct Conn {
    conn: redis::aio::MultiplexedConnection,
    timeout: Duration,
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut self.conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// `CONFIG GET name` as a string; `Err` when denied or absent.
    async fn config_get(&mut self, name: &str) -> Result<String, String> {
        let v: Vec<String> = self
            .query(redis::cmd("CONFIG").arg("GET").arg(name))
            .await?;
        v.get(1)
            .cloned()
            .ok_or_else(|| format!("CONFIG GET {name} returned nothing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command a script calls is one doctor checks for.
    #[test]
    fn needed_commands_cover_the_scripts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lua");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let calls = text.split("redis.call(").skip(1);
            for part in calls.chain(text.split("redis.pcall(").skip(1)) {
                let name: String = part
                    .trim_start_matches(['\'', '"'])
                    .chars()
                    .take_while(char::is_ascii_alphabetic)
                    .collect();
                if name.is_empty() {
                    continue; // a computed command name
                }
                let upper = name.to_ascii_uppercase();
                assert!(
                    NEEDED_COMMANDS.contains(&upper.as_str()),
                    "{} calls {upper}, which doctor does not check",
                    path.display()
                );
                checked += 1;
            }
        }
        assert!(checked > 10, "no scripts found in {dir:?}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn pubsub_limits_parse() {
        assert_eq!(
            pubsub_limits("normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"),
            Some((33_554_432, 8_388_608, 60))
        );
        assert_eq!(
            pubsub_limits("pubsub 64kb 16kb 10"),
            Some((65_536, 16_384, 10))
        );
        assert_eq!(pubsub_limits("normal 0 0 0"), None);
    }

    #[test]
    fn versions_compare() {
        assert!(parse_version("7.2.4") >= Some(MIN_VERSION));
        assert!(parse_version("6.2.14") < Some(MIN_VERSION));
        assert_eq!(parse_version("7"), Some((7, 0, 0)));
        assert_eq!(parse_version("x"), None);
    }
}
