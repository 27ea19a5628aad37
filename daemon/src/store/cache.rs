//! L2, the cache in Redis: one script call per read or write (`cache_get`,
//! `cache_mget`, `cache_set`, `cache_invalidate`, `cache_invalidate_tags`), each
//! returning the log position it saw or wrote.
//!
//! On Redis Cluster each call goes to the bucket of its keys (see `keys.rs`):
//! `cache_mget` and `cache_invalidate` are split by bucket (one script per
//! bucket, run concurrently), and a tag invalidation visits every bucket,
//! because a tag's keys may live in any of them. Positions are per bucket.

use bytes::Bytes;
use redis::Value;

use crate::store::streamid::StreamId;

use super::reply::{opt_string, opt_u64, parse_pos};
use super::{KeyNames, Store, StoreError};

/// An L2 read of one key.
#[derive(Debug, Clone)]
pub struct L2Value {
    pub value: Option<Bytes>,
    /// Remaining TTL in ms (`None`: no TTL, which shoal never writes).
    pub ttl_ms: Option<u64>,
}

/// `cache_get` result: the value, the log position the read saw, the lease outcome.
#[derive(Debug, Clone)]
pub struct L2Get {
    pub value: L2Value,
    pub pos: StreamId,
    pub lease: Option<String>,
    pub wait_ms: Option<u64>,
}

/// Result of a write that may fill L1.
#[derive(Debug, Clone)]
pub enum SetOutcome {
    Stored(StreamId),
    LeaseLost,
}

/// Lease request of a `cache.get`.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub token: String,
    pub ttl_ms: u64,
    pub max_wait_ms: u64,
}

fn l2_value(value: Value, pttl: Value) -> Result<L2Value, StoreError> {
    let value = match value {
        Value::Nil => None,
        Value::BulkString(b) => Some(Bytes::from(b)),
        _ => return Err(StoreError::Redis("expected a bulk string value".into())),
    };
    let ttl_ms = match pttl {
        Value::Int(i) if i >= 0 => Some(i as u64),
        _ => None,
    };
    Ok(L2Value { value, ttl_ms })
}

impl Store {
    pub async fn cache_get(
        &self,
        key: &str,
        lease: Option<&LeaseRequest>,
    ) -> Result<L2Get, StoreError> {
        let mut conn = self.conn().await?;
        let names = self.keys_of(key);
        let mut inv = self.scripts.get.prepare_invoke();
        inv.key(names.value(key))
            .key(names.lease(key))
            .key(names.log());
        match lease {
            Some(l) => inv.arg("1").arg(&l.token).arg(l.ttl_ms).arg(l.max_wait_ms),
            None => inv.arg("0").arg("").arg(0).arg(0),
        };
        let v: Vec<Value> = self.call(inv.invoke_async(&mut conn)).await?;
        let [value, pttl, pos, lease, wait] = <[Value; 5]>::try_from(v)
            .map_err(|_| StoreError::Redis("cache_get returned an unexpected shape".into()))?;
        Ok(L2Get {
            value: l2_value(value, pttl)?,
            pos: parse_pos(&pos)?,
            lease: opt_string(lease)?,
            wait_ms: opt_u64(wait)?,
        })
    }

