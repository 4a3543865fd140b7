#!/usr/bin/env bash
# Fan-out and idle connections, Sluice against nchan (docs/BENCHMARKS.md,
# "Fan-out against nchan" and "Idle connections"): the same `sluice bench`
# scenarios, run by the same client against both hubs, one after the other
# in the same run.
#
#   bash bench/nchan.sh                     # about 12 minutes after the build
#   REPEAT=1 DURATION=3s bash bench/nchan.sh
#   ONLY=idle bash bench/nchan.sh           # the scenarios whose title has "idle"
#
# It builds Sluice in release mode, installs nginx and its nchan module
# (Debian's `nginx` and `libnginx-mod-nchan`, with apt-get) when they are
# missing, and for each run of each scenario starts a new hub on a free port
# of 127.0.0.1: Sluice with history in memory, or nginx (not as a daemon)
# with a configuration written into a temporary directory (below). Each
# repetition runs Sluice's and then nchan's run of a scenario, so that both
# see the machine in the same state. At the end it prints markdown tables of
# the medians of REPEAT runs; the raw JSON of every run is kept in the
# temporary directory, named at the end.
#
# File descriptors: the soft limit (`ulimit -n`) is raised to the hard
# limit for the hubs and the bench (`sluice bench` raises its own too); nginx
# gets the same with `worker_rlimit_nofile`, and `worker_connections` just
# under it. Sluice's own connection limits are raised for the run
# (bench/hub.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT="${REPEAT:-3}"
# Only the scenarios whose title contains this text (all by default).
ONLY="${ONLY:-}"
DURATION="${DURATION:-5s}"
# Enough publishers that a publish's round trip does not cap Sluice's rate:
# each publisher waits for its answer before its next publish. (nchan
# answers a publish once it has written it to its subscribers, so its rate
# depends on their number: the scenarios with "publishers" in their title
# try others.)
PUBLISHERS="${PUBLISHERS:-16}"
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt 12000 ]; then
  echo "10,000 connections need more open files than 'ulimit -Hn' allows ($NOFILE)" >&2
  exit 1
fi
[ "$NOFILE" = unlimited ] && NOFILE=1048576

if ! command -v nginx >/dev/null || [ ! -e "$NCHAN_MODULE" ]; then
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    nginx libnginx-mod-nchan >/dev/null
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-nchan-bench.XXXXXX")"
INDEX="$WORK/index.tsv"
: >"$INDEX"
# BIN, start_sluice_with, stop_hub, machine.
source bench/hub.sh

# start_sluice [ARGS...]: the hub named `sluice` in the tables, with its
# history in memory.
start_sluice() {
  start_sluice_with --storage memory "$@"
}

