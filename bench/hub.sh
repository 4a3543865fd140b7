# Sourced by the benchmark scripts that start Sluice hubs one after another
# (nchan.sh, floor.sh, storage.sh, instructions.sh), with WORK set to their
# temporary directory: builds Sluice in release mode, copies the binary into
# WORK as BIN (so that builds of the same tree during a run cannot replace
# it), and defines start_sluice_with and stop_hub, stop_hub also on exit,
# and machine.

cargo build --release --quiet
BIN="$WORK/sluice"
cp "${CARGO_TARGET_DIR:-target}/release/sluice" "$BIN"

# The machine, for the line each script prints above its tables.
machine() {
  echo "$(nproc) cores ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1))," \
    "$(free -h | awk '/^Mem:/ {print $2}') of memory, Linux $(uname -r)"
}

HUB_PID=
# A command the hub runs under (bench/instructions.sh's valgrind), if any.
HUB_WRAPPER=()
stop_hub() {
  if [ -n "$HUB_PID" ]; then
    kill -TERM "$HUB_PID" 2>/dev/null || true
    wait "$HUB_PID" 2>/dev/null || true
    HUB_PID=
  fi
}
trap stop_hub EXIT

# start_sluice_with [ARGS...]: a new hub on a free port of 127.0.0.1, with its
# default settings and ARGS; sets HUB_PID, HUB_PIDS, HUB_URL. Its connection
# limits (10,000 in all and 256 per client address by default) are raised,
# through the environment, for the bench's subscribers.
start_sluice_with() {
  # Emptied here, not only by the hub's redirection, which happens in the
  # background: the previous hub's address must not be read for this one's.
  : >"$WORK/sluice.out"
  SLUICE_MAX_CONNECTIONS=1000000 SLUICE_MAX_CONNECTIONS_PER_IP=1000000 \
    "${HUB_WRAPPER[@]}" "$BIN" serve --listen 127.0.0.1:0 --log-level warn "$@" \
    >"$WORK/sluice.out" 2>>"$WORK/sluice.log" &
  HUB_PID=$!
  HUB_PIDS=$HUB_PID
  HUB_URL=
  for _ in $(seq 200); do
    HUB_URL="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/sluice.out")"
    [ -n "$HUB_URL" ] && return
    kill -0 "$HUB_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "sluice ($*) did not start:" >&2
  cat "$WORK/sluice.log" >&2
  exit 1
}
