//! The end-to-end harness: real `redis-server` processes on free ports, real
//! daemons (in-process through `shoald::run_with`, or the `shoald` binary), and a
//! raw socket peer for protocol tests.
//!
//! Nothing here mocks Redis. Every Redis is private to its test (a temp dir and a
//! free port; the machine's own 6379 is never touched) and dies with its handle.
#![forbid(unsafe_code)]

pub mod campaign;
pub mod cluster;
pub mod echo;
pub mod history;
pub mod proxy;
pub mod raw;
pub mod sentinel;
pub mod vectors;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use shoal_client as client;
pub use shoald;

/// Installs a test log subscriber once (`SHOAL_LOG=debug` to see daemon logs).
pub fn init_logs() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A free TCP port on loopback (the OS picks; we release it for the child).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private redis-server.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// `user:password@` for servers that require authentication.
    auth: Option<String>,
}

impl RedisServer {
    /// Starts redis-server without persistence on a free port.
    pub async fn start() -> Result<RedisServer> {
        Self::start_with(&[]).await
    }

    /// Starts with extra `--name value` arguments (e.g. `maxmemory-policy`).
    ///
    /// A free port can be taken by another process between our probe and the
    /// server's bind (several suites start servers at once): a server that exits
    /// before it answers is retried on a new port. A cluster node also gets a
    /// free bus port of its own (`--cluster-port`), since the default, port +
    /// 10000, was never probed and may be in use or above 65535.
    pub async fn start_with(extra: &[&str]) -> Result<RedisServer> {
        Self::start_on_free_ports(extra, None).await
    }

    /// As [`RedisServer::start_with`], requiring `password` of every client
    /// (`requirepass`) and giving it to its primary (`masterauth`), as a
    /// password-protected cluster or replica set runs.
    pub async fn start_with_password(extra: &[&str], password: &str) -> Result<RedisServer> {
        let mut args = extra.to_vec();
        args.extend(["--requirepass", password, "--masterauth", password]);
        let auth = (format!(":{password}@"), None);
        Self::start_on_free_ports(&args, Some(auth)).await
    }