# Sluice with other write delays than its default (15ms): without write
# coalescing (every event woken at once), with the default before session
# 18 (10ms), and with longer delays, to show what a socket write costs and
# what waiting longer saves.
start_sluice_nodelay() {
  start_sluice --write-delay 0
}
start_sluice_delay10() {
  start_sluice --write-delay 10ms
}
start_sluice_delay20() {
  start_sluice --write-delay 20ms
}
start_sluice_delay40() {
  start_sluice --write-delay 40ms
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# nginx's master switches its workers to this user when it runs as root.
NGINX_USER=
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"

# start_nchan: a new nginx with nchan; sets HUB_PID (its master), HUB_PIDS
# (master and workers), HUB_URL.
start_nchan() {
  local port dir="$WORK/nginx"
  port="$(free_port)"
  rm -rf "$dir"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
load_module $NCHAN_MODULE;
daemon off;
$NGINX_USER
# As many workers as cores, as a stock nginx has.
worker_processes auto;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
  worker_connections $((NOFILE - 100));
}
http {
  access_log off;
  client_body_temp_path $dir/body;
  # Messages and channels live in this shared memory (32 MiB by default).
  nchan_shared_memory_size 256M;
  server {
    listen 127.0.0.1:$port;
    # POST /pub?id=CHANNEL publishes its body.
    location = /pub {
      nchan_publisher;
      nchan_channel_id \$arg_id;
      # The message buffer: the last 1,000 messages of a channel, for up
      # to 10 minutes (Sluice keeps 10,000 events in all by default).
      nchan_message_buffer_length 1000;
      nchan_message_timeout 10m;
    }
    # GET /sub/CHANNEL: EventSource with Accept: text/event-stream, a
    # WebSocket when upgraded. /sub/A,B,C is one subscriber of channels
    # A, B and C (a multiplexed channel, of at most 255), whose id may be
    # longer than nchan's default limit of 1,024 bytes.
    location ~ ^/sub/(.+)\$ {
      nchan_subscriber;
      nchan_channel_id \$1;
      nchan_channel_id_split_delimiter ",";
      nchan_max_channel_id_length 4096;
      # Live only, as Sluice's subscribers without a last event id.
      nchan_subscriber_first_message newest;
    }
  }
}
EOF
  nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" 2>>"$WORK/nginx.log" &
  HUB_PID=$!
  HUB_URL="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      local workers
      workers="$(pgrep -P "$HUB_PID" | paste -sd, -)"
      if [ -n "$workers" ]; then
        HUB_PIDS="$HUB_PID,$workers"
        return
      fi
    fi
    kill -0 "$HUB_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "nginx did not start:" >&2
  cat "$WORK/nginx.log" "$dir/error.log" >&2
  exit 1
}

