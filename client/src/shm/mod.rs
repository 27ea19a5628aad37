//! The shared-memory L1: a segment the daemon writes and same-host clients map
//! read-only, so an L1 hit costs no system call (issue 17, part 2).
//!
//! This module is the one place that knows the segment's layout and its
//! seqlock; the daemon's publisher (writer, `Segment`) and the client's reader
//! (`View`) both use it, so they cannot disagree. All memory of the segment is
//! accessed as `AtomicU64` words (never as plain bytes), so a reader racing the
//! writer reads garbage at worst, never undefined behaviour, and the seqlock
//! tells it to throw the garbage away. The `unsafe` needed to map the segment and
//! to receive its descriptor lives in the submodule `raw`, each block with its
//! safety argument; everything here is safe code.
//!
//! Layout (every field a little-endian `u64` word; see `H_*`, `T_*` and `S_*`):
//! - a header of [`HEADER_WORDS`] words: magic, version, slot geometry, the hash
//!   seed and the number of **trust groups**;
//! - one trust record of [`TRUST_WORDS`] words per group: the **generation**
//!   (bumped by the daemon on every flush and loss of trust of the group; a slot
//!   written in another generation is dead), the **ready** word (0 while the
//!   daemon does not trust the group), and **trusted until** (CLOCK_MONOTONIC
//!   ns: the group's newest delivery proof plus Δ; a reader refuses every hit at
//!   or after it, exactly as the daemon's own hit path does). A key's group is
//!   its cluster bucket (`CLUSTER KEYSLOT` mod groups, [`Layout::group_of`]), so
//!   a shard in trouble stops only its own buckets' readers; a standalone or
//!   Sentinel daemon has one group;
//! - `slot_count` slots of `slot_words` words: a sequence word (odd while being
//!   written), the generation it was written in (its group's), the entry's
//!   expiry (monotonic ns), the L2 expiry (for `ttl_ms`), the key's hash, the key
//!   and value lengths, then key and value bytes packed into words.
//!
//! A key lives in one of two slots (its hash's slot and the next). A reader that
//! finds no valid copy, or doubts one (odd or moved sequence, other generation,
//! lengths out of bounds, expired, not trusted), answers "ask the socket".

mod attach;
#[allow(unsafe_code)]
mod raw;

use std::sync::atomic::{AtomicU64, Ordering};

pub use attach::attach;
pub use raw::send_with_fd;

/// A word of shared memory as the seqlock sees it: `std`'s `AtomicU64` in the
/// segment, loom's in the model check (`loom_tests.rs`), so the very code that
/// runs is the code checked.
pub trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, v: u64, order: Ordering);
    fn fence(order: Ordering);
}

impl Word for AtomicU64 {
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    #[inline]
    fn store(&self, v: u64, order: Ordering) {
        AtomicU64::store(self, v, order)
    }
    #[inline]
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

/// `"SHOALSHM"` as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHOALSHM");
/// Layout version; a reader refuses any other (1 had one trust for all keys).
pub const VERSION: u64 = 2;
/// Header size in words (one 4 KiB page).
pub const HEADER_WORDS: usize = 512;

/// Header word indexes.
pub const H_MAGIC: usize = 0;
pub const H_VERSION: usize = 1;
pub const H_SLOT_WORDS: usize = 2;
pub const H_SLOT_COUNT: usize = 3;
pub const H_SEED: usize = 4;
pub const H_GROUPS: usize = 5;

/// Words of one group's trust record, and their indexes.
pub const TRUST_WORDS: usize = 4;
pub const T_GENERATION: usize = 0;
pub const T_READY: usize = 1;
pub const T_TRUSTED_UNTIL: usize = 2;
/// Most trust groups a segment may have (one per cluster slot).
pub const MAX_GROUPS: usize = 16384;

/// Slot word indexes.
pub const S_SEQ: usize = 0;
pub const S_GEN: usize = 1;
pub const S_EXPIRES: usize = 2;
pub const S_L2_EXPIRES: usize = 3;
pub const S_HASH: usize = 4;
pub const S_LENS: usize = 5;
/// Words before a slot's key and value bytes.
pub const SLOT_HEAD: usize = 6;

/// Smallest and largest slot the daemon accepts (bytes, header included).
pub const MIN_SLOT_BYTES: u64 = 128;
pub const MAX_SLOT_BYTES: u64 = 1 << 20;

/// Geometry of a segment: its slots and its trust groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub slot_words: usize,
    pub slot_count: usize,
    /// Trust groups (1..=[`MAX_GROUPS`]).
    pub groups: usize,
}

