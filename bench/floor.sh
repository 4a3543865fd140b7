#!/usr/bin/env bash
# Sluice against the floor (docs/BENCHMARKS.md, "The floor under the CPU per
# delivery"): the hub's CPU per delivery to 1,000 SSE subscribers of one
# topic at 1,000 events/s of 100 bytes, beside what a bare writer of the same
# bytes needs on this machine (`sluice bench floor`, no hub), at each write
# delay of DELAYS: one thread writing every socket (`--writer thread`), and a
# task per socket, as the hub has (`--writer tasks`).
#
#   bash bench/floor.sh                     # about 7 minutes after the build
#   REPEAT=5 DELAYS="10ms 15ms" bash bench/floor.sh
#
# Each repetition runs, for each delay, a new hub with `--write-delay` and
# `sluice bench fanout` against it, then `sluice bench floor` with the same
# delay and each writer, so that all see the machine in the same state. At the end it
# prints a markdown table of the medians; the raw JSON of every run is kept
# in the temporary directory named at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT="${REPEAT:-3}"
DELAYS="${DELAYS:-0 10ms 15ms 20ms 40ms}"
DURATION="${DURATION:-6s}"
# 1,000 sockets on each side of the bench's connections.
ulimit -n "$(ulimit -Hn)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-floor-bench.XXXXXX")"
INDEX="$WORK/index.tsv"
: >"$INDEX"
# BIN, start_sluice_with, stop_hub, machine.
source bench/hub.sh

LOAD=(-n 1000 --rate 1000 --size 100 --duration "$DURATION")
for run in $(seq "$REPEAT"); do
  for delay in $DELAYS; do
    echo "run $run, write delay $delay" >&2
    start_sluice_with --storage memory --write-delay "$delay"
    file="$WORK/sluice-$delay-$run.json"
    "$BIN" bench fanout "${LOAD[@]}" --transport sse --publishers 16 \
      --url "$HUB_URL" --hub-pid "$HUB_PIDS" --json >"$file"
    printf '%s\tsluice\t%s\n' "$delay" "$file" >>"$INDEX"
    stop_hub
    for writer in thread tasks; do
      file="$WORK/floor-$writer-$delay-$run.json"
      "$BIN" bench floor "${LOAD[@]}" --write-delay "$delay" --writer "$writer" --json >"$file"
      printf '%s\t%s\t%s\n' "$delay" "$writer" "$file" >>"$INDEX"
    done
  done
done

echo "Machine: $(machine)."
echo
python3 - "$INDEX" "$REPEAT" <<'PY'
import sys

sys.path.insert(0, "bench")
from medians import grouped, median

index, repeat = sys.argv[1], sys.argv[2]
runs = grouped(index)

print(f"Medians of {repeat} runs.\n")
print("| Write delay | Sluice µs/delivery | p99 ms | floor, one thread: µs/delivery | µs/write | p99 ms | floor, a task per socket: µs/delivery | µs/write | p99 ms | Sluice / thread floor | Sluice / tasks floor |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for delay, kinds in runs.items():
    s = kinds["sluice"]
    assert all(r["delivery_ratio"] == 1.0 for rs in kinds.values() for r in rs), f"{delay}: events lost"
    hub = median(s, "cpu.hub_us_per_event")
    row = f"| {delay} | {hub:.3f} | {median(s, 'latency.p99_us') / 1000:.1f} "
    floors = []
    for writer in ["thread", "tasks"]:
        f = kinds[writer]
        floors.append(median(f, "writer_us_per_delivery"))
        row += (f"| {floors[-1]:.3f} | {median(f, 'writer_us_per_write'):.2f} "
                f"| {median(f, 'latency.p99_us') / 1000:.1f} ")
    print(row + "".join(f"| {hub / floor:.2f}x " for floor in floors) + "|")
PY
echo "Raw results (JSON, one file per run): $WORK" >&2
