//! The first hour of a new user (issue 11), against the real binaries: a
//! configuration that refuses what it does not know (typos in the file and in
//! `SHOAL_*` variables), `--print-config` as redacted TOML, log lines fit for a
//! file or a log collector (no colour codes off a terminal, JSON on request,
//! the Redis address without its password), and release builds without test
//! hooks.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_tests::{workspace_bin, RedisServer};

/// Runs `shoald` with `args` in `cwd`, with no inherited `SHOAL_*` variables.
fn shoald(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut cmd = Command::new(workspace_bin("shoald")?);
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("SHOAL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_sections_and_top_level_keys_exit_64_naming_them_and_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("conf"))?;
    for (text, name) in [
        ("[sesion]\nidle_ttl = \"1m\"\n", "sesion"),
        ("redis_url = \"redis://10.0.0.1:6379\"\n", "redis_url"),
    ] {
        std::fs::write(dir.path().join("conf/typo.toml"), text)?;
        // A relative path: the message names it as the user wrote it.
        let out = shoald(
            dir.path(),
            &["--config", "conf/typo.toml", "--print-config"],
            &[],
        )?;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{text}: {err}");
        assert!(err.contains(name), "{text}: {err}");
        assert!(err.contains("conf/typo.toml"), "{text}: {err}");
        assert!(
            !err.contains(&dir.path().display().to_string()),
            "the path as given, not resolved: {err}"
        );
        assert!(out.stdout.is_empty(), "nothing printed on error");
    }
    // The top-level `redis_url` gets told where the key lives.
    let err = stderr(&shoald(
        dir.path(),
        &["--config", "conf/typo.toml", "--print-config"],
        &[],
    )?);
    assert!(err.contains("[redis]") && err.contains("url"), "{err}");
    Ok(())
}

#[test]
fn messages_name_keys_as_written_without_the_profile() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("t.toml"), "[cache]\nl1_max_ttl = 5\n")?;
    let out = shoald(dir.path(), &["--config", "t.toml", "--print-config"], &[])?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("cache.l1_max_ttl"), "{err}");
    assert!(err.contains("t.toml"), "{err}");
    assert!(!err.contains("default."), "no internal profile name: {err}");

    // From the environment: the variable is named as it was set.
    let out = shoald(
        dir.path(),
        &["--print-config"],
        &[("SHOAL_CACHE__L1_MAX_TTL", "soon")],
    )?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("SHOAL_CACHE__L1_MAX_TTL"), "{err}");
    assert!(!err.contains("default."), "{err}");
    Ok(())
}

#[test]
fn an_unknown_shoal_variable_is_refused_with_the_likely_intended_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = shoald(
        dir.path(),
        &["--print-config"],
        &[("SHOAL_REDIS_URL", "redis://10.1.2.3:6379")],
    )?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("SHOAL_REDIS_URL"), "{err}");
    assert!(err.contains("SHOAL_REDIS__URL"), "{err}");
    let out = shoald(
        dir.path(),
        &["--print-config"],
        &[("SHOAL_CACHE__L1_MAX_BYTE", "1MiB")],
    )?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("SHOAL_CACHE__L1_MAX_BYTE"), "{err}");
    assert!(err.contains("SHOAL_CACHE__L1_MAX_BYTES"), "{err}");

    // Variables of shoal's other tools (and the log filters) are not config.
    let out = shoald(
        dir.path(),
        &["--print-config"],
        &[
            ("SHOAL_SOCKET", "/run/shoal/shoal.sock"),
            ("SHOAL_LOG", "debug"),
            ("SHOAL_TRACE", "off"),
            ("SHOAL_LOG__FORMAT", "json"),
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: toml::Table = toml::from_str(std::str::from_utf8(&out.stdout)?)?;
    assert_eq!(printed["log"]["format"].as_str(), Some("json"));
    Ok(())
}

#[test]
fn print_config_is_toml_with_secrets_redacted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = "k".repeat(40) + "-secret-hash-key";
    let out = shoald(
        dir.path(),
        &["--print-config"],
        &[
            ("SHOAL_REDIS__URL", "redis://app:hunter2@10.9.8.7:6380/2"),
            ("SHOAL_SESSION__TOKEN_HASH_KEY", &key),
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout)?;
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("secret-hash-key"), "{text}");
    let printed: toml::Table = toml::from_str(&text).context("--print-config prints TOML")?;
    let url = printed["redis"]["url"].as_str().unwrap();
    assert!(
        url.contains("10.9.8.7:6380/2") && url.contains("app"),
        "{url}"
    );
    assert!(
        printed["session"]["token_hash_key"]
            .as_str()
            .unwrap()
            .contains("redacted"),
        "{text}"
    );

    // Under --dev without a configured Redis, the URL shown is the private
    // redis-server's, not a default it will never use; the dev policies show.
    let out = shoald(dir.path(), &["--dev", "--print-config"], &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout)?;
    let printed: toml::Table = toml::from_str(&text)?;
    let url = printed["redis"]["url"].as_str().unwrap();
    assert!(!url.contains("6379"), "{url}");
    assert!(url.contains("private redis-server"), "{url}");
    assert!(
        printed["ratelimit"]["policies"].get("api").is_some(),
        "{text}"
    );
    assert_eq!(printed["socket"]["path"].as_str(), Some("./shoal.sock"));
    Ok(())
}

