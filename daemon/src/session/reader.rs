//! The revocation reader: tails the revocation stream with `XREAD BLOCK` from
//! this daemon's own cursor and applies each entry to the local session cache,
//! and proves, read after read, that nothing was missed.
//!
//! Rules, as for the invalidation subscriber:
//! 1. While not connected and caught up, the local cache is not trusted; loss of
//!    the connection makes it untrusted at once, before any reconnect backoff.
//! 2. On connecting, Redis's identity (run_id + epoch key) is checked: changed
//!    means Redis lost data or was replaced, so flush.
//! 3. After every `XREAD` (catching up or blocking), one script on the same
//!    connection (`session_check.lua`) proves that the dataset is the same (the
//!    epoch key: a `FLUSHALL` while connected is noticed here), that no entry
//!    after the read's starting cursor was removed unseen (trimmed or deleted),
//!    and which fleet token hash key is in force (put back if it vanished,
//!    adopted if another replaced it). A failed proof flushes.
//! 4. An `XREAD` sent at local time t that returns not full (entries, or empty
//!    after its `BLOCK`), with its check passed, proves every revocation appended
//!    before t has been applied: t becomes the cache's newest proof, and the
//!    cache answers only while that proof is younger than Δ (`cache.max_staleness`).
//!
//! Each `XREAD` blocks for at most `cache.heartbeat` and must answer within that
//! plus `redis.timeout`, so a silently dead connection is noticed; the cache stops
//! answering long before, once its proof is older than Δ.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::conn::Conn;
use redis::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scripts::{Check, StreamInfo};
use super::{bump, FlushReason, Sessions};
use crate::store::streamid::StreamId;

/// Entries read per `XREAD`. A batch that comes back full proves nothing about
/// what follows it: the reader reads on, without blocking, before it records a
/// proof.
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

