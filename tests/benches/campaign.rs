//! The fault campaign, long: `cargo bench -p shoal-tests --bench campaign --
//! --minutes N` (or `SHOAL_CAMPAIGN_MINUTES=N`; `SHOAL_CAMPAIGN_SEED` replays a
//! fault schedule, `SHOAL_CAMPAIGN_DAEMONS` sets the fleet size, default 3).
//! `--sentinel` runs it against a Sentinel deployment (primary, replica, three
//! sentinels) with failovers among the faults; `--cluster` against a Redis
//! Cluster (three primaries, three replicas; `SHOAL_CAMPAIGN_BUCKETS` sets
//! `redis.cluster.buckets`, default 8) with resharding, shard failovers and
//! shard restarts (with the AOF, and losing the shard's data) among them.
//! Prints the report table and every failure; exits non-zero on any failure.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::{bail, Result};
use shoal_tests::campaign::{run, CampaignConfig, Topology};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    let minutes: f64 = args
        .iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| std::env::var("SHOAL_CAMPAIGN_MINUTES").ok())
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10.0);
    let mut config = CampaignConfig::new(Duration::from_secs_f64(minutes * 60.0));
    config.verbose = true;
    if args.iter().any(|a| a == "--sentinel") {
        config.topology = Topology::Sentinel;
    }
    if args.iter().any(|a| a == "--cluster") {
        config.topology = Topology::Cluster;
        if let Some(b) = std::env::var("SHOAL_CAMPAIGN_BUCKETS")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            config.buckets = b;
        }
    }
    if let Some(n) = std::env::var("SHOAL_CAMPAIGN_DAEMONS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config.daemons = n;
    }
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))?;
    println!("{}", report.table());
    let failures = report.failures(50);
    for f in &failures {
        println!("{f}");
    }
    if !report.ok() {
        bail!("{} failures (seed {})", failures.len(), report.config.seed);
    }
    Ok(())
}
