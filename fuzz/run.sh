#!/usr/bin/env bash
# Runs every fuzz target (or those named after SECONDS) for SECONDS seconds each, one target at a
# time in one process (no -jobs or -fork: the machine is shared), starting from the committed
# corpus. New interesting inputs go to a scratch corpus (fuzz/corpus-new/<target>/, not
# committed); crashes to fuzz/artifacts/<target>/.
# Prints one summary line per target: seconds, executions, new inputs, crashes.
#
#   fuzz/run.sh 60                 # every target, a minute each
#   fuzz/run.sh 600 batch ingest   # two targets, ten minutes each
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); the build is
# `cargo +nightly fuzz build -s none`: the code under test forbids `unsafe`, so the address
# sanitizer would mostly halve the executions.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
if ! command -v cargo-fuzz >/dev/null; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
  exit 2
fi
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -s none
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-new/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  started=$SECONDS
  set +e
  cargo +nightly fuzz run -s none "$t" "corpus-new/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  # libFuzzer's own figure when it finished (the wall time also holds any rebuild).
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' | grep -o '[0-9]*' \
    || echo "$((SECONDS - started)) wall")
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  crashes=$(find "artifacts/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
  new=$(find "corpus-new/$t" -type f | wc -l)
  echo "$t: ${took}s, ${execs:-0} executions, $new new corpus inputs, $crashes crash/timeout/oom files, exit $rc"
  if [ "$rc" -ne 0 ]; then
    failed=1
    grep -m1 -A12 -E '^thread .* panicked|==ERROR|SUMMARY' "$log" || tail -20 "$log"
  fi
done
exit "$failed"
