#!/usr/bin/env bash
# Runs every fuzz target (or those named after SECONDS) for SECONDS seconds each, one target at a
# time in one process (no -jobs or -fork: the machine is shared), starting from the committed
# corpus. New interesting inputs go to a scratch corpus (fuzz/corpus-new/<target>/, not
# committed); crashes to fuzz/artifacts/<target>/.
# Prints one line per target: seconds, executions, new inputs, crashes; exits 1 on any crash.
#
#   fuzz/run.sh 60                 # every target, a minute each
#   fuzz/run.sh 600 batch ingest   # two targets, ten minutes each
#
# Stable toolchain only: fuzz/build.sh instruments the build itself (no nightly, no cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^ferry-fuzz$')
fi
echo "fuzz: building ${#targets[@]} targets" >&2
bin=$(./build.sh)
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-new/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  set +e
  "$bin/$t" "corpus-new/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' | grep -o '[0-9]*' || echo '?')
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
