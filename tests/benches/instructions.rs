//! Instructions per operation, counted by `valgrind --tool=callgrind`: exact run
//! to run whatever else the machine does, unlike time on a shared 2-core box.
//!
//! Each server (the echo floor, redis-server, shoald) runs under callgrind twice
//! per row: once for the setup alone, once for the setup plus N operations of the
//! row's kind, driven one at a time from this process; the difference over N is
//! the server's instructions per operation. The client side is measured the same
//! way: a child process of this bench runs under callgrind with 0 and N
//! operations against a normal server. The daemon's timers (heartbeat, revocation
//! reads, Redis watch, override refresh) are set far apart so they add nothing
//! measurable.
//!
//! `cargo bench -p shoal-tests --bench instructions` (`BENCH_OPS`, default 5000).
//! Prints a markdown table.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const ECHO_ENV: &str = "SHOAL_BENCH_ECHO_SOCKET";
/// Client mode: `kind`, then `ops`, `socket` / `redis` in the variables below.
const CLIENT_ENV: &str = "SHOAL_BENCH_CLIENT";
const OPS_ENV: &str = "SHOAL_BENCH_CLIENT_OPS";
const TARGET_ENV: &str = "SHOAL_BENCH_CLIENT_TARGET";

fn main() -> Result<()> {
    if let Ok(path) = std::env::var(ECHO_ENV) {
        return shoal_tests::echo::serve(PathBuf::from(path));
    }
    if let Ok(kind) = std::env::var(CLIENT_ENV) {
        let ops: u64 = std::env::var(OPS_ENV)?.parse()?;
        let target = std::env::var(TARGET_ENV)?;
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(client(&kind, ops, &target));
    }
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

fn ops() -> u64 {
    std::env::var("BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000)
}

/// The `totals:` (or `summary:`) line of a callgrind output file.
fn callgrind_total(file: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
                .and_then(|n| n.split_whitespace().next()?.parse().ok())
        })
        .with_context(|| format!("no totals in {}", file.display()))
}

