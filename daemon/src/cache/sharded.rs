//! The invalidation subscriber on Redis Cluster: one sharded channel, one log
//! and one applied position per bucket (see `store/keys.rs`), all heard over
//! one redis-rs cluster Pub/Sub connection (`SSUBSCRIBE`, RESP3 pushes).
//!
//! redis-rs re-subscribes by itself after a reconnect or a slot move, so this
//! task cannot learn from the connection when a message may have been lost.
//! It does not need to: every bucket's heartbeat carries, besides the send
//! time, the bucket's dataset (epoch key), the server that ran it (run id,
//! role) and the log's last id *at the moment of the beat*. A beat heard back
//! on bucket b's channel proves that the subscription to b's shard delivered
//! everything published on it before the beat. Every message also names the
//! log entry before it (`prev`), so a hole is seen even when later messages
//! arrive: the applied position advances only along that chain, and a message
//! whose `prev` is not the position marks the bucket as having a gap (its keys
//! are evicted all the same). On a beat:
//! - the applied position equals the beat's last id and there is no gap:
//!   nothing was missed;
//! - there is a gap, or the position is behind: the log is replayed from the
//!   position up to the beat's last id, atomically checked against trimming
//!   (`log_replay.lua`), and a trimmed log flushes L1;
//! - a message heard before the beat carries an id beyond the beat's last id
//!   (nobody's real change: a foreign publish), or the epoch or run id changed
//!   (a restart, a shard's failover, the slot moved to another shard): L1 is
//!   flushed and the position restarts at the beat's last id, everything
//!   before it being covered by the flush.
//!
//! Only then does the beat count as a delivery proof for its bucket. L1 keeps
//! trust per bucket (see `l1.rs`): a bucket's keys are served while its proof
//! is younger than Δ, so a shard whose messages stop arriving stops serving
//! its buckets within Δ while the others go on; a flush empties only the
//! bucket's keys. A lost node connection (a `Disconnection` push, which does
//! not say which node) untrusts every bucket at once; the next beats prove
//! them again. The daemon reports ready (caught up) while every bucket is.
//!
//! A primary that hangs with its connections open keeps a connection's slot
//! map pointing at it (redis-rs refreshes it on `MOVED` or a dropped
//! connection, never on a timeout): once its replica has taken over, its
//! buckets' re-subscriptions on that connection go unanswered. When one
//! does, a fresh connection (a fresh slot map) is opened beside the first and
//! the silent buckets are subscribed there; the other buckets keep theirs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{PushKind, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::coherence::{retry_after, Beat, Message, Subscriber};
use crate::cache::l1::FlushReason;
use crate::store::streamid::StreamId;
use crate::store::{KeyNames, Replay};

/// What this daemon knows of one bucket.
#[derive(Debug, Default)]
struct Bucket {
    /// (epoch, run id) of the dataset the position belongs to.
    identity: Option<(String, String)>,
    applied: StreamId,
    /// A message did not follow the applied position: replay before the
    /// next proof.
    gap: bool,
    /// Largest id heard on the channel since the last beat.
    max_seen: StreamId,
    /// Send time of the newest beat that proved delivery (`None`: the bucket
    /// is not trusted).
    proof: Option<Instant>,
    /// When a re-subscription was last asked for.
    resubscribed: Option<Instant>,
}

/// What a channel name stands for.
#[derive(Debug, Clone, Copy)]
enum Channel {
    Invalidation(u16),
    Heartbeat(u16),
}

/// Log entries read per replay step.
const REPLAY_BATCH: usize = 1000;

struct Sharded<'a> {
    sub: &'a Subscriber,
    names: Vec<KeyNames>,
    channels: HashMap<String, Channel>,
    buckets: Vec<Bucket>,
    /// Origin of heartbeat tokens (µs since).
    origin: Instant,
}