    /// Reads many keys, one round trip per group (bucket); returns the values
    /// in order, each with the log position of its group.
    pub async fn cache_mget(&self, keys: &[&str]) -> Result<Vec<(L2Value, StreamId)>, StoreError> {
        let mut out: Vec<Option<(L2Value, StreamId)>> = vec![None; keys.len()];
        // One script per group, all in flight at once (one round trip on a
        // standalone Redis; on a cluster, the slowest shard's).
        let reads = self
            .by_group(keys.iter().copied())
            .into_iter()
            .map(|(group, idx)| {
                let batch: Vec<&str> = idx.iter().map(|&i| keys[i]).collect();
                async move {
                    let names = self.group_keys(group);
                    let (values, pos) = self.cache_mget_group(&names, &batch).await?;
                    Ok::<_, StoreError>((idx, values, pos))
                }
            });
        for (idx, values, pos) in futures::future::try_join_all(reads).await? {
            for (i, v) in idx.into_iter().zip(values) {
                out[i] = Some((v, pos));
            }
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| StoreError::Redis("cache_mget lost a key".into())))
            .collect()
    }

    /// Indexes of `keys` grouped by the group (bucket) that holds them.
    fn by_group<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Vec<(u16, Vec<usize>)> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, k) in keys.enumerate() {
            let g = self.group_of(k);
            match groups.iter_mut().find(|(n, _)| *n == g) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((g, vec![i])),
            }
        }
        groups
    }

    async fn cache_mget_group(
        &self,
        names: &KeyNames,
        keys: &[&str],
    ) -> Result<(Vec<L2Value>, StreamId), StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.mget.prepare_invoke();
        inv.key(names.log());
        for k in keys {
            inv.key(names.value(k));
        }
        let v: Vec<Value> = self.call(inv.invoke_async(&mut conn)).await?;
        if v.len() != 1 + 2 * keys.len() {
            return Err(StoreError::Redis(
                "cache_mget returned an unexpected shape".into(),
            ));
        }
        let mut it = v.into_iter();
        let pos = parse_pos(&it.next().unwrap_or(Value::Nil))?;
        let mut out = Vec::with_capacity(keys.len());
        while let (Some(value), Some(pttl)) = (it.next(), it.next()) {
            out.push(l2_value(value, pttl)?);
        }
        Ok((out, pos))
    }

    pub async fn cache_set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        lease: Option<&str>,
        tags: &[String],
    ) -> Result<SetOutcome, StoreError> {
        let names = self.keys_of(key);
        let mut inv = self.scripts.set.prepare_invoke();
        inv.key(names.value(key))
            .key(names.lease(key))
            .key(names.log());
        for t in tags {
            inv.key(names.tag(t));
        }
        inv.arg(value)
            .arg(ttl_ms)
            .arg(lease.unwrap_or(""))
            .arg(self.log_len)
            .arg(names.channel())
            .arg(&self.node)
            .arg(key);
        let v: Vec<Value> = self.change(&inv).await?;
        match v.as_slice() {
            [Value::Int(1), id] => Ok(SetOutcome::Stored(parse_pos(id)?)),
            [Value::Int(0), ..] => Ok(SetOutcome::LeaseLost),
            _ => Err(StoreError::Redis(
                "cache_set returned an unexpected shape".into(),
            )),
        }
    }

    /// Deletes `keys` from L2 and announces it: one change per group (bucket),
    /// each atomic. Returns each group's log id with its keys.
    pub async fn cache_invalidate(
        &self,
        keys: &[String],
    ) -> Result<Vec<(StreamId, Vec<String>)>, StoreError> {
        let groups = self.by_group(keys.iter().map(String::as_str));
        let calls = groups.into_iter().map(|(group, idx)| {
            let batch: Vec<String> = idx.iter().map(|&i| keys[i].clone()).collect();
            async move {
                let id = self
                    .cache_invalidate_group(&self.group_keys(group), &batch)
                    .await?;
                Ok::<_, StoreError>((id, batch))
            }
        });
        futures::future::try_join_all(calls).await
    }

    async fn cache_invalidate_group(
        &self,
        names: &KeyNames,
        keys: &[String],
    ) -> Result<StreamId, StoreError> {
        let mut inv = self.scripts.invalidate.prepare_invoke();
        inv.key(names.log());
        for k in keys {
            inv.key(names.value(k)).key(names.lease(k));
        }
        inv.arg(self.log_len).arg(names.channel()).arg(&self.node);
        for k in keys {
            inv.arg(k);
        }
        let v: Value = self.change(&inv).await?;
        parse_pos(&v)
    }

    /// Invalidates every key of `tags`: one change per group (on a cluster,
    /// every bucket, since a tag's keys may be in any). Returns each group's
    /// log id with the keys it invalidated (groups without any are left out).
    pub async fn cache_invalidate_tags(
        &self,
        tags: &[String],
    ) -> Result<Vec<(StreamId, Vec<String>)>, StoreError> {
        let groups = if self.buckets == 0 { 1 } else { self.buckets };
        let calls = (0..groups).map(|g| async move {
            self.cache_invalidate_tags_group(&self.group_keys(g), tags)
                .await
        });
        let done = futures::future::try_join_all(calls).await?;
        if self.buckets == 0 {
            // One group, even without keys: its position is the answer.
            return Ok(done);
        }
        Ok(done
            .into_iter()
            .filter(|(_, keys)| !keys.is_empty())
            .collect())
    }

    async fn cache_invalidate_tags_group(
        &self,
        names: &KeyNames,
        tags: &[String],
    ) -> Result<(StreamId, Vec<String>), StoreError> {
        // The members are read first and confirmed inside the script; a set that
        // races in between makes the script ask for another round.
        for _ in 0..8 {
            let mut sunion = redis::cmd("SUNION");
            for t in tags {
                sunion.arg(names.tag(t));
            }
            let members: Vec<String> = self.cmd(&sunion).await?;
            let mut inv = self.scripts.invalidate_tags.prepare_invoke();
            inv.key(names.log());
            for t in tags {
                inv.key(names.tag(t));
            }
            for m in &members {
                inv.key(names.value(m)).key(names.lease(m));
            }
            inv.arg(self.log_len)
                .arg(names.channel())
                .arg(&self.node)
                .arg(tags.len());
            for m in &members {
                inv.arg(m);
            }
            let v: Vec<Value> = self.change(&inv).await?;
            match v.as_slice() {
                [Value::Int(1), id, _] => return Ok((parse_pos(id)?, members)),
                [Value::Int(0), ..] => continue,
                _ => {
                    return Err(StoreError::Redis(
                        "cache_invalidate_tags returned an unexpected shape".into(),
                    ))
                }
            }
        }
        Err(StoreError::Timeout(self.timeout))
    }
}
