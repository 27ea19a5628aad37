//! Model check of the seqlock (`cargo test -p shoal-client --lib shm::loom`):
//! loom runs a writer and a reader in every interleaving (and every weak-memory
//! outcome it models, fences included) and the reader never returns a torn
//! record, nor the old value after a retire it was told about. The seqlock
//! functions are the ones the segment uses, instantiated with loom's atomics.
#![allow(clippy::unwrap_used)]

use loom::sync::atomic::AtomicU64;
use loom::sync::Arc;
use loom::thread;

use super::*;

impl Word for AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    fn store(&self, v: u64, order: Ordering) {
        AtomicU64::store(self, v, order)
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

const WORDS: usize = SLOT_HEAD + 2;

fn rec<'a>(value: &'a [u8]) -> Record<'a> {
    Record {
        generation: 1,
        expires_ns: 100,
        l2_expires_ns: 0,
        hash: 7,
        key: b"k",
        value,
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn a_reader_racing_a_writer_never_sees_a_torn_record() {
    model(|| {
        let slot: Arc<Vec<AtomicU64>> = Arc::new((0..WORDS).map(|_| AtomicU64::new(0)).collect());
        // Two values whose bytes span both data words, so a mix is detectable.
        let a = [b'a'; 12];
        let b = [b'b'; 9];
        assert!(write_slot(&slot, Some(&rec(&a))));
        let w = slot.clone();
        let writer = thread::spawn(move || {
            assert!(write_slot(&w, Some(&rec(&b))));
            write_slot(&w, None);
        });
        match read_slot(&slot, 7, b"k", 1, 0) {
            SlotRead::Hit { buf, key_len, .. } => {
                let v = &buf[key_len..];
                assert!(v == a || v == b, "torn read: {v:?}");
            }
            SlotRead::Miss | SlotRead::Doubt => {}
        }
        writer.join().unwrap();
        assert_eq!(read_slot(&slot, 7, b"k", 1, 0), SlotRead::Miss, "retired");
    });
}

#[test]
fn a_retired_slot_is_never_read_as_the_old_value_after_the_retire() {
    model(|| {
        let slot: Arc<Vec<AtomicU64>> = Arc::new((0..WORDS).map(|_| AtomicU64::new(0)).collect());
        let done = Arc::new(AtomicU64::new(0));
        assert!(write_slot(&slot, Some(&rec(b"old"))));
        let (w, d) = (slot.clone(), done.clone());
        let writer = thread::spawn(move || {
            write_slot(&w, None);
            // "the change counts as applied" only after the retire
            d.store(1, Ordering::Release);
        });
        if done.load(Ordering::Acquire) == 1 {
            assert!(!matches!(
                read_slot(&slot, 7, b"k", 1, 0),
                SlotRead::Hit { .. }
            ));
        }
        writer.join().unwrap();
    });
}
