//! Propagation without faults, as nines: how long until a change is applied on
//! every daemon, read from the lag histogram each shoald keeps
//! (`shoal_propagation_lag_seconds`, the `propagation_lag_ms_le_*` stats).
//!
//! Three daemons against one private redis-server; a writer sends `BENCH_N`
//! (default 20,000) `cache.set`s through daemon 0 with 8 in flight; every daemon
//! (the writer's own included) records the lag of each change it applies: its
//! clock when applied minus the millisecond in the change's log id (Redis's
//! clock, same host). The histogram's resolution is its buckets (1, 2, 5, 10 ms,
//! ...), so the table says "within N ms" for the smallest bucket that holds the
//! share.
//!
//! `cargo bench -p shoal-tests --bench propagation`. Prints a markdown table.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::Bytes;
use futures::StreamExt;
use shoal_tests::{test_config, Daemon, RedisServer};

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

async fn bench() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut daemons = Vec::new();
    for i in 0..3 {
        daemons.push(Daemon::start_ready(test_config(&redis, dir.path(), &format!("p{i}"))).await?);
    }
    let writer = daemons[0].client().await?;
    let started = Instant::now();
    let value = Bytes::from(vec![7u8; 100]);
    futures::stream::iter(0..n)
        .map(|i| {
            let writer = writer.clone();
            let value = value.clone();
            async move {
                writer
                    .set_raw(&format!("prop{}", i % 1000), value, None)
                    .await
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let elapsed = started.elapsed();
    let last = redis.last_log_id().await?;
    for d in &daemons {
        d.wait_applied(&last, Duration::from_secs(30)).await?;
    }
    let bounds = shoald::ops::stats::LAG_BUCKETS_MS;
    let mut counts = vec![0u64; bounds.len() + 1];
    for d in &daemons {
        for (i, b) in bounds.iter().enumerate() {
            counts[i] += d.stat(&format!("propagation_lag_ms_le_{b}"));
        }
        counts[bounds.len()] += d.stat("propagation_lag_ms_le_inf");
    }
    let total: u64 = counts.iter().sum();
    ensure!(
        total as usize >= n * 3 * 99 / 100,
        "only {total} applications recorded for {n} changes on 3 daemons"
    );
    let within = |share: f64| -> String {
        let mut cum = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            if cum as f64 >= share * total as f64 {
                return match bounds.get(i) {
                    Some(b) => format!("≤ {b} ms"),
                    None => format!("> {} ms", bounds[bounds.len() - 1]),
                };
            }
        }
        "-".into()
    };
    println!(
        "\n| propagation, no faults: {n} changes x 3 daemons ({total} applications, {:.0} changes/s) | applied on every daemon within |",
        n as f64 / elapsed.as_secs_f64()
    );
    println!("|---|---:|");
    for (label, share) in [
        ("50 %", 0.5),
        ("99 %", 0.99),
        ("99.9 %", 0.999),
        ("99.99 %", 0.9999),
        ("100 %", 1.0),
    ] {
        println!("| {label} of changes | {} |", within(share));
    }
    Ok(())
}
