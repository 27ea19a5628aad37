//! `--dev` support: a private, throwaway redis-server for trying shoald out.
//!
//! Never used in production paths: it only exists so a new user can start a
//! working daemon with one command on a machine that has `redis-server` installed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct DevRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl DevRedis {
    /// Starts `redis-server` on a free loopback port, without persistence.
    pub async fn start() -> std::io::Result<DevRedis> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("shoald-dev-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let r = DevRedis { child, port, dir };
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
            if Instant::now() > deadline {
                return Err(std::io::Error::other(
                    "redis-server did not answer within 10s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for DevRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
