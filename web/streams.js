// Connections to the hub. Every URL is relative to the page (`/demo` →
// `/stream`, `/ws`, …), so the page also works behind a path prefix.

/** An HTTP URL of the hub's API. */
export function apiUrl(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(key, value);
  }
  return url;
}

/** The WebSocket URL of the hub's API. */
export function wsUrl(path) {
  const url = apiUrl(path);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url;
}

/** Event ids are `<ms>-<seq>`, ordered by ms, then seq. */
export function compareIds(a, b) {
  const [am, as] = a.split('-').map(BigInt);
  const [bm, bs] = b.split('-').map(BigInt);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follows `GET /ndjson?topics=…` (a plain `fetch` stream), and after a
 * dropped connection comes back after the last id it got, so no event is
 * lost. Calls `onEvent(envelope)` for each event and `onState(connected)`.
 */
export function followNdjson(topics, { onEvent, onState = () => {}, clientName }) {
  let lastId = null;
  let stopped = false;
  let controller = null;

  async function once() {
    const url = apiUrl('ndjson', {
      topics: topics.join(','),
      last_event_id: lastId,
      client_name: clientName,
    });
    controller = new AbortController();
    const response = await fetch(url, { signal: controller.signal });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    onState(true);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (!line) continue;
        let envelope;
        try {
          envelope = JSON.parse(line);
        } catch {
          continue;
        }
        // Control lines (keep-alives, gaps) carry no id.
        if (envelope.id) {
          lastId = envelope.id;
          onEvent(envelope);
        }
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch {
        // Dropped, refused or aborted: retried below unless stopped.
      }
      onState(false);
      if (!stopped) await sleep(1000);
    }
  })();

  return {
    close() {
      stopped = true;
      controller?.abort();
    },
  };
}