impl Layout {
    /// The layout of a segment of about `total_bytes` with slots of `slot_bytes`
    /// (rounded down to whole words) and `groups` trust groups (at least one).
    /// `None` if not even one slot fits.
    pub fn for_bytes(total_bytes: u64, slot_bytes: u64, groups: usize) -> Option<Layout> {
        let slot_words =
            usize::try_from(slot_bytes.clamp(MIN_SLOT_BYTES, MAX_SLOT_BYTES) / 8).ok()?;
        let groups = groups.max(1);
        if groups > MAX_GROUPS {
            return None;
        }
        let words = usize::try_from(total_bytes / 8).ok()?;
        let slot_count = words.checked_sub(HEADER_WORDS + groups * TRUST_WORDS)? / slot_words;
        (slot_count > 0).then_some(Layout {
            slot_words,
            slot_count,
            groups,
        })
    }

    /// Where the slots start: after the header and the trust records.
    fn slots_start(&self) -> usize {
        HEADER_WORDS + self.groups * TRUST_WORDS
    }

    /// Total words of the segment.
    pub fn words(&self) -> usize {
        self.slots_start() + self.slot_words * self.slot_count
    }

    /// The trust group of `key`: its cluster bucket (`CLUSTER KEYSLOT` mod
    /// groups), as the daemon groups its L1; 0 with one group.
    pub fn group_of(&self, key: &[u8]) -> usize {
        if self.groups <= 1 {
            return 0;
        }
        usize::from(crate::keyslot::keyslot(key)) % self.groups
    }

    /// The trust record of group `g` within the segment's words.
    fn trust<'a>(&self, words: &'a [AtomicU64], g: usize) -> Option<&'a [AtomicU64]> {
        if g >= self.groups {
            return None;
        }
        let start = HEADER_WORDS + g * TRUST_WORDS;
        words.get(start..start + TRUST_WORDS)
    }

    /// Key plus value bytes one slot holds.
    pub fn capacity(&self) -> usize {
        (self.slot_words - SLOT_HEAD) * 8
    }

    /// The words of slot `i` within the segment's words.
    fn slot<'a>(&self, words: &'a [AtomicU64], i: usize) -> Option<&'a [AtomicU64]> {
        let start = self
            .slots_start()
            .checked_add(i.checked_mul(self.slot_words)?)?;
        words.get(start..start.checked_add(self.slot_words)?)
    }

    /// The two slots key hash `h` may live in.
    pub fn probe(&self, h: u64) -> [usize; 2] {
        // Multiply-shift maps the hash onto 0..slot_count without a division.
        let i = ((u128::from(h) * self.slot_count as u128) >> 64) as usize;
        [i, (i + 1) % self.slot_count]
    }
}

