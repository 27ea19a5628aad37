//! The fuzz target body on stable: every seed in `fuzz/corpus/frames` (and any
//! findings a nightly fuzzing run added there), then a bounded, seeded randomized
//! run of mutations of those seeds. CI runs this; `cargo fuzz run frames` (nightly)
//! runs the same body under libFuzzer.
#![forbid(unsafe_code)]

use rand::{Rng, SeedableRng};
use shoal_client::proto::fuzz::fuzz_frames;

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/frames");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push(b);
            }
        }
    }
    out
}

#[test]
fn seed_corpus_runs_clean() {
    let seeds = corpus();
    assert!(
        seeds.len() >= 10,
        "seed corpus missing: {} files",
        seeds.len()
    );
    for s in &seeds {
        fuzz_frames(s);
    }
}

#[test]
fn bounded_randomized_mutations_run_clean() {
    let seeds = corpus();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0054_00a1_u64);
    for _ in 0..20_000 {
        let mut data = seeds[rng.random_range(0..seeds.len())].clone();
        // Concatenate, flip, insert, truncate: the usual havoc.
        match rng.random_range(0..5) {
            0 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                data.extend_from_slice(other);
            }
            1 => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..data.len());
                    data[i] = rng.random();
                }
            }
            2 => {
                let i = rng.random_range(0..=data.len());
                let n = rng.random_range(1..32);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(i..i, junk);
            }
            3 => {
                let n = rng.random_range(0..=data.len());
                data.truncate(n);
            }
            _ => {
                let n: usize = rng.random_range(0..256);
                data = (0..n).map(|_| rng.random()).collect();
            }
        }
        fuzz_frames(&data);
    }
}
