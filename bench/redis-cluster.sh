#!/usr/bin/env bash
# The Redis cluster benchmark: one node against three nodes on one Redis
# (`--storage redis`), with the same total publish load, and one NDJSON
# subscriber per node counting what it receives.
#
# It starts its own redis-server (no persistence) on a free port of
# 127.0.0.1 and release builds of the hub on free ports; all traffic stays on
# this machine. For each layout and publish mode it runs `sluice bench
# ingest` against every node at once (the publishers split evenly among the
# nodes) and prints a markdown table: events published per second (all
# nodes together); events each subscriber received per second, from the
# start of publishing until it had them all (the slowest subscriber); the
# publish latency (p50 and p99, of the worst node); and the CPU that Redis
# used over that time (one core is its ceiling).
#
#   bash bench/redis-cluster.sh                 # about a minute after the build
#   DURATION=10s PUBLISHERS=48 bash bench/redis-cluster.sh
#
# Nodes, Redis, the bench and the subscribers share the machine's cores, so
# on a small machine the figures show the machine as much as the design.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5s}"
PUBLISHERS="${PUBLISHERS:-24}"
BATCH="${BATCH:-100}"

command -v redis-server >/dev/null || {
  echo "redis-server is needed (apt-get install redis-server)" >&2
  exit 1
}
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-redis-bench.XXXXXX")"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
  sleep 0.1
done

# Redis's CPU time so far, in clock ticks.
redis_ticks() { awk '{print $14 + $15}' "/proc/$REDIS_PID/stat"; }
TICKS="$(getconf CLK_TCK)"

# start_node PREFIX: starts a node, adds its URL to URLS and its process to
# NODES.
start_node() {
  local out="$WORK/node-${#PIDS[@]}.out" url
  : >"$out"
  "$BIN" serve --listen 127.0.0.1:0 --storage redis \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "$1" \
    --history-max-events 100000000 --history-max-bytes 64GiB \
    --lifecycle-events false --log-level warn >"$out" 2>>"$WORK/nodes.log" &
  PIDS+=("$!")
  NODES+=("$!")
  for _ in $(seq 200); do
    url="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$out")"
    [ -n "$url" ] && { URLS+=("$url"); return; }
    sleep 0.1
  done
  echo "a node did not start:" >&2
  cat "$WORK/nodes.log" >&2
  exit 1
}

echo "| Nodes | Publish | Published events/s | Received events/s per subscriber (slowest) | Publish p50 / p99 (ms, worst node) | Redis CPU (cores) |"
echo "|---|---|---|---|---|---|"
run=0
for nodes in 1 3; do
  for mode in single batch; do
    run=$((run + 1))
    URLS=()
    NODES=()
    for _ in $(seq "$nodes"); do start_node "run$run"; done
    subs=()
    for url in "${URLS[@]}"; do
      curl -sN "$url/ndjson?topics=bench/ingest" >"$WORK/sub-$run-${#subs[@]}.ndjson" &
      subs+=("$!")
    done
    sleep 0.5
    args=(--duration "$DURATION" -c $((PUBLISHERS / nodes)) --json)
    [ "$mode" = batch ] && args+=(--mode batch --batch-size "$BATCH")
    before="$(redis_ticks)"
    started="$(date +%s.%N)"
    benches=()
    for i in "${!URLS[@]}"; do
      "$BIN" bench ingest --url "${URLS[$i]}" "${args[@]}" >"$WORK/bench-$run-$i.json" &
      benches+=("$!")
    done
    for pid in "${benches[@]}"; do wait "$pid"; done
    published="$(python3 -c 'import glob, json, sys; print(sum(json.load(open(f))["events"] for f in glob.glob(sys.argv[1])))' "$WORK/bench-$run-*.json")"
    # Until every subscriber has every event (at most 60 s more).
    for _ in $(seq 300); do
      behind=0
      for i in "${!subs[@]}"; do
        [ "$(grep -c '"id"' "$WORK/sub-$run-$i.ndjson")" -lt "$published" ] && behind=1
      done
      [ "$behind" = 0 ] && break
      sleep 0.2
    done
    elapsed="$(echo "$(date +%s.%N) - $started" | bc)"
    after="$(redis_ticks)"
    for pid in "${subs[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${subs[@]}"; do wait "$pid" 2>/dev/null || true; done
    python3 - "$WORK" "$run" "$nodes" "$mode" "$elapsed" "$before" "$after" "$TICKS" <<'EOF'
import glob, json, sys
work, run, nodes, mode, elapsed, before, after, ticks = sys.argv[1:]
benches = [json.load(open(f)) for f in glob.glob(f"{work}/bench-{run}-*.json")]
published = sum(b["events"] for b in benches)
rate = sum(b["events_per_second"] for b in benches)
seconds = max(b["seconds"] for b in benches)
received = []
for f in glob.glob(f"{work}/sub-{run}-*.ndjson"):
    with open(f) as lines:
        received.append(sum(1 for line in lines if '"id"' in line))
slowest = min(received)
p50 = max(b["latency"]["p50_us"] for b in benches) / 1000
p99 = max(b["latency"]["p99_us"] for b in benches) / 1000
redis = (int(after) - int(before)) / int(ticks) / float(elapsed)
label = "single events" if mode == "single" else "NDJSON batches"
note = "" if slowest == published else f" (only {slowest:,} of {published:,})"
print(f"| {nodes} | {label} | {rate:,.0f} | {slowest / float(elapsed):,.0f}{note} | {p50:.2f} / {p99:.2f} | {redis:.2f} |")
EOF
    for pid in "${NODES[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NODES[@]}"; do wait "$pid" 2>/dev/null || true; done
  done
done
echo
echo "raw results: $WORK"
