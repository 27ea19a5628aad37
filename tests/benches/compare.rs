//! Round-trip figures, all measured in one run so they compare (the machine is
//! noisy): the raw Unix-socket floor (an echo server in a separate process, as
//! shoald is), `ping` through shoald, an L1 hit, an L2 hit, `cache.mget` of 16 keys,
//! and a direct redis-rs GET against the same Redis; at 1 and 64 callers.
//!
//! `cargo bench -p shoal-tests --bench roundtrip` (set `BENCH_SECS` to change the
//! time per row, default 2). Prints a markdown table.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const ECHO_ENV: &str = "SHOAL_BENCH_ECHO_SOCKET";

fn main() -> Result<()> {
    if let Ok(path) = std::env::var(ECHO_ENV) {
        return echo_server(PathBuf::from(path));
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing
    // useful: keep the bench out of test runs.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

/// The floor: a trivial echo server, one task per connection, frames echoed whole.
fn echo_server(path: PathBuf) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            loop {
                let (mut s, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let mut buf = BytesMut::with_capacity(8192);
                    loop {
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        // Echo complete frames only, as a server would answer them.
                        let mut end = 0;
                        while buf.len() >= end + 4 {
                            let n = u32::from_be_bytes([
                                buf[end],
                                buf[end + 1],
                                buf[end + 2],
                                buf[end + 3],
                            ]) as usize;
                            if buf.len() < end + 4 + n {
                                break;
                            }
                            end += 4 + n;
                        }
                        if end > 0 {
                            if s.write_all(&buf[..end]).await.is_err() {
                                return;
                            }
                            buf.advance(end);
                        }
                    }
                });
            }
            #[allow(unreachable_code)]
            Ok::<_, anyhow::Error>(())
        })
}

struct Row {
    name: String,
    callers: usize,
    hist: Histogram<u64>,
    ops: f64,
}

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    )
}

/// Runs `op` from `callers` tasks for the configured time; per-call latency in ns.
async fn measure<F, Fut, S>(
    name: &str,
    callers: usize,
    make: impl Fn(usize) -> S,
    op: F,
) -> Result<Row>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<S>> + Send,
{
    let dur = secs();
    // Warm up, then measure.
    let warm = Duration::from_millis(300);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut state = Some(make(i));
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t - start > warm + dur {
                    break;
                }
                if let Some(st) = state.take() {
                    state = Some(op(st).await?);
                }
                if t - start > warm {
                    h.record(t.elapsed().as_nanos() as u64)?;
                    n += 1;
                }
            }
            Ok::<_, anyhow::Error>((h, n))
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut total = 0u64;
    for t in tasks {
        let (h, n) = t.await??;
        hist.add(h)?;
        total += n;
    }
    Ok(Row {
        name: name.to_string(),
        callers,
        hist,
        ops: total as f64 / dur.as_secs_f64(),
    })
}

type Raw = (UnixStream, Vec<u8>, Vec<u8>);

async fn raw_roundtrip(mut s: Raw) -> Result<Raw> {
    s.0.write_all(&s.1).await?;
    s.0.read_exact(&mut s.2).await?;
    Ok(s)
}

