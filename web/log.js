// The live event log: one subscription, over SSE or WebSocket, that can be
// disconnected and resumed after the last id it got, so that no event is
// missing. Events published meanwhile come back as a replay, counted and
// highlighted.

import { apiUrl, wsUrl } from './streams.js';

export const MAX_ENTRIES = 200;

// With envelope=true the hub sends every event untyped (its type is inside
// the envelope), so all of them reach `message`; only the hub's own
// `sluice.gap` control event is typed.
const GAP = 'sluice.gap';

const clock = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3, hour12: false,
});

function compact(data) {
  const text = typeof data === 'string' ? data : JSON.stringify(data);
  return text.length > 160 ? `${text.slice(0, 157)}…` : text;
}

function cell(className, text) {
  const span = document.createElement('span');
  span.className = className;
  span.textContent = text;
  return span;
}

export class EventLog {
  /**
   * @param els `{ log, status, replay, lastId, toggle }` elements
   * @param onEvent called for every event received, for the rate counter
   */
  constructor(els, { onEvent = () => {} } = {}) {
    this.els = els;
    this.onEvent = onEvent;
    this.transport = 'sse';
    this.topics = [];
    this.lastId = null;
    this.conn = null;
    this.wanted = false;
    this.received = 0;
    /** The hub's clock (ms) and ours when the last event arrived. */
    this.lastSeen = null;
    /** While resuming: `{ cutoff, fromId, count, away }`. */
    this.resume = null;
  }

  /** Subscribes to `topics` from now on, on a cleared log. */
  subscribe(topics) {
    this.close();
    this.topics = topics;
    this.lastId = null;
    this.received = 0;
    this.resume = null;
    this.disconnectedAt = null;
    this.els.log.replaceChildren();
    this.els.replay.hidden = true;
    this.els.replay.dataset.replayed = '0';
    this.els.lastId.textContent = '–';
    this.open();
  }

  /** Carries on over another transport, after the last id: nothing lost. */
  setTransport(transport) {
    this.transport = transport;
    this.els.log.dataset.transport = transport;
    if (this.wanted) {
      this.close();
      this.open();
    }
  }

  disconnect() {
    this.wanted = false;
    this.close();
    this.disconnectedAt = Date.now();
    this.render(null);
  }

  reconnect() {
    this.open();
  }

  close() {
    const conn = this.conn;
    this.conn = null;
    clearTimeout(this.retryTimer);
    if (conn) conn.close();
    this.setConnected(false);
  }

  /** Opens the subscription; after an earlier event, resumes after it. */
  open() {
    this.wanted = true;
    this.close();
    if (this.lastId) this.beginResume();
    this.conn = this.transport === 'ws' ? this.openWs() : this.openSse();
    this.render(null);
  }

  beginResume() {
    // Events stamped (by the hub's clock) before this instant were
    // published while the log was away: the hub replays them.
    const now = Date.now();
    const cutoff = this.lastSeen ? this.lastSeen.hub + (now - this.lastSeen.local) : Infinity;
    this.resume = {
      cutoff,
      fromId: this.lastId,
      count: 0,
      away: this.disconnectedAt ? (now - this.disconnectedAt) / 1000 : null,
    };
    this.disconnectedAt = null;
    this.showReplay();
  }

  openSse() {
    const url = apiUrl('stream', {
      topics: this.topics.join(','),
      envelope: 'true',
      client_name: 'sluice-demo-log',
      last_event_id: this.lastId,
    });
    const source = new EventSource(url);
    const conn = { close: () => source.close() };
    const mine = () => this.conn === conn;
    let dropped = false;
    source.addEventListener('open', () => {
      if (!mine()) return;
      // EventSource came back by itself, sending Last-Event-ID: a replay.
      if (dropped && this.lastId) this.beginResume();
      dropped = false;
      this.setConnected(true, null);
    });
    source.addEventListener('error', () => {
      if (!mine()) return;
      this.setConnected(false);
      if (source.readyState === EventSource.CONNECTING) {
        dropped = true;
        this.render('reconnecting…');
      } else {
        this.explainRefusal(url);
      }
    });
    source.addEventListener('message', (message) => {
      if (!mine()) return;
      try {
        this.receive(JSON.parse(message.data), 'sse');
      } catch {
        // Not an envelope: not ours to show.
      }
    });
    source.addEventListener(GAP, (message) => {
      if (!mine()) return;
      this.addGap(JSON.parse(message.data), 'sse');
    });
    return conn;
  }

  /** EventSource hides why a request failed: ask again to show the hub's answer. */
  async explainRefusal(url) {
    let why = 'disconnected';
    try {
      const controller = new AbortController();
      const response = await fetch(url, { signal: controller.signal });
      if (response.ok) controller.abort();
      else why = `refused: ${(await response.json()).error?.message ?? response.status}`;
    } catch {
      why = 'hub unreachable';
    }
    this.wanted = false;
    this.render(why);
  }

