#!/usr/bin/env bash
# Sluice against the floor (docs/BENCHMARKS.md, "The floor under the CPU per
# delivery"): the hub's CPU per delivery to 1,000 SSE subscribers of one
# topic at 1,000 events/s of 100 bytes, beside what a bare writer of the same
# bytes needs on this machine (`sluice bench floor`, no hub), at each write
# delay of DELAYS.
#
#   bash bench/floor.sh                     # about 5 minutes after the build
#   REPEAT=5 DELAYS="10ms 15ms" bash bench/floor.sh
#
# Each repetition runs, for each delay, a new hub with `--write-delay` and
# `sluice bench fanout` against it, then `sluice bench floor` with the same
# delay, so that both see the machine in the same state. At the end it
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
# BIN, start_sluice, stop_hub.
source bench/hub.sh

LOAD=(-n 1000 --rate 1000 --size 100 --duration "$DURATION")
for run in $(seq "$REPEAT"); do
  for delay in $DELAYS; do
    echo "run $run, write delay $delay" >&2
    start_sluice --write-delay "$delay"
    file="$WORK/sluice-$delay-$run.json"
    "$BIN" bench fanout "${LOAD[@]}" --transport sse --publishers 16 \
      --url "$HUB_URL" --hub-pid "$HUB_PIDS" --json >"$file"
    printf '%s\tsluice\t%s\n' "$delay" "$file" >>"$INDEX"
    stop_hub
    file="$WORK/floor-$delay-$run.json"
    "$BIN" bench floor "${LOAD[@]}" --write-delay "$delay" --json >"$file"
    printf '%s\tfloor\t%s\n' "$delay" "$file" >>"$INDEX"
  done
done

echo "Machine: $(nproc) cores ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1))," \
  "$(free -h | awk '/^Mem:/ {print $2}') of memory, Linux $(uname -r)."
echo
python3 - "$INDEX" "$REPEAT" <<'PY'
import json, statistics, sys
from collections import OrderedDict

index, repeat = sys.argv[1], sys.argv[2]
runs = OrderedDict()
for line in open(index):
    delay, kind, path = line.rstrip("\n").split("\t")
    runs.setdefault(delay, {}).setdefault(kind, []).append(json.load(open(path)))

def median(reports, *path):
    def value(report):
        for key in path:
            report = report[key]
        return report
    return statistics.median(value(r) for r in reports)

print(f"Medians of {repeat} runs.\n")
print("| Write delay | Sluice µs/delivery | p99 ms | delivery ratio | floor µs/delivery | floor µs/write | p99 ms | delivery ratio | Sluice − floor µs | Sluice / floor |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for delay, kinds in runs.items():
    s, f = kinds["sluice"], kinds["floor"]
    hub = median(s, "cpu", "hub_us_per_event")
    floor = median(f, "writer_us_per_delivery")
    print(f"| {delay} | {hub:.3f} | {median(s, 'latency', 'p99_us') / 1000:.1f} "
          f"| {median(s, 'delivery_ratio'):.4f} "
          f"| {floor:.3f} | {median(f, 'writer_us_per_write'):.2f} "
          f"| {median(f, 'latency', 'p99_us') / 1000:.1f} | {median(f, 'delivery_ratio'):.4f} "
          f"| {hub - floor:.3f} | {hub / floor:.2f}x |")
PY
echo "Raw results (JSON, one file per run): $WORK" >&2