# measure SCENARIO HUBS -- BENCH-ARGS...: REPEAT repetitions; in each, one
# run per hub of HUBS (`sluice`, `nchan` or both, comma-separated), each
# against a new hub.
measure() {
  local scenario="$1" hubs="$2" run hub file
  shift 3
  [[ "$scenario" == *"$ONLY"* ]] || return 0
  echo "$scenario ($REPEAT runs on each of: $hubs)" >&2
  for run in $(seq "$REPEAT"); do
    for hub in ${hubs//,/ }; do
      "start_$hub"
      file="$WORK/$(echo "$scenario $hub $run" | tr -c 'a-zA-Z0-9\n' _).json"
      "$BIN" bench "$@" --target "${hub%%_*}" --url "$HUB_URL" --hub-pid "$HUB_PIDS" --json >"$file"
      printf '%s\t%s\t%s\n' "$scenario" "$hub" "$file" >>"$INDEX"
      stop_hub
    done
  done
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
FANOUT=(fanout --size 100 --duration "$DURATION")
SSE_1000=("${FANOUT[@]}" --rate 1000 -n 1000 --transport sse)
measure "1,000 SSE subscribers, 1 topic" sluice,nchan,sluice_nodelay,sluice_delay10,sluice_delay20,sluice_delay40 -- \
  "${SSE_1000[@]}" --publishers "$PUBLISHERS"
# The same with other numbers of publishers, and at 6,000 events/s: what
# each hub delivers when the offered load does not cap it.
for publishers in 1 4 64; do
  label="$publishers publishers"
  [ "$publishers" = 1 ] && label="1 publisher"
  measure "1,000 SSE subscribers, 1 topic, $label" sluice,nchan -- \
    "${SSE_1000[@]}" --publishers "$publishers"
done
measure "1,000 SSE subscribers, 1 topic, 6,000 events/s, 64 publishers" sluice,nchan -- \
  "${FANOUT[@]}" --rate 6000 -n 1000 --transport sse --publishers 64
FANOUT+=(--rate 1000 --publishers "$PUBLISHERS")
measure "1,000 WebSocket subscribers, 1 topic" sluice,nchan,sluice_delay10 -- "${FANOUT[@]}" -n 1000 --transport ws
# nchan has no NDJSON subscribers.
measure "1,000 NDJSON subscribers, 1 topic" sluice,sluice_delay10 -- "${FANOUT[@]}" -n 1000 --transport ndjson
# 100 of the 10,000 subscribe to every topic: Sluice with the pattern
# bench/<run>/*, nchan (which has no patterns) with a multiplexed channel of
# the 100 topics.
measure "10,000 SSE subscribers, 100 topics, 100 of them to all" sluice,nchan -- \
  "${FANOUT[@]}" -n 10000 --transport sse --topics 100 --wildcards 100
measure "10,000 idle SSE connections" sluice,nchan -- idle -n 10000
measure "10,000 idle WebSocket connections" sluice,nchan -- idle -n 10000 --transport ws
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

echo "Machine: $(machine), ulimit -n $(ulimit -n);" \
  "$(nginx -v 2>&1 | sed 's/.*: //'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?');" \
  "load average (1, 5, 15 min) $LOAD_BEFORE before, $LOAD_AFTER after."
echo
python3 - "$INDEX" "$REPEAT" <<'EOF'
import sys

sys.path.insert(0, "bench")
from medians import count, grouped, median, ms, spread, times

index, repeat = sys.argv[1], sys.argv[2]
runs = grouped(index)

print(f"Medians of {repeat} runs; spread is half the range over the median.\n")
print("### Fan-out\n")
print("| Scenario | Hub | deliveries/s | spread | delivery ratio | published/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | publish p50 ms | publish p99 ms | hub CPU µs/delivery | hub cores | bench cores |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for scenario, hubs in runs.items():
    for hub, reports in hubs.items():
        if reports[0]["scenario"] != "fanout":
            continue
        print(f"| {scenario} | {hub} | {count(median(reports, 'deliveries_per_second'))} "
              f"| {spread(reports, 'deliveries_per_second')} "
              f"| {median(reports, 'delivery_ratio'):.4f} "
              f"| {count(median(reports, 'published_per_second'))} "
              + "".join(f"| {ms(median(reports, 'latency.' + p))} "
                        for p in ["p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"])
              + "".join(f"| {ms(median(reports, 'publish_latency.' + p))} "
                        for p in ["p50_us", "p99_us"])
              + f"| {median(reports, 'cpu.hub_us_per_event'):.2f} "
              f"| {median(reports, 'cpu.hub_cores'):.2f} "
              f"| {median(reports, 'cpu.bench_cores'):.2f} |")
print("\n### Sluice against nchan\n")
print("| Scenario | deliveries/s, Sluice | nchan | Sluice / nchan | p99 ms, Sluice | nchan | hub CPU µs/delivery, Sluice | nchan | nchan / Sluice |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for scenario, hubs in runs.items():
    if "nchan" not in hubs or hubs["sluice"][0]["scenario"] != "fanout":
        continue
    s, n = hubs["sluice"], hubs["nchan"]
    ds, dn = median(s, "deliveries_per_second"), median(n, "deliveries_per_second")
    cs, cn = median(s, "cpu.hub_us_per_event"), median(n, "cpu.hub_us_per_event")
    print(f"| {scenario} | {count(ds)} | {count(dn)} | {times(ds, dn)} "
          f"| {ms(median(s, 'latency.p99_us'))} | {ms(median(n, 'latency.p99_us'))} "
          f"| {cs:.2f} | {cn:.2f} | {times(cn, cs)} |")
print("\n### Idle connections\n")
print("| Scenario | Hub | connections | RSS KiB/connection | spread | PSS KiB/connection | RSS before MiB | RSS with them MiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for scenario, hubs in runs.items():
    for hub, reports in hubs.items():
        if reports[0]["scenario"] != "idle":
            continue
        print(f"| {scenario} | {hub} | {count(median(reports, 'connections'))} "
              f"| {median(reports, 'rss_per_connection') / 1024:.2f} "
              f"| {spread(reports, 'rss_per_connection')} "
              f"| {median(reports, 'pss_per_connection') / 1024:.2f} "
              f"| {median(reports, 'before.rss_bytes') / 2**20:.1f} "
              f"| {median(reports, 'after.rss_bytes') / 2**20:.1f} |")
EOF
echo "Raw results (JSON, one file per run): $WORK" >&2