    /// `auth`: the URL's `user:password@` and, for ACL users, the ACL file's
    /// text.
    async fn start_on_free_ports(
        extra: &[&str],
        auth: Option<(String, Option<String>)>,
    ) -> Result<RedisServer> {
        let mut last = None;
        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            if extra.iter().any(|a| a == "--cluster-enabled") {
                extra.extend(["--cluster-port".to_string(), free_port()?.to_string()]);
            }
            if let Some((_, Some(text))) = &auth {
                let file = dir.path().join("users.acl");
                std::fs::write(&file, text)?;
                extra.extend(["--aclfile".to_string(), file.display().to_string()]);
            }
            let mut r = RedisServer {
                port: free_port()?,
                dir,
                child: None,
                extra,
                auth: auth.as_ref().map(|(userinfo, _)| userinfo.clone()),
            };
            match r.spawn().await {
                Ok(()) => return Ok(r),
                Err(e) if r.exited() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Whether the server process has exited (it could not bind, or crashed).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (is it installed? apt-get install redis-server)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.conn().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            let exited = self.exited();
            if exited || Instant::now() > deadline {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                let what = if exited { "exited" } else { "did not come up" };
                bail!(
                    "redis-server on port {} {what}; its log ends:\n{}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts a server whose clients must authenticate as ACL user `user`
    /// (the default user is disabled).
    pub async fn start_with_acl_user(user: &str, password: &str) -> Result<RedisServer> {
        let text = format!("user default off\nuser {user} on >{password} ~* &* +@all\n");
        Self::start_on_free_ports(&[], Some((format!("{user}:{password}@"), Some(text)))).await
    }

    pub fn url(&self) -> String {
        format!(
            "redis://{}127.0.0.1:{}",
            self.auth.as_deref().unwrap_or(""),
            self.port
        )
    }

    /// A fresh multiplexed connection for assertions and fault injection. No
    /// response timeout: a test that stalls Redis waits for it on purpose.
    pub async fn conn(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Sends a signal to the server (`SIGSTOP` hangs it with its connections
    /// open, `SIGCONT` resumes it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let child = self.child.as_ref().context("redis-server is not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port: empty without persistence, with its
    /// data when started with `--appendonly yes` (see [`RedisServer::restart_empty`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server and starts it again on the same port with its data
    /// directory emptied: whatever persistence it had, it comes back empty.
    pub async fn restart_empty(&mut self) -> Result<()> {
        self.stop();
        for entry in std::fs::read_dir(self.dir.path())? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        self.spawn().await
    }

    /// The newest entry of a stream (e.g. `shoal:log`): its id ("0-0" when the
    /// stream is empty) and fields. Tests await "every daemon applied this".
    pub async fn last_entry(&self, stream: &str) -> Result<(String, Vec<(String, String)>)> {
        let mut c = self.conn().await?;
        let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(last
            .into_iter()
            .next()
            .unwrap_or_else(|| ("0-0".into(), Vec::new())))
    }

    /// The id of the newest invalidation log entry.
    pub async fn last_log_id(&self) -> Result<String> {
        Ok(self.last_entry("shoal:log").await?.0)
    }

    /// Kills every Pub/Sub client connection (the daemons' subscribers).
    pub async fn kill_pubsub_clients(&self) -> Result<u64> {
        let mut c = self.conn().await?;
        Ok(redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut c)
            .await?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test configuration pointing at `redis`, with a socket in `dir`.
pub fn test_config(redis: &RedisServer, dir: &Path, node: &str) -> shoald::Config {
    let mut c = shoald::Config::default();
    c.node.id = node.to_string();
    c.socket.path = dir.join(format!("{node}.sock"));
    c.redis.url = redis.url();
    c.redis.timeout = Duration::from_millis(300);
    c.admin.listen = String::new();
    c.shutdown.grace = Duration::from_secs(5);
    c
}

/// A daemon running inside the test process, through the same `run` as the binary.
#[derive(Debug)]
pub struct Daemon {
    pub ctx: Arc<shoald::Ctx>,
    pub socket: PathBuf,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), shoald::RunError>>>,
}

impl Daemon {
    /// Binds and starts the daemon; does not wait for readiness.
    pub async fn start(config: shoald::Config) -> Result<Daemon> {
        init_logs();
        let socket = config.socket.path.clone();
        let mode = config.socket_mode()?;
        let listener = shoald::bind(&socket, mode).await?;
        let ctx = Arc::new(shoald::Ctx::new(config)?);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(shoald::run_with(listener, ctx.clone(), shutdown.clone()));
        Ok(Daemon {
            ctx,
            socket,
            shutdown,
            handle: Some(handle),
        })
    }

    /// Starts a daemon and waits until its L1 is trusted.
    pub async fn start_ready(config: shoald::Config) -> Result<Daemon> {
        let d = Daemon::start(config).await?;
        d.wait_ready(Duration::from_secs(10)).await?;
        Ok(d)
    }

    /// Waits for the invalidation subscriber to be caught up.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let mut rx = self.ctx.coherence.watch();
        tokio::time::timeout(within, rx.wait_for(|r| *r))
            .await
            .context("daemon did not become ready")??;
        Ok(())
    }

    /// Waits until the subscriber has lost its connection (not ready).
    pub async fn wait_unready(&self, within: Duration) -> Result<()> {
        let mut rx = self.ctx.coherence.watch();
        tokio::time::timeout(within, rx.wait_for(|r| !*r))
            .await
            .context("daemon did not notice the outage")??;
        Ok(())
    }

    /// Waits until this daemon has applied the change with log id `seq`.
    pub async fn wait_applied(&self, seq: &str, within: Duration) -> Result<()> {
        let want = shoald::store::streamid::StreamId::parse(seq).context("bad seq")?;
        let mut rx = self.ctx.coherence.watch_applied();
        tokio::time::timeout(within, rx.wait_for(|a| *a >= want))
            .await
            .with_context(|| format!("change {seq} not applied within {within:?}"))??;
        Ok(())
    }

    pub async fn client(&self) -> Result<shoal_client::Client> {
        Ok(shoal_client::Client::connect(&self.socket).await?)
    }

    /// A counter from the daemon's stats.
    pub fn stat(&self, name: &str) -> u64 {
        self.ctx.stats.snapshot().get(name).copied().unwrap_or(0)
    }

    /// SIGTERM equivalent: cancel and wait for `run` to return.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await??;
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs a workspace binary with `args` (without the test's `SHOAL_*`
/// variables): its exit code, stdout and stderr.
pub async fn run_bin(name: &str, args: &[&str]) -> Result<(i32, String, String)> {
    let mut cmd = tokio::process::Command::new(workspace_bin(name)?);
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHOAL_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// A rate-limit policy for tests: `limit` per `window_ms`, closed when Redis
/// is unavailable, counted on one node (no per-daemon share).
pub fn policy(
    algorithm: shoald::config::Algorithm,
    limit: u64,
    window_ms: u64,
) -> shoald::config::PolicyConfig {
    shoald::config::PolicyConfig {
        algorithm,
        limit,
        window: Duration::from_millis(window_ms),
        burst: None,
        on_unavailable: shoald::config::FailMode::Closed,
        expected_nodes: 1,
        overrides: Default::default(),
        max_reserve_ahead: None,
        headers: None,
        block: None,
    }
}

/// `callers` tasks spread over `clients`, each making `per_caller` rate-limit
/// checks of `key` under `policy`; how many were allowed.
pub async fn hammer(
    clients: &[shoal_client::Client],
    policy: &str,
    key: &str,
    callers: usize,
    per_caller: usize,
) -> Result<u64> {
    let mut tasks = Vec::new();
    for i in 0..callers {
        let c = clients[i % clients.len()].clone();
        let (policy, key) = (policy.to_string(), key.to_string());
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0u64;
            for _ in 0..per_caller {
                if c.check(&policy, &key).await?.allowed {
                    allowed += 1;
                }
            }
            Ok::<_, shoal_client::Error>(allowed)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

/// `key` read through `c` as a string, with where the daemon found it
/// (`None` on a miss).
pub async fn read_string(
    c: &shoal_client::Client,
    key: &str,
) -> Result<(Option<String>, Option<shoal_client::Source>)> {
    let r = c.get_full(key, false).await?;
    let v = match r.value {
        Some(b) if r.hit => Some(shoal_client::proto::from_value::<String>(&b)?),
        _ => None,
    };
    Ok((v, r.from))
}

/// Path of a binary of the workspace (`shoald`, `shoalctl`), building it if it
/// is missing or older than the daemon's sources.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    // Built before the daemon's sources last changed (a `git merge` since):
    // rebuilt, or a test would run yesterday's daemon without a word.
    let stale = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_or(true, |built| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            ["daemon/src", "daemon/Cargo.toml", "lua", "Cargo.lock"]
                .iter()
                .any(|p| newer_than(&root.join(p), built))
        });
    if stale {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "shoald", "--bin", name]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status()?;
        if !status.success() {
            bail!("cargo build of {name} failed");
        }
    }
    Ok(path)
}

/// Whether `path` (a file, or any file under a directory) changed after `t`.
fn newer_than(path: &Path, t: std::time::SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| newer_than(&e.path(), t))
    } else {
        meta.modified().is_ok_and(|m| m > t)
    }
}

/// A `shoald` process.
#[derive(Debug)]
pub struct DaemonProcess {
    pub child: Child,
    pub socket: PathBuf,
}

impl DaemonProcess {
    /// Starts the binary with `config_toml` written to `dir/<node>.toml`.
    pub fn spawn(dir: &Path, node: &str, config_toml: &str) -> Result<DaemonProcess> {
        DaemonProcess::spawn_wrapped(dir, node, config_toml, &[])
    }

    /// As [`DaemonProcess::spawn`], run under `wrapper` (e.g. `valgrind
    /// --tool=callgrind`): the command line is `wrapper... shoald --config ...`.
    pub fn spawn_wrapped(
        dir: &Path,
        node: &str,
        config_toml: &str,
        wrapper: &[&str],
    ) -> Result<DaemonProcess> {
        let file = dir.join(format!("{node}.toml"));
        std::fs::write(&file, config_toml)?;
        let bin = workspace_bin("shoald")?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // The daemon refuses `SHOAL_*` variables that name no config key; the
        // test's own (`SHOAL_CAMPAIGN_SEED`, ...) are not for it: its config is
        // the file.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SHOAL_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&file)
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(DaemonProcess {
            child,
            socket: dir.join(format!("{node}.sock")),
        })
    }

    /// Copies the process's stderr (its log) into `file` from a background
    /// thread. A test that does not read stderr itself and makes the daemon log a
    /// lot must call this: a full pipe would block the daemon's logging thread.
    pub fn drain_stderr_to(&mut self, file: &Path) -> Result<()> {
        if let Some(mut err) = self.child.stderr.take() {
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)?;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut err, &mut out);
            });
        }
        Ok(())
    }

    /// The TOML a test daemon process needs.
    pub fn config_toml(redis: &RedisServer, dir: &Path, node: &str) -> String {
        format!(
            "[node]\nid = \"{node}\"\n[socket]\npath = \"{}\"\n[redis]\nurl = \"{}\"\ntimeout = \"300ms\"\n[admin]\nlisten = \"\"\n[shutdown]\ngrace = \"5s\"\n",
            dir.join(format!("{node}.sock")).display(),
            redis.url()
        )
    }

    /// Waits until the daemon answers and reports ready.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<shoal_client::Client> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("shoald exited early with {status}");
            }
            if let Ok(c) = shoal_client::Client::connect(&self.socket).await {
                let stats: std::collections::BTreeMap<String, u64> =
                    c.call(shoal_client::proto::Op::Stats).await?;
                if stats.get("ready") == Some(&1) {
                    return Ok(c);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "shoald at {} not ready in {within:?}",
                    self.socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("shoald did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Operations (issue 7): the admin HTTP server as a test sees it. ----

impl Daemon {
    /// The admin server's address, once it listens (set `admin.listen` to
    /// `"127.0.0.1:0"` in the test's config).
    pub async fn admin_addr(&self, within: Duration) -> Result<std::net::SocketAddr> {
        let mut rx = self.ctx.admin_addr.subscribe();
        let addr = tokio::time::timeout(within, rx.wait_for(|a| a.is_some()))
            .await
            .context("the admin server did not start (is admin.listen set?)")??;
        (*addr).context("admin address vanished")
    }
}

/// One HTTP response, as read off the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.body).context("body is not UTF-8")
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("body is not JSON")
    }
}

/// `GET path` over a fresh HTTP/1.1 connection (`Connection: close`), with
/// extra request headers. A deliberately small client: the point is to see
/// exactly what the server sends (status line, headers, chunked or not).
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .context("response timed out")??;
    parse_http_response(&raw)
}

/// Parses a complete HTTP/1.1 response (Content-Length, chunked, or to EOF).
pub fn parse_http_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).context("headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let mut parts = status_line.splitn(3, ' ');
    if parts.next() != Some("HTTP/1.1") {
        bail!("not an HTTP/1.1 status line: {status_line:?}");
    }
    let status: u16 = parts.next().context("no status")?.parse()?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').context("malformed header")?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let rest = &raw[split + 4..];
    let resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let nl = rest[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("truncated chunk size")?;
            let size_line = std::str::from_utf8(&rest[at..at + nl])?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(at..at + size).context("truncated chunk")?);
            at += size + 2;
        }
        body
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse()?;
        rest.get(..len).context("truncated body")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { body, ..resp })
}

