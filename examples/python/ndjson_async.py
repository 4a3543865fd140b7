"""Follow a topic over NDJSON with asyncio and `httpx.AsyncClient`.

Usage: python ndjson_async.py [TOPICS] [COUNT]
    TOPICS  comma-separated topics or patterns (default: "**", every topic)
    COUNT   exit after this many events (default: 10)
Prints "<id> <topic> <data as JSON>" for each event; the hub's URL is taken
from SLUICE_URL (default http://127.0.0.1:8000).
"""

import asyncio
import json
import os
import sys

import httpx

HUB = os.environ.get("SLUICE_URL", "http://127.0.0.1:8000")


async def follow(topics: str, count: int) -> None:
    params = {"topics": topics, "client_name": "python-async-ndjson"}
    # Connect within 5 s; a silence of 45 s (three missed keep-alives) is an error.
    timeout = httpx.Timeout(5.0, read=45.0)
    async with httpx.AsyncClient(base_url=HUB, timeout=timeout) as client:
        async with client.stream("GET", "/ndjson", params=params) as response:
            response.raise_for_status()
            received = 0
            async for line in response.aiter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if "id" not in event:  # sluice.keepalive or sluice.gap
                    if event["type"] == "sluice.gap":
                        print(f"gap: {json.dumps(event['data'])}", file=sys.stderr)
                    continue
                data = json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False)
                print(event["id"], event["topic"], data, flush=True)
                received += 1
                if received == count:
                    return


if __name__ == "__main__":
    topics = sys.argv[1] if len(sys.argv) > 1 else "**"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    asyncio.run(follow(topics, count))