/// The key hash both sides use: seeded (the daemon picks the seed per segment),
/// word at a time, with a murmur3 finaliser.
pub fn hash_key(seed: u64, key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What a writer puts in a slot.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub generation: u64,
    /// CLOCK_MONOTONIC ns after which the entry must not be served.
    pub expires_ns: u64,
    /// CLOCK_MONOTONIC ns when L2's copy expires (0: unknown), for `ttl_ms`.
    pub l2_expires_ns: u64,
    pub hash: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Writes `rec` into `slot` (or empties it with `None`) under the seqlock.
/// The caller must be the slot's only writer (the daemon serialises writes).
/// Returns false, writing nothing, if key and value do not fit.
pub fn write_slot<W: Word>(slot: &[W], rec: Option<&Record<'_>>) -> bool {
    if slot.len() < SLOT_HEAD {
        return false;
    }
    let cap = (slot.len() - SLOT_HEAD) * 8;
    if let Some(r) = rec {
        if r.key.is_empty()
            || r.key.len() + r.value.len() > cap
            || u32::try_from(r.key.len()).is_err()
            || u32::try_from(r.value.len()).is_err()
        {
            return false;
        }
    }
    let seq = slot[S_SEQ].load(Ordering::Relaxed);
    // Odd: readers that load it give up. (`| 1` also repairs a word left odd.)
    let begin = seq | 1;
    slot[S_SEQ].store(begin, Ordering::Relaxed);
    // Orders the odd sequence before every data store below: a reader that
    // sees any of them, then fences, sees the sequence move.
    W::fence(Ordering::Release);
    match rec {
        None => {
            slot[S_LENS].store(0, Ordering::Relaxed);
            slot[S_HASH].store(0, Ordering::Relaxed);
            slot[S_GEN].store(0, Ordering::Relaxed);
        }
        Some(r) => {
            slot[S_GEN].store(r.generation, Ordering::Relaxed);
            slot[S_EXPIRES].store(r.expires_ns, Ordering::Relaxed);
            slot[S_L2_EXPIRES].store(r.l2_expires_ns, Ordering::Relaxed);
            slot[S_HASH].store(r.hash, Ordering::Relaxed);
            slot[S_LENS].store(
                r.key.len() as u64 | (r.value.len() as u64) << 32,
                Ordering::Relaxed,
            );
            let mut bytes = r.key.iter().chain(r.value.iter());
            let words = (r.key.len() + r.value.len()).div_ceil(8);
            for w in &slot[SLOT_HEAD..SLOT_HEAD + words] {
                let mut b = [0u8; 8];
                for x in b.iter_mut() {
                    match bytes.next() {
                        Some(v) => *x = *v,
                        None => break,
                    }
                }
                w.store(u64::from_le_bytes(b), Ordering::Relaxed);
            }
        }
    }
    slot[S_SEQ].store(begin.wrapping_add(1), Ordering::Release);
    true
}

/// What one slot says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotRead {
    /// The key's value: `buf[key_len..]` is the value.
    Hit {
        buf: Vec<u8>,
        key_len: usize,
        l2_expires_ns: u64,
        expires_ns: u64,
    },
    /// Not this key (or empty, dead, expired): try the other slot, then the socket.
    Miss,
    /// Being written or inconsistent: go to the socket.
    Doubt,
}

/// Reads `key` from `slot` under the seqlock: a `Hit` only if the slot held this
/// key, written in `generation`, unexpired at `now_ns`, and the sequence did not
/// move while it was read.
pub fn read_slot<W: Word>(
    slot: &[W],
    hash: u64,
    key: &[u8],
    generation: u64,
    now_ns: u64,
) -> SlotRead {
    if slot.len() < SLOT_HEAD {
        return SlotRead::Doubt;
    }
    let s1 = slot[S_SEQ].load(Ordering::Acquire);
    if s1 & 1 == 1 {
        return SlotRead::Doubt;
    }
    let lens = slot[S_LENS].load(Ordering::Relaxed);
    // A miss is always safe (the socket answers), so these early outs need no
    // validation; a hit is validated below.
    if lens == 0 || slot[S_HASH].load(Ordering::Relaxed) != hash {
        return SlotRead::Miss;
    }
    let key_len = (lens & 0xffff_ffff) as usize;
    let value_len = (lens >> 32) as usize;
    if key_len != key.len()
        || slot[S_GEN].load(Ordering::Relaxed) != generation
        || key_len + value_len > (slot.len() - SLOT_HEAD) * 8
    {
        return SlotRead::Miss;
    }
    let expires_ns = slot[S_EXPIRES].load(Ordering::Relaxed);
    let l2_expires_ns = slot[S_L2_EXPIRES].load(Ordering::Relaxed);
    let words = (key_len + value_len).div_ceil(8);
    let mut buf = Vec::with_capacity(words * 8);
    for w in &slot[SLOT_HEAD..SLOT_HEAD + words] {
        buf.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    // Orders the data loads above before the second sequence load: if any of
    // them saw a newer write, this load sees that write's odd (or later) sequence.
    W::fence(Ordering::Acquire);
    if slot[S_SEQ].load(Ordering::Relaxed) != s1 {
        return SlotRead::Doubt;
    }
    if now_ns >= expires_ns || buf[..key_len] != *key {
        return SlotRead::Miss;
    }
    buf.truncate(key_len + value_len);
    SlotRead::Hit {
        buf,
        key_len,
        l2_expires_ns,
        expires_ns,
    }
}

/// A group's trust record, as a reader checks it on every lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    pub ready: bool,
    pub generation: u64,
    pub trusted_until_ns: u64,
}

