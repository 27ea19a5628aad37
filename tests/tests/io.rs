//! The daemon's socket I/O under hostile or starved conditions: a peer that
//! pipelines requests and never reads its answers is disconnected once
//! `socket.write_timeout` passes (freeing what was buffered for it) while other
//! clients are served, and running out of file descriptors (EMFILE at accept)
//! never stops the daemon.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_client::proto::Op;
use shoal_client::Client;
use shoal_tests::raw::{body, frame, req, RawConn};
use shoal_tests::{test_config, Daemon, DaemonProcess, RedisServer};
use tokio::io::AsyncReadExt;

async fn stat(c: &Client, name: &str) -> Result<u64> {
    let stats: BTreeMap<String, u64> = c.call(Op::Stats).await?;
    stats.get(name).copied().context("no such stat")
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_disconnected_after_write_timeout() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(&redis, dir.path(), "a");
    let write_timeout = Duration::from_millis(300);
    cfg.socket.write_timeout = write_timeout;
    let d = Daemon::start_ready(cfg).await?;
    let c = d.client().await?;
    let value = vec![b'v'; 512 * 1024];
    c.set_raw("big", value.clone(), None).await?;
    assert_eq!(stat(&c, "connections").await?, 1);

    // 64 pipelined gets of a 512 KiB value: 32 MiB of answers, never read.
    let mut raw = RawConn::greeted(&d.socket).await?;
    let mut burst = Vec::new();
    for id in 1..=64u64 {
        burst.extend(frame(&body(&req(&[
            ("op", "cache.get".into()),
            ("id", id.into()),
            ("key", "big".into()),
        ]))));
    }
    raw.send_bytes(&burst).await?;
    let sent = Instant::now();

    // Others are served while the daemon's write to the non-reader is stuck.
    assert_eq!(c.get_raw("big").await?.as_deref(), Some(&value[..]));
    // The deadline passes and the daemon lets the connection go.
    let deadline = sent + Duration::from_secs(5);
    while stat(&c, "connections").await? != 1 {
        if Instant::now() > deadline {
            bail!("the non-reading peer is still connected 5 s later");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sent.elapsed() >= write_timeout,
        "disconnected before the deadline"
    );
    // What reaches the peer ends in EOF, well short of every answer.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.stream.read_to_end(&mut got))
        .await
        .context("no EOF from the daemon")??;
    assert!(got.len() < 64 * value.len(), "{} bytes", got.len());
    // And the daemon carries on.
    assert_eq!(c.get_raw("big").await?.as_deref(), Some(&value[..]));
    let c2 = d.client().await?;
    c2.ping().await?;
    Ok(())
}

/// Lines of a daemon's stderr, read by a thread so the pipe never fills.
fn stderr_lines(d: &mut DaemonProcess) -> Result<std::sync::mpsc::Receiver<String>> {
    let stderr = d.child.stderr.take().context("stderr not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

#[tokio::test]
async fn running_out_of_file_descriptors_at_accept_never_stops_the_daemon() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut d = DaemonProcess::spawn(
        dir.path(),
        "a",
        &DaemonProcess::config_toml(&redis, dir.path(), "a"),
    )?;
    let lines = stderr_lines(&mut d)?;
    let c = d.wait_ready(Duration::from_secs(10)).await?;
    let pid = d.child.id();

    // Two descriptors to spare, then none: the third connection hits EMFILE.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let limit = open + 2;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .context("prlimit (util-linux) is needed for this test")?;
    if !out.status.success() {
        bail!("prlimit failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::UnixStream::connect(&d.socket).await?);
    }
    // Wait for the daemon to report the failed accept.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("accept") => break,
            Ok(_) => {}
            Err(_) => bail!("no accept failure logged with {limit} descriptors"),
        }
    }
    // Out of descriptors for longer than any give-up threshold: still running,
    // still answering its connected clients.
    let starved = Instant::now();
    while starved.elapsed() < Duration::from_secs(6) {
        if let Some(status) = d.child.try_wait()? {
            bail!("shoald exited with {status} while out of file descriptors");
        }
        c.ping().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Descriptors come back: new connections are accepted and answered.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let fresh = loop {
        match Client::connect(&d.socket).await {
            Ok(fresh) if fresh.ping().await.is_ok() => break fresh,
            _ if Instant::now() > deadline => bail!("no new connection accepted"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    fresh.set_raw("k", &b"v"[..], None).await?;
    assert_eq!(c.get_raw("k").await?.as_deref(), Some(&b"v"[..]));
    assert!(d.child.try_wait()?.is_none());
    Ok(())
}
