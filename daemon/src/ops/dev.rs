//! `--dev` support: a private, throwaway redis-server for trying shoald out, and
//! the configuration overlay that makes README.md's examples work against it.
//!
//! Never used in production paths: it only exists so a new user can start a
//! working daemon with one command on a machine that has `redis-server` installed.
//!
//! The redis-server must not outlive shoald, even when shoald is killed with
//! SIGKILL (no destructor runs then). So it is started by a tiny `sh`
//! supervisor whose standard input is a pipe from shoald: when shoald dies, for
//! whatever reason, the kernel closes the pipe, the supervisor reads EOF, stops
//! redis-server and removes the data directory. A directory left behind anyway
//! (the supervisor itself killed) is removed, with its redis-server, by the next
//! `shoald --dev` ([`clean_stale`]).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The dev overlay (`config/dev.toml`): the policies README.md's examples use.
pub const OVERLAY: &str = include_str!("../../../config/dev.toml");

/// Names of dev data directories in the temp dir: `shoald-dev-<shoald pid>-<port>`.
const DIR_PREFIX: &str = "shoald-dev-";

/// The supervisor: starts redis-server (`$1` dir, `$2` port), prints its pid,
/// waits for EOF on stdin (shoald gone), then stops it and removes the dir.
/// Interrupts are ignored (and so inherited ignored by redis-server): Ctrl-C in
/// a terminal stops shoald, and shoald's exit stops the rest in order.
const SUPERVISOR: &str = r#"trap '' INT HUP
redis-server --port "$2" --bind 127.0.0.1 --save "" --appendonly no --dir "$1" --pidfile "$1/redis.pid" --logfile "" </dev/null >/dev/null &
pid=$!
echo "$pid"
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$1"
"#;

#[derive(Debug)]
pub struct DevRedis {
    supervisor: Child,
    /// Held open; dropping it (or shoald dying) tells the supervisor to stop.
    lifeline: Option<ChildStdin>,
    port: u16,
    pid: u32,
    dir: PathBuf,
}

impl DevRedis {
    /// Starts `redis-server` on a free loopback port, without persistence,
    /// after removing what earlier dev runs left behind.
    pub async fn start() -> std::io::Result<DevRedis> {
        let tmp = std::env::temp_dir();
        for d in clean_stale(&tmp) {
            tracing::info!(dir = %d.display(), "dev mode: removed a stale dev directory");
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tmp.join(format!("{DIR_PREFIX}{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("shoald-dev-redis")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let lifeline = supervisor.stdin.take();
        let mut line = String::new();
        if let Some(out) = supervisor.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let pid = line.trim().parse().map_err(|_| {
            std::io::Error::other(format!(
                "the redis-server supervisor did not report a pid (got {line:?}); is redis-server installed?"
            ))
        })?;
        let r = DevRedis {
            supervisor,
            lifeline,
            port,
            pid,
            dir,
        };
        let client = redis::Client::open(r.url()).map_err(std::io::Error::other)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return Ok(r);
                }
            }
            if Instant::now() > deadline || !alive(r.pid) {
                return Err(std::io::Error::other(
                    "redis-server did not answer within 10s (is it installed? apt-get install redis-server)",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The redis-server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its data directory (removed when shoald exits).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DevRedis {
    fn drop(&mut self) {
        // EOF for the supervisor: it stops redis-server and removes the dir.
        drop(self.lifeline.take());
        let _ = self.supervisor.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Removes dev directories in `tmp` whose shoald is gone, stopping the
/// redis-server a directory's pid file names if it still runs. Returns the
/// directories removed.
pub fn clean_stale(tmp: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || alive(owner) {
            continue;
        }
        let dir = e.path();
        let redis_pid = std::fs::read_to_string(dir.join("redis.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = redis_pid.filter(|p| is_redis_server(*p)) {
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// Whether `pid` is a redis-server (a recycled pid must not be killed).
fn is_redis_server(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("redis-server"))
        .unwrap_or(false)
}
