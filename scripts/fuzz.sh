#!/usr/bin/env bash
# Coverage-guided fuzzing of the handshake or frame parser with libFuzzer, on stable Rust.
#
#   scripts/fuzz.sh handshake 600            # 10 minutes
#   scripts/fuzz.sh frames 3600 -jobs=2      # extra arguments go to libFuzzer
#   scripts/fuzz.sh handshake 0 fuzz/artifacts/handshake-crash-...   # replay one input
#
# cargo-fuzz needs nightly; its instrumentation (SanitizerCoverage) is reachable from stable
# rustc through -Cpasses=sancov-module and LLVM arguments, which is all libfuzzer-sys needs.
# The committed corpus (fuzz/corpus/<target>) is read, never written: new inputs go to
# fuzz/target/corpus-<target>, crashes to fuzz/artifacts/. A crash, a timeout, or a panic from
# the target's properties or bounds (src/fuzz.rs) stops the run with a non-zero status.
set -euo pipefail
target=${1:-handshake}
secs=${2:-600}
shift $(( $# < 2 ? $# : 2 ))
case "$target" in handshake|frames) ;; *) echo "usage: $0 handshake|frames [seconds] [libFuzzer args]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/../fuzz"
host=$(rustc -vV | sed -n 's/^host: //p')
# The instrumentation cargo-fuzz would add.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off the build scripts.
cargo build --release --target "$host" --bin "$target"
bin="target/$host/release/$target"
mkdir -p "target/corpus-$target" artifacts
if [ $# -gt 0 ] && [ -f "$1" ]; then
  exec "$bin" "$@"
fi
exec "$bin" "target/corpus-$target" "corpus/$target" -max_total_time="$secs" -timeout=10 \
  -rss_limit_mb=2048 -max_len=65536 -artifact_prefix="artifacts/$target-" "$@"