/// Runs the cluster subscriber until `cancel` fires.
pub async fn run(sub: Subscriber, cancel: CancellationToken) {
    let n = sub.store.buckets();
    let names: Vec<KeyNames> = (0..n).map(|b| sub.store.group_keys(b)).collect();
    let mut channels = HashMap::new();
    for (b, k) in (0..n).zip(&names) {
        channels.insert(k.channel(), Channel::Invalidation(b));
        channels.insert(k.heartbeat_channel(&sub.instance), Channel::Heartbeat(b));
    }
    let mut me = Sharded {
        sub: &sub,
        names,
        channels,
        buckets: (0..n).map(|_| Bucket::default()).collect(),
        origin: Instant::now(),
    };
    let mut backoff = Duration::from_millis(20);
    loop {
        me.untrust();
        let started = Instant::now();
        let why = tokio::select! {
            _ = cancel.cancelled() => return,
            why = me.session() => why,
        };
        me.untrust();
        tracing::warn!(redis = %sub.store.address(), reason = %why, "cluster invalidation subscriber lost; L1 bypassed until recovered");
        sub.stats
            .subscriber_reconnects
            .fetch_add(1, Ordering::Relaxed);
        if !retry_after(started, &mut backoff, &cancel).await {
            return;
        }
    }
}

