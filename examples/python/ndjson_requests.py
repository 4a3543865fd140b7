"""Follow a topic over NDJSON with `requests`, one JSON line per event.

Usage: python ndjson_requests.py [TOPICS] [COUNT]
    TOPICS  comma-separated topics or patterns (default: "**", every topic)
    COUNT   exit after this many events (default: 10)
Prints "<id> <topic> <data as JSON>" for each event; the hub's URL is taken
from SLUICE_URL (default http://127.0.0.1:8000).
"""

import json
import os
import sys

import requests

HUB = os.environ.get("SLUICE_URL", "http://127.0.0.1:8000")
topics = sys.argv[1] if len(sys.argv) > 1 else "**"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10

params = {"topics": topics, "client_name": "python-requests-ndjson"}
# Connect within 5 s; a silence of 45 s (three missed keep-alives) is an error.
with requests.get(f"{HUB}/ndjson", params=params, stream=True, timeout=(5, 45)) as response:
    response.raise_for_status()
    received = 0
    for line in response.iter_lines():
        if not line:
            continue
        event = json.loads(line)
        if "id" not in event:  # a control line: sluice.keepalive or sluice.gap
            if event["type"] == "sluice.gap":
                print(f"gap: {json.dumps(event['data'])}", file=sys.stderr)
            continue
        data = json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False)
        print(event["id"], event["topic"], data, flush=True)
        received += 1
        if received == count:
            break
