// Follow topics over SSE from Node, with the `eventsource` package (the
// browser's EventSource API): it reconnects on its own and sends
// Last-Event-ID, so the hub resumes exactly where the stream dropped.
//
// Usage: node subscribe.mjs [TOPICS] [COUNT]
//   TOPICS  comma-separated topics or patterns (default: "**", every topic)
//   COUNT   exit after this many events (default: 10)
// Prints "<id> <topic> <data as JSON>" for each event; the hub's URL is
// taken from SLUICE_URL (default http://127.0.0.1:8000).
import { EventSource } from 'eventsource';

const HUB = process.env.SLUICE_URL || 'http://127.0.0.1:8000';
const [topics = '**', count = '10'] = process.argv.slice(2);

const url = new URL('/stream', HUB);
// envelope=true: every event arrives in onmessage with its whole envelope.
url.search = new URLSearchParams({ topics, envelope: 'true', client_name: 'node-eventsource' });

const source = new EventSource(url);
let received = 0;
source.onmessage = (message) => {
  const event = JSON.parse(message.data); // {id, topic, type?, data, time}
  console.log(event.id, event.topic, JSON.stringify(event.data));
  if (++received === Number(count)) source.close();
};
source.addEventListener('sluice.gap', (message) => console.error('gap:', message.data));
source.onerror = (error) => {
  if (source.readyState === EventSource.CLOSED) {
    // Refused (a 400 for a bad topic, say): EventSource gives up.
    console.error('subscription failed:', error.message);
    process.exitCode = 1;
  } else {
    console.error('disconnected, reconnecting:', error.message);
  }
};
