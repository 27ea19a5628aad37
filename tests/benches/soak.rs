//! Soak: 500 concurrent client connections against one `shoald` process for a
//! bounded time, mixed ops. Prints errors (must be 0), latency percentiles, the
//! daemon's RSS sampled over the run (must stay flat), and the L1 byte count
//! under a stream of values totalling several times `cache.l1_max_bytes`.
//!
//! `cargo bench -p shoal-tests --bench soak` (`SOAK_SECS`, default 20).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(soak())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

async fn l1_bytes(c: &shoal_client::Client) -> Result<(u64, u64)> {
    let s: std::collections::BTreeMap<String, u64> = c.call(shoal_client::proto::Op::Stats).await?;
    Ok((
        s.get("l1_bytes").copied().unwrap_or(0),
        s.get("l1_max_bytes").copied().unwrap_or(1),
    ))
}

async fn soak() -> Result<()> {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let redis = shoal_tests::RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let toml = shoal_tests::DaemonProcess::config_toml(&redis, dir.path(), "soak")
        .replace("[cache]\n", "[cache]\nl1_max_bytes = \"32MiB\"\n");
    let mut d = shoal_tests::DaemonProcess::spawn(dir.path(), "soak", &toml)?;
    let probe = d.wait_ready(Duration::from_secs(60)).await?;
    let pid = d.child.id();

    // 1. The L1 bound under a stream of values totalling 4x the bound.
    let big = Bytes::from(vec![7u8; 64 * 1024]);
    let mut worst = 0f64;
    for i in 0..2048 {
        let k = format!("big{i}");
        probe.set_raw(&k, big.clone(), None).await?;
        probe.get_raw(&k).await?;
        if i % 128 == 127 {
            let (used, max) = l1_bytes(&probe).await?;
            worst = worst.max(used as f64 / max as f64);
        }
    }
    println!(
        "L1 under 128 MiB of 64 KiB values, bound 32 MiB: worst sampled use {:.1} % of the bound",
        worst * 100.0
    );

    // 2. 500 connections, mixed ops.
    let mut clients = Vec::new();
    for _ in 0..500 {
        clients.push(shoal_client::Client::connect(&d.socket).await?);
    }
    let errors = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let dur = Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (errors, ops) = (errors.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let mut h = Histogram::<u64>::new(3)?;
            let value = Bytes::from(vec![1u8; 512]);
            while start.elapsed() < dur {
                let k = format!("s{}", rng.random_range(0..5000));
                let t = Instant::now();
                let r = match rng.random_range(0..100) {
                    0..=79 => c.get_raw(&k).await.map(drop),
                    80..=93 => {
                        c.set_raw(&k, value.clone(), Some(Duration::from_secs(60)))
                            .await
                    }
                    94..=97 => c.mget_raw([k.as_str(), "s1", "s2", "s3"]).await.map(drop),
                    _ => c.invalidate([k.as_str()]).await.map(drop),
                };
                h.record(t.elapsed().as_micros() as u64)?;
                ops.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = r {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("error: {e}");
                    }
                }
                // Pace each connection (~50 ops/s): 500 clients, not 500 busy loops.
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..35))).await;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut samples = Vec::new();
    while start.elapsed() < dur {
        samples.push((start.elapsed().as_secs(), rss_kib(pid)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    samples.push((start.elapsed().as_secs(), rss_kib(pid)));
    let n = ops.load(Ordering::Relaxed);
    println!();
    println!("| soak: 500 connections, {secs} s, 80 % get / 14 % set / 4 % mget / 2 % invalidate | value |");
    println!("|---|---:|");
    println!(
        "| operations | {n} ({:.0}/s) |",
        n as f64 / start.elapsed().as_secs_f64()
    );
    println!("| errors | {} |", errors.load(Ordering::Relaxed));
    println!(
        "| p50 / p99 / max µs | {} / {} / {} |",
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.max()
    );
    let rss: Vec<String> = samples
        .iter()
        .map(|(t, k)| format!("{t}s:{}MiB", k / 1024))
        .collect();
    println!("| daemon RSS samples | {} |", rss.join(" "));
    let (first, last) = (
        samples.first().map_or(0, |s| s.1),
        samples.last().map_or(0, |s| s.1),
    );
    println!(
        "| RSS first -> last | {} -> {} MiB |",
        first / 1024,
        last / 1024
    );
    let (used, max) = l1_bytes(&probe).await?;
    println!(
        "| L1 bytes at the end | {} of {} ({:.1} %) |",
        used,
        max,
        100.0 * used as f64 / max as f64
    );
    Ok(())
}
