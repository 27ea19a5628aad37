//! The daemon's side of the shared-memory L1 (issue 17): publishes hot L1
//! entries in the segment clients map, and keeps it under L1's coherence rules.
//!
//! The segment's layout and seqlock are `shoal_client::shm`; this file decides
//! what goes in and when it must go out:
//! - **publish**: an L1 hit copies the entry into one of its key's two slots
//!   (if key and value fit a slot), once a client has attached. Under the writer
//!   lock the copy is checked the way a fill is: the L1 generation is the one seen
//!   before the entry was read, and no change of the key's stripe newer than the
//!   entry has been applied (`L1` passes that check in). So a change applied
//!   concurrently either is seen here, or retires the slot after us.
//! - **retire before applied**: `L1::apply_change` retires the key's slot (if it
//!   holds an older copy) before returning, so before the subscriber advances
//!   `applied` and before an invalidating request is answered. The coherence
//!   rules therefore cover shared-memory readers unchanged.
//! - **trust**: the segment mirrors L1's trust, group by group (one group, or
//!   one per cluster bucket: the segment's groups are L1's). A flush or loss
//!   of trust of a group bumps its generation (every slot of it dies at once)
//!   and, for a loss, clears its ready word and deadline; each delivery proof
//!   moves its "trusted until" to proof + Δ on CLOCK_MONOTONIC, so readers stop
//!   within Δ of the group's last proof, as the daemon's own hit path does,
//!   and a shard in trouble stops only its buckets' readers.
//!
//! Which slots hold which key is kept here too (`meta`), so a retire or a
//! republish never has to read the shared memory back.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shoal_client::shm::{MonoClock, Record, Segment, ShmError};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::cache::entry::Entry;
use crate::store::streamid::StreamId;

/// What the daemon knows about one slot it wrote.
#[derive(Debug, Clone)]
struct Meta {
    key: Arc<str>,
    pos: StreamId,
    /// The key's trust group, and its generation when the slot was written.
    group: usize,
    generation: u64,
    expires_ns: u64,
}

#[derive(Debug)]
struct Inner {
    seg: Segment,
    meta: Vec<Option<Meta>>,
}

/// The shared-memory L1 of one daemon.
#[derive(Debug)]
pub struct Shm {
    inner: Mutex<Inner>,
    clock: MonoClock,
    max_staleness_ns: u64,
    /// Nothing is published until a client has asked for the segment.
    attached: AtomicBool,
    pub published: AtomicU64,
    pub retired: AtomicU64,
    pub attaches: AtomicU64,
}

