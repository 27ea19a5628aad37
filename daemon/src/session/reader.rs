//! The revocation reader: tails the revocation stream with `XREAD BLOCK` from this
//! daemon's own cursor (not a consumer group: every daemon must see every entry)
//! and evicts what it names from the local session cache.
//!
//! It follows the gap rules of the invalidation subscriber (DESIGN.md, coherence
//! point 4), on a dedicated connection (a blocking read would stall the shared
//! multiplexed one):
//! 1. While not connected and caught up, the local cache is not trusted.
//! 2. After connecting, check Redis's identity (run_id + epoch key): changed means
//!    Redis lost data, so flush. Otherwise, if the stream's first entry is past the
//!    cursor (or the stream is gone), entries we never saw may have been trimmed:
//!    flush. Then read everything after the cursor.
//! 3. Only then trust the cache again and report ready.
//!
//! Each `XREAD` blocks for at most `cache.heartbeat` and must answer within that
//! plus `redis.timeout`, so a silently dead connection is noticed like a missed
//! heartbeat. A batch that comes back full means the reader is behind; the stream
//! is then checked for a trim past the cursor as well.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{bump, FlushReason, Sessions};
use crate::streamid::StreamId;

/// Entries read per `XREAD`: no more than the smallest allowed stream length
/// (100). `MAXLEN ~` keeps at least that many, so if entries after our cursor were
/// trimmed, at least a full batch is still after it: a batch that is not full
/// proves no gap, and a full one is checked against the stream's first entry.
const BATCH: usize = 100;

enum Ended {
    Cancelled,
    Lost(String),
}

type Entry = (StreamId, Vec<Value>);

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// Entries of an `XRANGE`/`XREVRANGE` reply, or of one stream of an `XREAD` reply.
fn entries(v: Value) -> Result<Vec<Entry>, String> {
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            _ => Err("stream entries are not an array".into()),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            return Err("a stream entry is not an array".into());
        };
        if parts.len() != 2 {
            return Err("a stream entry is not [id, fields]".into());
        }
        let fields = match parts.pop() {
            Some(Value::Array(f)) => f,
            Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            Some(Value::Nil) | None => Vec::new(),
            Some(_) => return Err("stream entry fields are not an array".into()),
        };
        let id = parts
            .pop()
            .as_ref()
            .and_then(as_string)
            .and_then(|s| StreamId::parse(&s))
            .ok_or("a stream entry id is unreadable")?;
        out.push((id, fields));
    }
    Ok(out)
}

/// The entries of the single stream of an `XREAD` reply (RESP2 or RESP3).
fn xread_entries(v: Value) -> Result<Vec<Entry>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(mut pair)) if pair.len() == 2 => {
                entries(pair.pop().unwrap_or(Value::Nil))
            }
            None => Ok(Vec::new()),
            Some(_) => Err("XREAD reply is not [[stream, entries]]".into()),
        },
        Value::Map(streams) => match streams.into_iter().next() {
            Some((_, e)) => entries(e),
            None => Ok(Vec::new()),
        },
        _ => Err("XREAD reply has an unexpected type".into()),
    }
}

