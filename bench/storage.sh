#!/usr/bin/env bash
# The storage benchmark (docs/BENCHMARKS.md, "Storage"): publish throughput
# and latency with history in memory and on disk (fsync every interval, or
# before every acknowledgement), and replay speed from memory and from disk.
#
# Each run of each scenario gets a new hub, a release build listening on a
# free port of 127.0.0.1 with an empty history (and a new data directory),
# loaded by `sluice bench` (all traffic stays on this machine). At the end it
# prints markdown tables of the medians of REPEAT runs.
#
#   bash bench/storage.sh                  # about 3 minutes after the build
#   REPEAT=5 DURATION=5s bash bench/storage.sh
#
# The raw JSON of every run is kept in a temporary directory, named at the
# end. The hub and the bench share the machine's cores: the tables show the
# CPU time of both, so that a reader can tell which one was the limit.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT="${REPEAT:-3}"
DURATION="${DURATION:-3s}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-storage-bench.XXXXXX")"
INDEX="$WORK/index.tsv"
: >"$INDEX"
# BIN, start_sluice_with, stop_hub, machine.
source bench/hub.sh
trap 'stop_hub; rm -rf "$WORK/data"' EXIT

# start_hub SERVE-ARGS...: starts a hub with an empty data directory, sets
# HUB_PID and HUB_URL.
start_hub() {
  rm -rf "$WORK/data"
  # History large enough that no run loses events to retention, nor spends
  # time on it.
  start_sluice_with --data-dir "$WORK/data" \
    --history-max-events 100000000 --history-max-bytes 64GiB "$@"
}

# measure STORAGE SERVE-ARGS -- SCENARIO BENCH-ARGS...: REPEAT runs of one
# scenario, each against a new hub with an empty history, so that no run
# reads or scans what an earlier one left.
measure() {
  local storage="$1" serve=() run file
  shift
  while [ "$1" != -- ]; do
    serve+=("$1")
    shift
  done
  local scenario="$2"
  shift 2
  for run in $(seq "$REPEAT"); do
    start_hub "${serve[@]}"
    file="$WORK/$(echo "$storage $scenario $run" | tr -c 'a-zA-Z0-9\n' _).json"
    "$BIN" bench "$@" --url "$HUB_URL" --hub-pid "$HUB_PID" --json >"$file"
    printf '%s\t%s\t%s\n' "$storage" "$scenario" "$file" >>"$INDEX"
    stop_hub
  done
}

# publishing STORAGE SERVE-ARGS...: publish throughput and latency.
publishing() {
  local storage="$1"
  shift
  echo "$storage: publishing ($REPEAT runs of each)" >&2
  measure "$storage" "$@" -- "single, 1 publisher" \
    ingest --mode single -c 1 --duration "$DURATION"
  measure "$storage" "$@" -- "single, 32 publishers" \
    ingest --mode single -c 32 --duration "$DURATION"
  measure "$storage" "$@" -- "batches of 100, 4 publishers" \
    ingest --mode batch --batch-size 100 -c 4 --duration "$DURATION"
  measure "$storage" "$@" -- "batches of 1,000, 4 publishers" \
    ingest --mode batch --batch-size 1000 -c 4 --duration "$DURATION"
}

# replaying STORAGE SERVE-ARGS...: catch-up speed, of a topic alone and of
# a rare topic in a busy log.
replaying() {
  local storage="$1"
  shift
  echo "$storage: replay ($REPEAT runs of each)" >&2
  measure "$storage" "$@" -- "100k events" replay --events 100k
  measure "$storage" "$@" -- "1M events" replay --events 1M
  measure "$storage" "$@" -- "1k events among 100k others" \
    replay --events 1k --noise 100k
  measure "$storage" "$@" -- "1k events among 1M others" \
    replay --events 1k --noise 1M
}

publishing "memory" --storage memory
publishing "disk, fsync interval" --storage disk --fsync interval
publishing "disk, fsync always" --storage disk --fsync always
# Reads do not depend on the fsync mode.
replaying "memory" --storage memory
replaying "disk" --storage disk

echo "Machine: $(machine), ulimit -n $(ulimit -n); hub and bench on the same machine."
echo
python3 - "$INDEX" "$REPEAT" <<'EOF'
import sys

sys.path.insert(0, "bench")
from medians import count, fixed, grouped, median, ms, spread

index, repeat = sys.argv[1], sys.argv[2]
runs = [
    ((storage, scenario), reports)
    for storage, scenarios in grouped(index).items()
    for scenario, reports in scenarios.items()
]

print(f"Medians of {repeat} runs; spread is half the range of events/s over the median.\n")
print("### Publishing\n")
print("| Storage | Publishing | events/s | spread | requests/s | p50 ms | p99 ms | hub CPU µs/event | hub cores | bench cores |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (storage, scenario), reports in runs:
    if reports[0]["scenario"] != "ingest":
        continue
    assert all(r["errors"] == 0 for r in reports), f"{storage}, {scenario}: errors"
    print(f"| {storage} | {scenario} | {count(median(reports, 'events_per_second'))} "
          f"| {spread(reports, 'events_per_second')} "
          f"| {count(median(reports, 'requests_per_second'))} "
          f"| {ms(median(reports, 'latency.p50_us'))} | {ms(median(reports, 'latency.p99_us'))} "
          f"| {fixed(median(reports, 'cpu.hub_us_per_event'), 1)} "
          f"| {fixed(median(reports, 'cpu.hub_cores'), 2)} "
          f"| {fixed(median(reports, 'cpu.bench_cores'), 2)} |")
print("\n### Replay\n")
print("| Storage | Replay from `earliest` | events/s | spread | MB/s | first event ms | hub CPU µs/event | hub cores | bench cores |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for (storage, scenario), reports in runs:
    if reports[0]["scenario"] != "replay":
        continue
    assert all(r["received"] == r["expected"] for r in reports), f"{storage}, {scenario}: lost events"
    print(f"| {storage} | {scenario} | {count(median(reports, 'events_per_second'))} "
          f"| {spread(reports, 'events_per_second')} "
          f"| {fixed(median(reports, 'mb_per_second'), 1)} "
          f"| {fixed(median(reports, 'first_event_ms'), 1)} "
          f"| {fixed(median(reports, 'cpu.hub_us_per_event'), 1)} "
          f"| {fixed(median(reports, 'cpu.hub_cores'), 2)} "
          f"| {fixed(median(reports, 'cpu.bench_cores'), 2)} |")
EOF
echo "Raw results (JSON, one file per run): $WORK" >&2
