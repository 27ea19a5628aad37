//! The segment on real shared memory: a writer racing readers in other threads
//! (no torn value ever returned), trust and generation rules, and corrupted or
//! truncated segments (refused or answered "miss", never a crash).
#![allow(clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use rand::{Rng, SeedableRng};

use super::*;

const NOW: u64 = 1_000;
const LATER: u64 = 1_000_000_000;

fn seg(total: u64, slot: u64) -> Segment {
    seg_groups(total, slot, 1)
}

/// A segment with `groups` trust groups, every one ready until `LATER`.
fn seg_groups(total: u64, slot: u64, groups: usize) -> Segment {
    let mut s = Segment::create(total, slot, groups).unwrap();
    for g in 0..groups {
        s.set_ready(g, true);
        s.advance_trust(g, LATER);
    }
    s
}

fn put(s: &mut Segment, key: &str, value: &[u8], expires_ns: u64) -> bool {
    let h = s.hash(key.as_bytes());
    let i = s.layout().probe(h)[0];
    let generation = s.generation(s.group_of(key.as_bytes()));
    s.write(
        i,
        &Record {
            generation,
            expires_ns,
            l2_expires_ns: 0,
            hash: h,
            key: key.as_bytes(),
            value,
        },
    )
}

fn hit(l: Lookup) -> Option<Vec<u8>> {
    match l {
        Lookup::Hit { value, .. } => Some(value.to_vec()),
        _ => None,
    }
}

#[test]
fn a_reader_sees_what_the_writer_published_through_its_own_mapping() {
    let mut s = seg(1 << 20, 256);
    assert!(put(&mut s, "user:1", b"alice", LATER));
    let view = View::from_fd(s.share().unwrap()).unwrap();
    assert_eq!(view.layout(), s.layout());
    assert_eq!(
        hit(view.get_at(b"user:1", NOW)).as_deref(),
        Some(&b"alice"[..])
    );
    assert_eq!(view.get_at(b"user:2", NOW), Lookup::Miss);
}

#[test]
fn entries_expire_and_trust_has_a_deadline() {
    let mut s = seg(1 << 20, 256);
    assert!(put(&mut s, "k", b"v", 5_000));
    let view = View::from_fd(s.share().unwrap()).unwrap();
    assert!(hit(view.get_at(b"k", 4_999)).is_some());
    assert_eq!(
        view.get_at(b"k", 5_000),
        Lookup::Miss,
        "expired at its expiry"
    );
    assert_eq!(
        view.get_at(b"k", LATER),
        Lookup::Untrusted,
        "at the deadline: refused"
    );
    s.advance_trust(0, 2 * LATER);
    assert!(hit(view.get_at(b"k", 4_000)).is_some());
    s.advance_trust(0, 10); // never moves back
    assert!(hit(view.get_at(b"k", 4_000)).is_some());
    s.clear_trust(0);
    assert_eq!(view.get_at(b"k", 4_000), Lookup::Untrusted, "loss of trust");
    s.set_ready(0, true);
    s.advance_trust(0, LATER);
    assert_eq!(
        view.get_at(b"k", 4_000),
        Lookup::Miss,
        "the old generation is dead"
    );
}

#[test]
fn a_flush_kills_every_slot_and_a_retire_one() {
    let mut s = seg(1 << 20, 256);
    assert!(put(&mut s, "a", b"1", LATER));
    assert!(put(&mut s, "b", b"2", LATER));
    let view = View::from_fd(s.share().unwrap()).unwrap();
    let i = s.layout().probe(s.hash(b"a"))[0];
    s.retire(i);
    assert_eq!(view.get_at(b"a", NOW), Lookup::Miss);
    assert!(hit(view.get_at(b"b", NOW)).is_some());
    s.bump_generation(0);
    assert_eq!(view.get_at(b"b", NOW), Lookup::Miss);
}