fn read_trust(record: &[AtomicU64]) -> Trust {
    Trust {
        generation: record[T_GENERATION].load(Ordering::Acquire),
        ready: record[T_READY].load(Ordering::Acquire) == 1,
        trusted_until_ns: record[T_TRUSTED_UNTIL].load(Ordering::Acquire),
    }
}

/// The answer of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit {
        value: bytes::Bytes,
        /// Remaining L2 TTL (or L1's, when L2's is unknown), as the socket says.
        ttl_ms: Option<u64>,
    },
    /// The segment has no valid copy: ask the socket.
    Miss,
    /// The key's group is not trusted now (not ready, proof too old, a flush
    /// under way): ask the socket.
    Untrusted,
}

/// Looks `key` up in a segment's words (its group's trust first) at `now_ns`.
pub fn lookup(words: &[AtomicU64], layout: &Layout, seed: u64, key: &[u8], now_ns: u64) -> Lookup {
    let Some(record) = layout.trust(words, layout.group_of(key)) else {
        return Lookup::Untrusted;
    };
    let t = read_trust(record);
    if !t.ready || now_ns >= t.trusted_until_ns {
        return Lookup::Untrusted;
    }
    let h = hash_key(seed, key);
    for i in layout.probe(h) {
        let Some(slot) = layout.slot(words, i) else {
            return Lookup::Miss;
        };
        match read_slot(slot, h, key, t.generation, now_ns) {
            SlotRead::Miss => continue,
            SlotRead::Doubt => return Lookup::Miss,
            SlotRead::Hit {
                buf,
                key_len,
                l2_expires_ns,
                expires_ns,
            } => {
                // A flush or loss of trust while we read: the copy may predate it.
                // (The deadline moving forward meanwhile is no reason to doubt.)
                let after = read_trust(record);
                if after.generation != t.generation || !after.ready {
                    return Lookup::Untrusted;
                }
                let until = if l2_expires_ns != 0 {
                    l2_expires_ns
                } else {
                    expires_ns
                };
                let ttl_ms = until.saturating_sub(now_ns).div_ceil(1_000_000).max(1);
                let value = bytes::Bytes::from(buf).slice(key_len..);
                return Lookup::Hit {
                    value,
                    ttl_ms: Some(ttl_ms),
                };
            }
        }
    }
    Lookup::Miss
}

/// CLOCK_MONOTONIC now, in ns: the clock every process of the host shares.
/// `None` only if the kernel refuses it (never on Linux).
pub fn mono_now_ns() -> Option<u64> {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    let s = u64::try_from(t.tv_sec()).ok()?;
    let ns = u64::try_from(t.tv_nsec()).ok()?;
    Some(s.saturating_mul(1_000_000_000).saturating_add(ns))
}

/// Converts `Instant`s (the daemon's clock) to CLOCK_MONOTONIC ns without ever
/// making a deadline later than it is: the base is read before the `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    base_ns: u64,
    base: std::time::Instant,
}