/// Whether entries after `from` may have been removed before this daemon read
/// them. Trimming removes the oldest entries and `XDEL` records the largest id it
/// deleted, so: a deleted id past `from`; or the oldest surviving entry past a
/// cursor that had seen something (the entry at the cursor is gone, and maybe
/// others after it: we cannot tell); or, reading from the very start, fewer
/// entries left than were ever added; or every entry gone after some past `from`
/// were added; or the stream gone after we had read from it.
pub(super) fn gap_after(from: StreamId, stream: Option<&StreamInfo>) -> bool {
    let Some(s) = stream else {
        return from != StreamId::ZERO;
    };
    if s.max_deleted > from {
        return true;
    }
    match s.first {
        None => s.last_generated > from,
        Some(_) if from == StreamId::ZERO => s.entries_added > s.length,
        Some(first) => first > from,
    }
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
        // Taken before the client: a failover during the connect is seen.
        let mut primary_changes = self.store.endpoint().changes();
        primary_changes.mark_unchanged();
        let connect = async {
            self.store
                .endpoint()
                .dedicated(&self.settings.reader_name)
                .await
                .map_err(|e| e.to_string())
        };
        let mut conn = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = tokio::time::timeout(limit * 2, connect) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Ended::Lost(format!("connect failed: {e}")),
                Err(_) => return Ended::Lost("connect timed out".into()),
            },
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = self.on_connect(&mut conn) => if let Err(e) = r {
                return Ended::Lost(format!("identity check failed: {e}"));
            },
        }
        let mut ready = false;
        loop {
            let issued = Instant::now();
            let from = self.cursor();
            // Catching up reads without blocking; caught up, it waits for news.
            let block = ready.then_some(self.settings.block);
            let step = async {
                let n = self.read_batch(&mut conn, block).await?;
                self.verify(&mut conn, from).await?;
                Ok::<_, String>(n)
            };
            let n = tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                _ = primary_changes.changed() => {
                    return Ended::Lost("the redis primary changed (sentinel failover)".into());
                }
                r = step => match r {
                    Ok(n) => n,
                    Err(e) => return Ended::Lost(e),
                },
            };
            if n >= BATCH {
                // Behind: more to read before anything is proven.
                continue;
            }
            // Every revocation appended before `issued` has now been applied (or
            // a flush covered it).
            if ready {
                self.local.confirm(issued.into_std());
            } else {
                self.local.set_ready(issued.into_std());
                self.reader.ready_tx.send_replace(true);
                ready = true;
                tracing::info!(cursor = %self.cursor(), "revocation reader caught up; local session cache serving");
            }
        }
    }

    /// On (re)connecting: Redis's identity. A change means Redis lost data or
    /// was replaced: flush and start after the stream's current end. On the
    /// first connection nothing is cached yet: start at the end too.
    async fn on_connect(&self, conn: &mut Conn) -> Result<(), String> {
        let identity = self
            .store
            .identity(&self.store.session_keys())
            .await
            .map_err(|e| e.to_string())?;
        let known = self
            .reader
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let changed = known.as_ref().is_some_and(|k| *k != identity);
        if known.is_none() || changed {
            if changed {
                tracing::warn!("redis identity changed (restart or failover); flushing the local session cache");
                self.flush(FlushReason::Identity);
            }
            let check = self.check(conn).await?;
            self.adopt_checked_key(&check);
            self.set_cursor(check.stream.map_or(StreamId::ZERO, |s| s.last_generated));
        }
        *self
            .reader
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(identity);
        Ok(())
    }

    /// Runs `session_check.lua` on the reader connection.
    async fn check(&self, conn: &mut Conn) -> Result<Check, String> {
        let fleet_key = self.fleet_key_proposal();
        self.scripts
            .check(
                conn,
                &self.cx,
                &self.store.session_keys().epoch(),
                fleet_key.as_deref(),
                self.settings.timeout,
            )
            .await
    }

    /// Adopts the fleet key the check saw, if this daemon manages one via Redis.
    fn adopt_checked_key(&self, check: &Check) {
        if let Some(key) = &check.hash_key {
            if self.adopt_hash_key(key).is_none() {
                tracing::warn!(key = %self.cx.keys.hash_key(), "the session hash key in Redis is unusable");
            }
        }
    }

    /// The proof after a read that started at cursor `from`: same dataset, no
    /// entry after `from` removed unseen, the fleet's hash key. Flushes (and
    /// moves the cursor to the stream's end) when it cannot prove continuity.
    async fn verify(&self, conn: &mut Conn, from: StreamId) -> Result<(), String> {
        let check = self.check(conn).await?;
        self.adopt_checked_key(&check);
        let end = check
            .stream
            .as_ref()
            .map_or(StreamId::ZERO, |s| s.last_generated);
        let epoch_changed = {
            let mut known = self
                .reader
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match known.as_mut() {
                Some((epoch, _)) if *epoch != check.epoch => {
                    *epoch = check.epoch.clone();
                    true
                }
                _ => false,
            }
        };
        // After a flush the cursor moves to the stream's end (zero when it is
        // gone): what lies before it is covered by the flush.
        if epoch_changed {
            tracing::warn!("redis lost data while the reader was connected (epoch changed); flushing the local session cache");
            self.flush(FlushReason::Identity);
            self.set_cursor(end);
        } else if gap_after(from, check.stream.as_ref()) {
            tracing::warn!(cursor = %from, "revocation stream entries after our cursor were removed unseen; flushing the local session cache");
            self.flush(FlushReason::Trimmed);
            self.set_cursor(end);
        }
        Ok(())
    }

    /// Runs one command on the reader connection within `limit`.
    async fn bounded_for(
        &self,
        conn: &mut Conn,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<Value, String> {
        match tokio::time::timeout(limit, cmd.query_async::<Value>(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Reads and applies the entries after the cursor (blocking up to `block`).
    /// Returns how many there were.
    async fn read_batch(&self, conn: &mut Conn, block: Option<Duration>) -> Result<usize, String> {
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
        let lag = now_ms().saturating_sub(id.ms);
        bump(&self.counters.lag_buckets[crate::ops::stats::lag_bucket(lag)]);
        self.counters.lag_sum_ms.fetch_add(lag, Ordering::Relaxed);
        bump(&self.counters.lag_count);
        self.set_cursor(id);
        user_revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn stream(length: u64, first: Option<u64>, last: u64, deleted: u64, added: u64) -> StreamInfo {
        StreamInfo {
            length,
            first: first.map(id),
            last_generated: id(last),
            max_deleted: id(deleted),
            entries_added: added,
        }
    }

    #[test]
    fn gaps_are_found_and_only_real_ones() {
        // Everything after the cursor is still there (old entries trimmed).
        assert!(!gap_after(id(50), Some(&stream(60, Some(41), 100, 0, 100))));
        // The cursor's entry and maybe more after it were trimmed.
        assert!(gap_after(id(50), Some(&stream(40, Some(61), 100, 0, 100))));
        // XDEL past the cursor; XDEL before it does not matter.
        assert!(gap_after(id(50), Some(&stream(98, Some(1), 100, 70, 100))));
        assert!(!gap_after(id(50), Some(&stream(98, Some(1), 100, 30, 100))));
        // Emptied (XTRIM MAXLEN 0) after we had seen everything, or not.
        assert!(!gap_after(id(100), Some(&stream(0, None, 100, 0, 100))));
        assert!(gap_after(id(50), Some(&stream(0, None, 100, 0, 100))));
        // Reading from the very start: was anything ever removed?
        assert!(!gap_after(
            StreamId::ZERO,
            Some(&stream(3, Some(1), 3, 0, 3))
        ));
        assert!(gap_after(
            StreamId::ZERO,
            Some(&stream(3, Some(5), 7, 0, 7))
        ));
        // The stream is gone: fine only if we never read from it.
        assert!(!gap_after(StreamId::ZERO, None));
        assert!(gap_after(id(1), None));
    }
}
