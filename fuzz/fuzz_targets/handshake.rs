//! libFuzzer target: [`sluice::fuzz::Target::Handshake`] under [`sluice::fuzz::run_checked`]
//! (its properties, plus the CPU and allocation bounds). Build and run: `scripts/fuzz.sh handshake`.
#![no_main]

#[global_allocator]
static ALLOC: sluice::fuzz::CountingAlloc = sluice::fuzz::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::fuzz::run_checked(sluice::fuzz::Target::Handshake, data);
});