/// Keys of different cluster buckets have their own trust: one group's loss of
/// trust, deadline or flush leaves the other group's keys served.
#[test]
fn each_group_has_its_own_trust_and_generation() {
    let mut s = seg_groups(1 << 20, 256, 8);
    // Two keys of different groups (CLUSTER KEYSLOT mod 8).
    let a = "user:1";
    let b = (2..)
        .map(|i| format!("user:{i}"))
        .find(|k| s.group_of(k.as_bytes()) != s.group_of(a.as_bytes()))
        .unwrap();
    let (ga, gb) = (s.group_of(a.as_bytes()), s.group_of(b.as_bytes()));
    assert_eq!(ga, usize::from(crate::keyslot::keyslot(a.as_bytes())) % 8);
    assert!(put(&mut s, a, b"A", LATER));
    assert!(put(&mut s, &b, b"B", 4 * LATER));
    let view = View::from_fd(s.share().unwrap()).unwrap();
    assert_eq!(view.layout().groups, 8);
    assert!(hit(view.get_at(a.as_bytes(), NOW)).is_some());

    s.clear_trust(ga);
    assert_eq!(view.get_at(a.as_bytes(), NOW), Lookup::Untrusted);
    assert_eq!(
        hit(view.get_at(b.as_bytes(), NOW)).as_deref(),
        Some(&b"B"[..])
    );

    s.advance_trust(gb, 3 * LATER);
    assert_eq!(
        hit(view.get_at(b.as_bytes(), 2 * LATER)).as_deref(),
        Some(&b"B"[..]),
        "its own deadline"
    );
    s.bump_generation(gb);
    assert_eq!(
        view.get_at(b.as_bytes(), NOW),
        Lookup::Miss,
        "flushed alone"
    );
    s.set_ready(ga, true);
    s.advance_trust(ga, LATER);
    assert_eq!(
        view.get_at(a.as_bytes(), NOW),
        Lookup::Miss,
        "a's old copy is dead"
    );
    assert!(put(&mut s, a, b"A2", LATER));
    assert_eq!(
        hit(view.get_at(a.as_bytes(), NOW)).as_deref(),
        Some(&b"A2"[..])
    );
}

#[test]
fn values_above_the_slot_size_are_not_written() {
    let mut s = seg(1 << 20, 128);
    let cap = s.layout().capacity();
    assert!(put(&mut s, "k", &vec![1u8; cap - 1], LATER));
    assert!(!put(&mut s, "k", &vec![1u8; cap], LATER));
}

#[test]
fn the_reader_cannot_write_or_resize_the_segment() {
    let s = seg(1 << 20, 256);
    let fd = s.share().unwrap();
    let f = std::fs::File::from(fd);
    assert!(f.set_len(1 << 21).is_err(), "grow refused");
    assert!(f.set_len(4096).is_err(), "shrink refused");
    use std::io::Write;
    assert!((&f).write_all(b"x").is_err(), "write refused");
}

