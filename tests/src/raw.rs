//! A raw protocol peer: sends arbitrary bytes, reads frames as MessagePack values.
//! Protocol tests use it to send what no well-behaved client would.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[derive(Debug)]
pub struct RawConn {
    pub stream: UnixStream,
}

/// Builds a request map from (name, value) pairs.
pub fn req(fields: &[(&str, Value)]) -> Value {
    Value::Map(
        fields
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// Encodes a value as a frame body.
pub fn body(v: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut b, v);
    b
}

/// Prefixes a body with its length.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

impl RawConn {
    pub async fn connect(path: &Path) -> Result<RawConn> {
        Ok(RawConn {
            stream: UnixStream::connect(path).await?,
        })
    }

    /// Connects and completes the hello handshake.
    pub async fn greeted(path: &Path) -> Result<RawConn> {
        let mut c = RawConn::connect(path).await?;
        c.send(&req(&[
            ("op", "hello".into()),
            ("id", 0.into()),
            ("version", 1.into()),
        ]))
        .await?;
        let r = c.recv().await?;
        if field(&r, "ok").is_none() {
            bail!("hello failed: {r}");
        }
        Ok(c)
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    pub async fn send(&mut self, v: &Value) -> Result<()> {
        self.send_bytes(&frame(&body(v))).await
    }

    /// Reads one response frame (5 s deadline).
    pub async fn recv(&mut self) -> Result<Value> {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await?;
            let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut b).await?;
            Ok::<_, anyhow::Error>(rmpv::decode::read_value(&mut &b[..])?)
        })
        .await
        .context("no response within 5s")?
    }

    /// Whether the server closed the connection (EOF within 5 s).
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A field of a map value.
pub fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

/// The error code of a response, if it is an error.
pub fn err_code(v: &Value) -> Option<String> {
    field(field(v, "err")?, "code")?
        .as_str()
        .map(str::to_string)
}

/// The id of a response.
pub fn id_of(v: &Value) -> Option<u64> {
    field(v, "id")?.as_u64()
}