#[test]
fn a_redis_address_without_scheme_gets_a_hint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = shoald(
        dir.path(),
        &["--redis-url", "localhost:6379", "--print-config"],
        &[],
    )?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("redis://localhost:6379"), "{err}");
    Ok(())
}

/// A shoald process whose stderr is read line by line.
struct Logged {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Logged {
    fn spawn(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Logged> {
        std::fs::write(dir.join("shoal.toml"), config)?;
        let mut cmd = Command::new(workspace_bin("shoald")?);
        cmd.args(["--config", "shoal.toml"])
            .current_dir(dir)
            .env("SHOAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let err = child.stderr.take().context("stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Ok(Logged {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Err(_) => bail!(
                    "no log line with {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn logs_are_plain_off_a_terminal_and_name_redis_without_its_password() -> Result<()> {
    let redis = RedisServer::start_with_acl_user("app", "hunter2").await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[redis]\nurl = \"{}\"\n[socket]\npath = \"d.sock\"\n[admin]\nlisten = \"\"\n",
        redis.url()
    );
    let mut d = Logged::spawn(dir.path(), &config, &[])?;
    let start = d.wait_for("shoald serving", Duration::from_secs(20))?;
    assert!(!start.contains('\u{1b}'), "no ANSI colour: {start:?}");
    assert!(
        start.contains(&format!("127.0.0.1:{}", redis.port())),
        "{start}"
    );
    assert!(!start.contains("hunter2"), "{start}");
    assert!(
        start.contains("d.sock") && !start.contains("Some("),
        "{start}"
    );
    drop(d);

    // Nobody listens on this port: the connection warnings name the address.
    // (A configured token hash key keeps the start-up advice about it out of
    // the way: the first WARN is about the connection.)
    let dead = shoal_tests::free_port()?;
    let config = format!(
        "[redis]\nurl = \"redis://app:hunter2@127.0.0.1:{dead}\"\ntimeout = \"100ms\"\nwatch_interval = \"50ms\"\n[socket]\npath = \"d.sock\"\n[admin]\nlisten = \"\"\n[session]\ntoken_hash_key = \"first-hour-token-hash-key-0123456789\"\n"
    );
    let mut d = Logged::spawn(dir.path(), &config, &[])?;
    let warn = d.wait_for("WARN", Duration::from_secs(20))?;
    assert!(warn.contains(&format!("127.0.0.1:{dead}")), "{warn}");
    assert!(
        !warn.contains("hunter2") && !warn.contains('\u{1b}'),
        "{warn}"
    );
    Ok(())
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[redis]\nurl = \"{}\"\n[socket]\npath = \"j.sock\"\n[admin]\nlisten = \"\"\n[log]\nformat = \"json\"\n",
        redis.url()
    );
    let mut d = Logged::spawn(dir.path(), &config, &[])?;
    d.wait_for("shoald serving", Duration::from_secs(20))?;
    for line in &d.seen {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        assert!(v["level"].is_string(), "{line}");
    }
    let start: serde_json::Value = serde_json::from_str(d.seen.last().unwrap())?;
    assert_eq!(start["fields"]["socket"], "j.sock");
    Ok(())
}

/// `cargo build --release --workspace` must build the same `shoald` as
/// `cargo build -p shoald`: the test-only clock (`test-clock`) may be enabled
/// where tests are built, never in the normal build of the workspace. Checked
/// through cargo's own feature resolution (no release build in CI).
#[test]
fn the_workspace_build_of_shoald_has_no_test_hooks() -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--workspace",
            "--offline",
            "--edges",
            "features,no-dev",
            "--invert",
            "shoald",
            "--prefix",
            "none",
        ])
        .current_dir(root)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("shoald v"), "{text}");
    assert!(
        !text.contains("test-clock"),
        "a normal workspace build enables test-clock:\n{text}"
    );
    // Where tests are built it is there (the rate-limit tests use it).
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--workspace",
            "--offline",
            "--edges",
            "features",
            "--invert",
            "shoald",
            "--prefix",
            "none",
        ])
        .current_dir(root)
        .output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("test-clock"));
    Ok(())
}

