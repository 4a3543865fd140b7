"""Publish events with `requests`: one as JSON, then the rest as one NDJSON batch.

Usage: python publish.py [TOPIC] [COUNT]
    TOPIC  the topic to publish to (default: "examples")
    COUNT  how many events (default: 3): event 1 alone, events 2..COUNT in one batch
Each event's data is {"n": N, "text": "event N"}. Prints "<id> <topic> <data
as JSON>" for each event published, in order, as the subscriber examples print
them. The hub's URL is taken from SLUICE_URL (default http://127.0.0.1:8000).
"""

import json
import os
import sys

import requests

HUB = os.environ.get("SLUICE_URL", "http://127.0.0.1:8000")
topic = sys.argv[1] if len(sys.argv) > 1 else "examples"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 3
events = [{"topic": topic, "data": {"n": n, "text": f"event {n}"}} for n in range(1, count + 1)]

with requests.Session() as session:
    # One event: a JSON object with `topic`, `data` and optionally `type`.
    response = session.post(f"{HUB}/publish", json=events[0], timeout=10)
    response.raise_for_status()  # 201 {"id": "…"}
    ids = [response.json()["id"]]

    # A batch: one JSON object per line, stored all or nothing.
    if count > 1:
        body = "".join(json.dumps(event) + "\n" for event in events[1:])
        response = session.post(
            f"{HUB}/publish",
            data=body.encode(),
            headers={"Content-Type": "application/x-ndjson"},
            timeout=10,
        )
        response.raise_for_status()  # 201 {"ids": ["…", …]}
        ids += response.json()["ids"]

for id_, event in zip(ids, events):
    print(id_, event["topic"], json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False))
