//! The short fuzz run of `cargo test --release` (and so of `npm test`): every file of the committed corpus
//! (`fuzz/corpus/<target>/`), then seeded mutations of it for `SLUICE_FUZZ_SECS` seconds per
//! target (default 8; the two targets run in parallel). An input that reaches a new outcome (a
//! refusal, a sequence of frames) joins the pool that later mutations start from.
//!
//! A failure (panic, over the CPU or allocation bound of `sluice::fuzz::run_checked`) writes the
//! input to `target/fuzz-failures/<target>-<hash>` and fails the test with the seed, so that the
//! run can be repeated: `SLUICE_FUZZ_SEED=<seed> cargo test --release fuzz_`. A longer,
//! coverage-guided run is libFuzzer's (`scripts/fuzz.sh`, README "Fuzzing").
//!
//! These are unit tests of the library, not a `tests/` binary: napi's registrations are compiled
//! out under `cfg(test)` only, and an integration test would link against Node's symbols.
//! [`CountingAlloc`](crate::fuzz::CountingAlloc) is this test binary's global allocator (per
//! thread, so the other unit tests running alongside neither see nor disturb its counts).

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fuzz::{self, Rng, Target};

#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

/// Mutated inputs stay under this size: a 16 KiB head plus room to go over it, or a few
/// hundred small frames.
const MAX_INPUT: usize = 64 * 1024;
/// Inputs kept for reaching a new outcome, at most.
const MAX_POOL: usize = 4096;

fn corpus_dir(target: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target.name())
}

fn load_corpus(target: Target) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    out.sort();
    out
}

/// Runs one input; on failure saves it and panics with what to do next.
fn check(target: Target, input: &[u8], seed: u64, what: &str) -> u64 {
    match catch_unwind(AssertUnwindSafe(|| fuzz::run_checked(target, input))) {
        Ok(sig) => sig,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let hash = input.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            });
            let path = dir.join(format!("{}-{hash:016x}", target.name()));
            let _ = std::fs::write(&path, input);
            panic!(
                "{} failed on {what} ({} bytes, saved to {}; SLUICE_FUZZ_SEED={seed}): {msg}",
                target.name(),
                input.len(),
                path.display()
            );
        }
    }
}

fn budget() -> Duration {
    let secs: f64 = std::env::var("SLUICE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn run(target: Target) {
    let seed = seed();
    let corpus = load_corpus(target);
    assert!(
        corpus.len() >= 10,
        "{}: the corpus has {} files",
        target.name(),
        corpus.len()
    );
    let mut seen = HashSet::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    for (name, bytes) in &corpus {
        let sig = check(target, bytes, seed, &format!("corpus file {name}"));
        if seen.insert(sig) {
            pool.push(bytes.clone());
        }
        // Every corpus file, split every way it names and one byte at a time too.
        if !bytes.is_empty() {
            for first in [0u8, 1, 2, 5, 17, 64] {
                let mut v = bytes.clone();
                v[0] = match target {
                    // For frames the low 2 bits pick maxPayload: keep them.
                    Target::Frames => (first << 2) | (bytes[0] & 3),
                    Target::Handshake => first,
                };
                check(
                    target,
                    &v,
                    seed,
                    &format!("corpus file {name}, split {first}"),
                );
            }
        }
    }
    let corpus_outcomes = seen.len();
    let mut rng = Rng::new(seed);
    let dict = target.dictionary();
    let end = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < end {
        // A batch between clock reads.
        for _ in 0..64 {
            let mut input = pool[rng.below(pool.len())].clone();
            let other = &pool[rng.below(pool.len())];
            fuzz::mutate(&mut rng, &mut input, other, dict, MAX_INPUT);
            let sig = check(target, &input, seed, "a mutated input");
            runs += 1;
            if seen.insert(sig) && pool.len() < MAX_POOL {
                pool.push(input);
            }
        }
    }
    eprintln!(
        "fuzz {}: {} corpus files ({corpus_outcomes} outcomes), {runs} mutated inputs, {} outcomes in all, seed {seed}",
        target.name(),
        corpus.len(),
        seen.len()
    );
}

#[test]
fn fuzz_handshake() {
    run(Target::Handshake);
}

#[test]
fn fuzz_frames() {
    run(Target::Frames);
}

/// The harness itself: the counting allocator sees a large allocation that is freed again
/// before the measurement ends, and thread CPU time advances with work.
#[test]
fn allocations_and_cpu_time_are_measured() {
    assert!(fuzz::counting_installed());
    let (_, peak, _) = fuzz::measure(|| {
        let v = std::hint::black_box(vec![1u8; 3 << 20]);
        v.len()
    });
    assert!(peak >= 3 << 20, "{peak}");
    // A fixed amount of work (tens of ms), so that preemption by the tests alongside does not
    // matter: CPU time counts only what this thread ran.
    let (_, _, cpu) = fuzz::measure(|| {
        let mut x = 0u64;
        for _ in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        x
    });
    assert!(cpu >= Duration::from_millis(5), "{cpu:?}");
    // A frames input with maxPayload 125 may allocate a few hundred KiB at most, never 64 MiB.
    let limit = fuzz::alloc_limit(Target::Frames, &[1u8, 0x82, 0x80]);
    assert!(limit < 1 << 20, "{limit}");
}
