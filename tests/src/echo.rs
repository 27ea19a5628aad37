//! The socket floor the benches compare against: a trivial length-prefixed echo
//! server (one task per connection, complete frames echoed whole), run in its own
//! process as `shoald` is, so a row's cost can be set beside "no work at all".

use std::path::PathBuf;

use anyhow::Result;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Serves echo on a Unix socket at `path` until the process is killed.
pub fn serve(path: PathBuf) -> Result<()> {
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

/// Connects to a Unix socket whose server (the echo floor, a daemon under
/// valgrind) is still starting: retried every 10 ms for up to `within`.
pub async fn connect(path: &std::path::Path, within: std::time::Duration) -> Result<UnixStream> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() >= deadline => {
                anyhow::bail!("cannot connect to {}: {e}", path.display())
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}
