#!/usr/bin/env bash
# Where a hub's CPU goes under one `sluice bench fanout` scenario: a
# flamegraph and a short text summary (docs/BENCHMARKS.md, "Where the time
# goes").
#
#   bash bench/profile.sh                          # 1,000 SSE subscribers
#   bash bench/profile.sh -n 10000 --topics 100 --wildcards 100 -p 16 --duration 6s
#   HUB_ARGS="--write-delay 40ms" bash bench/profile.sh -n 1000 --transport ws
#   OUT=docs/profiles/fanout-sse-1000 bash bench/profile.sh
#
# Arguments are `sluice bench fanout`'s; without any, those of the
# benchmark's first scenario (1,000 subscribers of one topic, 1,000 events/s
# of 100 bytes from 16 publishers, for 6 s). HUB_ARGS are the hub's, after
# `--storage memory`. It builds Sluice in release mode with
# frame pointers and line tables, into a target directory of its own (so
# that the stacks through the hub's own code are whole and the normal build
# is left alone), installs linux-perf with apt-get and inferno with cargo
# when they are missing, starts a hub on a free port, records it with
# `perf record -g` while the bench runs, and writes OUT.svg (the
# flamegraph: a frame's width is its share of the hub's CPU samples, its
# callers below it) and OUT.txt (the bench's report, the share of the
# kernel, the heaviest symbols). Then it runs the bench again on a new hub
# with uprobes on jemalloc's allocating entry points, and adds to OUT.txt
# the allocations per delivery, per socket write and per event published,
# and the code that asked for them. OUT defaults to a new temporary
# directory's `profile`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- -n 1000 --publishers 16 --duration 6s

if ! command -v perf >/dev/null; then
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    linux-perf >/dev/null
fi
if ! command -v inferno-flamegraph >/dev/null; then
  cargo install --quiet --locked inferno
fi

TARGET="${PROFILE_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/profile-fp}"
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  RUSTFLAGS="-C force-frame-pointers=yes" \
  cargo build --release --quiet --target-dir "$TARGET"
BIN="$TARGET/release/sluice"

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-profile.XXXXXX")/profile}"
mkdir -p "$(dirname "$OUT")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-profile-run.XXXXXX")"

ulimit -n "$(ulimit -Hn)"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# shellcheck disable=SC2086 # HUB_ARGS is a list of arguments.
SLUICE_MAX_CONNECTIONS=1000000 SLUICE_MAX_CONNECTIONS_PER_IP=1000000 \
  "$BIN" serve --listen "127.0.0.1:$PORT" --storage memory --log-level warn \
  ${HUB_ARGS:-} >"$WORK/hub.log" 2>&1 &
