#!/usr/bin/env bash
# The Redis cluster benchmark: one node against three nodes on one Redis
# (`--storage redis`), with the same load spread over the nodes.
#
# It starts its own redis-server (no persistence) on a free port of
# 127.0.0.1, and for each row new release builds of the hub on free ports,
# on a key prefix of their own; all traffic stays on this machine. It
# prints two markdown tables:
#
# - Publishing: for each layout and publish mode, `sluice bench ingest`
#   against every node at once (the publishers split evenly among the
#   nodes), with one NDJSON subscriber per node counting what it receives:
#   events published per second (all nodes together); events each
#   subscriber received per second, from the start of publishing until it
#   had them all (the slowest subscriber); the publish latency (p50 and
#   p99, of the worst node); and the CPU that Redis used over that time.
# - Fan-out: for each layout and rate, one `sluice bench fanout` given every
#   node's URL: SUBSCRIBERS SSE subscribers to one topic and
#   FANOUT_PUBLISHERS publishers, both taking the nodes in turn, so that
#   each node's events are due on every node's subscribers: deliveries per
#   second, delivery ratio, publish-to-receive latency, the CPU of all the
#   nodes per delivery and in cores, and Redis's and the bench's CPU, over
#   the span from the first publish to the end of the drain.
#
# Redis runs commands on one thread: one core is its ceiling.
#
#   bash bench/redis-cluster.sh                 # about 3 minutes after the build
#   DURATION=10s PUBLISHERS=48 RATES="500 1000" bash bench/redis-cluster.sh
#
# Nodes, Redis, the bench and the subscribers share the machine's cores, so
# on a small machine the figures show the machine as much as the design.
set -euo pipefail
cd "$(dirname "$0")/.."

# Publishing.
DURATION="${DURATION:-5s}"
PUBLISHERS="${PUBLISHERS:-24}"
BATCH="${BATCH:-100}"
# Fan-out: events/s of SIZE bytes, one row per rate of RATES and layout.
SUBSCRIBERS="${SUBSCRIBERS:-300}"
# Each publisher waits for its answer, a round trip to Redis: enough of
# them for the highest rate at a few milliseconds each.
FANOUT_PUBLISHERS="${FANOUT_PUBLISHERS:-24}"
RATES="${RATES:-1000 2000 4000}"
SIZE="${SIZE:-100}"
FANOUT_DURATION="${FANOUT_DURATION:-10s}"

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

# start_node PREFIX [FLAG...]: starts a node, adds its URL to URLS and its
# process to NODES. All of the bench's connections come from 127.0.0.1: the
# limit per client address is lifted.
start_node() {
  local out="$WORK/node-${#PIDS[@]}.out" url
  : >"$out"
  "$BIN" serve --listen 127.0.0.1:0 --storage redis --max-connections-per-ip 1000000 \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "$1" "${@:2}" \
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

# start_nodes N PREFIX [FLAG...]: starts N new nodes on PREFIX, in URLS and
# NODES.
start_nodes() {
  local n="$1"
  shift
  URLS=()
  NODES=()
  for _ in $(seq "$n"); do start_node "$@"; done
}

stop_nodes() {
  for pid in "${NODES[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${NODES[@]}"; do wait "$pid" 2>/dev/null || true; done
}

echo "### Publishing"
echo

echo "| Nodes | Publish | Published events/s | Received events/s per subscriber (slowest) | Publish p50 / p99 (ms, worst node) | Redis CPU (cores) |"
echo "|---|---|---|---|---|---|"
run=0
for nodes in 1 3; do
  for mode in single batch; do
    run=$((run + 1))
    # The subscribers are curl writing to files: on a busy machine one can
    # fall a burst of batches behind, which the default buffer of 1,000
    # events would end with a cut-off, and the row would time the cut.
    start_nodes "$nodes" "run$run" --subscriber-buffer 1000000
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
    stop_nodes
  done
done

echo
echo "### Fan-out"
echo
echo "| Nodes | Events/s asked | Published events/s | Deliveries/s | Delivery ratio | Delivery p50 / p99 (ms) | Hub CPU per delivery (µs, all nodes) | Hub cores (all nodes) | Redis cores | Bench cores |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for nodes in 1 3; do
  for rate in $RATES; do
    run=$((run + 1))
    start_nodes "$nodes" "run$run"
    report="$WORK/fanout-$nodes-$rate.json"
    before="$(redis_ticks)"
    # A run that falls short exits with 1 after its report, and the row
    # says how short; one that could not measure has no report, and stops
    # the script.
    "$BIN" bench fanout --url "$(IFS=,; echo "${URLS[*]}")" --hub-pid "$(IFS=,; echo "${NODES[*]}")" \
      --json --subscribers "$SUBSCRIBERS" --transport sse --publishers "$FANOUT_PUBLISHERS" \
      --rate "$rate" --size "$SIZE" --duration "$FANOUT_DURATION" >"$report" || [ -s "$report" ]
    after="$(redis_ticks)"
    # Redis's CPU time is taken around the whole bench, the subscribers'
    # opening included, when it has next to nothing to do, and put over the
    # bench's span.
    python3 - "$report" "$nodes" "$before" "$after" "$TICKS" <<'EOF'
import json, sys
path, nodes, before, after, ticks = sys.argv[1:]
r = json.load(open(path))
cpu = r["cpu"]
redis = (int(after) - int(before)) / int(ticks) / cpu["seconds"]
notes = []
if r["lost_subscribers"]:
    notes.append(f"{r['lost_subscribers']:,} subscribers lost: {r['first_loss']}")
if r["publish_errors"]:
    notes.append(f"{r['publish_errors']:,} publish errors: {r['first_error']}")
note = f" ({'; '.join(notes)})" if notes else ""
latency = r["latency"]
print(f"| {nodes} | {r['rate']:,} | {r['published_per_second']:,.0f} | {r['deliveries_per_second']:,.0f} "
      f"| {r['delivery_ratio']:.4f}{note} | {latency['p50_us'] / 1000:.2f} / {latency['p99_us'] / 1000:.2f} "
      f"| {cpu['hub_us_per_event']:.2f} | {cpu['hub_cores']:.2f} | {redis:.2f} | {cpu['bench_cores']:.2f} |")
EOF
    stop_nodes
  done
done
echo
echo "raw results: $WORK"
