//! libFuzzer target: [`sluice::fuzz::Target::Frames`] under [`sluice::fuzz::run_checked`]
//! (its properties, plus the CPU and allocation bounds). Build and run: `scripts/fuzz.sh frames`.
#![no_main]

#[global_allocator]
static ALLOC: sluice::fuzz::CountingAlloc = sluice::fuzz::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::fuzz::run_checked(sluice::fuzz::Target::Frames, data);
});
