#!/usr/bin/env bash
# A bounded real fuzz run for CI: every target for FERRY_FUZZ_CI_SECONDS seconds (default 10,
# so ten targets take under two minutes of fuzzing), after installing cargo-fuzz if missing and
# building the targets. The build is the long part: on a cold cache it takes far longer than the
# fuzzing (see the README, "Fuzzing"). Fails on any crash, with the panic in the output.
# FERRY_TEST_SKIP_FUZZ=1 skips it (e.g. on a machine without the nightly toolchain).
set -euo pipefail
cd "$(dirname "$0")"
if [ "${FERRY_TEST_SKIP_FUZZ:-}" = 1 ]; then
  echo "fuzz/ci.sh: skipped (FERRY_TEST_SKIP_FUZZ=1)"
  exit 0
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz/ci.sh: the nightly toolchain is missing (set FERRY_TEST_SKIP_FUZZ=1 to skip)" >&2
  exit 2
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked cargo-fuzz
fi
exec ./run.sh "${FERRY_FUZZ_CI_SECONDS:-10}"
