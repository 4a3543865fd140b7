#!/usr/bin/env bash
# Follow topics over SSE with curl, and resume from an event id.
#
# Usage: [LAST_EVENT_ID=ID] sse.sh [TOPICS] [COUNT]
#   TOPICS         comma-separated topics or patterns (default: "**")
#   COUNT          exit after this many events (default: 10)
#   LAST_EVENT_ID  resume after this id (or "earliest": all of history),
#                  sent as the Last-Event-ID header; live only without it
# With envelope=true each event's `data:` line is its whole envelope, so this
# prints the same lines as ndjson.sh: one envelope JSON per event. The hub's
# URL is taken from SLUICE_URL (default http://127.0.0.1:8000).
set -euo pipefail
HUB=${SLUICE_URL:-http://127.0.0.1:8000}
TOPICS=${1:-**}
COUNT=${2:-10}

exec 3< <(exec curl -sSN --fail --get "$HUB/stream" -H 'Accept: text/event-stream' \
  ${LAST_EVENT_ID:+-H "Last-Event-ID: $LAST_EVENT_ID"} \
  --data-urlencode "topics=$TOPICS" -d envelope=true -d client_name=curl-sse)
curl_pid=$!
trap 'kill "$curl_pid" 2>/dev/null' EXIT # a stream never ends on its own

received=0 id='' event='' data=''
while ((received < COUNT)) && IFS= read -r line <&3; do
  case $line in
    'id: '*) id=${line#id: } ;;
    'event: '*) event=${line#event: } ;;
    'data: '*) data=${line#data: } ;; # one line: an envelope is compact JSON
    '') # a blank line ends a frame: the retry: frame, an event, or a sluice.gap
      if [ "$event" = sluice.gap ]; then
        echo "gap: $data" >&2
      elif [ -n "$id" ]; then
        printf '%s\n' "$data"
        received=$((received + 1))
      fi
      id='' event='' data=''
      ;;
  esac # comments (": keepalive") and retry: lines are skipped
done
if ((received < COUNT)); then
  echo "the stream ended after $received events" >&2
  exit 1
fi