  openWs() {
    const socket = new WebSocket(wsUrl('ws'));
    const conn = { close: () => socket.close() };
    const mine = () => this.conn === conn;
    socket.addEventListener('open', () => {
      if (!mine()) return;
      const command = { op: 'subscribe', topics: this.topics };
      if (this.lastId) command.last_event_id = this.lastId;
      socket.send(JSON.stringify(command));
    });
    socket.addEventListener('message', (message) => {
      if (!mine()) return;
      let envelope;
      try {
        envelope = JSON.parse(message.data);
      } catch {
        return;
      }
      if ('ok' in envelope) {
        // A reply to a command: not an event.
        if (envelope.op === 'subscribe' && envelope.ok) this.setConnected(true, null);
        if (!envelope.ok) this.render(`refused: ${envelope.error?.message ?? 'error'}`);
        return;
      }
      if (envelope.type === GAP && !envelope.id) this.addGap(envelope.data, 'ws');
      else if (envelope.id) this.receive(envelope, 'ws');
    });
    socket.addEventListener('close', () => {
      if (!mine()) return;
      this.setConnected(false);
      // Like EventSource, come back by ourselves, after the last id.
      this.render('reconnecting…');
      this.retryTimer = setTimeout(() => mine() && this.wanted && this.open(), 2000);
    });
    return conn;
  }

  setConnected(connected, note) {
    this.connected = connected;
    this.els.log.dataset.connected = String(connected);
    this.render(note);
  }

  receive(envelope, via) {
    const hubMs = Date.parse(envelope.time);
    this.lastSeen = { hub: hubMs, local: Date.now() };
    this.lastId = envelope.id;
    this.received += 1;
    this.els.lastId.textContent = envelope.id;
    let replayed = false;
    if (this.resume && hubMs <= this.resume.cutoff) {
      replayed = true;
      this.resume.count += 1;
      this.showReplay();
    }
    this.add(envelope, via, replayed);
    this.onEvent(envelope);
  }

  add(envelope, via, replayed) {
    const row = document.createElement('div');
    const kind = (envelope.type ?? '').replace(/[^a-z0-9_-]/gi, '');
    row.className = `entry type-${kind || 'none'}${replayed ? ' replayed' : ''}`;
    row.dataset.id = envelope.id;
    row.dataset.topic = envelope.topic;
    row.dataset.via = via;
    row.append(
      cell('time', clock.format(new Date(envelope.time))),
      cell('id', envelope.id),
      cell('topic', envelope.topic),
      cell('type', envelope.type ?? '—'),
      cell('data', compact(envelope.data)),
    );
    row.title = replayed ? 'replayed after reconnecting' : `received over ${via}`;
    this.insert(row);
  }

  addGap(data, via) {
    const row = document.createElement('div');
    row.className = 'entry gap';
    row.dataset.via = via;
    row.append(
      cell('time', clock.format(new Date())),
      cell('id', ''),
      cell('topic', ''),
      cell('type', GAP),
      cell('data', `history does not reach back to ${data?.requested}; oldest kept: ${data?.oldest ?? 'none'}`),
    );
    this.insert(row);
  }

  insert(row) {
    const log = this.els.log;
    log.prepend(row);
    while (log.childElementCount > MAX_ENTRIES) log.lastElementChild.remove();
    log.dataset.count = String(log.querySelectorAll('[data-id]').length);
    log.dataset.received = String(this.received);
  }

  showReplay() {
    const r = this.resume;
    const el = this.els.replay;
    el.hidden = false;
    el.dataset.replayed = String(r.count);
    const away = r.away == null ? '' : ` after ${r.away.toFixed(1)} s away`;
    el.textContent = `Resumed${away} from id ${r.fromId}: ${r.count} event${r.count === 1 ? '' : 's'} replayed`;
  }

  /** Shows the connection's state; `note` says why it is not connected. */
  render(note) {
    const { status, toggle } = this.els;
    if (note !== undefined) this.note = note;
    const label = this.transport === 'ws' ? 'WebSocket' : 'SSE';
    status.dataset.connected = String(Boolean(this.connected));
    if (this.connected) status.textContent = `connected · ${label}`;
    else if (this.wanted) status.textContent = `${this.note ?? 'connecting…'} · ${label}`;
    else status.textContent = this.note ?? 'disconnected';
    toggle.textContent = this.wanted ? 'Disconnect' : 'Reconnect';
    toggle.dataset.action = this.wanted ? 'disconnect' : 'reconnect';
  }
}
