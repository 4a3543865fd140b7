#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and reports, per target, how
# long it ran and whether it found anything.
#
#   fuzz/run.sh [SECONDS]     SECONDS per target, default 30
#
# Needs cargo-fuzz (installed from crates.io when missing). libFuzzer's
# instrumentation takes nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them. The targets are built once, without a
# sanitizer (the code under test is safe Rust: the fuzzer looks for panics,
# with overflow checks and debug assertions on, and for inputs that take
# over 10 s), in fuzz/target, then each binary runs on its own. New inputs
# the fuzzer finds go to fuzz/target/corpus/TARGET, so the seeds in
# fuzz/corpus/TARGET stay as committed; a failing input is saved under
# fuzz/artifacts/TARGET/ and replayed with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a TARGET fuzz/artifacts/TARGET/crash-…
# The exit status is 1 when any target found something, 2 when they could
# not be built.
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 2
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none --debug-assertions)
cargo fuzz build "${flags[@]}" || exit 2

bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

found=0
summary=()
for target in $(cargo fuzz list); do
  scratch="target/corpus/$target"
  log="target/fuzz-$target.log"
  mkdir -p "$scratch" "artifacts/$target"
  started=$(date +%s)
  "$bin/$target" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" "$scratch" "corpus/$target" >"$log" 2>&1
  status=$?
  ran=$(($(date +%s) - started))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  if [ "$status" -eq 0 ]; then
    result="found nothing (${runs:-?} runs)"
  else
    found=1
    artifact=$(grep -o 'artifacts/[^ ]*' "$log" | tail -n 1)
    result="FOUND a failure: ${artifact:-see $log} (status $status)"
  fi
  summary+=("$(printf '%-16s ran %4d s  %s' "$target" "$ran" "$result")")
  echo "${summary[-1]}"
done
echo
echo "fuzz/run.sh: ${#summary[@]} targets, $seconds s each"
printf '%s\n' "${summary[@]}"
exit "$found"