/// A writer rewrites one key as fast as it can with values whose every byte and
/// length encode their version; readers in other threads check each hit.
#[test]
fn readers_racing_a_writer_never_see_a_torn_value() {
    let mut s = seg(1 << 20, 512);
    let view = Arc::new(View::from_fd(s.share().unwrap()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut hits, mut misses) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match view.get_at(b"hot", NOW) {
                        Lookup::Hit { value, .. } => {
                            let v = value[0];
                            assert_eq!(
                                value.len(),
                                1 + usize::from(v) % 300,
                                "length of version {v}"
                            );
                            assert!(value.iter().all(|&b| b == v), "torn value {value:?}");
                            hits += 1;
                        }
                        _ => misses += 1,
                    }
                }
                (hits, misses)
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut version = 0u8;
    while started.elapsed() < std::time::Duration::from_millis(800) {
        version = version.wrapping_add(1);
        let value = vec![version; 1 + usize::from(version) % 300];
        assert!(put(&mut s, "hot", &value, LATER));
        if version % 7 == 0 {
            let i = s.layout().probe(s.hash(b"hot"))[0];
            s.retire(i);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let (hits, _) = r.join().unwrap();
        assert!(hits > 0, "the readers saw the value at all");
    }
}

fn sealed_memfd(bytes: &[u8]) -> OwnedFd {
    let fd = memfd_create(c"t", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, bytes).unwrap();
    let fd = OwnedFd::from(f);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .unwrap();
    fd
}

/// A header with one trust group, and its trust record (trusted for ever).
fn header(slot_words: u64, slot_count: u64) -> Vec<u8> {
    header_groups(slot_words, slot_count, 1, 1)
}

/// A header claiming `groups` trust groups, followed by `records` records.
fn header_groups(slot_words: u64, slot_count: u64, groups: u64, records: usize) -> Vec<u8> {
    let mut h = vec![0u8; (HEADER_WORDS + records * TRUST_WORDS) * 8];
    let mut set = |i: usize, v: u64| h[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    set(H_MAGIC, MAGIC);
    set(H_VERSION, VERSION);
    set(H_SLOT_WORDS, slot_words);
    set(H_SLOT_COUNT, slot_count);
    set(H_GROUPS, groups);
    for g in 0..records {
        let t = HEADER_WORDS + g * TRUST_WORDS;
        set(t + T_GENERATION, 1);
        set(t + T_READY, 1);
        set(t + T_TRUSTED_UNTIL, u64::MAX);
    }
    h
}

#[test]
fn truncated_unsealed_and_foreign_segments_are_refused() {
    // Too short for a header.
    assert!(View::from_fd(sealed_memfd(&[0u8; 100])).is_err());
    // A header claiming more slots than the file holds.
    let mut bytes = header(32, 10);
    bytes.extend(vec![0u8; 32 * 8 * 9]);
    assert!(
        View::from_fd(sealed_memfd(&bytes)).is_err(),
        "9 slots of 10"
    );
    bytes.extend(vec![0u8; 32 * 8]);
    assert!(View::from_fd(sealed_memfd(&bytes)).is_ok(), "all 10 slots");
    // Geometry that overflows.
    assert!(View::from_fd(sealed_memfd(&header(u64::MAX, u64::MAX))).is_err());
    assert!(
        View::from_fd(sealed_memfd(&header(2, 1))).is_err(),
        "slot smaller than its head"
    );
    // Trust groups: none, too many, or more records than the file holds.
    for (groups, records) in [(0, 0), (MAX_GROUPS as u64 + 1, 1), (3, 2)] {
        let mut bytes = header_groups(32, 1, groups, records);
        bytes.extend(vec![0u8; 32 * 8]);
        assert!(
            View::from_fd(sealed_memfd(&bytes)).is_err(),
            "{groups} groups, {records} records"
        );
    }
    let mut bytes = header_groups(32, 1, 3, 3);
    bytes.extend(vec![0u8; 32 * 8]);
    assert!(View::from_fd(sealed_memfd(&bytes)).is_ok(), "3 groups");
    // Not a shoal segment.
    let mut foreign = header(32, 1);
    foreign[0] ^= 1;
    foreign.extend(vec![0u8; 256]);
    assert!(View::from_fd(sealed_memfd(&foreign)).is_err());
    // Not sealed: could shrink under the mapping (SIGBUS), so refused.
    let fd = memfd_create(c"t", MFdFlags::empty()).unwrap();
    let mut f = std::fs::File::from(fd);
    let mut ok = header(32, 1);
    ok.extend(vec![0u8; 256]);
    std::io::Write::write_all(&mut f, &ok).unwrap();
    assert!(View::from_fd(OwnedFd::from(f)).is_err());
}

/// Random garbage in every slot word (lengths, sequences, hashes), with a
/// header a reader accepts: every lookup answers, none panics or reads outside.
#[test]
fn garbage_slots_never_crash_a_reader() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    for round in 0..50 {
        let slot_words = rng.random_range(7..64u64);
        let slot_count = rng.random_range(1..32u64);
        let mut bytes = header(slot_words, slot_count);
        let body: Vec<u8> = (0..slot_words * slot_count * 8)
            .map(|_| rng.random())
            .collect();
        bytes.extend(body);
        // Make some slots look like the key we ask for, with hostile lengths.
        let view_seed = 0u64;
        let h = hash_key(view_seed, b"key");
        for s in 0..slot_count as usize {
            if rng.random_bool(0.5) {
                let base = (HEADER_WORDS + TRUST_WORDS + s * slot_words as usize) * 8;
                let mut set = |w: usize, v: u64| {
                    bytes[base + w * 8..base + w * 8 + 8].copy_from_slice(&v.to_le_bytes())
                };
                set(S_SEQ, 2 * rng.random_range(0..4u64));
                set(S_GEN, 1);
                set(S_EXPIRES, u64::MAX);
                set(S_HASH, h);
                let key_len = if rng.random_bool(0.5) {
                    3
                } else {
                    rng.random()
                };
                set(S_LENS, key_len | rng.random::<u64>() << 32);
            }
        }
        let view = View::from_fd(sealed_memfd(&bytes)).unwrap();
        for _ in 0..200 {
            let k: Vec<u8> = if rng.random_bool(0.5) {
                b"key".to_vec()
            } else {
                (0..rng.random_range(0..20)).map(|_| rng.random()).collect()
            };
            let _ = view.get_at(&k, NOW);
        }
        let _ = round;
    }
}