impl MonoClock {
    pub fn new() -> MonoClock {
        // No clock: every deadline lands near 0, so readers refuse.
        let base_ns = mono_now_ns().unwrap_or(0);
        MonoClock {
            base_ns,
            base: std::time::Instant::now(),
        }
    }

    /// `t` on CLOCK_MONOTONIC, in ns (never later than the truth).
    pub fn at(&self, t: std::time::Instant) -> u64 {
        if t >= self.base {
            let d = u64::try_from((t - self.base).as_nanos()).unwrap_or(u64::MAX);
            self.base_ns.saturating_add(d)
        } else {
            let d = u64::try_from((self.base - t).as_nanos()).unwrap_or(u64::MAX);
            self.base_ns.saturating_sub(d)
        }
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        MonoClock::new()
    }
}

/// Why a segment could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shared memory: {0}")]
    Io(#[from] std::io::Error),
    #[error("shared memory segment refused: {0}")]
    Invalid(String),
}

/// The daemon's side: creates the segment and writes it. Slot writes take
/// `&mut self`, so there is one writer per segment, as the seqlock requires.
#[derive(Debug)]
pub struct Segment {
    map: raw::Mapping,
    layout: Layout,
    seed: u64,
}

impl Segment {
    /// A new segment of about `total_bytes` with `slot_bytes` slots and
    /// `groups` trust groups: a sealed memfd (it can never shrink or grow, and
    /// no one else can write it), mapped here read-write. Every group starts
    /// not ready.
    pub fn create(total_bytes: u64, slot_bytes: u64, groups: usize) -> Result<Segment, ShmError> {
        let layout = Layout::for_bytes(total_bytes, slot_bytes, groups).ok_or_else(|| {
            ShmError::Invalid(format!(
                "{total_bytes} bytes cannot hold a header, {groups} trust record(s) and one slot of {slot_bytes} bytes"
            ))
        })?;
        let map = raw::Mapping::create(layout.words() * 8)?;
        let seed = rand::random::<u64>();
        let w = map.words();
        w[H_SLOT_WORDS].store(layout.slot_words as u64, Ordering::Relaxed);
        w[H_SLOT_COUNT].store(layout.slot_count as u64, Ordering::Relaxed);
        w[H_SEED].store(seed, Ordering::Relaxed);
        w[H_GROUPS].store(layout.groups as u64, Ordering::Relaxed);
        for g in 0..layout.groups {
            if let Some(t) = layout.trust(w, g) {
                t[T_GENERATION].store(1, Ordering::Relaxed);
            }
        }
        w[H_VERSION].store(VERSION, Ordering::Relaxed);
        w[H_MAGIC].store(MAGIC, Ordering::Release);
        Ok(Segment { map, layout, seed })
    }

    /// A descriptor to hand to a reader (read-only where the kernel allows).
    pub fn share(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.map.share()
    }

    /// Bytes of the segment.
    pub fn len_bytes(&self) -> u64 {
        (self.layout.words() * 8) as u64
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        hash_key(self.seed, key)
    }

    /// The trust record of group `g` (`None` out of range).
    fn trust(&self, g: usize) -> Option<&[AtomicU64]> {
        self.layout.trust(self.map.words(), g)
    }

    /// The trust group of `key` (see [`Layout::group_of`]).
    pub fn group_of(&self, key: &[u8]) -> usize {
        self.layout.group_of(key)
    }

    /// Group `g`'s generation (0 out of range: matches no slot written here).
    pub fn generation(&self, g: usize) -> u64 {
        self.trust(g)
            .map_or(0, |t| t[T_GENERATION].load(Ordering::Acquire))
    }