impl Shm {
    /// The segment `config` asks for, with `groups` trust groups (L1's: one,
    /// or one per cluster bucket); `None` when `cache.shm_bytes` is 0.
    pub fn new(
        config: &crate::config::CacheConfig,
        groups: usize,
    ) -> Result<Option<Shm>, ShmError> {
        let bytes = config.shm_bytes.as_u64();
        if bytes == 0 {
            return Ok(None);
        }
        let seg = Segment::create(bytes, config.shm_slot_bytes.as_u64(), groups)?;
        let slots = seg.layout().slot_count;
        Ok(Some(Shm {
            inner: Mutex::new(Inner {
                seg,
                meta: vec![None; slots],
            }),
            clock: MonoClock::new(),
            max_staleness_ns: u64::try_from(config.max_staleness.as_nanos()).unwrap_or(u64::MAX),
            attached: AtomicBool::new(false),
            published: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            attaches: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section writes whole slots under the seqlock and keeps
        // `meta` in step; a panic between the two could leave a slot the daemon
        // forgets to retire on a change, so poisoning is not ignored: every slot
        // dies and readers stop (until the next readiness).
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                for group in 0..g.seg.layout().groups {
                    g.seg.clear_trust(group);
                }
                self.attached.store(false, Ordering::SeqCst);
                g
            }
        }
    }

    /// A descriptor of the segment for a client, and the segment's size.
    pub fn share(&self) -> io::Result<(OwnedFd, u64)> {
        let g = self.lock();
        let fd = g.seg.share()?;
        self.attached.store(true, Ordering::SeqCst);
        self.attaches.fetch_add(1, Ordering::Relaxed);
        Ok((fd, g.seg.len_bytes()))
    }

    /// Bytes of one slot's key plus value.
    pub fn capacity(&self) -> usize {
        self.lock().seg.layout().capacity()
    }

    /// Publishes `key`'s L1 entry (just read from L1) if it fits and
    /// `admissible` (checked under the writer lock) still holds.
    pub(crate) fn publish(&self, key: &str, e: &Entry, admissible: impl Fn() -> bool) {
        if !self.attached.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.lock();
        let Inner { seg, meta } = &mut *g;
        if key.len() + e.value.len() > seg.layout().capacity() {
            return;
        }
        let group = seg.group_of(key.as_bytes());
        let generation = seg.generation(group);
        let h = seg.hash(key.as_bytes());
        let probe = seg.layout().probe(h);
        // A slot's copy is alive while its group's generation is the one it
        // was written in (the two slots may hold keys of different groups).
        fn alive<'a>(seg: &Segment, m: &'a Option<Meta>) -> Option<&'a Meta> {
            m.as_ref()
                .filter(|m| m.generation == seg.generation(m.group))
        }
        let live = |i: usize| alive(seg, &meta[i]);
        // Already there (the same copy): nothing to do.
        if probe
            .iter()
            .any(|&i| live(i).is_some_and(|m| *m.key == *key && m.pos == e.pos))
        {
            return;
        }
        if !admissible() {
            return;
        }
        // This key's slot, else a free or dead one, else the one expiring first.
        let slot = probe
            .iter()
            .copied()
            .find(|&i| live(i).is_some_and(|m| *m.key == *key))
            .or_else(|| probe.iter().copied().find(|&i| live(i).is_none()))
            .unwrap_or_else(|| {
                let exp = |i: usize| live(i).map_or(0, |m| m.expires_ns);
                if exp(probe[0]) <= exp(probe[1]) {
                    probe[0]
                } else {
                    probe[1]
                }
            });
        // Another key's copy in the other slot stays; a second copy of this key
        // cannot exist (the first branch above reuses its slot).
        let expires_ns = self.clock.at(e.expires_at);
        let l2_expires_ns = e.l2_expires_at.map_or(0, |t| self.clock.at(t));
        let rec = Record {
            generation,
            expires_ns,
            l2_expires_ns,
            hash: h,
            key: key.as_bytes(),
            value: &e.value,
        };
        if seg.write(slot, &rec) {
            meta[slot] = Some(Meta {
                key: Arc::from(key),
                pos: e.pos,
                group,
                generation,
                expires_ns,
            });
            self.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A change of `key` at log position `id`: retires any older copy. Returns
    /// only once no reader can read it any more.
    pub(crate) fn retire(&self, key: &str, id: StreamId) {
        if !self.attached.load(Ordering::SeqCst) {
            // Nothing was ever published (`attached` is set before any publish).
            return;
        }
        let mut g = self.lock();
        let Inner { seg, meta } = &mut *g;
        let h = seg.hash(key.as_bytes());
        for i in seg.layout().probe(h) {
            if meta[i]
                .as_ref()
                .is_some_and(|m| *m.key == *key && m.pos < id)
            {
                seg.retire(i);
                meta[i] = None;
                self.retired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The groups `which` names: one, or all of them.
    fn groups(seg: &Segment, which: Option<usize>) -> std::ops::Range<usize> {
        let n = seg.layout().groups;
        match which {
            Some(g) if g < n => g..g + 1,
            Some(_) => 0..0,
            None => 0..n,
        }
    }

    /// L1 was flushed, whole (`None`) or for group `g`: its slots die.
    pub(crate) fn flush(&self, which: Option<usize>) {
        self.end_groups(which, false);
    }

    /// L1 (`None`) or group `g` is no longer trusted: its readers stop at
    /// once, its slots die.
    pub(crate) fn set_unready(&self, which: Option<usize>) {
        self.end_groups(which, true);
    }

    /// Every slot of `which` dies (a new generation); with `untrust`, its
    /// readers also stop until the next proof (ready word and deadline cleared).
    fn end_groups(&self, which: Option<usize>, untrust: bool) {
        let mut g = self.lock();
        let Inner { seg, meta } = &mut *g;
        for group in Self::groups(seg, which) {
            if untrust {
                seg.clear_trust(group);
            } else {
                seg.bump_generation(group);
            }
        }
        for m in meta.iter_mut() {
            if m.as_ref()
                .is_some_and(|m| which.is_none_or(|w| w == m.group))
            {
                *m = None;
            }
        }
    }

    /// Group `g` is trusted until `sent + Δ` (its newest delivery proof was
    /// sent at `sent`), if `ready` (L1 trusts the group) still holds under the
    /// writer lock: a loss of trust marks L1 first and clears the group here
    /// after, so it is never undone by a proof that raced it.
    pub(crate) fn prove(&self, g: usize, sent: Instant, ready: impl Fn() -> bool) {
        let until = self.clock.at(sent).saturating_add(self.max_staleness_ns);
        let mut inner = self.lock();
        if !ready() {
            return;
        }
        inner.seg.set_ready(g, true);
        inner.seg.advance_trust(g, until);
    }

    /// The daemon stops: readers stop at once.
    pub fn close(&self) {
        self.set_unready(None);
    }
}

/// Writes what `out` holds, then `frame` with `fd` attached to its first byte
/// (SCM_RIGHTS), within `timeout`.
pub async fn send_with_fd(
    stream: &mut UnixStream,
    out: &mut Vec<u8>,
    frame: &[u8],
    fd: &OwnedFd,
    timeout: Duration,
) -> io::Result<()> {
    let send = async {
        if !out.is_empty() {
            stream.write_all(out).await?;
            out.clear();
        }
        let sent = loop {
            stream.writable().await?;
            let raw = stream.as_raw_fd();
            match stream.try_io(Interest::WRITABLE, || {
                shoal_client::shm::send_with_fd(raw, frame, fd.as_fd())
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        stream.write_all(&frame[sent..]).await
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cache::l1::{FlushReason, L1};
    use crate::ops::stats::Stats;
    use bytes::Bytes;
    use shoal_client::shm::{Lookup, View};

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    /// An L1 mirrored in a segment, a reader attached, trusted for Δ.
    fn setup(delta: Duration) -> (L1, Arc<Shm>, View) {
        setup_buckets(delta, 0)
    }

    /// As [`setup`], with trust per cluster bucket (`buckets` > 0).
    fn setup_buckets(delta: Duration, buckets: u16) -> (L1, Arc<Shm>, View) {
        let config = crate::config::CacheConfig {
            shm_bytes: bytesize::ByteSize::mib(1),
            max_staleness: delta,
            ..Default::default()
        };
        let groups = usize::from(buckets.max(1));
        let shm = Arc::new(Shm::new(&config, groups).unwrap().unwrap());
        let l1 = L1::new(
            1 << 20,
            Duration::from_secs(60),
            delta,
            Arc::new(Stats::default()),
        )
        .with_buckets(buckets)
        .with_shm(Some(shm.clone()));
        let view = View::from_fd(shm.share().unwrap().0).unwrap();
        l1.prove_delivery(Instant::now());
        l1.set_ready();
        (l1, shm, view)
    }

    fn hit(l: Lookup) -> Option<Vec<u8>> {
        match l {
            Lookup::Hit { value, .. } => Some(value.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_hit_publishes_and_only_a_newer_change_retires() {
        let (l1, shm, view) = setup(Duration::from_secs(60));
        let t = l1.ticket();
        assert!(l1.fill("k", Bytes::from_static(b"v"), None, id(5), t).await);
        assert_eq!(view.get(b"k"), Lookup::Miss, "filled, not yet read");
        assert!(l1.get("k").await.is_some());
        assert_eq!(hit(view.get(b"k")).as_deref(), Some(&b"v"[..]));
        l1.apply_change("k", id(5)).await;
        assert!(
            hit(view.get(b"k")).is_some(),
            "its own write does not retire it"
        );
        l1.apply_change("k", id(6)).await;
        assert_eq!(
            view.get(b"k"),
            Lookup::Miss,
            "retired when apply_change returned"
        );
        assert_eq!(shm.retired.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn loss_of_trust_and_flushes_reach_readers() {
        let (l1, _shm, view) = setup(Duration::from_secs(60));
        let t = l1.ticket();
        assert!(l1.fill("k", Bytes::from_static(b"v"), None, id(1), t).await);
        l1.get("k").await;
        assert!(hit(view.get(b"k")).is_some());
        l1.set_unready();
        assert_eq!(view.get(b"k"), Lookup::Untrusted);
        l1.prove_delivery(Instant::now());
        l1.set_ready();
        assert_eq!(
            view.get(b"k"),
            Lookup::Miss,
            "a copy from before the gap is dead"
        );
        l1.get("k").await;
        assert!(hit(view.get(b"k")).is_some());
        l1.flush(FlushReason::BadMessage);
        assert_eq!(view.get(b"k"), Lookup::Miss);
    }

    #[tokio::test]
    async fn readers_trust_the_proof_for_delta_only() {
        let delta = Duration::from_millis(200);
        let (l1, _shm, view) = setup(delta);
        let t = l1.ticket();
        assert!(l1.fill("k", Bytes::from_static(b"v"), None, id(1), t).await);
        l1.get("k").await;
        let now = shoal_client::shm::mono_now_ns().unwrap();
        assert!(hit(view.get_at(b"k", now)).is_some());
        let delta_ns = delta.as_nanos() as u64;
        assert_eq!(
            view.get_at(b"k", now + delta_ns),
            Lookup::Untrusted,
            "proof + Δ has passed"
        );
        // A newer proof moves the deadline; an older one never moves it back.
        l1.prove_delivery(Instant::now() + Duration::from_millis(100));
        assert!(hit(view.get_at(b"k", now + delta_ns)).is_some());
        l1.prove_delivery(Instant::now() - Duration::from_secs(10));
        assert!(hit(view.get_at(b"k", now + delta_ns)).is_some());
    }

    /// On a cluster the segment's trust groups are L1's buckets: a bucket's
    /// loss of trust, its proofs stopping, or its flush stop the readers of
    /// its keys only.
    #[tokio::test]
    async fn each_bucket_is_trusted_and_flushed_alone_in_shared_memory() {
        let (l1, _shm, view) = setup_buckets(Duration::from_secs(60), 8);
        let (a, b) = (l1.a_key_of_group(1), l1.a_key_of_group(5));
        for k in [&a, &b] {
            assert_eq!(view.layout().group_of(k.as_bytes()), l1.group_of(k));
            let t = l1.ticket();
            assert!(l1.fill(k, Bytes::from_static(b"v"), None, id(1), t).await);
            l1.get(k).await;
            assert!(hit(view.get(k.as_bytes())).is_some(), "{k} published");
        }

        l1.set_unready_group(1);
        assert_eq!(view.get(a.as_bytes()), Lookup::Untrusted);
        assert!(hit(view.get(b.as_bytes())).is_some(), "another bucket");
        l1.set_ready_group(1);
        assert_eq!(view.get(a.as_bytes()), Lookup::Untrusted, "no proof yet");
        l1.prove_delivery_group(1, Instant::now());
        assert_eq!(view.get(a.as_bytes()), Lookup::Miss, "its old copy is dead");
        l1.get(&a).await;
        assert!(hit(view.get(a.as_bytes())).is_some(), "published again");

        l1.flush_group(5, FlushReason::RedisIdentity);
        assert_eq!(view.get(b.as_bytes()), Lookup::Miss, "flushed");
        assert!(hit(view.get(a.as_bytes())).is_some(), "another bucket kept");
        l1.flush(FlushReason::BadMessage);
        assert_eq!(view.get(a.as_bytes()), Lookup::Miss, "a whole flush");
    }

    #[tokio::test]
    async fn nothing_is_published_before_a_client_attaches() {
        let config = crate::config::CacheConfig::default();
        let shm = Arc::new(Shm::new(&config, 1).unwrap().unwrap());
        let l1 = L1::new(
            1 << 20,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Stats::default()),
        )
        .with_shm(Some(shm.clone()));
        l1.prove_delivery(Instant::now());
        l1.set_ready();
        let t = l1.ticket();
        assert!(l1.fill("k", Bytes::from_static(b"v"), None, id(1), t).await);
        l1.get("k").await;
        assert_eq!(shm.published.load(Ordering::Relaxed), 0);
        let view = View::from_fd(shm.share().unwrap().0).unwrap();
        l1.get("k").await;
        assert!(hit(view.get(b"k")).is_some());
    }
}
