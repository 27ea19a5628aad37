//! A client process for `tests/tests/shm.rs`: connects to the daemon socket
//! given as its argument, reads the key `probe` twice (the first read publishes
//! it in the shared-memory L1) and prints whether it mapped the segment and what
//! it read. Run in another time namespace, it shows that a client whose
//! monotonic clock is behind the daemon's does not use the segment.
#![forbid(unsafe_code)]

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let socket = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: shm_probe SOCKET"))?;
    let c = shoal_client::Client::connect(&socket).await?;
    let mut last = None;
    for _ in 0..2 {
        last = c.get_raw("probe").await?;
    }
    let s = c.shm_stats();
    println!(
        "attached={} hits={} value={}",
        s.attached,
        s.hits,
        String::from_utf8_lossy(last.as_deref().unwrap_or_default())
    );
    Ok(())
}
