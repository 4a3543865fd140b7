"""Follow a topic over SSE with `httpx-sse`, and resume after a disconnect.

Usage: python sse_resume.py [TOPICS] [COUNT]
    TOPICS  comma-separated topics or patterns (default: "**", every topic)
    COUNT   exit after this many events (default: 10)
Prints "<id> <topic> <data as JSON>" for each event, and on stderr a line
for each reconnection. The hub's URL is taken from SLUICE_URL (default
http://127.0.0.1:8000).

When the stream ends (the hub restarts, the network drops), it waits the
delay the hub sent in `retry:` and reconnects with `Last-Event-ID`, so the
hub replays exactly the events published meanwhile: none missed, none twice.
"""

import json
import os
import sys
import time

import httpx
from httpx_sse import connect_sse

HUB = os.environ.get("SLUICE_URL", "http://127.0.0.1:8000")


def follow(topics: str, count: int) -> None:
    # envelope=true: each event's data is its whole envelope (id, topic, type, data, time).
    params = {"topics": topics, "envelope": "true", "client_name": "python-sse-resume"}
    last_id = None  # the id of the last event received: where to resume
    retry = 5.0  # seconds; the hub's `retry:` replaces it
    received = 0
    # Connect within 5 s; a silence of 45 s (three missed keep-alives) is a drop.
    with httpx.Client(base_url=HUB, timeout=httpx.Timeout(5.0, read=45.0)) as client:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(client, "GET", "/stream", params=params, headers=headers) as source:
                    source.response.raise_for_status()
                    for sse in source.iter_sse():
                        if sse.retry is not None:
                            retry = sse.retry / 1000
                        if sse.event == "sluice.gap":  # history no longer reached back to last_id
                            print(f"gap: {sse.data}", file=sys.stderr)
                            continue
                        if not sse.data:  # the `retry:` frame carries no event
                            continue
                        event = json.loads(sse.data)
                        data = json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False)
                        print(event["id"], event["topic"], data, flush=True)
                        last_id = event["id"]
                        received += 1
                        if received == count:
                            return
                print("stream ended", file=sys.stderr)
            except httpx.TransportError as error:  # refused, reset, timed out…
                print(f"disconnected: {error!r}", file=sys.stderr)
            time.sleep(retry)
            print(f"reconnecting after {last_id}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    topics = sys.argv[1] if len(sys.argv) > 1 else "**"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    follow(topics, count)