fn callgrind(out: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

async fn ping_frame_roundtrip(s: &mut UnixStream, frame: &[u8], buf: &mut [u8]) -> Result<()> {
    s.write_all(frame).await?;
    s.read_exact(buf).await?;
    Ok(())
}

fn ping_frame() -> Vec<u8> {
    // {"id": 1, "op": "ping"}
    let body: &[u8] = &[
        0x82, 0xa2, b'i', b'd', 0x01, 0xa2, b'o', b'p', 0xa4, b'p', b'i', b'n', b'g',
    ];
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// The client side of a row, in a child process (under callgrind or not).
async fn client(kind: &str, ops: u64, target: &str) -> Result<()> {
    match kind {
        "echo" => {
            let mut s = UnixStream::connect(target).await?;
            let frame = ping_frame();
            let mut buf = vec![0u8; frame.len()];
            ping_frame_roundtrip(&mut s, &frame, &mut buf).await?;
            for _ in 0..ops {
                ping_frame_roundtrip(&mut s, &frame, &mut buf).await?;
            }
        }
        "redis" => {
            let mut c = redis::Client::open(target)?
                .get_multiplexed_async_connection()
                .await?;
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg("shoal:c:hot")
                .query_async(&mut c)
                .await?;
            for _ in 0..ops {
                let _: Option<Vec<u8>> = redis::cmd("GET")
                    .arg("shoal:c:hot")
                    .query_async(&mut c)
                    .await?;
            }
        }
        "shoal" | "shoal-shm" => {
            // Socket rows measure the socket: the shared-memory L1 has its own row.
            let c = shoal_client::Client::builder(target)
                .shm(kind == "shoal-shm")
                .connect()
                .await?;
            c.get_raw("hot").await?;
            for _ in 0..ops {
                c.get_raw("hot").await?;
            }
        }
        "lookup-1" | "lookup-16" => {
            // The segment's lookup alone (no socket, no client): with one trust
            // group, as standalone, and with 16, as on a cluster with 16
            // buckets, where the key's group is its CLUSTER KEYSLOT mod 16.
            use shoal_client::shm::{mono_now_ns, Lookup, Record, Segment};
            let groups = if kind == "lookup-16" { 16 } else { 1 };
            let mut seg = Segment::create(1 << 20, 256, groups)?;
            for g in 0..groups {
                seg.set_ready(g, true);
                seg.advance_trust(g, u64::MAX);
            }
            let key = b"hot";
            let hash = seg.hash(key);
            let rec = Record {
                generation: seg.generation(seg.group_of(key)),
                expires_ns: u64::MAX,
                l2_expires_ns: 0,
                hash,
                key,
                value: &[b'x'; 100],
            };
            anyhow::ensure!(seg.write(seg.layout().probe(hash)[0], &rec), "written");
            let now = mono_now_ns().context("CLOCK_MONOTONIC")?;
            anyhow::ensure!(matches!(seg.lookup(key, now), Lookup::Hit { .. }), "a hit");
            for _ in 0..ops {
                std::hint::black_box(seg.lookup(std::hint::black_box(key), now));
            }
        }
        other => bail!("unknown client kind {other}"),
    }
    Ok(())
}

/// Instructions a client child process spends per op against `target`.
async fn client_cost(dir: &Path, kind: &str, target: &str) -> Result<f64> {
    let n = ops();
    let mut totals = Vec::new();
    for (i, count) in [0, n].into_iter().enumerate() {
        let out = dir.join(format!("client-{kind}-{i}.out"));
        let args = callgrind(&out);
        let status = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .arg(std::env::current_exe()?)
            .env(CLIENT_ENV, kind)
            .env(OPS_ENV, count.to_string())
            .env(TARGET_ENV, target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("client {kind} under callgrind failed: {status}");
        }
        totals.push(callgrind_total(&out)?);
    }
    Ok(totals[1].saturating_sub(totals[0]) as f64 / n as f64)
}

/// A daemon configuration whose timers stay out of the count.
fn quiet_config(redis: &shoal_tests::RedisServer, dir: &Path, node: &str) -> String {
    shoal_tests::DaemonProcess::config_toml(redis, dir, node)
        .replace("timeout = \"300ms\"", "timeout = \"10s\"\nwatch_interval = \"1h\"")
        + "[cache]\nheartbeat = \"20s\"\nmax_staleness = \"60s\"\n[ratelimit]\noverride_refresh = \"1h\"\n"
}

/// What one row does on the daemon, after a common setup.
#[derive(Clone, Copy)]
enum DaemonOp {
    Ping,
    L1Hit,
    L2Hit,
    Mget16,
    SessionGet,
}

/// Instructions `shoald` spends per op of `what` (setup subtracted).
async fn daemon_cost(
    redis: &shoal_tests::RedisServer,
    dir: &Path,
    what: DaemonOp,
    l2_only: bool,
) -> Result<f64> {
    let n = ops();
    let mut totals = Vec::new();
    for count in [0, n] {
        let node = format!("cg{}", dir.read_dir()?.count());
        let out = dir.join(format!("{node}.out"));
        let mut toml = quiet_config(redis, dir, &node);
        if l2_only {
            toml = toml.replace("[cache]\n", "[cache]\nl1_max_bytes = 1024\n");
        }
        let wrapper = callgrind(&out);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut p = shoal_tests::DaemonProcess::spawn_wrapped(dir, &node, &toml, &wrapper)?;
        p.drain_stderr_to(&dir.join(format!("{node}.log")))?;
        p.wait_ready(Duration::from_secs(120)).await?;
        let c = shoal_client::Client::builder(&p.socket)
            .shm(false)
            .connect()
            .await?;
        // The same setup in both runs.
        let value = bytes::Bytes::from(vec![b'x'; 100]);
        c.set_raw("hot", value.clone(), Some(Duration::from_secs(3600)))
            .await?;
        c.get_raw("hot").await?;
        let keys: Vec<String> = (0..16).map(|k| format!("m{k}")).collect();
        for k in &keys {
            c.set_raw(k, value.clone(), Some(Duration::from_secs(3600)))
                .await?;
            c.get_raw(k).await?;
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let token = c
            .session_create_raw(
                "bench",
                bytes::Bytes::from_static(b"{}"),
                Default::default(),
            )
            .await?
            .token;
        c.session_get_raw(&token, false).await?;
        for _ in 0..count {
            match what {
                DaemonOp::Ping => c.ping().await?,
                DaemonOp::L1Hit | DaemonOp::L2Hit => {
                    c.get_raw("hot").await?;
                }
                DaemonOp::Mget16 => {
                    c.mget_raw(&refs).await?;
                }
                DaemonOp::SessionGet => {
                    c.session_get_raw(&token, false).await?;
                }
            }
        }
        drop(c);
        p.signal(nix::sys::signal::Signal::SIGTERM)?;
        p.wait_exit(Duration::from_secs(120)).await?;
        totals.push(callgrind_total(&out)?);
    }
    Ok(totals[1].saturating_sub(totals[0]) as f64 / n as f64)
}

/// Instructions the echo server spends per ping round trip.
async fn echo_cost(dir: &Path) -> Result<f64> {
    let n = ops();
    let mut totals = Vec::new();
    for (i, count) in [0, n].into_iter().enumerate() {
        let path = dir.join(format!("echo-cg{i}.sock"));
        let out = dir.join(format!("echo-cg{i}.out"));
        let args = callgrind(&out);
        let mut child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .arg(std::env::current_exe()?)
            .env(ECHO_ENV, &path)
            .stderr(Stdio::null())
            .spawn()?;
        let mut s = shoal_tests::echo::connect(&path, Duration::from_secs(30)).await?;
        client_ops_echo(&mut s, count).await?;
        drop(s);
        stop(&mut child).await?;
        totals.push(callgrind_total(&out)?);
    }
    Ok(totals[1].saturating_sub(totals[0]) as f64 / n as f64)
}

async fn client_ops_echo(s: &mut UnixStream, count: u64) -> Result<()> {
    let frame = ping_frame();
    let mut buf = vec![0u8; frame.len()];
    ping_frame_roundtrip(s, &frame, &mut buf).await?;
    for _ in 0..count {
        ping_frame_roundtrip(s, &frame, &mut buf).await?;
    }
    Ok(())
}

/// Instructions redis-server spends per GET.
async fn redis_cost(dir: &Path) -> Result<f64> {
    let n = ops();
    let mut totals = Vec::new();
    for (i, count) in [0, n].into_iter().enumerate() {
        let port = shoal_tests::free_port()?;
        let out = dir.join(format!("redis-cg{i}.out"));
        let args = callgrind(&out);
        let mut child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .arg("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let url = format!("redis://127.0.0.1:{port}");
        let mut c = loop {
            if let Ok(c) = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _: () = redis::cmd("SET")
            .arg("shoal:c:hot")
            .arg(vec![b'x'; 100])
            .query_async(&mut c)
            .await?;
        for _ in 0..count {
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg("shoal:c:hot")
                .query_async(&mut c)
                .await?;
        }
        drop(c);
        stop(&mut child).await?;
        totals.push(callgrind_total(&out)?);
    }
    Ok(totals[1].saturating_sub(totals[0]) as f64 / n as f64)
}

/// SIGTERM (callgrind writes its totals as the process exits), then wait.
async fn stop(child: &mut tokio::process::Child) -> Result<()> {
    if let Some(pid) = child.id() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
    }
    tokio::time::timeout(Duration::from_secs(120), child.wait()).await??;
    Ok(())
}

async fn bench() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let redis = shoal_tests::RedisServer::start().await?;
    println!("callgrind, {} operations per row, one at a time", ops());

    // Client sides, against normal servers.
    let echo_path = d.join("echo.sock");
    let mut echo = tokio::process::Command::new(std::env::current_exe()?)
        .env(ECHO_ENV, &echo_path)
        .spawn()?;
    shoal_tests::echo::connect(&echo_path, Duration::from_secs(30)).await?;
    let mut daemon =
        shoal_tests::DaemonProcess::spawn(d, "plain", &quiet_config(&redis, d, "plain"))?;
    let c = daemon.wait_ready(Duration::from_secs(60)).await?;
    c.set_raw(
        "hot",
        bytes::Bytes::from(vec![b'x'; 100]),
        Some(Duration::from_secs(3600)),
    )
    .await?;
    let client_echo = client_cost(d, "echo", &echo_path.display().to_string()).await?;
    let client_redis = client_cost(d, "redis", &redis.url()).await?;
    let client_shoal = client_cost(d, "shoal", &daemon.socket.display().to_string()).await?;
    // Prime the shared-memory slot (an L1 hit through the socket publishes it).
    c.get_raw("hot").await?;
    let client_shm = client_cost(d, "shoal-shm", &daemon.socket.display().to_string()).await?;
    let lookup_1 = client_cost(d, "lookup-1", "").await?;
    let lookup_16 = client_cost(d, "lookup-16", "").await?;
    drop(c);
    daemon.signal(nix::sys::signal::Signal::SIGTERM)?;
    daemon.wait_exit(Duration::from_secs(30)).await?;
    echo.kill().await?;

    // Server sides, each under callgrind.
    let cg = d.join("cg");
    std::fs::create_dir_all(&cg)?;
    let server_echo = echo_cost(&cg).await?;
    let server_redis = redis_cost(&cg).await?;
    let mut rows = vec![
        ("echo floor (ping frame)", client_echo, server_echo),
        ("redis-rs GET (redis-server)", client_redis, server_redis),
    ];
    rows.push((
        "shoal L1 hit, shared memory (client only; no server work)",
        client_shm,
        0.0,
    ));
    rows.push((
        "shared-memory lookup alone, 1 trust group (standalone)",
        lookup_1,
        0.0,
    ));
    rows.push((
        "shared-memory lookup alone, 16 trust groups (cluster buckets)",
        lookup_16,
        0.0,
    ));
    for (name, what, l2) in [
        ("shoal ping", DaemonOp::Ping, false),
        ("shoal L1 hit", DaemonOp::L1Hit, false),
        (
            "shoal L2 hit (daemon only; Redis not counted)",
            DaemonOp::L2Hit,
            true,
        ),
        ("shoal cache.mget 16 keys (L1)", DaemonOp::Mget16, false),
        (
            "shoal session.get (local cache)",
            DaemonOp::SessionGet,
            false,
        ),
    ] {
        let server = daemon_cost(&redis, &cg, what, l2).await?;
        // The client side of every shoal row is about the same round trip; it is
        // measured once, for an L1 hit.
        rows.push((name, client_shoal, server));
    }
    println!();
    println!("| operation | client instr/op | server instr/op | total | total / floor |");
    println!("|---|---:|---:|---:|---:|");
    let floor = client_echo + server_echo;
    for (name, c, s) in rows {
        println!(
            "| {name} | {c:.0} | {s:.0} | {:.0} | {:.2}x |",
            c + s,
            (c + s) / floor
        );
    }
    Ok(())
}
