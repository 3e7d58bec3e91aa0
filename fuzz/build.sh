#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation on the stable toolchain:
# the same flags `cargo fuzz build -s none` passes (sanitizer coverage with inline 8-bit counters,
# the PC table and comparison tracing; `--cfg fuzzing`; debug assertions and overflow checks),
# given to rustc by hand so neither nightly nor cargo-fuzz is needed. `--target` keeps the flags
# off build scripts and proc macros (they run on the host and must not be instrumented).
# No sanitizer: the code under test forbids `unsafe`, and one would halve the executions.
# Prints the directory that holds the target binaries. FERRY_FUZZ_TARGET_DIR overrides where the
# build goes (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${FERRY_FUZZ_TARGET_DIR:-$PWD/target}
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --locked --profile fuzz --bins --target "$triple" >&2
echo "$CARGO_TARGET_DIR/$triple/fuzz"
