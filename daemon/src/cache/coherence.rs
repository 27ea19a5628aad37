//! The invalidation subscriber: keeps this daemon's L1 coherent with the fleet.
//!
//! One dedicated Pub/Sub connection per daemon. Pub/Sub alone is at-most-once, so
//! every change is also in the invalidation log (a trimmed stream) and this task
//! closes the gaps (ARCHITECTURE.md, "Why it is built this way"):
//! 1. While not subscribed, L1 is untrusted (reads bypass it, fills are void).
//! 2. After `SUBSCRIBE` is confirmed, check Redis's identity (run_id + epoch key):
//!    changed means Redis lost data, so flush. Otherwise replay the log after the
//!    last applied id; if the log no longer reaches back that far, flush.
//! 3. Only then trust L1 again and report ready.
//!
//! A heartbeat published to a private channel every `cache.heartbeat` proves the
//! subscription still delivers: hearing back a beat sent at t proves every change
//! completed before t has been applied, and L1 serves only while that proof is
//! younger than Δ (`cache.max_staleness`). The beat also re-proves Redis's dataset
//! (the epoch key) and that our position lies within the log, so data loss or a
//! bogus id while subscribed is caught within Δ too. Any loss makes L1 untrusted at
//! once, before the reconnect backoff.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::l1::FlushReason;
use crate::cache::Cache;
use crate::ops::stats::Stats;
use crate::store::streamid::StreamId;
use crate::store::{Replay, Store, StoreError};

/// A message on the invalidation channel (JSON, written by the Lua scripts).
#[derive(Debug, Deserialize)]
pub(super) struct Message {
    pub(super) id: String,
    /// The log entry before this one ("0-0": none). Used on Redis Cluster
    /// (`sharded.rs`); absent from messages of older scripts.
    #[serde(default)]
    pub(super) prev: Option<String>,
    #[serde(default)]
    pub(super) keys: Vec<String>,
}

/// Shared view of the subscriber's progress, for `/readyz` and `stats`.
#[derive(Debug)]
pub struct CoherenceState {
    inner: Mutex<StateInner>,
    /// Follows `caught_up`, so tests and the admin server can await changes.
    ready_tx: tokio::sync::watch::Sender<bool>,
    /// Follows `applied`, so a caller can await "this daemon has applied change X".
    applied_tx: tokio::sync::watch::Sender<StreamId>,
}