fn ping_frame() -> Vec<u8> {
    let body = shoal_client::proto::Request {
        id: 1,
        trace: None,
        op: shoal_client::proto::Op::Ping,
    }
    .encode();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

async fn connect_sync(path: &Path) -> Result<UnixStream> {
    for _ in 0..500 {
        if let Ok(s) = UnixStream::connect(path).await {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("cannot connect to {}", path.display())
}

async fn bench() -> Result<()> {
    let redis = shoal_tests::RedisServer::start().await?;
    let dir = tempfile::tempdir()?;

    // The echo floor, in its own process.
    let echo_path = dir.path().join("echo.sock");
    let mut echo = std::process::Command::new(std::env::current_exe()?)
        .env(ECHO_ENV, &echo_path)
        .spawn()?;
    connect_sync(&echo_path).await?;

    // shoald (release build), and a second one whose L1 admits nothing: its hits are L2 hits.
    let mut d1 = shoal_tests::DaemonProcess::spawn(
        dir.path(),
        "bench",
        &shoal_tests::DaemonProcess::config_toml(&redis, dir.path(), "bench"),
    )?;
    let l2_toml = shoal_tests::DaemonProcess::config_toml(&redis, dir.path(), "l2only")
        .replace("[cache]\n", "[cache]\nl1_max_bytes = 1024\n");
    let mut d2 = shoal_tests::DaemonProcess::spawn(dir.path(), "l2only", &l2_toml)?;
    let c1 = d1.wait_ready(Duration::from_secs(30)).await?;
    let c2 = d2.wait_ready(Duration::from_secs(30)).await?;
    let value = bytes::Bytes::from(vec![b'x'; 100]);
    c1.set_raw("hot", value.clone(), Some(Duration::from_secs(3600)))
        .await?;
    let mkeys: Vec<String> = (0..16).map(|i| format!("m{i}")).collect();
    for k in &mkeys {
        c1.set_raw(k, value.clone(), Some(Duration::from_secs(3600)))
            .await?;
    }
    let redis_client = redis::Client::open(redis.url())?;
    let direct = redis_client.get_multiplexed_async_connection().await?;

    let mut rows = Vec::new();
    for callers in [1usize, 64] {
        let frame = ping_frame();
        let reply_len = frame.len();
        let mut conns = Vec::new();
        for _ in 0..callers {
            conns.push(Some(connect_sync(&echo_path).await?));
        }
        let conns = Arc::new(std::sync::Mutex::new(conns));
        rows.push(
            measure(
                "socket floor (echo, separate process)",
                callers,
                |i| {
                    let s = conns.lock().map(|mut c| c[i].take()).ok().flatten();
                    (
                        s.expect("echo connection"),
                        frame.clone(),
                        vec![0u8; reply_len],
                    )
                },
                raw_roundtrip,
            )
            .await?,
        );
        let c = c1.clone();
        rows.push(
            measure(
                "shoal ping",
                callers,
                |_| c.clone(),
                |c| async move {
                    c.ping().await?;
                    Ok(c)
                },
            )
            .await?,
        );
        let c = c1.clone();
        rows.push(
            measure(
                "shoal L1 hit (cache.get)",
                callers,
                |_| c.clone(),
                |c| async move {
                    c.get_raw("hot").await?;
                    Ok(c)
                },
            )
            .await?,
        );
        let c = c2.clone();
        rows.push(
            measure(
                "shoal L2 hit (cache.get)",
                callers,
                |_| c.clone(),
                |c| async move {
                    c.get_raw("hot").await?;
                    Ok(c)
                },
            )
            .await?,
        );
        let c = c1.clone();
        let keys = mkeys.clone();
        rows.push(
            measure(
                "shoal cache.mget 16 keys (L1)",
                callers,
                |_| (c.clone(), keys.clone()),
                |(c, keys)| async move {
                    {
                        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                        c.mget_raw(&refs).await?;
                    }
                    Ok((c, keys))
                },
            )
            .await?,
        );
        let d = direct.clone();
        rows.push(
            measure(
                "redis-rs GET direct (multiplexed)",
                callers,
                |_| d.clone(),
                |mut d| async move {
                    let _: Option<Vec<u8>> = redis::cmd("GET")
                        .arg("shoal:c:hot")
                        .query_async(&mut d)
                        .await?;
                    Ok(d)
                },
            )
            .await?,
        );
    }
    let _ = echo.kill();
    let _ = echo.wait();

    println!();
    println!("| operation | callers | p50 µs | p99 µs | ops/s | p50 / floor |");
    println!("|---|---:|---:|---:|---:|---:|");
    for callers in [1usize, 64] {
        let floor = rows
            .iter()
            .find(|r| r.callers == callers && r.name.starts_with("socket floor"))
            .map(|r| r.hist.value_at_quantile(0.5) as f64)
            .unwrap_or(1.0);
        for r in rows.iter().filter(|r| r.callers == callers) {
            let p50 = r.hist.value_at_quantile(0.5) as f64;
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.0} | {:.2}x |",
                r.name,
                r.callers,
                p50 / 1000.0,
                r.hist.value_at_quantile(0.99) as f64 / 1000.0,
                r.ops,
                p50 / floor
            );
        }
    }
    println!();
    println!(
        "machine: {} cores; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |s| s.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    Ok(())
}
