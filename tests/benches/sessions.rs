//! Session figures, measured in one run so they compare (the machine is noisy):
//! `session.get` answered from the daemon's local cache (hot) and from Redis
//! (cold), and the propagation of a revocation to three daemons, beside two
//! baselines: `ping` through the daemon (the socket round trip) and a direct
//! redis-rs `GET` of a key in the same Redis (what a cold read cannot beat).
//!
//! Everything is real: a private redis-server and three `shoald` processes (the
//! release build), driven through the client crate.
//!
//! `cargo bench -p shoal-tests --bench sessions` (set `BENCH_N` to change the
//! sample count, default 2000). Prints a markdown table.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use shoal_client::session::SessionOptions;
use shoal_tests::{DaemonProcess, RedisServer};

fn main() -> Result<()> {
    // `cargo test --benches` would run this with `--test`/`--list`: not a test.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

fn samples() -> usize {
    std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

struct Row {
    name: &'static str,
    hist: Histogram<u64>,
}

impl Row {
    fn new(name: &'static str) -> Result<Row> {
        Ok(Row {
            name,
            hist: Histogram::new(3)?,
        })
    }
    fn record(&mut self, d: Duration) -> Result<()> {
        self.hist.record(d.as_nanos().max(1) as u64)?;
        Ok(())
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// The harness builds `shoald` only when it is missing; a bench must not
/// measure a stale binary, so build it (a no-op when up to date).
fn build_daemon() -> Result<()> {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "shoald", "--bin", "shoald"])
        .status()?;
    if !status.success() {
        bail!("cargo build of shoald failed");
    }
    Ok(())
}

async fn bench() -> Result<()> {
    let n = samples();
    build_daemon()?;
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut daemons = Vec::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let node = format!("bench{i}");
        let mut d = DaemonProcess::spawn(
            dir.path(),
            &node,
            &DaemonProcess::config_toml(&redis, dir.path(), &node),
        )?;
        clients.push(d.wait_ready(Duration::from_secs(20)).await?);
        daemons.push(d);
    }
    let (a, others) = clients.split_first().context("three clients")?;
    let opts = SessionOptions::default();
    let data = vec![7u8; 256];

    // Baselines.
    let mut ping = Row::new("baseline: `ping` through shoald")?;
    for i in 0..n + 200 {
        let t = Instant::now();
        a.ping().await?;
        if i >= 200 {
            ping.record(t.elapsed())?;
        }
    }
    let mut direct = Row::new("baseline: redis-rs `GET` (256 B), direct")?;
    let mut conn = redis.conn().await?;
    let _: () = redis::cmd("SET")
        .arg("bench:k")
        .arg(&data)
        .query_async(&mut conn)
        .await?;
    for i in 0..n + 200 {
        let t = Instant::now();
        let v: Vec<u8> = redis::cmd("GET")
            .arg("bench:k")
            .query_async(&mut conn)
            .await?;
        if i >= 200 {
            direct.record(t.elapsed())?;
        }
        if v.len() != data.len() {
            bail!("GET returned {} bytes", v.len());
        }
    }

    // Hot: one session, validated over and over on the daemon that cached it.
    let hot_token = a.session_create_raw("hot", data.clone(), opts).await?.token;
    let mut hot = Row::new("`session.get` hot (local cache)")?;
    for i in 0..n + 200 {
        let t = Instant::now();
        let s = a.session_get_raw(&hot_token, true).await?;
        if i >= 200 {
            hot.record(t.elapsed())?;
        }
        if s.is_none() {
            bail!("hot session lost");
        }
    }

    // Cold: sessions created on another daemon, each validated once here, so
    // every get is a miss that reads Redis: two script calls, since this daemon
    // does not know the session's user, whose revocation epoch must be named in
    // KEYS (a later miss of a session it held needs one).
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        tokens.push(
            others[0]
                .session_create_raw("cold", data.clone(), opts)
                .await?
                .token,
        );
    }
    let mut cold = Row::new("`session.get` cold (Redis)")?;
    for t in &tokens {
        let started = Instant::now();
        let s = a.session_get_raw(t, true).await?;
        cold.record(started.elapsed())?;
        if s.is_none() {
            bail!("cold session missing");
        }
    }

    // Revocation propagation: revoke on one daemon while every daemon holds the
    // session; time from sending the revoke until all three reject it.
    let rounds = (n / 10).clamp(50, 500);
    let mut prop = Row::new("revocation -> rejected on all 3 daemons")?;
    for round in 0..rounds {
        let origin = &clients[round % 3];
        let token = origin
            .session_create_raw("prop", Vec::new(), opts)
            .await?
            .token;
        for c in &clients {
            if c.session_get_raw(&token, false).await?.is_none() {
                bail!("fresh session invalid");
            }
        }
        let started = Instant::now();
        if !origin.session_revoke(&token).await? {
            bail!("revoke found nothing");
        }
        let mut waits = Vec::new();
        for c in &clients {
            let (c, token) = (c.clone(), token.clone());
            waits.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while c.session_get_raw(&token, false).await?.is_some() {
                    if Instant::now() > deadline {
                        bail!("revocation not seen within 5 s");
                    }
                }
                Ok::<_, anyhow::Error>(started.elapsed())
            }));
        }
        let mut slowest = Duration::ZERO;
        for w in waits {
            slowest = slowest.max(w.await??);
        }
        prop.record(slowest)?;
    }

    println!();
    println!(
        "shoal sessions: 3 shoald processes (release) + 1 redis-server on this machine, one caller, {n} samples ({rounds} for propagation)"
    );
    println!();
    println!("| what | p50 (µs) | p99 (µs) |");
    println!("|---|---:|---:|");
    for row in [&hot, &cold, &prop, &ping, &direct] {
        println!(
            "| {} | {} | {} |",
            row.name,
            us(row.hist.value_at_quantile(0.5)),
            us(row.hist.value_at_quantile(0.99))
        );
    }
    for mut d in daemons {
        let _ = d.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = d.wait_exit(Duration::from_secs(10)).await;
    }
    // Keep the client alive until the daemons are gone, so none of its
    // reconnects races the shutdown.
    drop(clients);
    Ok(())
}