fn field(fields: &[Value], name: &str) -> Option<String> {
    fields
        .chunks_exact(2)
        .find(|kv| as_string(&kv[0]).as_deref() == Some(name))
        .and_then(|kv| as_string(&kv[1]))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Sessions {
    /// Runs the reader until `cancel` fires, reconnecting with backoff.
    pub(super) async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(20);
        let mut first = true;
        loop {
            self.set_unready();
            if !first {
                bump(&self.counters.reader_reconnects);
            }
            first = false;
            let started = Instant::now();
            match self.follow_once(&cancel).await {
                Ended::Cancelled => {
                    self.set_unready();
                    return;
                }
                Ended::Lost(why) => {
                    tracing::warn!(redis = %self.store.address(), reason = %why, "revocation reader lost; local session cache bypassed until it recovers");
                }
            }
            self.set_unready();
            if started.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(20);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn set_unready(&self) {
        self.local.set_unready();
        self.reader
            .ready_tx
            .send_if_modified(|r| std::mem::replace(r, false));
    }

    fn set_cursor(&self, id: StreamId) {
        self.reader.cursor_tx.send_replace(id);
    }

    /// One connection, from connect to loss.
    async fn follow_once(&self, cancel: &CancellationToken) -> Ended {
        let limit = self.settings.timeout.max(Duration::from_secs(1));
        let connect = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(limit))
                // Blocking reads wait longer than any response timeout; each call
                // below carries its own deadline instead.
                .set_response_timeout(None);
            let mut conn = self
                .store
                .client()
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.settings.reader_name)
                .query_async::<()>(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let mut conn = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = tokio::time::timeout(limit * 2, connect) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Ended::Lost(format!("connect failed: {e}")),
                Err(_) => return Ended::Lost("connect timed out".into()),
            },
        };
        let caught_up_at = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = self.catch_up(&mut conn) => match r {
                Ok(at) => at,
                Err(e) => return Ended::Lost(format!("catch-up failed: {e}")),
            },
        };
        self.local.set_ready(caught_up_at.into_std());
        self.reader.ready_tx.send_replace(true);
        tracing::info!(cursor = %self.cursor(), "revocation reader caught up; local session cache serving");
        loop {
            let issued = Instant::now();
            let read = tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                r = self.read_batch(&mut conn, Some(self.settings.block)) => r,
            };
            if let Err(e) = read {
                return Ended::Lost(e);
            }
            // Every revocation issued before `issued` has now been applied.
            self.local.confirm(issued.into_std());
        }
    }

    /// Identity check, trim check, then replay after the cursor. Returns the
    /// moment as of which the reader has seen everything.
    async fn catch_up(&self, conn: &mut MultiplexedConnection) -> Result<Instant, String> {
        let identity = self.store.identity().await.map_err(|e| e.to_string())?;
        let known = self
            .reader
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let changed = known.as_ref().is_some_and(|k| *k != identity);
        if !self.key_configured && (known.is_none() || changed) {
            // Redis may have lost the fleet key with everything else.
            self.load_hash_key().await.map_err(|e| e.to_string())?;
        }
        let stream = self.cx.keys.stream();
        let first = self.first_id(conn).await?;
        let last = self
            .bounded(
                conn,
                redis::cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .and_then(entries)?
            .first()
            .map(|(id, _)| *id);
        let cursor = self.cursor();
        match known {
            None => {
                // First connection: nothing is cached yet, nothing before now matters.
                self.set_cursor(last.unwrap_or(StreamId::ZERO));
            }
            Some(_) if changed => {
                tracing::warn!("redis identity changed (restart or failover); flushing the local session cache");
                self.flush(FlushReason::Identity);
                self.set_cursor(last.unwrap_or(StreamId::ZERO));
            }
            Some(_) => {
                let trimmed = match first {
                    // Entries up to the cursor are still there: nothing after it is gone.
                    Some(first) => first > cursor,
                    // An empty or missing stream after we applied something: we cannot tell.
                    None => cursor != StreamId::ZERO,
                };
                if trimmed {
                    tracing::warn!(%cursor, first = ?first, "revocation stream trimmed past our cursor; flushing the local session cache");
                    self.flush(FlushReason::Trimmed);
                    self.set_cursor(last.unwrap_or(StreamId::ZERO));
                }
            }
        }
        *self
            .reader
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(identity);
        loop {
            let at = Instant::now();
            if self.read_batch(conn, None).await? < BATCH {
                return Ok(at);
            }
        }
    }

    /// Runs one command on the reader connection within the deadline.
    async fn bounded(
        &self,
        conn: &mut MultiplexedConnection,
        cmd: &redis::Cmd,
    ) -> Result<Value, String> {
        self.bounded_for(conn, cmd, self.settings.timeout).await
    }

    async fn bounded_for(
        &self,
        conn: &mut MultiplexedConnection,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<Value, String> {
        match tokio::time::timeout(limit, cmd.query_async::<Value>(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    async fn first_id(&self, conn: &mut MultiplexedConnection) -> Result<Option<StreamId>, String> {
        let v = self
            .bounded(
                conn,
                redis::cmd("XRANGE")
                    .arg(self.cx.keys.stream())
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        Ok(entries(v)?.first().map(|(id, _)| *id))
    }

    /// Reads and applies the entries after the cursor (blocking up to `block`).
    /// Returns how many there were.
    async fn read_batch(
        &self,
        conn: &mut MultiplexedConnection,
        block: Option<Duration>,
    ) -> Result<usize, String> {
        let before = self.cursor();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(BATCH);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS")
            .arg(self.cx.keys.stream())
            .arg(before.to_string());
        let limit = self.settings.timeout + block.unwrap_or(Duration::ZERO);
        let batch = xread_entries(self.bounded_for(conn, &cmd, limit).await?)?;
        let n = batch.len();
        let mut user_revoked = false;
        for (id, fields) in batch {
            user_revoked |= self.apply_entry(id, &fields);
        }
        if user_revoked {
            // Let moka run the invalidation predicates now rather than on some
            // later request (correctness does not depend on it: reads check them).
            self.local.run_pending_tasks();
        }
        if n >= BATCH {
            // Behind: entries after our old cursor may have been trimmed before we
            // read them. If the stream no longer starts at or before it, flush.
            let first = self.first_id(conn).await?;
            if first.is_none_or(|f| f > before) {
                tracing::warn!(cursor = %before, "revocation reader fell behind a trim; flushing the local session cache");
                self.flush(FlushReason::Trimmed);
            }
        }
        Ok(n)
    }

    /// Applies one stream entry; returns whether it revoked a user.
    fn apply_entry(&self, id: StreamId, fields: &[Value]) -> bool {
        let mut user_revoked = false;
        let understood = match field(fields, "k").as_deref() {
            Some("s") | Some("d") => match field(fields, "h") {
                Some(h) => {
                    if self.local.apply_session(&h, id) {
                        bump(&self.counters.evictions);
                    }
                    true
                }
                None => false,
            },
            Some("u") => match (
                field(fields, "u"),
                field(fields, "e").and_then(|e| e.parse::<u64>().ok()),
            ) {
                (Some(user), Some(epoch)) => {
                    self.local.apply_user(&user, epoch, id);
                    user_revoked = true;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !understood {
            // We cannot tell what it revoked: assume everything.
            tracing::warn!(%id, "unreadable revocation stream entry");
            self.flush(FlushReason::BadEntry);
        }
        bump(&self.counters.events_applied);
        // Lag for the metric only: the id's time is Redis's clock, ours may differ.
        self.counters
            .lag_sum_ms
            .fetch_add(now_ms().saturating_sub(id.ms), Ordering::Relaxed);
        bump(&self.counters.lag_count);
        self.set_cursor(id);
        user_revoked
    }
}
