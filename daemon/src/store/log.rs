//! The invalidation log and what proves it: Redis's identity (run id and epoch),
//! the log's bounds, atomic replay batches, heartbeats and publishing.

use redis::Value;

use crate::store::streamid::StreamId;

use super::reply::{as_string, parse_pos};
use super::{KeyNames, Store, StoreError};

/// One step of a log replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Entries after the position (empty: caught up): (id, keys JSON).
    Entries(Vec<(StreamId, Option<String>)>),
    /// The log no longer reaches back to the position.
    Trimmed,
    /// The position lies beyond the log's last id (given).
    Beyond(StreamId),
    /// There is no log although the position is not zero.
    Empty,
}

fn entries_ids(v: Vec<Value>) -> Vec<(String, Value)> {
    v.into_iter()
        .filter_map(|e| match e {
            Value::Array(mut parts) if parts.len() == 2 => {
                let fields = parts.pop()?;
                let id = as_string(&parts.pop()?)?;
                Some((id, fields))
            }
            _ => None,
        })
        .collect()
}

impl Store {
    /// The dataset epoch (created if missing) and the server's run_id, of the
    /// group named by `keys` (on a cluster: of the shard that owns its slot).
    pub async fn identity(&self, keys: &KeyNames) -> Result<(String, String), StoreError> {
        let mut conn = self.conn().await?;
        let candidate = crate::random::random_token(16);
        let mut inv = self.scripts.identity.prepare_invoke();
        inv.key(keys.epoch()).arg(candidate);
        let (epoch, run_id, role): (String, String, String) =
            self.call(inv.invoke_async(&mut conn)).await?;
        if role != "master" {
            // Catching up against a demoted primary would prove nothing about
            // the changes the new one acknowledges.
            return Err(self.trouble(
                "readonly",
                StoreError::Unavailable(format!(
                    "connected to a redis {role}, not the primary (failover in progress?)"
                )),
            ));
        }
        Ok((epoch, run_id))
    }

    /// The first and last ids of the invalidation log (`None` when it is empty or missing).
    pub async fn log_bounds(
        &self,
        keys: &KeyNames,
    ) -> Result<(Option<StreamId>, Option<StreamId>), StoreError> {
        let log = keys.log();
        let first: Vec<(String, Value)> = self
            .cmd(
                redis::cmd("XRANGE")
                    .arg(&log)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .map(|v: Vec<Value>| entries_ids(v))?;
        let last: Vec<(String, Value)> = self
            .cmd(
                redis::cmd("XREVRANGE")
                    .arg(&log)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .map(|v: Vec<Value>| entries_ids(v))?;
        let p = |v: &[(String, Value)]| v.first().and_then(|(id, _)| StreamId::parse(id));
        Ok((p(&first), p(&last)))
    }

    /// One batch of log entries after `after` (exclusive), at most `count`, read
    /// atomically with the proof that the log still reaches back to `after`.
    pub async fn log_replay(
        &self,
        keys: &KeyNames,
        after: StreamId,
        count: usize,
    ) -> Result<Replay, StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.log_replay.prepare_invoke();
        inv.key(keys.log()).arg(after.to_string()).arg(count);
        let v: Vec<Value> = self.call(inv.invoke_async(&mut conn)).await?;
        let mut it = v.into_iter();
        let tag = it.next().as_ref().and_then(as_string).unwrap_or_default();
        match tag.as_str() {
            "trimmed" => Ok(Replay::Trimmed),
            "empty" => Ok(Replay::Empty),
            "beyond" => {
                let last = it.next().map(|v| parse_pos(&v)).transpose()?;
                Ok(Replay::Beyond(last.unwrap_or(StreamId::ZERO)))
            }
            "ok" => {
                let entries = match it.next() {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let mut out = Vec::with_capacity(entries.len());
                for (id, fields) in entries_ids(entries) {
                    let Some(id) = StreamId::parse(&id) else {
                        return Err(StoreError::Redis(format!("log entry with a bad id {id:?}")));
                    };
                    let mut keys = None;
                    if let Value::Array(f) = fields {
                        let mut it = f.into_iter();
                        while let (Some(k), Some(val)) = (it.next(), it.next()) {
                            if as_string(&k).as_deref() == Some("keys") {
                                keys = as_string(&val);
                            }
                        }
                    }
                    out.push((id, keys));
                }
                Ok(Replay::Entries(out))
            }
            other => Err(StoreError::Redis(format!(
                "log_replay returned an unexpected tag {other:?}"
            ))),
        }
    }

    /// Publishes this daemon's heartbeat (see `lua/heartbeat.lua`).
    pub async fn heartbeat(
        &self,
        keys: &KeyNames,
        channel: &str,
        token: &str,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(keys.epoch())
            .key(keys.log())
            .arg(channel)
            .arg(token);
        self.call(inv.invoke_async(&mut conn)).await
    }

    /// Publishes on a channel through the command connection.
    pub async fn publish(&self, channel: &str, msg: &str) -> Result<u64, StoreError> {
        self.cmd(redis::cmd("PUBLISH").arg(channel).arg(msg)).await
    }
}