HUB_PID=$!
PERF_PID=
stop() {
  [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null || true
  kill -TERM "$HUB_PID" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$WORK/hub.log" && break
  kill -0 "$HUB_PID" 2>/dev/null || { cat "$WORK/hub.log" >&2; exit 1; }
  sleep 0.1
done

# The whole run is recorded, the subscribers' opening included: it is
# short beside the publishing.
perf record -g -e cpu-clock -F 1999 -p "$HUB_PID" -o "$WORK/perf.data" \
  >"$WORK/perf.log" 2>&1 &
PERF_PID=$!
"$BIN" bench fanout --url "http://127.0.0.1:$PORT" --hub-pid "$HUB_PID" "$@" >"$OUT.txt"
kill -INT "$PERF_PID"
wait "$PERF_PID" || true
PERF_PID=

perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf >"$WORK/folded"
inferno-flamegraph --title "sluice bench fanout $*" --width 1600 \
  <"$WORK/folded" >"$OUT.svg"
{
  echo
  echo "perf record -g -e cpu-clock on the hub, $(uname -r):"
  perf report -i "$WORK/perf.data" --no-children --sort dso --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | sed -n 1,5p
  echo
  echo "Heaviest symbols (self time):"
  perf report -i "$WORK/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9.]+%' | sed -n 1,25p
  echo
  echo "Heaviest symbols (with their callees):"
  perf report -i "$WORK/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9.]+%' | sed -n 1,40p
} >>"$OUT.txt"
kill -TERM "$HUB_PID"
wait "$HUB_PID" || true

# Allocation counts, in a second run on a new hub: a uprobe on each of
# jemalloc's entry points that hand out memory, recorded with its caller,
# and the hub's `writev` calls, for a per-write figure. Not in the first
# run: every hit of a probe traps into the kernel, which would show in the
# CPU profile, and slows the hub enough to change what it does (with
# 1,000 subscribers, it takes about half the events/s it is offered).
PROBES=()
for fn in malloc calloc realloc mallocx rallocx; do
  if perf probe -q -x "$BIN" --add "sluice_alloc:$fn=_rjem_$fn" 2>/dev/null; then
    PROBES+=(-e "sluice_alloc:$fn")
  fi
done
cleanup_probes() { perf probe -q -d 'sluice_alloc:*' 2>/dev/null || true; }
trap 'stop; cleanup_probes' EXIT
if [ ${#PROBES[@]} -eq 0 ]; then
  echo "(no allocation counts: no jemalloc symbols in $BIN)" >>"$OUT.txt"
else
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # shellcheck disable=SC2086 # HUB_ARGS is a list of arguments.
  SLUICE_MAX_CONNECTIONS=1000000 SLUICE_MAX_CONNECTIONS_PER_IP=1000000 \
    "$BIN" serve --listen "127.0.0.1:$PORT" --storage memory --log-level warn \
    ${HUB_ARGS:-} >"$WORK/hub2.log" 2>&1 &
  HUB_PID=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$WORK/hub2.log" && break
    sleep 0.1
  done
  perf record -g "${PROBES[@]}" -e syscalls:sys_enter_writev -p "$HUB_PID" \
    -o "$WORK/alloc.data" >"$WORK/perf2.log" 2>&1 &
  PERF_PID=$!
  "$BIN" bench fanout --url "http://127.0.0.1:$PORT" --json "$@" >"$WORK/bench2.json"
  kill -INT "$PERF_PID"
  wait "$PERF_PID" || true
  PERF_PID=
  # Each sample as its event and the first frame that is not the
  # allocator's or a collection's: the code that wanted the memory.
  perf script -i "$WORK/alloc.data" -F event,ip,sym 2>/dev/null | awk '
    function flush() { if (event != "") print event "\t" (caller == "" ? "?" : caller) }
    /^ *[a-z_]+:[a-z_]+:/ { flush(); event = $1; sub(/:$/, "", event); caller = ""; next }
    /^\t/ && caller == "" {
      frame = $0; sub(/^[ \t]*[0-9a-f]+ /, "", frame); sub(/\+0x[0-9a-f]+$/, "", frame)
      if (frame !~ /^(_rjem_|__rust|<?(alloc|core|std|hashbrown|smallvec|bytes)::|\[unknown\])/) caller = frame
    }
    END { flush() }' >"$WORK/allocs.tsv"
  python3 - "$WORK/allocs.tsv" "$WORK/bench2.json" >>"$OUT.txt" <<'PY'
import collections, json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
bench = json.load(open(sys.argv[2]))
writes = sum(1 for event, _ in rows if event.endswith("sys_enter_writev"))
allocs = collections.Counter(caller for event, caller in rows if event.startswith("sluice_alloc:"))
total = sum(allocs.values())
deliveries, published = bench["received"], bench["published"]
print()
print("Allocations in a second run (uprobes on jemalloc; the whole run, opening included):")
print(f"    {total:,} allocations, {writes:,} writev calls, {published:,} events published, "
      f"{deliveries:,} deliveries")
print(f"    {total / max(deliveries, 1):.3f} per delivery, {total / max(writes, 1):.2f} per write, "
      f"{total / max(published, 1):.1f} per event published")
print("By the first caller outside the allocator and collections (count, per write, per event published):")
for caller, count in allocs.most_common(20):
    print(f"    {count:>10,}  {count / max(writes, 1):6.2f}  {count / max(published, 1):8.2f}  {caller[:120]}")
PY
fi
rm -rf "$WORK"
echo "$OUT.svg"
echo "$OUT.txt"
