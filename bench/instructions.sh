#!/usr/bin/env bash
# The hub's user-space instructions per publish and per delivery
# (docs/BENCHMARKS.md, "Instructions"), counted by valgrind's callgrind.
# The CPU times of the other scripts move by 20-100% from one host or hour
# of this pool to the next; an instruction count is the same for the same
# binary and load however busy the machine is, so a change to the hub's own
# code can be judged by one run of each build. What it cannot see: the
# kernel's work (the socket writes, most of a delivery's time) and what an
# instruction costs (cache misses, waits).
#
#   bash bench/instructions.sh          # about 2 minutes after the build
#   BIN=/tmp/old/sluice bash bench/instructions.sh   # another build
#
# Each figure is the difference between two runs of one load, the second
# twice the first, over the difference in their work, so that the hub's
# start and stop and the subscribers' opening cancel out:
# - a publish: `sluice bench ingest --mode single --concurrency 4`, 3,000
#   then 6,000 events, to a hub in memory, then to one on disk;
# - a delivery: `sluice bench fanout` to 100 SSE subscribers of one topic,
#   200 events/s from 2 publishers, for 3 s then 6 s, to a hub in memory:
#   about 3 events per write at the default delay (valgrind runs the hub
#   some 50 times slower, so the load is small).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-instructions.XXXXXX")"
# BIN, start_sluice_with, stop_hub, machine; a BIN given in the environment
# is measured instead of this tree's build.
GIVEN_BIN="${BIN:-}"
source bench/hub.sh
[ -z "$GIVEN_BIN" ] || cp "$GIVEN_BIN" "$BIN"
ulimit -n "$(ulimit -Hn)"

# measure NAME FIELD [HUB_ARGS...] -- BENCH_ARGS...: runs the bench against
# a new hub (with a data directory of its own) under callgrind, and appends
# to RESULTS the bench's FIELD (the events published, or the deliveries
# received) and the hub's instruction count.
measure() {
  local name=$1 field=$2
  shift 2
  local hub_args=()
  while [ "$1" != -- ]; do hub_args+=("$1"); shift; done
  shift
  HUB_WRAPPER=(valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.callgrind")
  start_sluice_with --data-dir "$WORK/$name.data" "${hub_args[@]}"
  HUB_WRAPPER=()
  "$BIN" bench "$@" --url "$HUB_URL" --json >"$WORK/$name.json"
  # callgrind writes its counts when the hub exits.
  stop_hub
  python3 - "$WORK/$name.json" "$field" <<'PY' >>"$RESULTS"
import json, sys
report = json.load(open(sys.argv[1]))
assert report.get("errors", 0) == 0, f"{sys.argv[1]}: publish errors"
assert report.get("delivery_ratio", 1.0) == 1.0, f"{sys.argv[1]}: events lost"
print(report[sys.argv[2]], end=" ")
PY
  sed -n 's/^summary: *//p' "$WORK/$name.callgrind" >>"$RESULTS"
}

INGEST=(ingest --mode single --concurrency 4 --size 100)
FANOUT=(fanout -n 100 --rate 200 --size 100 --publishers 2 --transport sse)
RESULTS="$WORK/results.txt"
: >"$RESULTS"
for storage in memory disk; do
  for events in 3000 6000; do
    echo "publishes, $storage, $events events" >&2
    measure "publish-$storage-$events" events --storage "$storage" \
      -- "${INGEST[@]}" --events "$events"
  done
done
for seconds in 3 6; do
  echo "deliveries, memory, $seconds s" >&2
  measure "deliver-$seconds" received --storage memory -- "${FANOUT[@]}" --duration "${seconds}s"
done

echo "Machine: $(machine); $(valgrind --version)."
echo
echo "| Work | instructions each | work in the two runs | instructions in the two runs |"
echo "|---|---:|---:|---:|"
# Lines of RESULTS in pairs: the smaller run, then the larger.
python3 - "$RESULTS" <<'PY'
import sys

runs = [tuple(map(int, line.split())) for line in open(sys.argv[1])]
names = ["a publish, history in memory", "a publish, history on disk", "a delivery (SSE)"]
for name, (small, large) in zip(names, zip(runs[::2], runs[1::2])):
    each = (large[1] - small[1]) / (large[0] - small[0])
    print(f"| {name} | {each:,.0f} | {small[0]:,}; {large[0]:,} | {small[1]:,}; {large[1]:,} |")
PY
echo "Raw results (JSON and callgrind's counts): $WORK" >&2
