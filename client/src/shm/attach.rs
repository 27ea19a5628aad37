//! Getting the segment from the daemon: a short-lived connection of its own
//! (`hello`, then `shm.attach`), read with `recvmsg` so the descriptor riding on
//! the answer (SCM_RIGHTS) is taken, not dropped. A dedicated connection keeps
//! the multiplexed one free of ancillary data; only processes allowed on the
//! socket get the segment.
#![forbid(unsafe_code)]

use std::path::Path;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::{raw, View};
use crate::error::{Error, Result};
use crate::proto::{decode_response, FrameCodec, HelloResult, Op, ShmAttachResult, VERSION};

/// Connects to `socket_path`, asks for the shared-memory segment and maps it.
/// An error means "use the socket only": the daemon is older, has it off
/// (`cache.shm_bytes = 0`), or the segment is not acceptable.
pub async fn attach(socket_path: &Path, client_name: &str) -> Result<View> {
    let mut stream = UnixStream::connect(socket_path)
        .await
        .map_err(Error::Connect)?;
    let mut out = crate::conn::encode_frame(
        0,
        Op::Hello {
            version: VERSION,
            client: Some(client_name.to_owned()),
        },
    );
    out.extend_from_slice(&crate::conn::encode_frame(1, Op::ShmAttach));
    stream.write_all(&out).await.map_err(Error::Io)?;

    let codec = FrameCodec::new(crate::proto::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut fd = None;
    let mut greeted = false;
    loop {
        while let Some(body) = codec
            .decode_frame(&mut buf)
            .map_err(|e| Error::Protocol(format!("bad frame from shoald: {e}")))?
        {
            if !greeted {
                match decode_response::<HelloResult>(&body) {
                    Ok(Ok(_)) => greeted = true,
                    Ok(Err(e)) => return Err(Error::from_body(e)),
                    Err(e) => return Err(Error::Protocol(format!("bad hello reply: {e}"))),
                }
                continue;
            }
            let (size, daemon_ns) = match decode_response::<ShmAttachResult>(&body) {
                Ok(Ok(r)) => (r.bytes, r.mono_ns),
                Ok(Err(e)) => return Err(Error::from_body(e)),
                Err(e) => return Err(Error::Protocol(format!("bad shm.attach reply: {e}"))),
            };
            let fd = fd.ok_or_else(|| {
                Error::Protocol("shm.attach answered without a descriptor".into())
            })?;
            // Deadlines in the segment are on the daemon's monotonic clock. Ours
            // reading less than the daemon's did before it answered means
            // another time namespace, where the deadlines would mean later.
            let now = super::mono_now_ns().unwrap_or(0);
            if now < daemon_ns {
                return Err(Error::Protocol(format!(
                    "this process's CLOCK_MONOTONIC is {} ms behind shoald's (another time namespace?); not using shared memory",
                    (daemon_ns - now) / 1_000_000
                )));
            }
            let view = View::from_fd(fd).map_err(|e| Error::Protocol(e.to_string()))?;
            tracing::debug!(
                bytes = size,
                slots = view.layout().slot_count,
                "shared-memory L1 attached"
            );
            return Ok(view);
        }
        stream.readable().await.map_err(Error::Io)?;
        let got = stream.try_io(Interest::READABLE, || {
            raw::recv_with_fd(std::os::fd::AsFd::as_fd(&stream), &mut chunk)
        });
        match got {
            Ok((0, _)) => return Err(Error::ConnectionLost),
            Ok((n, f)) => {
                buf.extend_from_slice(&chunk[..n]);
                if fd.is_none() {
                    fd = f;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
}