    /// Kills every slot of group `g` at once (flush, loss of trust).
    pub fn bump_generation(&mut self, g: usize) {
        if let Some(t) = self.trust(g) {
            t[T_GENERATION].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Readers may serve group `g` (true) or must not (false).
    pub fn set_ready(&mut self, g: usize, ready: bool) {
        if let Some(t) = self.trust(g) {
            t[T_READY].store(u64::from(ready), Ordering::Release);
        }
    }

    /// Readers serve group `g` until `until_ns` (CLOCK_MONOTONIC); only ever
    /// moves forward, except through [`Segment::clear_trust`].
    pub fn advance_trust(&mut self, g: usize, until_ns: u64) {
        if let Some(t) = self.trust(g) {
            t[T_TRUSTED_UNTIL].fetch_max(until_ns, Ordering::AcqRel);
        }
    }

    /// Group `g`: not ready, no deadline, a new generation.
    pub fn clear_trust(&mut self, g: usize) {
        self.set_ready(g, false);
        if let Some(t) = self.trust(g) {
            t[T_TRUSTED_UNTIL].store(0, Ordering::Release);
        }
        self.bump_generation(g);
    }

    /// Writes slot `i`; false if it does not fit or `i` is out of range.
    pub fn write(&mut self, i: usize, rec: &Record<'_>) -> bool {
        self.layout
            .slot(self.map.words(), i)
            .is_some_and(|s| write_slot(s, Some(rec)))
    }

    /// Empties slot `i`.
    pub fn retire(&mut self, i: usize) {
        if let Some(s) = self.layout.slot(self.map.words(), i) {
            write_slot(s, None);
        }
    }

    /// A reader's view of this very segment (tests).
    pub fn lookup(&self, key: &[u8], now_ns: u64) -> Lookup {
        lookup(self.map.words(), &self.layout, self.seed, key, now_ns)
    }
}

/// The client's side: a segment mapped read-only, its header checked once.
#[derive(Debug)]
pub struct View {
    map: raw::Mapping,
    layout: Layout,
    seed: u64,
}

impl View {
    /// Maps the segment behind `fd` read-only. Refuses a file that could shrink
    /// under the mapping (not sealed) and a header whose geometry does not fit
    /// the file, so no access can fall outside the mapping.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Result<View, ShmError> {
        let map = raw::Mapping::open(fd)?;
        let w = map.words();
        let field = |i: usize| w.get(i).map_or(0, |x| x.load(Ordering::Acquire));
        if field(H_MAGIC) != MAGIC || field(H_VERSION) != VERSION {
            return Err(ShmError::Invalid(format!(
                "not a shoal segment of version {VERSION}"
            )));
        }
        let slot_words = usize::try_from(field(H_SLOT_WORDS)).unwrap_or(0);
        let slot_count = usize::try_from(field(H_SLOT_COUNT)).unwrap_or(0);
        let groups = usize::try_from(field(H_GROUPS)).unwrap_or(0);
        let fits = slot_words
            .checked_mul(slot_count)
            .and_then(|n| n.checked_add(HEADER_WORDS))
            .and_then(|n| n.checked_add(groups.checked_mul(TRUST_WORDS)?))
            .is_some_and(|n| n <= w.len());
        if slot_words <= SLOT_HEAD || slot_count == 0 || groups == 0 || groups > MAX_GROUPS || !fits
        {
            return Err(ShmError::Invalid(format!(
                "geometry of {groups} trust group(s) and {slot_count} x {slot_words}-word slots does not fit {} words",
                w.len()
            )));
        }
        let seed = field(H_SEED);
        Ok(View {
            map,
            layout: Layout {
                slot_words,
                slot_count,
                groups,
            },
            seed,
        })
    }

    /// Looks `key` up now.
    pub fn get(&self, key: &[u8]) -> Lookup {
        // No clock: a time past every deadline, so the lookup refuses.
        self.get_at(key, mono_now_ns().unwrap_or(u64::MAX))
    }

    /// Looks `key` up as of `now_ns` (CLOCK_MONOTONIC).
    pub fn get_at(&self, key: &[u8], now_ns: u64) -> Lookup {
        lookup(self.map.words(), &self.layout, self.seed, key, now_ns)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod loom_tests;