impl Default for CoherenceState {
    fn default() -> Self {
        CoherenceState {
            inner: Mutex::default(),
            ready_tx: tokio::sync::watch::channel(false).0,
            applied_tx: tokio::sync::watch::channel(StreamId::ZERO).0,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct StateInner {
    applied: StreamId,
    identity: Option<(String, String)>,
    caught_up: bool,
}

impl CoherenceState {
    pub fn applied(&self) -> StreamId {
        self.lock().applied
    }
    pub fn caught_up(&self) -> bool {
        self.lock().caught_up
    }
    /// A receiver that sees every change of `caught_up`.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready_tx.subscribe()
    }
    /// A receiver that sees every advance of the applied log position.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<StreamId> {
        self.applied_tx.subscribe()
    }
    pub(crate) fn set_applied(&self, id: StreamId) {
        let mut s = self.lock();
        if id > s.applied {
            s.applied = id;
        }
        let now = s.applied;
        drop(s);
        self.applied_tx.send_replace(now);
    }
    /// Resets the position (first connection, or Redis replaced).
    fn reset_applied(&self, id: StreamId) {
        self.lock().applied = id;
        self.applied_tx.send_replace(id);
    }
    pub(crate) fn set_caught_up(&self, v: bool) {
        self.lock().caught_up = v;
        self.ready_tx.send_replace(v);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits before a subscriber reconnects: `backoff`, doubled each time up to
/// 2 s, and back to 20 ms after a connection that lasted over 5 s (`started`).
/// `false`: cancelled meanwhile.
pub(super) async fn retry_after(
    started: Instant,
    backoff: &mut Duration,
    cancel: &CancellationToken,
) -> bool {
    if started.elapsed() > Duration::from_secs(5) {
        *backoff = Duration::from_millis(20);
    }
    tokio::select! {
        _ = cancel.cancelled() => return false,
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    true
}

#[derive(Debug)]
pub struct Subscriber {
    pub store: Store,
    pub cache: Arc<Cache>,
    pub stats: Arc<Stats>,
    pub state: Arc<CoherenceState>,
    pub heartbeat: Duration,
    /// Δ: how old the newest delivery proof may be for L1 to serve.
    pub max_staleness: Duration,
    /// Unique per process, so heartbeats of two daemons never mix.
    pub instance: String,
}

enum Ended {
    Cancelled,
    Lost(String),
}

/// A heartbeat as published by `lua/heartbeat.lua`.
#[derive(Debug, Deserialize)]
pub(super) struct Beat {
    pub(super) t: String,
    #[serde(default)]
    pub(super) epoch: String,
    #[serde(default)]
    pub(super) last: String,
    /// Run id of the server that ran the beat.
    #[serde(default)]
    pub(super) run: String,
    /// Its role (`master`, `slave`).
    #[serde(default)]
    pub(super) role: String,
}

impl Subscriber {
    /// Runs until `cancel` fires, reconnecting with backoff. (On Redis Cluster
    /// the subscriber runs per bucket: `sharded::run`.)
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(20);
        let mut first = true;
        loop {
            self.untrust();
            if !first {
                self.stats
                    .subscriber_reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let started = Instant::now();
            match self.session(&cancel).await {
                Ended::Cancelled => return,
                Ended::Lost(why) => {
                    // Untrusted at once: not after the backoff below.
                    self.untrust();
                    tracing::warn!(redis = %self.store.address(), reason = %why, "invalidation subscriber lost; L1 bypassed until recovered");
                }
            }
            if !retry_after(started, &mut backoff, &cancel).await {
                return;
            }
        }
    }

    fn untrust(&self) {
        self.cache.set_unready();
        self.state.set_caught_up(false);
    }

    /// One subscription, from connect to loss.
    async fn session(&self, cancel: &CancellationToken) -> Ended {
        let keys = self.store.keys().clone();
        let channel = keys.channel();
        let hb_channel = keys.heartbeat_channel(&self.instance);
        let timeout = self.store.timeout();
        // Taken before the client: a failover during the connect is seen.
        let mut primary_changes = self.store.endpoint().changes();
        primary_changes.mark_unchanged();
        let connect = async {
            let client = self.store.client().await.map_err(|e| e.to_string())?;
            let mut ps = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            ps.subscribe(&channel).await.map_err(|e| e.to_string())?;
            ps.subscribe(&hb_channel).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(ps)
        };
        let pubsub = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = tokio::time::timeout(timeout.max(Duration::from_secs(1)), connect) => match r {
                Ok(Ok(ps)) => ps,
                Ok(Err(e)) => return Ended::Lost(format!("subscribe failed: {e}")),
                Err(_) => return Ended::Lost("subscribe timed out".into()),
            },
        };
        let mut messages = pubsub.into_on_message();

        // Subscribed: whatever changes from here on arrives as messages. Now close
        // the gap behind us. Every change completed before `subscribed` is either
        // replayed from the log or flushed, so it is the first delivery proof.
        let subscribed = Instant::now();
        let caught_up = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = self.catch_up() => r,
        };
        if let Err(e) = caught_up {
            return Ended::Lost(format!("catch-up failed: {e}"));
        }
        self.cache.set_ready(subscribed.into_std());
        self.state.set_caught_up(true);
        tracing::info!(applied = %self.state.applied(), "invalidation subscriber caught up; L1 serving");

        let mut beat = tokio::time::interval(self.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // L1 stops serving once the proof is older than Δ (checked on every hit);
        // a subscription that has proved nothing for 2Δ is presumed dead.
        // The deadline counts from the end of the catch-up, not the subscribe: a
        // daemon far from Redis (a catch-up of many round trips) must not be
        // presumed dead before its first heartbeat could come back. Trust does
        // not depend on this: it comes from the proofs themselves.
        let deadline = self.max_staleness * 2;
        let mut last_proof = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                _ = primary_changes.changed() => {
                    return Ended::Lost("the redis primary changed (sentinel failover)".into());
                }
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Ended::Lost("connection closed".into());
                    };
                    if msg.get_channel_name() == hb_channel {
                        match self.on_beat(msg.get_payload_bytes(), subscribed) {
                            Ok(sent) => last_proof = last_proof.max(sent),
                            Err(why) => return Ended::Lost(why),
                        }
                        continue;
                    }
                    self.on_message(msg.get_payload_bytes()).await;
                }
                _ = beat.tick() => {
                    if last_proof.elapsed() > deadline {
                        self.stats.heartbeat_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Ended::Lost(format!("no delivery proof for {:?}", last_proof.elapsed()));
                    }
                    // A failed publish means Redis is unreachable; the subscription
                    // will notice on its own, or the deadline will.
                    let store = self.store.clone();
                    let ch = hb_channel.clone();
                    let token = subscribed.elapsed().as_micros().to_string();
                    tokio::spawn(async move { let _ = store.heartbeat(store.keys(), &ch, &token).await; });
                }
            }
        }
    }

    /// A heartbeat heard back: every change published before it was sent has been
    /// applied (messages are handled in order). Also re-proves that Redis still
    /// holds our dataset and that our position lies within its log. Returns the
    /// send time proven.
    fn on_beat(&self, payload: &[u8], origin: Instant) -> Result<Instant, String> {
        let beat: Beat =
            serde_json::from_slice(payload).map_err(|e| format!("unreadable heartbeat: {e}"))?;
        let sent_us: u64 = beat
            .t
            .parse()
            .map_err(|_| format!("unreadable heartbeat token {:?}", beat.t))?;
        let known = self.state.lock().identity.clone();
        let known_epoch = known.as_ref().map(|i| i.0.clone());
        // The beat ran where changes are acknowledged: the primary we caught up
        // with. A beat from a demoted primary, or from another server, proves
        // nothing about the changes made on the new one.
        if beat.role != "master" {
            return Err(format!(
                "the heartbeat ran on a {} (the primary was demoted)",
                beat.role
            ));
        }
        if known.as_ref().map(|i| i.1.as_str()) != Some(beat.run.as_str()) {
            return Err("the heartbeat ran on another redis server (restart or failover)".into());
        }
        if known_epoch.as_deref() != Some(beat.epoch.as_str()) {
            return Err(if beat.epoch.is_empty() {
                "the epoch key is gone while subscribed (Redis lost data)".into()
            } else {
                "the epoch changed while subscribed (Redis lost or replaced data)".into()
            });
        }
        let applied = self.state.applied();
        let last = StreamId::parse(&beat.last).unwrap_or(StreamId::ZERO);
        if applied > last {
            return Err(format!(
                "applied position {applied} lies beyond the log's last id {last}"
            ));
        }
        let sent = origin + Duration::from_micros(sent_us);
        self.cache.prove_delivery(sent.into_std());
        Ok(sent)
    }

    /// Redis identity check, then replay of the log after the applied id.
    async fn catch_up(&self) -> Result<(), StoreError> {
        self.store.load_scripts().await?;
        let identity = self.store.identity(self.store.keys()).await?;
        let (known, applied) = {
            let s = self.state.lock();
            (s.identity.clone(), s.applied)
        };
        match known {
            None => {
                // First connection: L1 is empty, nothing before now matters.
                let (_, last) = self.store.log_bounds(self.store.keys()).await?;
                self.state.lock().identity = Some(identity);
                self.state.reset_applied(last.unwrap_or(StreamId::ZERO));
                return Ok(());
            }
            Some(known) if known != identity => {
                tracing::warn!(
                    "redis identity changed (restart, failover or data loss); flushing L1"
                );
                let (_, last) = self.store.log_bounds(self.store.keys()).await?;
                self.cache.flush(FlushReason::RedisIdentity);
                self.state.lock().identity = Some(identity);
                self.state.reset_applied(last.unwrap_or(StreamId::ZERO));
                return Ok(());
            }
            Some(_) => {}
        }
        // Each batch proves, atomically with its entries, that the log still
        // reaches back to where we are: a trim racing the replay means a flush,
        // never a silently skipped entry.
        let mut after = applied;
        loop {
            match self
                .store
                .log_replay(self.store.keys(), after, REPLAY_BATCH)
                .await?
            {
                Replay::Entries(batch) if batch.is_empty() => break,
                Replay::Entries(batch) => {
                    for (id, keys) in batch {
                        let keys: Option<Vec<String>> =
                            keys.and_then(|k| serde_json::from_str(&k).ok());
                        match keys {
                            Some(keys) => {
                                for k in &keys {
                                    self.cache.apply_remote(k, id).await;
                                }
                                self.stats
                                    .log_entries_replayed
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            None => self.cache.flush(FlushReason::BadMessage),
                        }
                        after = id;
                        self.state.set_applied(id);
                    }
                }
                Replay::Trimmed | Replay::Empty => {
                    tracing::warn!(%after, "invalidation log trimmed past our position; flushing L1");
                    let (_, last) = self.store.log_bounds(self.store.keys()).await?;
                    self.cache.flush(FlushReason::LogTrimmed);
                    self.state.reset_applied(last.unwrap_or(StreamId::ZERO));
                    break;
                }
                Replay::Beyond(last) => {
                    tracing::warn!(%after, %last, "applied position lies beyond the log (a bogus id was heard); flushing L1");
                    self.cache.flush(FlushReason::BadMessage);
                    self.state.reset_applied(last);
                    break;
                }
            }
        }
        Ok(())
    }

    async fn on_message(&self, payload: &[u8]) {
        self.stats
            .invalidation_messages
            .fetch_add(1, Ordering::Relaxed);
        let msg: Option<(StreamId, Vec<String>)> = serde_json::from_slice::<Message>(payload)
            .ok()
            .and_then(|m| Some((StreamId::parse(&m.id)?, m.keys)));
        let Some((id, keys)) = msg else {
            // Someone published something we cannot read on our channel; we cannot
            // know which keys it meant, so assume all of them.
            tracing::warn!(
                bytes = payload.len(),
                "unreadable invalidation message; flushing L1"
            );
            self.cache.flush(FlushReason::BadMessage);
            return;
        };
        for k in &keys {
            self.cache.apply_remote(k, id).await;
        }
        self.stats
            .invalidations_applied
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // Lag for the metric only: the log id's time is Redis's clock, ours may
        // differ; nothing decides correctness from it.
        self.stats.record_lag(now_ms.saturating_sub(id.ms));
        self.state.set_applied(id);
    }
}

/// Log entries read per replay step.
const REPLAY_BATCH: usize = 1000;
