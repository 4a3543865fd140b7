#!/usr/bin/env bash
# Follow topics over NDJSON with curl.
#
# Usage: ndjson.sh [TOPICS] [COUNT]
#   TOPICS  comma-separated topics or patterns (default: "**", every topic)
#   COUNT   exit after this many events (default: 10)
# Prints each event as the hub sends it: its envelope, one JSON object per
# line ({"id":…,"topic":…,"type":…,"data":…,"time":…}). Control lines
# (keep-alives, gaps) have no id and are left out. The hub's URL is taken
# from SLUICE_URL (default http://127.0.0.1:8000).
set -euo pipefail
HUB=${SLUICE_URL:-http://127.0.0.1:8000}
TOPICS=${1:-**}
COUNT=${2:-10}

# -N: no output buffering; --get with --data-urlencode builds the query string.
exec 3< <(exec curl -sSN --fail --get "$HUB/ndjson" \
  --data-urlencode "topics=$TOPICS" -d client_name=curl-ndjson)
curl_pid=$!
trap 'kill "$curl_pid" 2>/dev/null' EXIT # a stream never ends on its own

received=0
while ((received < COUNT)) && IFS= read -r line <&3; do
  case $line in
    '{"id":'*) # an event: envelopes always start with the id
      printf '%s\n' "$line"
      received=$((received + 1))
      ;;
    *'"type":"sluice.gap"'*) echo "gap: $line" >&2 ;;
  esac
done
if ((received < COUNT)); then
  echo "the stream ended after $received events" >&2
  exit 1
fi
