// The demo page: wires the charts, the event log and the counters to the hub.
// Everything starts as soon as the page opens.

import { MeasurementsChart, TradesChart } from './charts.js';
import { EventLog } from './log.js';
import { apiUrl, followNdjson } from './streams.js';

const $ = (id) => document.getElementById(id);

// Events per second over every connection of the page, on a sliding window.
const RATE_WINDOW_MS = 3000;
const arrivals = [];
const openedAt = performance.now();
function count() {
  arrivals.push(performance.now());
}
setInterval(() => {
  const now = performance.now();
  while (arrivals.length && arrivals[0] < now - RATE_WINDOW_MS) arrivals.shift();
  const span = Math.min(RATE_WINDOW_MS, Math.max(now - openedAt, 1000)) / 1000;
  const rate = arrivals.length / span;
  $('rate').textContent = rate.toFixed(rate < 10 ? 1 : 0);
  $('rate').dataset.rate = rate.toFixed(2);
}, 500);

// Charts: one NDJSON stream for both, resumed after its last id if dropped.
const measurements = new MeasurementsChart($('chart-measurements'), {
  fieldLabel: $('measurements-field'),
  nowLabel: $('measurements-now'),
});
const trades = new TradesChart($('chart-trades'), { nowLabel: $('trades-now') });
followNdjson(['measurements', 'trades/*'], {
  clientName: 'sluice-demo-charts',
  onEvent(envelope) {
    count();
    if (envelope.topic === 'measurements') measurements.add(envelope);
    else if (envelope.topic.startsWith('trades/')) trades.add(envelope);
  },
});

// Connected clients, from /health every 2 s.
async function poll() {
  const status = $('hub-status');
  try {
    const response = await fetch(apiUrl('health'), { cache: 'no-store' });
    const health = await response.json();
    $('clients').textContent = String(health.connected_clients ?? '–');
    status.textContent = `hub ${health.status ?? 'up'}`;
    status.dataset.ok = String(response.ok);
  } catch {
    status.textContent = 'hub unreachable';
    status.dataset.ok = 'false';
  }
}
poll();
setInterval(poll, 2000);

// The event log and its controls.
const log = new EventLog(
  {
    log: $('log'),
    status: $('log-status'),
    replay: $('replay'),
    lastId: $('last-id'),
    toggle: $('toggle'),
  },
  { onEvent: count },
);

const input = $('topics');
const topicList = () => input.value.split(',').map((t) => t.trim()).filter(Boolean);

function markQuickPicks() {
  const chosen = new Set(topicList());
  for (const button of $('quick').querySelectorAll('button')) {
    button.setAttribute('aria-pressed', String(chosen.has(button.dataset.topic)));
  }
}

function subscribe() {
  const topics = topicList();
  if (topics.length === 0) {
    input.setCustomValidity('Name at least one topic or pattern');
    input.reportValidity();
    return;
  }
  input.setCustomValidity('');
  input.value = topics.join(',');
  markQuickPicks();
  log.subscribe(topics);
}

$('log-form').addEventListener('submit', (event) => {
  event.preventDefault();
  subscribe();
});
input.addEventListener('input', markQuickPicks);

$('quick').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-topic]');
  if (!button) return;
  const topic = button.dataset.topic;
  const topics = topicList();
  input.value = (topics.includes(topic)
    ? topics.filter((t) => t !== topic)
    : [...topics, topic]).join(',');
  if (topicList().length > 0) subscribe();
  else markQuickPicks();
});

for (const radio of document.querySelectorAll('input[name="transport"]')) {
  radio.addEventListener('change', () => radio.checked && log.setTransport(radio.value));
}

$('toggle').addEventListener('click', () => {
  if (log.wanted) log.disconnect();
  else log.reconnect();
});

// A reload may keep a checked radio: start on the transport shown.
const checked = document.querySelector('input[name="transport"]:checked');
log.setTransport(checked ? checked.value : 'sse');
subscribe();
