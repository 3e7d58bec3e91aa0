#!/usr/bin/env bash
# The bounded fuzz run `.ci/run` makes: every target for FERRY_FUZZ_CI_SECONDS seconds (default
# 10: ten targets fuzz for under two minutes), after building them (the long part, about five
# minutes on a cold cache with two cores). Fails on any crash, with the panic in the output.
# FERRY_TEST_SKIP_FUZZ=1 skips it, saying so.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${FERRY_TEST_SKIP_FUZZ:-}" = 1 ]; then
  echo "fuzz/ci.sh: skipped (FERRY_TEST_SKIP_FUZZ=1)"
  exit 0
fi
exec ./run.sh "${FERRY_FUZZ_CI_SECONDS:-10}"
