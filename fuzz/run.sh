#!/usr/bin/env bash
# Runs each atheris harness (fuzz/fuzz_<target>.py) for FUZZ_SECONDS (default 60) from its checked-in
# seeds (fuzz/seeds/<target>: well-formed inputs and every crash found so far, replayed first) plus the
# corpus it grew before (var/fuzz/<target>/corpus). Exits non-zero if any harness found a crash, and
# says where the input is and how to replay it. `make fuzz` installs atheris first.
#   FUZZ_SECONDS=600 FUZZ_TARGETS="snapshot http" fuzz/run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"events dead_letter csv snapshot http"}
# Inputs up to a little past each reader's own size limit (events: max_record_bytes 4096; dead letters:
# MAX_DEAD_LETTER_BYTES 128 KiB), so the "too large" paths are reachable too.
declare -A max_len=([events]=5000 [dead_letter]=140000 [csv]=8192 [snapshot]=20000 [http]=4096)
failed=()
for target in $targets; do
  harness=fuzz/fuzz_$target.py
  [ -f "$harness" ] || { echo "error: no harness $harness (targets: events dead_letter csv snapshot http)" >&2; exit 2; }
  work=var/fuzz/$target
  rm -rf "$work/tmp"
  mkdir -p "$work/corpus" "$work/tmp"
  echo "==> fuzz $target for ${seconds}s (log: $work/log.txt)"
  # Temporary folders the harness makes (snapshot stores, CSV files) go under $work/tmp and are removed.
  TMPDIR=$work/tmp .venv/bin/python "$harness" "$work/corpus" "fuzz/seeds/$target" \
    -max_total_time="$seconds" -max_len="${max_len[$target]}" -timeout=30 -rss_limit_mb=4096 \
    -artifact_prefix="$work/" -print_final_stats=1 >"$work/log.txt" 2>&1
  status=$?
  rm -rf "$work/tmp"
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log.txt")
  if [ "$status" -eq 0 ]; then
    echo "    ${runs:-?} inputs, no crash; corpus $(ls "$work/corpus" | wc -l) files"
  else
    failed+=("$target")
    crash=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$work/log.txt" | tail -1)
    grep -v '^INFO: Instrumenting' "$work/log.txt" | tail -30
    echo "    CRASH in $target (exit $status): input ${crash:-unknown}"
    [ -n "$crash" ] && echo "    replay: .venv/bin/python $harness $crash"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzzing: no crash in $targets (${seconds}s each)"
