//! The comparison bench: one binary, one run, one table, so rows compare on a
//! noisy machine. It starts its own redis-server, daemons (release `shoald`
//! processes) and an echo server, then measures at 1 and 64 callers:
//! the raw Unix-socket floor (echo server in a separate process, as shoald is);
//! redis-rs GET straight to Redis; redis-rs client-side caching (RESP3 tracking);
//! shoal ping, L1 hit (socket, and shared memory: issue 17), L2 hit and
//! `cache.mget` of 16 keys; the same with a
//! modelled network (200 µs each way between the client side and Redis); a
//! zipfian read-mostly mix through 2 daemons with 1 % invalidations (hit ratio,
//! ops/s, stale reads); invalidation propagation to 4 daemons; and server
//! throughput with 64 requests pipelined on one blocking connection (echo vs an
//! L1 hit, no client library).
//!
//! Every row also reports CPU per operation: user + system time of this process
//! (the clients) and of the row's server processes (echo server, redis-server,
//! the daemon and its Redis), from `/proc/<pid>/stat` over the measured window.
//! On a 2-core machine CPU per op is steadier than latency or throughput.
//!
//! `cargo bench -p shoal-tests --bench compare` (`BENCH_SECS` sets the time per
//! row, default 1.5). Prints markdown tables.
//!
//! `-- --cluster` measures the cluster rows instead (issue 16): a private Redis
//! Cluster (three primaries, three replicas), daemons on `[redis.cluster]` with
//! 16 buckets; redis-rs GET through a cluster connection, shoal L1 hit, L2 hit,
//! `cache.mget` of 16 keys (L1, and L2: split by slot and gathered),
//! propagation of invalidations and revocations to 3 other daemons, and what
//! sessions (all in one slot) cost the shard that holds them.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const ECHO_ENV: &str = "SHOAL_BENCH_ECHO_SOCKET";

fn main() -> Result<()> {
    if let Ok(path) = std::env::var(ECHO_ENV) {
        return shoal_tests::echo::serve(PathBuf::from(path));
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing
    // useful: keep the bench out of test runs.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    let cluster = std::env::args().any(|a| a == "--cluster");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            if cluster {
                bench_cluster().await
            } else {
                bench().await
            }
        })
}

