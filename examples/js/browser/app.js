// One subscription over EventSource (SSE) and one over WebSocket, side by
// side, and a form that publishes with fetch. Plain browser JavaScript.
// Each event is listed as "<id> <topic> <data as JSON>".
const query = new URLSearchParams(location.search);
const HUB = query.get('hub') || 'http://127.0.0.1:8000';
const TOPICS = query.get('topics') || 'examples';
document.getElementById('hub').textContent = HUB;
document.getElementById('topics').textContent = TOPICS;

function show(listId, event) {
  const item = document.createElement('li');
  item.dataset.id = event.id;
  item.textContent = `${event.id} ${event.topic} ${JSON.stringify(event.data)}`;
  document.getElementById(listId).append(item);
}
function setState(id, text) {
  document.getElementById(id).textContent = text;
}

// EventSource: envelope=true puts the whole event in `data`, so every event
// reaches onmessage whatever its type. On a drop the browser reconnects by
// itself and sends Last-Event-ID: the hub replays what was missed.
const sseUrl = new URL('/stream', HUB);
sseUrl.search = new URLSearchParams({
  topics: TOPICS,
  envelope: 'true',
  client_name: 'browser-sse',
});
const source = new EventSource(sseUrl);
source.onopen = () => setState('sse-state', 'open');
source.onerror = () => {
  setState('sse-state', source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
};
source.onmessage = (message) => show('sse', JSON.parse(message.data));
source.addEventListener('sluice.gap', (message) => console.warn('SSE gap', message.data));

// WebSocket: every frame is an event envelope or a reply to a command. We
// subscribe with a command; after a drop we reconnect and resume with
// last_event_id ourselves.
let lastWsId = null;
function connectWebSocket() {
  const wsUrl = new URL('/ws', HUB);
  wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
  wsUrl.search = new URLSearchParams({ client_name: 'browser-ws' });
  const socket = new WebSocket(wsUrl);
  socket.onopen = () => {
    const command = { op: 'subscribe', topics: TOPICS.split(',') };
    if (lastWsId) command.last_event_id = lastWsId;
    socket.send(JSON.stringify(command));
  };
  socket.onmessage = (frame) => {
    const message = JSON.parse(frame.data);
    if ('ok' in message) {
      // A reply: {"ok":true,"op":"subscribe","topics":[…]}, or an error.
      if (message.op === 'subscribe') {
        setState('ws-state', message.ok ? 'subscribed' : message.error.message);
      }
    } else if (message.type === 'sluice.gap') {
      console.warn('WebSocket gap', message.data);
    } else {
      lastWsId = message.id;
      show('ws', message);
    }
  };
  socket.onclose = () => {
    setState('ws-state', 'reconnecting');
    setTimeout(connectWebSocket, 1000);
  };
}
connectWebSocket();

// Publishing is a plain POST, allowed from other origins by the hub's CORS.
document.getElementById('publish').onsubmit = async (submit) => {
  submit.preventDefault();
  const form = new FormData(submit.target);
  const response = await fetch(new URL('/publish', HUB), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ topic: form.get('topic'), data: { text: form.get('text') } }),
  });
  const body = await response.json(); // 201 {"id":"…"}, or {"error":{…}}
  document.getElementById('published').textContent = response.ok ? body.id : body.error.message;
};
