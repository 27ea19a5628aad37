//! The `shoald` binary as operators run it: configuration errors, the socket
//! file's life cycle, and SIGTERM with requests in flight.
#![forbid(unsafe_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use nix::sys::signal::Signal;
use shoal_tests::{workspace_bin, DaemonProcess, RedisServer};

fn run_shoald(args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut cmd = Command::new(workspace_bin("shoald")?);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

#[test]
fn config_errors_exit_64_naming_the_key_and_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.toml");
    let path = file.to_str().unwrap_or_default();

    std::fs::write(&file, "[cache]\nl1_max_bytez = \"8MiB\"\n")?;
    let out = run_shoald(&["--config", path], &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("l1_max_bytez") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&file, "[redis]\ntimeout = 250\n")?;
    let out = run_shoald(&["--config", path], &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("timeout") && err.contains("bad.toml"), "{err}");

    std::fs::write(&file, "[socket]\nmode = \"999\"\n")?;
    let out = run_shoald(&["--config", path], &[])?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("socket.mode"));

    // Environment variables are checked too, and named.
    std::fs::write(&file, "")?;
    let out = run_shoald(&["--config", path], &[("SHOAL_CACHE__L1_MAX_TTL", "soon")])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.to_lowercase().contains("l1_max_ttl"), "{err}");

    let out = run_shoald(&["--config", "/nonexistent/shoal.toml"], &[])?;
    assert_eq!(out.status.code(), Some(64));
    Ok(())
}

#[test]
fn the_documented_default_config_is_valid() -> Result<()> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/shoal.toml");
    let out = run_shoald(&["--config", file, "--print-config"], &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The file documents the defaults: loading it changes nothing.
    let mut a: toml::Table = toml::from_str(std::str::from_utf8(&out.stdout)?)?;
    let out = run_shoald(&["--print-config"], &[])?;
    let mut b: toml::Table = toml::from_str(std::str::from_utf8(&out.stdout)?)?;
    // node.id defaults to the hostname; the file may leave it out or set it.
    for t in [&mut a, &mut b] {
        t.remove("node");
        t.remove("ratelimit");
    }
    assert_eq!(a, b, "config/shoal.toml must document the defaults");
    Ok(())
}

#[tokio::test]
async fn stale_socket_is_replaced_and_a_live_daemon_is_not_stolen() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let toml = DaemonProcess::config_toml(&redis, dir.path(), "s1");
    // A crashed daemon's socket file: bound, then abandoned.
    let sock = dir.path().join("s1.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock)?);
    assert!(sock.exists());
    let mut d = DaemonProcess::spawn(dir.path(), "s1", &toml)?;
    let c = d.wait_ready(Duration::from_secs(20)).await?;
    c.ping().await?;
    let meta = std::fs::metadata(&sock)?;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // A second daemon on the same path refuses to start and leaves the first alone.
    let mut second = DaemonProcess::spawn(dir.path(), "s1", &toml)?;
    let status = second.wait_exit(Duration::from_secs(20)).await?;
    assert!(!status.success());
    let mut stderr = String::new();
    if let Some(mut e) = second.child.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut stderr)?;
    }
    assert!(stderr.contains("already serving"), "{stderr}");
    c.ping().await?;

    // SIGKILL leaves a stale file; a restart takes over.
    d.signal(Signal::SIGKILL)?;
    d.wait_exit(Duration::from_secs(5)).await?;
    assert!(sock.exists());
    let mut again = DaemonProcess::spawn(dir.path(), "s1", &toml)?;
    again
        .wait_ready(Duration::from_secs(20))
        .await?
        .ping()
        .await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_answers_requests_in_flight_then_exits_0_and_removes_the_socket() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = shoal_tests::proxy::FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let toml = DaemonProcess::config_toml(&redis, dir.path(), "t1")
        .replace(&redis.url(), &proxy.url())
        .replace("timeout = \"300ms\"", "timeout = \"5s\"");
    let mut d = DaemonProcess::spawn(dir.path(), "t1", &toml)?;
    let c = d.wait_ready(Duration::from_secs(20)).await?;
    c.set_raw("k", Bytes::from_static(b"v"), None).await?;
    // Requests that need Redis are held in flight by the proxy.
    proxy.hold_replies();
    let inflight: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.set_raw(&format!("f{i}"), Bytes::from_static(b"x"), None)
                    .await
            })
        })
        .collect();
    // Wait until the daemon has all of them (its in-flight counter), then SIGTERM.
    let probe = shoal_client::Client::connect(&d.socket).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s: std::collections::BTreeMap<String, u64> =
            probe.call(shoal_client::proto::Op::Stats).await?;
        if s.get("inflight").copied().unwrap_or(0) >= 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests never arrived: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.signal(Signal::SIGTERM)?;
    // New connections are refused quickly: the socket file goes away.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d.socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "socket file not removed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.release();
    for r in inflight {
        r.await?
            .expect("every request received before SIGTERM is answered");
    }
    let status = d.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}

#[tokio::test]
async fn dev_mode_starts_a_private_redis_and_serves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("dev.sock");
    let mut child = Command::new(workspace_bin("shoald")?)
        .args(["--dev", "--admin-listen", ""])
        .arg("--socket")
        .arg(&sock)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let client = loop {
        if let Ok(c) = shoal_client::Client::connect(&sock).await {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shoald --dev never listened"
        );
        assert!(child.try_wait()?.is_none(), "shoald --dev exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client.set_raw("k", Bytes::from_static(b"v"), None).await?;
    assert_eq!(client.get_raw("k").await?.as_deref(), Some(&b"v"[..]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )?;
    let status = child.wait()?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}