struct Row {
    name: String,
    callers: usize,
    hist: Histogram<u64>,
    ops: f64,
    /// CPU time of the client (this process) and the server processes, µs per op.
    cpu_us: f64,
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`
/// (whole process, every thread; USER_HZ ticks, 100 per second on Linux).
fn proc_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

/// CPU used so far by this process and `servers`.
fn cpu_now(servers: &[u32]) -> Duration {
    proc_cpu(std::process::id()) + servers.iter().map(|p| proc_cpu(*p)).sum::<Duration>()
}

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.5),
    )
}

/// Runs `op` from `callers` tasks for the configured time; per-call latency in ns.
/// Writes the rows' keys through `local`: `hot` (100 bytes) and `m0`..`m15`
/// (read once, so they are in its L1); the `cache.mget` keys.
async fn seed_keys(local: &shoal_client::Client) -> Result<Vec<String>> {
    let value = bytes::Bytes::from(vec![b'x'; 100]);
    local
        .set_raw("hot", value.clone(), Some(Duration::from_secs(3600)))
        .await?;
    let mkeys: Vec<String> = (0..16).map(|i| format!("m{i}")).collect();
    for k in &mkeys {
        local
            .set_raw(k, value.clone(), Some(Duration::from_secs(3600)))
            .await?;
        local.get_raw(k).await?;
    }
    Ok(mkeys)
}

/// Waits until every daemon is ready; a client of each (shared memory on).
async fn ready_all(procs: &mut [shoal_tests::DaemonProcess]) -> Result<Vec<shoal_client::Client>> {
    let mut clients = Vec::new();
    for p in procs {
        clients.push(p.wait_ready(Duration::from_secs(60)).await?);
    }
    Ok(clients)
}

/// A client of `p` that reads through the socket only (the shared-memory L1
/// has rows of its own).
async fn socket_only(p: &shoal_tests::DaemonProcess) -> shoal_client::Result<shoal_client::Client> {
    shoal_client::Client::builder(&p.socket)
        .shm(false)
        .connect()
        .await
}

async fn measure<F, Fut, S>(
    name: &str,
    callers: usize,
    servers: &[u32],
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
    // CPU over the measured window (client: this process; and the servers),
    // sampled from a thread of its own: callers that never yield (a client-side
    // cache hit) would keep a task of this runtime from waking on time.
    let servers_owned = servers.to_vec();
    let cpu = std::thread::spawn(move || {
        std::thread::sleep((start + warm).saturating_duration_since(Instant::now()));
        let cpu0 = cpu_now(&servers_owned);
        std::thread::sleep((start + warm + dur).saturating_duration_since(Instant::now()));
        cpu_now(&servers_owned).saturating_sub(cpu0)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("CPU sampler panicked"))?;
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
        cpu_us: cpu.as_secs_f64() * 1e6 / (total.max(1) as f64),
    })
}

/// A hit that never waits (shared memory, client-side caching) never yields to
/// the runtime, so `measure`'s timer cannot take its CPU window while callers
/// spin (its CPU column reads ~0 for these rows). Here one caller runs back to
/// back in this very task and the CPU window is exactly its operations.
async fn spin_row<F, Fut>(name: &str, servers: &[u32], op: F) -> Result<Row>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let dur = secs();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        op().await?;
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut n = 0u64;
    let cpu0 = cpu_now(servers);
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        op().await?;
        hist.record(t.elapsed().as_nanos() as u64)?;
        n += 1;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_now(servers).saturating_sub(cpu0);
    Ok(Row {
        name: name.to_string(),
        callers: 1,
        hist,
        ops: n as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / (n.max(1) as f64),
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

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| operation | callers | p50 µs | p99 µs | ops/s | p50 / floor | ops/s / direct GET | CPU µs/op | CPU / floor |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for callers in [1usize, 64] {
        let find = |prefix: &str| {
            rows.iter()
                .find(|r| r.callers == callers && r.name.starts_with(prefix))
        };
        let floor = find("socket floor")
            .map(|r| r.hist.value_at_quantile(0.5) as f64)
            .unwrap_or(1.0);
        let direct = find("redis-rs GET").map(|r| r.ops).unwrap_or(1.0);
        let floor_cpu = find("socket floor").map(|r| r.cpu_us).unwrap_or(1.0);
        for r in rows.iter().filter(|r| r.callers == callers) {
            let p50 = r.hist.value_at_quantile(0.5) as f64;
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.0} | {:.2}x | {:.2}x | {:.1} | {:.2}x |",
                r.name,
                r.callers,
                p50 / 1000.0,
                r.hist.value_at_quantile(0.99) as f64 / 1000.0,
                r.ops,
                p50 / floor,
                r.ops / direct,
                r.cpu_us,
                r.cpu_us / floor_cpu
            );
        }
    }
}

/// A frame of a MessagePack map of short strings and small uints, written by
/// hand so the bench needs no client types: `[("id", 1), ("op", "cache.get")]`.
fn raw_frame(fields: &[(&str, RawVal)]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        assert!(v.len() < 32);
        out.push(0xa0 | v.len() as u8);
        out.extend_from_slice(v.as_bytes());
    }
    let mut body = vec![0x80 | fields.len() as u8];
    for (k, v) in fields {
        s(&mut body, k);
        match v {
            RawVal::U(n) => {
                assert!(*n < 128);
                body.push(*n as u8);
            }
            RawVal::S(v) => s(&mut body, v),
        }
    }
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

enum RawVal {
    U(u64),
    S(&'static str),
}

/// Reads one length-prefixed frame (blocking).
fn read_frame(s: &mut std::os::unix::net::UnixStream, buf: &mut Vec<u8>) -> Result<()> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    buf.resize(u32::from_be_bytes(len) as usize, 0);
    s.read_exact(buf)?;
    Ok(())
}

/// `depth` requests written at once on one blocking connection, then their
/// answers read, for the configured time: server throughput without a client
/// library (the row's CPU is this thread plus the server).
async fn pipelined(
    name: &str,
    path: &Path,
    hello: bool,
    frame: Vec<u8>,
    depth: usize,
    servers: &[u32],
) -> Result<Row> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    let mut buf = Vec::new();
    if hello {
        s.write_all(&raw_frame(&[
            ("id", RawVal::U(0)),
            ("op", RawVal::S("hello")),
            ("version", RawVal::U(1)),
        ]))?;
        read_frame(&mut s, &mut buf)?;
    }
    let batch: Vec<u8> = frame.repeat(depth);
    let (dur, warm) = (secs(), Duration::from_millis(300));
    let servers = servers.to_vec();
    let (ops, cpu) = tokio::task::spawn_blocking(move || -> Result<(u64, Duration)> {
        let start = Instant::now();
        let mut n = 0u64;
        let mut cpu0 = None;
        loop {
            let t = start.elapsed();
            if t > warm + dur {
                break;
            }
            if t > warm && cpu0.is_none() {
                cpu0 = Some((cpu_now(&servers), n));
            }
            s.write_all(&batch)?;
            for _ in 0..depth {
                read_frame(&mut s, &mut buf)?;
            }
            n += depth as u64;
        }
        let (c0, n0) = cpu0.unwrap_or((Duration::ZERO, 0));
        Ok((n - n0, cpu_now(&servers).saturating_sub(c0)))
    })
    .await??;
    let mut hist = Histogram::<u64>::new(3)?;
    hist.record(1)?;
    Ok(Row {
        name: name.to_string(),
        callers: depth,
        hist,
        ops: ops as f64 / dur.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / (ops.max(1) as f64),
    })
}

/// The socket floor: raw frames to the echo server, one connection per caller.
async fn floor(echo_path: &Path, echo_pid: u32, callers: usize) -> Result<Row> {
    let frame = ping_frame();
    let reply_len = frame.len();
    let mut conns = Vec::new();
    for _ in 0..callers {
        conns.push(Some(
            shoal_tests::echo::connect(echo_path, Duration::from_secs(5)).await?,
        ));
    }
    let conns = Arc::new(std::sync::Mutex::new(conns));
    measure(
        "socket floor (echo, separate process)",
        callers,
        &[echo_pid],
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
    .await
}

fn l2_only(toml: String) -> String {
    // An L1 that admits nothing (every entry is above an eighth of 1 KiB): hits are L2 hits.
    if toml.contains("[cache]\n") {
        toml.replace("[cache]\n", "[cache]\nl1_max_bytes = 1024\n")
    } else {
        toml + "[cache]\nl1_max_bytes = 1024\n"
    }
}

fn via(toml: String, redis_url: &str, proxy_url: &str) -> String {
    toml.replace(redis_url, proxy_url)
}

async fn bench() -> Result<()> {
    let redis = shoal_tests::RedisServer::start().await?;
    let net = shoal_tests::proxy::DelayProxy::start(redis.port(), Duration::from_micros(200))?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let cfg = |n: &str| shoal_tests::DaemonProcess::config_toml(&redis, d, n);

    // The echo floor, in its own process.
    let echo_path = d.join("echo.sock");
    let mut echo = std::process::Command::new(std::env::current_exe()?)
        .env(ECHO_ENV, &echo_path)
        .spawn()?;
    shoal_tests::echo::connect(&echo_path, Duration::from_secs(5)).await?;

    // Daemons: local to Redis, L2-only, and the same two behind the modelled network.
    let policies = "[ratelimit.policies.open]\nalgorithm = \"token_bucket\"\nlimit = 1000000000\nwindow = \"1s\"\n[ratelimit.policies.shut]\nalgorithm = \"fixed_window\"\nlimit = 1\nwindow = \"1h\"\n";
    let mut procs = vec![
        shoal_tests::DaemonProcess::spawn(d, "local", &(cfg("local") + policies))?,
        shoal_tests::DaemonProcess::spawn(d, "l2", &l2_only(cfg("l2")))?,
        shoal_tests::DaemonProcess::spawn(
            d,
            "netl1",
            &via(cfg("netl1"), &redis.url(), &net.url()),
        )?,
        shoal_tests::DaemonProcess::spawn(
            d,
            "netl2",
            &via(l2_only(cfg("netl2")), &redis.url(), &net.url()),
        )?,
        shoal_tests::DaemonProcess::spawn(d, "z2", &cfg("z2"))?,
    ];
    for i in 0..3 {
        let n = format!("prop{i}");
        procs.push(shoal_tests::DaemonProcess::spawn(d, &n, &cfg(&n))?);
    }
    let clients = ready_all(&mut procs).await?;
    // The shared-memory L1 has rows of its own; every other shoal row measures
    // the socket path, as before it existed.
    let local_shm = clients[0].clone();
    let (local, l2, netl1, netl2) = (
        socket_only(&procs[0]).await?,
        socket_only(&procs[1]).await?,
        socket_only(&procs[2]).await?,
        socket_only(&procs[3]).await?,
    );
    anyhow::ensure!(
        local_shm.shm_stats().attached,
        "the shm client did not attach"
    );
    let mkeys = seed_keys(&local).await?;
    for c in [&local, &netl1] {
        c.get_raw("hot").await?;
    }
    // Published on that socket hit; the shm client now finds it in the segment.
    local_shm.get_raw("hot").await?;
    anyhow::ensure!(
        local_shm.shm_stats().hits == 1,
        "hot is not in shared memory"
    );
    local.check("shut", "k").await?; // over its limit from now on: denied locally
    let session = local
        .session_create_raw(
            "bench-user",
            bytes::Bytes::from_static(b"{}"),
            Default::default(),
        )
        .await?
        .token;
    local.session_get_raw(&session, true).await?; // now in the local session cache
    let redis_client = redis::Client::open(redis.url())?;
    let direct = redis_client.get_multiplexed_async_connection().await?;
    let direct_net = redis::Client::open(net.url())?
        .get_multiplexed_async_connection()
        .await?;
    let csc = {
        let c = redis::Client::open(format!("{}/?protocol=resp3", redis.url()))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_cache_config(redis::caching::CacheConfig::new());
        c.get_multiplexed_async_connection_with_config(&config)
            .await?
    };

    // The server processes each row's CPU is counted in (besides this one).
    let pid = |p: &shoal_tests::DaemonProcess| p.child.id();
    let redis_pid = redis.pid().unwrap_or(0);
    let rs = [redis_pid];
    let (sl, sl2) = ([pid(&procs[0]), redis_pid], [pid(&procs[1]), redis_pid]);
    let (snet1, snet2) = ([pid(&procs[2]), redis_pid], [pid(&procs[3]), redis_pid]);
    let mut rows = Vec::new();
    for callers in [1usize, 64] {
        // The floor is measured first and again last; the faster of the two is
        // kept, so a floor measured while the machine was busier does not flatter
        // the rows around it.
        let floor_a = floor(&echo_path, echo.id(), callers).await?;
        let first = rows.len();
        rows.push(redis_get("redis-rs GET direct (multiplexed)", callers, &rs, &direct).await?);
        rows.push(
            redis_get(
                "redis-rs client-side caching hit (RESP3)",
                callers,
                &rs,
                &csc,
            )
            .await?,
        );
        let c = local.clone();
        rows.push(
            measure(
                "shoal ping",
                callers,
                &sl,
                |_| c.clone(),
                |c| async move {
                    c.ping().await?;
                    Ok(c)
                },
            )
            .await?,
        );
        rows.push(shoal_get("shoal L1 hit (socket)", callers, &sl, &local).await?);
        rows.push(shoal_get("shoal L1 hit (shared memory)", callers, &sl, &local_shm).await?);
        rows.push(shoal_get("shoal L2 hit", callers, &sl2, &l2).await?);
        rows.push(
            shoal_mget(
                "shoal cache.mget 16 keys (L1)",
                callers,
                &sl,
                &local,
                &mkeys,
            )
            .await?,
        );
        let c = local.clone();
        rows.push(
            measure(
                "shoal session.get (hot, local cache)",
                callers,
                &sl,
                |_| (c.clone(), session.clone()),
                |(c, t)| async move {
                    c.session_get_raw(&t, true).await?;
                    Ok((c, t))
                },
            )
            .await?,
        );
        let c = local.clone();
        rows.push(
            measure(
                "shoal ratelimit.check allowed",
                callers,
                &sl,
                |i| (c.clone(), format!("k{i}")),
                |(c, k)| async move {
                    c.check("open", &k).await?;
                    Ok((c, k))
                },
            )
            .await?,
        );
        let c = local.clone();
        rows.push(
            measure(
                "shoal ratelimit.check denied (local deny cache)",
                callers,
                &sl,
                |_| c.clone(),
                |c| async move {
                    c.check("shut", "k").await?;
                    Ok(c)
                },
            )
            .await?,
        );
        // The same token-bucket decision as "ratelimit.check allowed", as a bare
        // EVALSHA of the script through redis-rs: what the daemon adds on top.
        let d = direct.clone();
        let script = Arc::new(redis::Script::new(include_str!(
            "../../lua/rl_token_bucket.lua"
        )));
        rows.push(
            measure(
                "redis-rs EVALSHA rl_token_bucket.lua (bare)",
                callers,
                &rs,
                |i| {
                    (
                        d.clone(),
                        script.clone(),
                        format!("bench:rl.tb{{open:k{i}}}"),
                    )
                },
                |(mut d, script, key)| async move {
                    let _: Vec<i64> = script
                        .key(&key)
                        .arg("check")
                        .arg(1)
                        .arg(1_000_000_000u64)
                        .arg(1_000)
                        .arg(1_000_000_000u64)
                        .arg(0)
                        .arg("")
                        .invoke_async(&mut d)
                        .await?;
                    Ok((d, script, key))
                },
            )
            .await?,
        );
        rows.push(redis_get("net 200µs: redis-rs GET direct", callers, &rs, &direct_net).await?);
        rows.push(shoal_get("net 200µs: shoal L1 hit", callers, &snet1, &netl1).await?);
        rows.push(shoal_get("net 200µs: shoal L2 hit", callers, &snet2, &netl2).await?);
        for k in &mkeys {
            netl1.get_raw(k).await?;
        }
        rows.push(
            shoal_mget(
                "net 200µs: shoal cache.mget 16 (L1)",
                callers,
                &snet1,
                &netl1,
                &mkeys,
            )
            .await?,
        );
        let floor_b = floor(&echo_path, echo.id(), callers).await?;
        let best = if floor_a.hist.value_at_quantile(0.5) <= floor_b.hist.value_at_quantile(0.5) {
            floor_a
        } else {
            floor_b
        };
        rows.insert(first, best);
    }
    print_table(&rows);
    // Hits that never wait, CPU measured around the operations themselves.
    let spin = [
        spin_row(
            "redis-rs client-side caching hit (RESP3)",
            &[redis_pid],
            || {
                let mut c = csc.clone();
                async move {
                    let _: Option<Vec<u8>> = redis::cmd("GET")
                        .arg("shoal:c:hot")
                        .query_async(&mut c)
                        .await?;
                    Ok(())
                }
            },
        )
        .await?,
        spin_row("shoal L1 hit (shared memory)", &sl, || {
            let c = local_shm.clone();
            async move {
                c.get_raw("hot").await?;
                Ok(())
            }
        })
        .await?,
    ];
    println!();
    println!("| one caller back to back, hits that never wait | p50 µs | p99 µs | ops/s | CPU µs/op (client + servers) |");
    println!("|---|---:|---:|---:|---:|");
    for r in &spin {
        println!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.2} |",
            r.name,
            r.hist.value_at_quantile(0.5) as f64 / 1000.0,
            r.hist.value_at_quantile(0.99) as f64 / 1000.0,
            r.ops,
            r.cpu_us
        );
    }
    let shm = local_shm.shm_stats();
    println!();
    println!(
        "shared-memory rows: {} hits answered from the segment, {} lookups sent to the socket",
        shm.hits, shm.fallbacks
    );
    // Server throughput without a client library: 64 requests in flight on one
    // blocking connection (latency columns do not apply).
    let get = raw_frame(&[
        ("id", RawVal::U(1)),
        ("op", RawVal::S("cache.get")),
        ("key", RawVal::S("hot")),
    ]);
    let prows = vec![
        pipelined(
            "socket floor, 64 pipelined on one connection",
            &echo_path,
            false,
            ping_frame(),
            64,
            &[echo.id()],
        )
        .await?,
        pipelined(
            "shoald L1 hit, 64 pipelined on one connection (no client)",
            &procs[0].socket,
            true,
            get,
            64,
            &sl,
        )
        .await?,
    ];
    println!();
    println!(
        "| pipelined (one blocking connection) | ops/s | ops/s / floor | CPU µs/op | CPU / floor |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in &prows {
        println!(
            "| {} | {:.0} | {:.2}x | {:.2} | {:.2}x |",
            r.name,
            r.ops,
            r.ops / prows[0].ops,
            r.cpu_us,
            r.cpu_us / prows[0].cpu_us
        );
    }
    zipf_mix(&[clients[0].clone(), clients[4].clone()]).await?;
    propagation(&[
        clients[0].clone(),
        clients[5].clone(),
        clients[6].clone(),
        clients[7].clone(),
    ])
    .await?;
    let _ = echo.kill();
    let _ = echo.wait();
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

/// `--cluster`: the rows that change on a cluster, one table.
async fn bench_cluster() -> Result<()> {
    const BUCKETS: u16 = 16;
    let cluster = shoal_tests::cluster::ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let cfg = |n: &str| {
        format!(
            "[node]\nid = \"{n}\"\n[socket]\npath = \"{}\"\n[redis]\ntimeout = \"300ms\"\n{}\
             [admin]\nlisten = \"\"\n[shutdown]\ngrace = \"5s\"\n",
            d.join(format!("{n}.sock")).display(),
            cluster.toml_section(BUCKETS)
        )
    };
    // The echo floor, in its own process, as in the main table.
    let echo_path = d.join("echo.sock");
    let mut echo = std::process::Command::new(std::env::current_exe()?)
        .env(ECHO_ENV, &echo_path)
        .spawn()?;
    shoal_tests::echo::connect(&echo_path, Duration::from_secs(5)).await?;
    let mut procs = vec![
        shoal_tests::DaemonProcess::spawn(d, "cl1", &cfg("cl1"))?,
        shoal_tests::DaemonProcess::spawn(d, "cl2", &l2_only(cfg("cl2")))?,
    ];
    for i in 0..3 {
        let n = format!("cprop{i}");
        procs.push(shoal_tests::DaemonProcess::spawn(d, &n, &cfg(&n))?);
    }
    let clients = ready_all(&mut procs).await?;
    let (local, l2) = (socket_only(&procs[0]).await?, socket_only(&procs[1]).await?);
    let mkeys = seed_keys(&local).await?;
    local.get_raw("hot").await?;
    let slots: std::collections::BTreeSet<u16> = mkeys
        .iter()
        .map(|k| shoal_tests::cluster::bucket_slot(shoal_tests::cluster::bucket_of(k, BUCKETS)))
        .collect();
    let direct = cluster.conn().await?;
    let hot_value = shoal_tests::cluster::bucket_names("shoal:", "hot", BUCKETS).value("hot");

    let mut servers: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let rs = servers.clone();
    servers.push(procs[0].child.id());
    let sl = servers.clone();
    servers.pop();
    servers.push(procs[1].child.id());
    let sl2 = servers;
    // What the servers cost with no operation running (this process excluded).
    let idle = {
        let used = || sl.iter().map(|p| proc_cpu(*p)).sum::<Duration>();
        let (t, before) = (Instant::now(), used());
        tokio::time::sleep(secs()).await;
        used().saturating_sub(before).as_secs_f64() * 1e3 / t.elapsed().as_secs_f64()
    };
    let mut rows = Vec::new();
    for callers in [1usize, 64] {
        rows.push(floor(&echo_path, echo.id(), callers).await?);
        let (c, key) = (direct.clone(), hot_value.clone());
        rows.push(
            measure(
                "redis-rs GET through a cluster connection",
                callers,
                &rs,
                |_| (c.clone(), key.clone()),
                |(mut c, key)| async move {
                    let _: Option<Vec<u8>> =
                        redis::cmd("GET").arg(&key).query_async(&mut c).await?;
                    Ok((c, key))
                },
            )
            .await?,
        );
        rows.push(shoal_get("cluster: shoal L1 hit (socket)", callers, &sl, &local).await?);
        rows.push(shoal_get("cluster: shoal L2 hit", callers, &sl2, &l2).await?);
        rows.push(
            shoal_mget(
                "cluster: shoal cache.mget 16 keys (L1)",
                callers,
                &sl,
                &local,
                &mkeys,
            )
            .await?,
        );
        rows.push(
            shoal_mget(
                &format!(
                    "cluster: shoal cache.mget 16 keys (L2, {} slots)",
                    slots.len()
                ),
                callers,
                &sl2,
                &l2,
                &mkeys,
            )
            .await?,
        );
    }
    println!(
        "Redis Cluster: 3 primaries, 3 replicas (redis-cli --cluster create), {BUCKETS} buckets; \
         CPU counts the daemon and all six redis-servers, which use {idle:.0} ms of CPU per \
         second idle (cluster bus, replication, one heartbeat per bucket per cache.heartbeat)"
    );
    print_table(&rows);
    propagation(&[
        clients[0].clone(),
        clients[2].clone(),
        clients[3].clone(),
        clients[4].clone(),
    ])
    .await?;
    session_shard(&cluster, &clients[..2]).await?;
    let _ = echo.kill();
    let _ = echo.wait();
    Ok(())
}

/// Sessions live in one slot (`shoal:{s}:`), so one shard carries every
/// session change of the fleet: what a change costs that shard (its primary
/// and replica, from `/proc`) says how many it holds.
async fn session_shard(
    cluster: &shoal_tests::cluster::ClusterSet,
    clients: &[shoal_client::Client],
) -> Result<()> {
    use shoal_client::session::SessionOptions;
    let primary = cluster
        .primary_of_slot(shoal_tests::cluster::key_slot(b"{s}"))
        .await?;
    let replica = cluster.replica_of(primary).await?;
    let pids: Vec<u32> = [primary, replica]
        .iter()
        .filter_map(|&i| cluster.nodes[i].pid())
        .collect();
    let cpu = || pids.iter().map(|p| proc_cpu(*p)).sum::<Duration>();
    // Idle cost of the two nodes, subtracted below.
    let (t, before) = (Instant::now(), cpu());
    tokio::time::sleep(secs()).await;
    let idle_per_sec = cpu().saturating_sub(before).as_secs_f64() / t.elapsed().as_secs_f64();
    let callers = 16usize;
    let deadline = Instant::now() + secs() * 2;
    let (t, before) = (Instant::now(), cpu());
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                let mut pairs = 0u64;
                while Instant::now() < deadline {
                    let s = c
                        .session_create(&format!("user{i}"), &"profile", SessionOptions::default())
                        .await?;
                    c.session_get::<String>(&s.token).await?;
                    c.session_revoke(&s.token).await?;
                    pairs += 1;
                }
                Ok::<u64, anyhow::Error>(pairs)
            })
        })
        .collect();
    let mut pairs = 0u64;
    for t in tasks {
        pairs += t.await??;
    }
    let wall = t.elapsed().as_secs_f64();
    let used = cpu().saturating_sub(before).as_secs_f64() - idle_per_sec * wall;
    let per = used.max(0.0) * 1e6 / pairs.max(1) as f64;
    println!(
        "\n| sessions on one shard ({callers} callers, 2 daemons) | value |\n|---|---:|\n\
         | create + get + revoke per second | {:.0} |\n\
         | CPU of the sessions' shard (primary + replica, idle removed) per create + get + revoke | {per:.1} µs |\n\
         | such triples one core of that shard holds per second | {:.0} |",
        pairs as f64 / wall,
        1e6 / per.max(0.001)
    );
    Ok(())
}

async fn redis_get(
    name: &str,
    callers: usize,
    servers: &[u32],
    conn: &redis::aio::MultiplexedConnection,
) -> Result<Row> {
    let d = conn.clone();
    measure(
        name,
        callers,
        servers,
        |_| d.clone(),
        |mut d| async move {
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg("shoal:c:hot")
                .query_async(&mut d)
                .await?;
            Ok(d)
        },
    )
    .await
}

async fn shoal_mget(
    name: &str,
    callers: usize,
    servers: &[u32],
    c: &shoal_client::Client,
    keys: &[String],
) -> Result<Row> {
    let (c, keys) = (c.clone(), keys.to_vec());
    measure(
        name,
        callers,
        servers,
        |_| (c.clone(), keys.clone()),
        |(c, keys)| async move {
            {
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                c.mget_raw(&refs).await?;
            }
            Ok((c, keys))
        },
    )
    .await
}

async fn shoal_get(
    name: &str,
    callers: usize,
    servers: &[u32],
    c: &shoal_client::Client,
) -> Result<Row> {
    let c = c.clone();
    measure(
        name,
        callers,
        servers,
        |_| c.clone(),
        |c| async move {
            c.get_raw("hot").await?;
            Ok(c)
        },
    )
    .await
}

/// Per key: (version, completion time) of the writes made so far.
type WriteLog = std::sync::Mutex<Vec<(u64, Instant)>>;

/// Zipfian reads through two daemons, 1 % of operations rewrite the "database"
/// and invalidate; readers use `get_or_load` (leases). A read is stale when it
/// returns a version older than one whose invalidation completed more than
/// `BOUND` before the read began.
async fn zipf_mix(clients: &[shoal_client::Client]) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    const KEYS: usize = 10_000;
    const CALLERS: usize = 64;
    const BOUND: Duration = Duration::from_millis(100);
    // Zipf(s = 1) by inverse CDF over precomputed weights.
    let mut cdf = Vec::with_capacity(KEYS);
    let mut acc = 0.0;
    for k in 1..=KEYS {
        acc += 1.0 / k as f64;
        cdf.push(acc);
    }
    let cdf = Arc::new(cdf);
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(1)).collect());
    // Per key: (version, completion time) of recent writes.
    let writes: Arc<Vec<WriteLog>> = Arc::new(
        (0..KEYS)
            .map(|_| std::sync::Mutex::new(Vec::new()))
            .collect(),
    );
    let stale = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let dur = secs() * 2;
    let start = Instant::now();
    let before = stats_sum(clients).await?;
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let c = clients[i % clients.len()].clone();
        let (cdf, db, writes, stale, reads, ops) = (
            cdf.clone(),
            db.clone(),
            writes.clone(),
            stale.clone(),
            reads.clone(),
            ops.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            while start.elapsed() < dur {
                let x = rng.random::<f64>() * cdf[KEYS - 1];
                let k = cdf.partition_point(|c| *c < x).min(KEYS - 1);
                let key = format!("z{k}");
                if rng.random_bool(0.01) {
                    // Only caller k % CALLERS writes key k: versions follow Redis order.
                    if k % CALLERS != i {
                        continue;
                    }
                    let v = db[k].fetch_add(1, Ordering::SeqCst) + 1;
                    c.invalidate([key.as_str()]).await?;
                    writes[k]
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push((v, Instant::now()));
                } else {
                    let began = Instant::now();
                    let dbk = &db[k];
                    let got: u64 = c
                        .get_or_load(&key, Some(Duration::from_secs(600)), || async {
                            Ok::<_, std::io::Error>(dbk.load(Ordering::SeqCst))
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    reads.fetch_add(1, Ordering::Relaxed);
                    let w = writes[k].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    if w.iter().any(|(v, done)| *v > got && *done + BOUND < began) {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = stats_sum(clients).await?;
    let l1 = after.0 - before.0;
    let total = (after.0 + after.1) - (before.0 + before.1);
    println!();
    println!("| zipfian mix (s=1, 10k keys, 64 callers, 2 daemons, 1 % invalidations) | value |");
    println!("|---|---:|");
    println!(
        "| ops/s | {:.0} |",
        ops.load(Ordering::Relaxed) as f64 / elapsed
    );
    println!(
        "| L1 hit ratio | {:.1} % |",
        100.0 * l1 as f64 / total.max(1) as f64
    );
    println!("| reads checked | {} |", reads.load(Ordering::Relaxed));
    println!(
        "| stale reads (older than {BOUND:?} after an invalidation) | {} |",
        stale.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn stats_sum(clients: &[shoal_client::Client]) -> Result<(u64, u64)> {
    let (mut l1, mut other) = (0, 0);
    for c in clients {
        let s: std::collections::BTreeMap<String, u64> =
            c.call(shoal_client::proto::Op::Stats).await?;
        l1 += s.get("l1_hits").copied().unwrap_or(0);
        other += s.get("l1_misses").copied().unwrap_or(0);
    }
    Ok((l1, other))
}

/// Propagation to the other daemons: of an invalidation (all hold the key in L1)
/// and of a session revocation (all hold the session in their local cache).
async fn propagation(clients: &[shoal_client::Client]) -> Result<()> {
    let mut lags = Histogram::<u64>::new(3)?;
    for round in 0..200 {
        let key = format!("prop{round}");
        clients[0]
            .set_raw(&key, bytes::Bytes::from_static(b"v"), None)
            .await?;
        for c in &clients[1..] {
            c.get_raw(&key).await?;
        }
        let t = Instant::now();
        clients[0].invalidate([key.as_str()]).await?;
        let waits = clients[1..].iter().map(|c| {
            let key = key.clone();
            async move {
                loop {
                    if c.get_raw(&key).await?.is_none() {
                        return Ok::<_, anyhow::Error>(t.elapsed());
                    }
                }
            }
        });
        for lag in futures::future::try_join_all(waits).await? {
            lags.record(lag.as_micros() as u64)?;
        }
    }
    // Session revocation: every daemon has validated the session (local cache);
    // one revokes; time until each other daemon refuses it.
    let mut revs = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        let token = clients[0]
            .session_create_raw(
                "prop-user",
                bytes::Bytes::from_static(b"{}"),
                Default::default(),
            )
            .await?
            .token;
        for c in &clients[1..] {
            c.session_get_raw(&token, true).await?;
        }
        let t = Instant::now();
        clients[0].session_revoke(&token).await?;
        let waits = clients[1..].iter().map(|c| {
            let token = token.clone();
            async move {
                loop {
                    if c.session_get_raw(&token, false).await?.is_none() {
                        return Ok::<_, anyhow::Error>(t.elapsed());
                    }
                }
            }
        });
        for lag in futures::future::try_join_all(waits).await? {
            revs.record(lag.as_micros() as u64)?;
        }
    }
    println!();
    println!("| propagation to 3 other daemons (600 samples each), µs | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    println!(
        "| cache invalidation (until every daemon answers a miss) | {} | {} | {} |",
        lags.value_at_quantile(0.5),
        lags.value_at_quantile(0.99),
        lags.max()
    );
    println!(
        "| session revocation (until every daemon refuses the token) | {} | {} | {} |",
        revs.value_at_quantile(0.5),
        revs.value_at_quantile(0.99),
        revs.max()
    );
    Ok(())
}