impl Sharded<'_> {
    /// Every bucket untrusted until it proves delivery again.
    fn untrust(&mut self) {
        for b in &mut self.buckets {
            b.proof = None;
        }
        self.sub.cache.set_unready();
        self.sub.state.set_caught_up(false);
    }

    /// Bucket `b` untrusted until it proves delivery again.
    fn untrust_bucket(&mut self, b: usize) {
        self.buckets[b].proof = None;
        self.sub.cache.set_unready_group(b);
        self.sub.state.set_caught_up(false);
    }

    /// One cluster Pub/Sub connection, from connect to loss.
    async fn session(&mut self) -> String {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let endpoint = self.sub.store.endpoint().clone();
        // Re-subscriptions that went unanswered (see the module documentation).
        let (stuck_tx, mut stuck_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (made_tx, mut made_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut fresh: Option<redis::cluster_async::ClusterConnection> = None;
        let mut renewed: Option<Instant> = None;
        // Fresh connections push here too; a weak handle, so the channel
        // still closes when the connections drop their senders.
        let weak_tx = tx.downgrade();
        let mut conn = match endpoint.cluster_pubsub(tx).await {
            Ok(c) => c,
            Err(e) => return format!("connect failed: {e}"),
        };
        if let Err(e) = self.sub.store.load_scripts().await {
            return format!("loading scripts failed: {e}");
        }
        // Every daemon and outside writer of a fleet must spread keys over the
        // same buckets, or they would read and invalidate different names.
        let layout = format!("{}{{b0}}:buckets", self.sub.store.prefix());
        let mine = self.names.len().to_string();
        let mut set = redis::cmd("SET");
        set.arg(&layout).arg(&mine).arg("NX").arg("GET");
        match self.sub.store.cmd::<Option<String>>(&set).await {
            Ok(Some(fleet)) if fleet != mine => {
                tracing::error!(key = %layout, fleet = %fleet, here = %mine, "redis.cluster.buckets differs from the fleet's; L1 stays off");
                return format!(
                    "redis.cluster.buckets is {mine} here but {fleet} in the fleet ({layout}); \
                     every daemon and writer of a fleet must use the same"
                );
            }
            Ok(_) => {}
            Err(e) => return format!("reading the fleet's bucket count failed: {e}"),
        }
        for b in 0..self.names.len() {
            let chans = self.bucket_channels(b);
            match tokio::time::timeout(self.limit(), conn.ssubscribe(&chans)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return format!("SSUBSCRIBE failed: {e}"),
                Err(_) => return "SSUBSCRIBE timed out".into(),
            }
        }
        let mut beat = tokio::time::interval(self.sub.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = rx.recv() => {
                    let Some(push) = push else {
                        return "the cluster connection closed".into();
                    };
                    self.on_push(push.kind, push.data).await;
                }
                _ = beat.tick() => {
                    self.send_beats();
                    self.resubscribe_silent(fresh.as_ref().unwrap_or(&conn), &stuck_tx);
                }
                Some(()) = stuck_rx.recv() => {
                    // At most one new connection per timeout: the cluster may
                    // simply not have failed the node over yet. Made aside, so
                    // the other buckets' beats and messages are not held up
                    // while a hung seed runs out its connection timeout.
                    if renewed.is_some_and(|t| t.elapsed() < self.limit()) {
                        continue;
                    }
                    renewed = Some(Instant::now());
                    let Some(tx) = weak_tx.upgrade() else { continue };
                    let (endpoint, made) = (endpoint.clone(), made_tx.clone());
                    tokio::spawn(async move {
                        let _ = made.send(endpoint.cluster_pubsub(tx).await);
                    });
                }
                Some(made) = made_rx.recv() => match made {
                    Ok(c) => {
                        tracing::warn!("a bucket's re-subscription went unanswered: subscribing silent buckets on a fresh cluster connection");
                        // Buckets the previous fresh connection carried go
                        // silent with it and are subscribed again here.
                        fresh = Some(c);
                        for b in &mut self.buckets {
                            b.resubscribed = None;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "no fresh cluster pubsub connection"),
                },
            }
        }
    }

    fn limit(&self) -> Duration {
        self.sub.store.timeout().max(Duration::from_secs(1))
    }

    fn bucket_channels(&self, b: usize) -> Vec<String> {
        vec![
            self.names[b].channel(),
            self.names[b].heartbeat_channel(&self.sub.instance),
        ]
    }

    /// One beat per bucket, run concurrently; their answers come back as pushes.
    fn send_beats(&self) {
        let token = self.origin.elapsed().as_micros().to_string();
        let store = self.sub.store.clone();
        let beats: Vec<(KeyNames, String)> = self
            .names
            .iter()
            .map(|k| (k.clone(), k.heartbeat_channel(&self.sub.instance)))
            .collect();
        tokio::spawn(async move {
            let calls = beats.iter().map(|(k, ch)| store.heartbeat(k, ch, &token));
            // A failed beat proves nothing; the bucket's proof ages out.
            let _ = futures::future::join_all(calls).await;
        });
    }

    /// Buckets without a proof for 2Δ are subscribed again (redis-rs
    /// re-subscribes after reconnects; this covers a subscription the server
    /// dropped, e.g. `SUNSUBSCRIBE` after a slot moved, at most every 2Δ).
    /// A re-subscription that goes unanswered is reported on `stuck`.
    fn resubscribe_silent(
        &mut self,
        conn: &redis::cluster_async::ClusterConnection,
        stuck: &tokio::sync::mpsc::UnboundedSender<()>,
    ) {
        let stale = self.sub.max_staleness * 2;
        let mut again = Vec::new();
        let mut lost = Vec::new();
        for (b, bucket) in self.buckets.iter_mut().enumerate() {
            let silent = bucket.proof.is_none_or(|p| p.elapsed() > stale);
            if bucket.proof.is_some() && silent {
                // Proved nothing for 2Δ: presumed lost (its hits stopped at Δ).
                lost.push(b);
            }
            let asked_lately = bucket.resubscribed.is_some_and(|t| t.elapsed() < stale);
            if silent && !asked_lately {
                bucket.resubscribed = Some(Instant::now());
                again.push(b);
            }
        }
        for b in lost {
            self.untrust_bucket(b);
        }
        if again.is_empty() {
            return;
        }
        if self.sub.state.caught_up() {
            self.sub
                .stats
                .heartbeat_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        let chans: Vec<Vec<String>> = again.iter().map(|&b| self.bucket_channels(b)).collect();
        let mut conn = conn.clone();
        let limit = self.limit();
        let stuck = stuck.clone();
        tokio::spawn(async move {
            for c in chans {
                // Unanswered: redis-rs's own response timeout, or ours.
                let answered = tokio::time::timeout(limit, conn.ssubscribe(&c)).await;
                if !matches!(answered, Ok(Ok(()))) {
                    let _ = stuck.send(());
                }
            }
        });
    }

    async fn on_push(&mut self, kind: PushKind, data: Vec<Value>) {
        match kind {
            PushKind::SMessage => {
                let mut it = data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (it.next(), it.next())
                else {
                    return;
                };
                let channel = String::from_utf8_lossy(&channel);
                match self.channels.get(channel.as_ref()).copied() {
                    Some(Channel::Heartbeat(b)) => self.on_beat(b, &payload).await,
                    Some(Channel::Invalidation(b)) => self.on_message(b, &payload).await,
                    None => {}
                }
            }
            PushKind::Disconnection => {
                // A node's connection broke: what it would have delivered may be
                // lost. Untrusted at once; the beats re-prove every bucket.
                tracing::warn!("cluster pubsub connection to a node lost; L1 bypassed until every bucket is proven again");
                self.untrust();
            }
            PushKind::SUnsubscribe => {
                // The server dropped a subscription (its slot moved): that
                // bucket proves nothing until it is subscribed again.
                if let Some(Value::BulkString(channel)) = data.first() {
                    let channel = String::from_utf8_lossy(channel);
                    if let Some(Channel::Invalidation(b) | Channel::Heartbeat(b)) =
                        self.channels.get(channel.as_ref()).copied()
                    {
                        tracing::info!(
                            bucket = b,
                            "sharded subscription dropped by the server (slot moved?)"
                        );
                        self.buckets[usize::from(b)].proof = None;
                        self.buckets[usize::from(b)].resubscribed = None;
                        self.untrust();
                    }
                }
            }
            _ => {}
        }
    }

    /// A change heard on bucket `b`'s channel.
    async fn on_message(&mut self, b: u16, payload: &[u8]) {
        let stats = &self.sub.stats;
        stats.invalidation_messages.fetch_add(1, Ordering::Relaxed);
        let msg = serde_json::from_slice::<Message>(payload)
            .ok()
            .and_then(|m| {
                let prev = m.prev.as_deref().and_then(StreamId::parse);
                Some((StreamId::parse(&m.id)?, prev, m.keys))
            });
        let Some((id, prev, keys)) = msg else {
            tracing::warn!(
                bucket = b,
                bytes = payload.len(),
                "unreadable invalidation message; flushing the bucket"
            );
            self.sub
                .cache
                .flush_group(usize::from(b), FlushReason::BadMessage);
            return;
        };
        for k in &keys {
            self.sub.cache.apply_remote(k, id).await;
        }
        stats
            .invalidations_applied
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let bucket = &mut self.buckets[usize::from(b)];
        bucket.max_seen = bucket.max_seen.max(id);
        if !bucket.gap && bucket.identity.is_some() && prev == Some(bucket.applied) {
            bucket.applied = id;
            self.sub.state.set_applied(id);
        } else {
            // Something before this message was not heard (or this is the
            // first since start): the next beat replays the log.
            bucket.gap = true;
        }
    }

    /// Bucket `b`'s heartbeat heard back: check the bucket's dataset and
    /// position (replay or flush as needed), then count it as a proof.
    async fn on_beat(&mut self, b: u16, payload: &[u8]) {
        let Ok(beat) = serde_json::from_slice::<Beat>(payload) else {
            tracing::warn!(bucket = b, "unreadable heartbeat");
            return;
        };
        let Ok(sent_us) = beat.t.parse::<u64>() else {
            return;
        };
        if beat.role != "master" {
            // Ran on a demoted primary: proves nothing about the new one.
            return;
        }
        let i = usize::from(b);
        if beat.epoch.is_empty() {
            // No dataset epoch in this bucket: a new cluster, or the shard lost
            // its data. Create it; the next beat carries it.
            let keys = self.names[i].clone();
            if let Err(e) = self.sub.store.identity(&keys).await {
                tracing::debug!(bucket = b, error = %e, "cannot create the bucket's epoch");
            }
            return;
        }
        let last = if beat.last.is_empty() {
            StreamId::ZERO
        } else {
            match StreamId::parse(&beat.last) {
                Some(id) => id,
                None => return,
            }
        };
        let identity = (beat.epoch, beat.run);
        let known = self.buckets[i].identity.clone();
        let restart = |bucket: &mut Bucket, identity| {
            bucket.identity = Some(identity);
            bucket.applied = last;
            bucket.gap = false;
            bucket.max_seen = last;
        };
        match known {
            None => {
                // First beat of this bucket since start: nothing of it is cached
                // (L1 serves only once every bucket was proven).
                restart(&mut self.buckets[i], identity);
            }
            Some(k) if k != identity => {
                tracing::warn!(
                    bucket = b,
                    "redis identity of a bucket changed (shard restart or failover, or its slot moved); flushing the bucket"
                );
                self.sub.cache.flush_group(i, FlushReason::RedisIdentity);
                restart(&mut self.buckets[i], identity);
            }
            Some(_) => {
                let bucket = &self.buckets[i];
                if bucket.applied > last || bucket.max_seen > last {
                    // Heard before the beat, so logged before it: an id beyond
                    // the log's end at the beat is nobody's change.
                    tracing::warn!(bucket = b, applied = %bucket.applied, seen = %bucket.max_seen, %last, "an id beyond the bucket's log was heard; flushing the bucket");
                    self.sub.cache.flush_group(i, FlushReason::BadMessage);
                    restart(&mut self.buckets[i], identity);
                } else if (bucket.gap || bucket.applied < last) && !self.replay(b, last).await {
                    return;
                }
            }
        }
        self.sub.state.set_applied(self.buckets[i].applied);
        let sent = self.origin + Duration::from_micros(sent_us);
        let proof = &mut self.buckets[i].proof;
        match *proof {
            Some(p) => {
                *proof = Some(p.max(sent));
                self.sub.cache.prove_delivery_group(i, sent.into_std());
            }
            None => {
                *proof = Some(sent);
                self.sub.cache.set_ready_group(i, sent.into_std());
            }
        }
        if !self.sub.state.caught_up() && self.buckets.iter().all(|b| b.proof.is_some()) {
            self.sub.state.set_caught_up(true);
            tracing::info!(
                buckets = self.buckets.len(),
                "cluster invalidation subscriber caught up on every bucket; L1 serving"
            );
        }
    }

    /// Messages of bucket `b` were missed (a gap, or its position is behind
    /// `last`): replays its log up to `last` (later entries come as messages,
    /// after the beat), or flushes L1 when the log no longer reaches back.
    /// `false`: Redis failed, nothing is proven.
    async fn replay(&mut self, b: u16, last: StreamId) -> bool {
        let i = usize::from(b);
        let keys = self.names[i].clone();
        loop {
            let after = self.buckets[i].applied;
            if after >= last {
                self.buckets[i].gap = false;
                return true;
            }
            match self.sub.store.log_replay(&keys, after, REPLAY_BATCH).await {
                Err(e) => {
                    tracing::debug!(bucket = b, error = %e, "log replay failed");
                    return false;
                }
                Ok(Replay::Entries(batch)) if batch.is_empty() => {
                    // The log ends before `last`: entries were removed.
                    tracing::warn!(bucket = b, %after, %last, "bucket log lost entries; flushing the bucket");
                    self.sub.cache.flush_group(i, FlushReason::LogTrimmed);
                    self.buckets[i].applied = last;
                    self.buckets[i].gap = false;
                    return true;
                }
                Ok(Replay::Entries(batch)) => {
                    for (id, keys) in batch.into_iter().filter(|(id, _)| *id <= last) {
                        let keys: Option<Vec<String>> =
                            keys.and_then(|k| serde_json::from_str(&k).ok());
                        match keys {
                            Some(keys) => {
                                for k in &keys {
                                    self.sub.cache.apply_remote(k, id).await;
                                }
                                self.sub
                                    .stats
                                    .log_entries_replayed
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            None => self.sub.cache.flush_group(i, FlushReason::BadMessage),
                        }
                        self.buckets[i].applied = id;
                    }
                    if self.buckets[i].applied == after {
                        // Only entries beyond `last`: `last` itself was removed.
                        tracing::warn!(bucket = b, %after, %last, "bucket log lost entries; flushing the bucket");
                        self.sub.cache.flush_group(i, FlushReason::LogTrimmed);
                        self.buckets[i].applied = last;
                        self.buckets[i].gap = false;
                        return true;
                    }
                }
                Ok(Replay::Trimmed | Replay::Empty) => {
                    tracing::warn!(bucket = b, %after, "bucket log trimmed past our position; flushing the bucket");
                    self.sub.cache.flush_group(i, FlushReason::LogTrimmed);
                    self.buckets[i].applied = last;
                    self.buckets[i].gap = false;
                    return true;
                }
                Ok(Replay::Beyond(end)) => {
                    tracing::warn!(bucket = b, %after, %end, "applied position lies beyond the bucket's log; flushing the bucket");
                    self.sub.cache.flush_group(i, FlushReason::BadMessage);
                    self.buckets[i].applied = last;
                    self.buckets[i].gap = false;
                    return true;
                }
            }
        }
    }
}