// ---- Dev mode (issue 11): `shoald --dev` as a new user starts it. ----

/// A `shoald --dev` process started in `dir` (its `./shoal.sock` is there), with
/// its temporary files under `tmp`, and what its start banner says.
#[derive(Debug)]
pub struct DevDaemon {
    pub child: Child,
    /// Every stderr line so far.
    pub lines: Vec<String>,
    rx: std::sync::mpsc::Receiver<String>,
    /// The banner's socket (absolute).
    pub socket: PathBuf,
    /// The banner's admin URL (`http://127.0.0.1:PORT/`).
    pub admin: String,
    /// The private Redis's URL.
    pub redis_url: String,
    /// The private redis-server's pid and data directory.
    pub redis_pid: u32,
    pub redis_dir: PathBuf,
    /// The ready-to-paste command lines of the banner.
    pub try_lines: Vec<String>,
}

impl DevDaemon {
    /// Starts `shoald --dev` and waits (bounded) for its banner.
    pub fn start(dir: &Path, tmp: &Path, extra: &[&str]) -> Result<DevDaemon> {
        use std::io::BufRead;
        let mut cmd = Command::new(workspace_bin("shoald")?);
        cmd.arg("--dev")
            .args(extra)
            .current_dir(dir)
            .env("TMPDIR", tmp)
            .env("SHOAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("SHOAL_") && k != "SHOAL_LOG" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn()?;
        let err = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut d = DevDaemon {
            child,
            lines: Vec::new(),
            rx,
            socket: PathBuf::new(),
            admin: String::new(),
            redis_url: String::new(),
            redis_pid: 0,
            redis_dir: PathBuf::new(),
            try_lines: Vec::new(),
        };
        d.wait_line(
            |l| l.contains("shoald --dev is serving"),
            Duration::from_secs(30),
        )?;
        // The banner's last line is the external writer's.
        d.wait_line(|l| l.contains("REDIS_URL="), Duration::from_secs(5))?;
        let banner: Vec<String> = d
            .lines
            .iter()
            .skip_while(|l| !l.contains("shoald --dev is serving"))
            .cloned()
            .collect();
        let field = |name: &str| -> Result<String> {
            banner
                .iter()
                .find_map(|l| {
                    l.trim_start()
                        .strip_prefix(name)
                        .map(|v| v.trim().to_string())
                })
                .with_context(|| format!("no `{name}` line in the banner: {banner:#?}"))
        };
        d.socket = PathBuf::from(field("socket")?);
        d.admin = field("admin")?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let redis = field("redis")?;
        d.redis_url = redis
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        d.redis_pid = redis
            .split("pid ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("no redis pid in {redis:?}"))?;
        d.redis_dir = PathBuf::from(
            redis
                .split("data in ")
                .nth(1)
                .and_then(|r| r.split(';').next())
                .with_context(|| format!("no data dir in {redis:?}"))?,
        );
        d.try_lines = banner
            .iter()
            .skip_while(|l| !l.starts_with("Try"))
            .skip(1)
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        Ok(d)
    }

    /// Waits for a stderr line matching `pred`.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool, within: Duration) -> Result<String> {
        if let Some(l) = self.lines.iter().find(|l| pred(l)) {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.lines.push(l.clone());
                    if pred(&l) {
                        return Ok(l);
                    }
                }
                Err(_) => bail!(
                    "shoald --dev: no such line within {within:?}; stderr so far:\n{}",
                    self.lines.join("\n")
                ),
            }
        }
    }
}

impl Drop for DevDaemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon drains and stops its redis-server itself.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
