#!/usr/bin/env bash
# Publish with curl: one JSON event, then a batch of two as NDJSON.
#
# Usage: publish.sh [TOPIC]          (TOPIC defaults to "examples")
# Publishes {"n":1,"text":"event 1"}, then events 2 and 3 in one batch, and
# prints the hub's two answers: {"id":"…"} then {"ids":["…","…"]}.
# The hub's URL is taken from SLUICE_URL (default http://127.0.0.1:8000).
set -euo pipefail
HUB=${SLUICE_URL:-http://127.0.0.1:8000}
TOPIC=${1:-examples}

# One event: a JSON object with topic, data and optionally type.
curl -sS --fail-with-body -X POST "$HUB/publish" -H 'Content-Type: application/json' \
  -d "{\"topic\":\"$TOPIC\",\"data\":{\"n\":1,\"text\":\"event 1\"}}"
echo

# A batch: one JSON object per line, stored all or nothing.
printf '%s\n' \
  "{\"topic\":\"$TOPIC\",\"data\":{\"n\":2,\"text\":\"event 2\"}}" \
  "{\"topic\":\"$TOPIC\",\"data\":{\"n\":3,\"text\":\"event 3\"}}" |
  curl -sS --fail-with-body -X POST "$HUB/publish" -H 'Content-Type: application/x-ndjson' \
    --data-binary @-
echo
