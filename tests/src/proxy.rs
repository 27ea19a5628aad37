//! A TCP fault proxy between daemons (or clients) and Redis.
//!
//! It can hold the bytes flowing back from Redis (so a reply is deterministically
//! "in flight" while the test does something else), add latency each way (a modelled
//! network), and cut every connection at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Controls {
    hold_replies: bool,
    /// Hold only reply chunks containing these bytes (e.g. one GET's value).
    hold_matching: Option<&'static [u8]>,
    delay: Duration,
    /// Refuse new connections (Redis "unreachable" for this proxy's users).
    blocked: bool,
    /// Hold every byte in both directions, and accept new connections without
    /// forwarding anything: a partition with no RST, until healed.
    blackhole: bool,
}

#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    controls: Arc<watch::Sender<Controls>>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
    /// Counts reply chunks that were held, so a test can await "the reply is in flight".
    held: Arc<watch::Sender<usize>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let controls = Arc::new(
            watch::channel(Controls {
                hold_replies: false,
                hold_matching: None,
                delay: Duration::ZERO,
                blocked: false,
                blackhole: false,
            })
            .0,
        );
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let held = Arc::new(watch::channel(0usize).0);
        let (c2, cut2, stop2, held2) = (controls.clone(), cut.clone(), stop.clone(), held.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((down, _)) = accepted else { continue };
                if c2.borrow().blocked {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let token = cut2.lock().unwrap_or_else(|p| p.into_inner()).child_token();
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(
                    dr,
                    uw,
                    c2.subscribe(),
                    false,
                    token.clone(),
                    held2.clone(),
                ));
                tokio::spawn(pipe(ur, dw, c2.subscribe(), true, token, held2.clone()));
            }
        });
        Ok(FaultProxy {
            port,
            controls,
            cut,
            stop,
            held,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds every byte coming back from Redis until [`FaultProxy::release`].
    pub fn hold_replies(&self) {
        self.controls.send_modify(|c| c.hold_replies = true);
    }

    /// Waits until at least `n` reply chunks have been held since the start.
    pub async fn wait_held(&self, n: usize, within: Duration) -> Result<()> {
        let mut rx = self.held.subscribe();
        tokio::time::timeout(within, rx.wait_for(|h| *h >= n)).await??;
        Ok(())
    }

    /// Holds only reply chunks that contain `pattern`, until [`FaultProxy::release`].
    pub fn hold_replies_matching(&self, pattern: &'static [u8]) {
        self.controls
            .send_modify(|c| c.hold_matching = Some(pattern));
    }

    pub fn release(&self) {
        self.controls.send_modify(|c| {
            c.hold_replies = false;
            c.hold_matching = None;
        });
    }

    /// Cuts every connection and refuses new ones until [`FaultProxy::unblock`].
    pub fn block(&self) {
        self.controls.send_modify(|c| c.blocked = true);
        self.cut_all();
    }

    pub fn unblock(&self) {
        self.controls.send_modify(|c| c.blocked = false);
    }

    /// Partitions this proxy's users from Redis without closing anything: every
    /// byte either way is held (TCP keeps the connections open, no RST), new
    /// connections are accepted and held too. [`FaultProxy::heal`] delivers
    /// everything held, as a healed network would.
    pub fn blackhole(&self) {
        self.controls.send_modify(|c| c.blackhole = true);
    }

    /// Ends a [`FaultProxy::blackhole`].
    pub fn heal(&self) {
        self.controls.send_modify(|c| c.blackhole = false);
    }

    /// Adds `d` of latency to each chunk, each way.
    pub fn set_delay(&self, d: Duration) {
        self.controls.send_modify(|c| c.delay = d);
    }

    /// Closes every open connection (new ones are still accepted).
    pub fn cut_all(&self) {
        let mut t = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        t.cancel();
        *t = CancellationToken::new();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut_all();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut controls: watch::Receiver<Controls>,
    is_reply: bool,
    cut: CancellationToken,
    held: Arc<watch::Sender<usize>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = cut.cancelled() => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if controls.borrow_and_update().blackhole {
            let closed = tokio::select! {
                _ = cut.cancelled() => return,
                r = controls.wait_for(|c| !c.blackhole) => r.is_err(),
            };
            if closed {
                return;
            }
        }
        let c = *controls.borrow_and_update();
        if !c.delay.is_zero() {
            tokio::time::sleep(c.delay).await;
        }
        if is_reply {
            let chunk = &buf[..n];
            let matches = |c: &Controls| {
                c.hold_matching
                    .is_some_and(|p| chunk.windows(p.len()).any(|w| w == p))
            };
            let now = *controls.borrow();
            if now.hold_replies || matches(&now) {
                held.send_modify(|h| *h += 1);
            }
            let closed = tokio::select! {
                _ = cut.cancelled() => return,
                r = controls.wait_for(|c| !c.hold_replies && !matches(c)) => r.is_err(),
            };
            if closed {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A latency-only TCP proxy with sub-millisecond precision (tokio's timer has 1 ms
/// granularity, too coarse to model a 200 µs hop). Each direction of each
/// connection is a pair of OS threads: one stamps chunks as they arrive, the other
/// forwards each chunk once its stamp plus `delay` has passed. Chunks pipeline, so
/// the delay is latency, not a bandwidth cap: a modelled network between hosts.
#[derive(Debug)]
pub struct DelayProxy {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl DelayProxy {
    pub fn start(upstream: u16, delay: Duration) -> Result<DelayProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for down in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(down) = down else { continue };
                let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                if let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) {
                    delayed_pipe(down, u2, delay);
                    delayed_pipe(up, d2, delay);
                }
            }
        });
        Ok(DelayProxy { port, stop })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn delayed_pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((std::time::Instant::now(), buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((at, chunk)) = rx.recv() {
            let due = at + delay;
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