/// Release binaries carry no debug info (they were 85-96 MB with it).
#[test]
fn the_release_profile_strips_debug_info() -> Result<()> {
    let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../Cargo.toml"
    ))?)?;
    let release = &manifest["profile"]["release"];
    assert_eq!(
        release.get("strip").and_then(|s| s.as_str()),
        Some("debuginfo"),
        "{release:?}"
    );
    assert!(
        matches!(
            release.get("debug").and_then(|d| d.as_str()),
            Some("line-tables-only")
        ) || matches!(release.get("debug").and_then(|d| d.as_bool()), Some(false))
            || release.get("debug").is_none(),
        "{release:?}"
    );
    Ok(())
}

/// Runs `shoalctl` in `cwd` with no inherited `SHOAL_*` variables.
fn shoalctl(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut cmd = Command::new(workspace_bin("shoalctl")?);
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("SHOAL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

async fn dbsize(r: &RedisServer) -> Result<u64> {
    Ok(redis::cmd("DBSIZE")
        .query_async(&mut r.conn().await?)
        .await?)
}

#[tokio::test]
async fn shoalctl_naming_a_daemon_acts_on_that_daemons_redis_and_prefix() -> Result<()> {
    let right = RedisServer::start().await?;
    // Plays the Redis a default or stale configuration points at.
    let wrong = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let toml = shoal_tests::DaemonProcess::config_toml(&right, dir.path(), "d1")
        .replace("[redis]\n", "[redis]\nprefix = \"app1:\"\n");
    let mut d = shoal_tests::DaemonProcess::spawn(dir.path(), "d1", &toml)?;
    let c = d.wait_ready(Duration::from_secs(20)).await?;
    c.set_raw("k", bytes::Bytes::from_static(b"v"), None)
        .await?;
    assert_eq!(c.get_raw("k").await?.as_deref(), Some(&b"v"[..]));

    // An explicit Redis that is not the daemon's: refused, nothing written.
    let wrong_url = wrong.url();
    for (args, env) in [
        (
            vec!["--socket", "d1.sock", "--redis-url", wrong_url.as_str()],
            vec![],
        ),
        (
            vec!["--socket", "d1.sock"],
            vec![("SHOAL_REDIS__URL", wrong_url.as_str())],
        ),
    ] {
        let mut args = args.clone();
        args.extend(["invalidate", "k"]);
        let out = shoalctl(dir.path(), &args, &env)?;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{}", right.port()))
                && err.contains(&format!("127.0.0.1:{}", wrong.port())),
            "names both: {err}"
        );
        assert_eq!(
            dbsize(&wrong).await?,
            0,
            "nothing written to the other Redis"
        );
    }
    assert_eq!(c.get_raw("k").await?.as_deref(), Some(&b"v"[..]));

    // Naming only the daemon: its Redis and its prefix.
    let out = shoalctl(dir.path(), &["--socket", "d1.sock", "invalidate", "k"], &[])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains(&format!("127.0.0.1:{}", right.port())) && text.contains("app1:"),
        "says where it acted: {text}"
    );
    assert_eq!(dbsize(&wrong).await?, 0);
    let (seq, _) = right.last_entry("app1:log").await?;
    assert_ne!(seq, "0-0", "the invalidation is in the daemon's log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get_raw("k").await?.is_some() {
        assert!(Instant::now() < deadline, "the daemon still serves k");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The same Redis given explicitly (with its credentials, if any) is fine.
    let right_url = right.url();
    let out = shoalctl(
        dir.path(),
        &[
            "--socket",
            "d1.sock",
            "--redis-url",
            right_url.as_str(),
            "invalidate",
            "k",
        ],
        &[],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn shoalctl_errors_say_their_cause_once_and_how_to_name_the_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = shoalctl(dir.path(), &["--socket", "nope.sock", "stats"], &[])?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach shoald at nope.sock"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause once: {err}"
    );
    assert!(
        err.contains("--socket") && err.contains("SHOAL_SOCKET"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn dev_mode_says_where_it_is_and_its_commands_reach_the_same_daemon_and_redis() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let d =
        shoal_tests::DevDaemon::start(dir.path(), tmp.path(), &["--admin-listen", "127.0.0.1:0"])?;
    assert_eq!(d.socket, dir.path().join("shoal.sock"));
    let c = shoal_client::Client::connect(&d.socket).await?;
    assert_eq!(c.admin_info().await?.redis, d.redis_url);
    // The admin URL answers.
    let addr: std::net::SocketAddr = d
        .admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()?;
    assert_eq!(
        shoal_tests::http_get(addr, "/healthz", &[]).await?.status,
        200
    );

    // The pasted lines, run by a shell from another directory.
    let elsewhere = tempfile::tempdir()?;
    c.set_raw("user:42", bytes::Bytes::from_static(b"v"), None)
        .await?;
    assert!(c.get_raw("user:42").await?.is_some());
    let ctl: Vec<&String> = d
        .try_lines
        .iter()
        .filter(|l| l.contains("--socket"))
        .collect();
    assert!(ctl.len() >= 3, "{:#?}", d.try_lines);
    for line in &ctl {
        let out = Command::new("sh")
            .arg("-c")
            .arg(line.as_str())
            .current_dir(elsewhere.path())
            .env_remove("SHOAL_REDIS__URL")
            .env_remove("SHOAL_CONFIG")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if line.contains(" doctor") {
            // The dev Redis keeps nothing on disk: doctor may warn, but it
            // must have inspected the dev Redis, not another one.
            assert!(
                text.contains(&d.redis_url.replace("redis://", "")) || text.contains(&d.redis_url),
                "{line}: {text}{}",
                stderr(&out)
            );
            continue;
        }
        assert!(out.status.success(), "{line}: {}", stderr(&out));
        if line.contains("invalidate") {
            assert!(text.contains(&d.redis_url), "{line}: {text}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get_raw("user:42").await?.is_some() {
        assert!(
            Instant::now() < deadline,
            "the pasted invalidate missed the daemon"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn dev_mode_killed_with_sigkill_leaves_no_redis_server_or_temp_dir() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let mut d = shoal_tests::DevDaemon::start(dir.path(), tmp.path(), &["--admin-listen", ""])?;
    assert!(!shoal_tests::process_gone(d.redis_pid));
    assert!(d.redis_dir.starts_with(tmp.path()) && d.redis_dir.exists());
    d.child.kill()?; // SIGKILL: no destructor, no signal handler runs.
    d.child.wait()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shoal_tests::process_gone(d.redis_pid) || d.redis_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "left behind: redis-server {} alive = {}, {} exists = {}",
            d.redis_pid,
            !shoal_tests::process_gone(d.redis_pid),
            d.redis_dir.display(),
            d.redis_dir.exists()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn dev_mode_removes_what_an_earlier_run_left_behind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    // A dev dir whose shoald is gone (a pid that just exited), with a live
    // redis-server whose pid file is in it, as if its supervisor had died too.
    let mut gone = Command::new("true").spawn()?;
    let dead_pid = gone.id();
    gone.wait()?;
    let stale = tmp.path().join(format!("shoald-dev-{dead_pid}-1"));
    std::fs::create_dir(&stale)?;
    let port = shoal_tests::free_port()?;
    let mut orphan = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&stale)
        .arg("--pidfile")
        .arg(stale.join("redis.pid"))
        .stdout(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stale.join("redis.pid").exists() {
        assert!(Instant::now() < deadline, "redis-server wrote no pid file");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d = shoal_tests::DevDaemon::start(dir.path(), tmp.path(), &["--admin-listen", ""])?;
    assert!(!stale.exists(), "stale dev dir still there");
    // The orphan was told to stop (it is our child, so we reap it).
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(s) = orphan.try_wait()? {
                return Ok::<_, std::io::Error>(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the orphaned redis-server was not stopped")??;
    assert!(!status.success() || status.code() == Some(0));
    // A clean stop removes the current dir too.
    let current = d.redis_dir.clone();
    drop(d);
    assert!(!current.exists());
    Ok(())
}

/// `scripts/test` on a machine without the tools: it says what is missing
/// before building or running anything (here with installing turned off).
#[test]
fn scripts_test_reports_missing_tools_up_front() -> Result<()> {
    let bin = tempfile::tempdir()?;
    // A PATH with the shell basics and python3, but no redis-server, chromium
    // or systemd-analyze (and no cargo: nothing may be built).
    for tool in ["bash", "dirname", "id", "python3", "env"] {
        let found = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(tool))
            .find(|p| p.exists())
            .with_context(|| format!("{tool} not found"))?;
        std::os::unix::fs::symlink(found, bin.path().join(tool))?;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test");
    let out = Command::new(bin.path().join("bash"))
        .arg(script)
        .env("PATH", bin.path())
        .env("SHOAL_TEST_INSTALL", "0")
        .stdin(Stdio::null())
        .output()?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for tool in ["redis-server", "chromium", "systemd"] {
        assert!(err.contains(tool), "{tool}: {err}");
    }
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("== cargo"));
    Ok(())
}
