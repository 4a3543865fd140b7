// Browser test of the demo page: the real hub (`sluice serve --demo`), the
// real page in headless Chromium (driven by Playwright), and an independent
// subscriber in Node that knows every id the hub published.
//
// Run: `node --test web/tests/` after `cargo build` (SLUICE_BIN overrides
// the binary, CHROMIUM the browser). It fails, never skips, when Chromium or
// the binary is missing.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const WEB = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ROOT = resolve(WEB, '..');
const BIN = process.env.SLUICE_BIN || join(ROOT, 'target/debug/sluice');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Written under target/ so that test runs leave the tree clean; to refresh
// the README's picture: SCREENSHOT=docs/demo.png node --test web/tests/
const SCREENSHOT = process.env.SCREENSHOT
  ? join(ROOT, process.env.SCREENSHOT)
  : join(ROOT, 'target/demo.png');
/** Bound of every wait for the page. */
const WAIT = 20_000;
/** How long the log stays disconnected while events keep coming. */
const AWAY = 2_000;
/** The log topic checked for lost events: the demo publishes it 4 times a second. */
const TOPIC = 'metrics';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function parseId(id) {
  const [ms, seq] = id.split('-').map(BigInt);
  return { ms, seq };
}
function compareIds(a, b) {
  const x = parseId(a);
  const y = parseId(b);
  if (x.ms !== y.ms) return x.ms < y.ms ? -1 : 1;
  if (x.seq !== y.seq) return x.seq < y.seq ? -1 : 1;
  return 0;
}

/** Starts `sluice serve --demo` on an ephemeral port; resolves to its URL. */
function startHub() {
  if (!existsSync(BIN)) {
    throw new Error(`the sluice binary is missing at ${BIN}: run \`cargo build\` first (or set SLUICE_BIN)`);
  }
  const child = spawn(BIN, ['serve', '--demo', '--storage', 'memory', '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr = [];
  child.stderr.setEncoding('utf8').on('data', (chunk) => stderr.push(chunk));
  const url = new Promise((resolvePromise, reject) => {
    let out = '';
    const timer = setTimeout(
      () => reject(new Error(`the hub printed no URL within ${WAIT} ms; stderr: ${stderr.join('')}`)),
      WAIT,
    );
    child.stdout.setEncoding('utf8').on('data', (chunk) => {
      out += chunk;
      const match = out.match(/Sluice .*listening on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]);
      }
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`the hub did not start: ${error.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the hub exited (${code ?? signal}) before listening; stderr: ${stderr.join('')}`));
    });
  });
  return { child, url };
}

/** Follows `/ndjson?topics=…` from Node and records every id, in order. */
function subscribe(url, topic) {
  const ids = [];
  const controller = new AbortController();
  const ready = (async () => {
    const response = await fetch(`${url}/ndjson?topics=${encodeURIComponent(topic)}`, {
      signal: controller.signal,
    });
    assert.equal(response.status, 200, 'the Node subscriber is accepted');
    return response;
  })();
  const done = ready.then(async (response) => {
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of response.body) {
        buffer += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          const envelope = JSON.parse(line);
          if (envelope.id) ids.push(envelope.id);
        }
      }
    } catch (error) {
      if (error.name !== 'AbortError') throw error;
    }
  });
  return { ids, ready, done, close: () => controller.abort() };
}

let hub;
let url;
let browser;
let page;
let node;
const pageErrors = [];

before(async () => {
  // Fail, not skip, when the browser is missing.
  assert.ok(
    existsSync(CHROMIUM),
    `Chromium is missing at ${CHROMIUM}: install it (apt-get install -y chromium) or set CHROMIUM`,
  );
  hub = startHub();
  url = await hub.url;
  node = subscribe(url, TOPIC);
  await node.ready;
  // Playwright's launch gives the browser a new, empty user-data-dir.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
  page.on('pageerror', (error) => pageErrors.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(`console error: ${message.text()}`);
  });
});

after(async () => {
  node?.close();
  await browser?.close().catch(() => {});
  if (hub) {
    hub.child.kill('SIGTERM');
    hub.url.catch(() => {});
  }
});

/** The page's state the checks look at. */
function state() {
  return page.evaluate(() => {
    const log = document.getElementById('log');
    const entries = [...log.querySelectorAll('[data-id]')].reverse(); // oldest first
    return {
      measurements: Number(document.getElementById('chart-measurements').dataset.points),
      trades: Number(document.getElementById('chart-trades').dataset.points),
      count: Number(log.dataset.count),
      transport: log.dataset.transport,
      connected: log.dataset.connected,
      ids: entries.map((e) => e.dataset.id),
      topics: entries.map((e) => e.dataset.topic),
      via: entries.map((e) => e.dataset.via),
      replayed: Number(document.getElementById('replay').dataset.replayed),
      lastId: document.getElementById('last-id').textContent,
      clients: document.getElementById('clients').textContent,
      rate: Number(document.getElementById('rate').dataset.rate),
    };
  });
}

/** Polls `state()` until `done(state)` holds; fails with the last state seen. */
async function until(what, done, within = WAIT) {
  const deadline = Date.now() + within;
  let last;
  for (;;) {
    last = await state();
    if (done(last)) return last;
    if (Date.now() > deadline) {
      const { ids, ...rest } = last;
      assert.fail(
        `${what}: not within ${within} ms; page: ${JSON.stringify({ ...rest, ids: ids.slice(-5) })}; ` +
          `errors: ${JSON.stringify(pageErrors)}`,
      );
    }
    await sleep(100);
  }
}

/** Waits until the Node subscriber has seen `id`. */
async function nodeHasSeen(id) {
  const deadline = Date.now() + WAIT;
  while (!node.ids.some((seen) => compareIds(seen, id) >= 0)) {
    assert.ok(Date.now() < deadline, `the Node subscriber never saw ${id}`);
    await sleep(50);
  }
}

/** Every id the hub published between the log's first and last is in the log, once, in order. */
async function assertNoneMissing(what) {
  const s = await state();
  assert.ok(s.ids.length >= 2, `${what}: the log has events`);
  assert.ok(s.topics.every((t) => t === TOPIC), `${what}: only ${TOPIC} events in the log`);
  const first = s.ids[0];
  const last = s.ids.at(-1);
  await nodeHasSeen(last);
  const published = node.ids.filter((id) => compareIds(id, first) >= 0 && compareIds(id, last) <= 0);
  assert.equal(new Set(s.ids).size, s.ids.length, `${what}: no id twice in the log`);
  const missing = published.filter((id) => !s.ids.includes(id));
  assert.deepEqual(missing, [], `${what}: ids published but missing in the log`);
  assert.deepEqual(s.ids, published, `${what}: the log holds exactly what was published, in order`);
  return s;
}

/** Disconnect, let events pass, Reconnect: the log resumes after its last id. */
async function disconnectAndReconnect(transport) {
  await until(`${transport}: connected with events`, (s) =>
    s.connected === 'true' && s.transport === transport && s.via.filter((v) => v === transport).length >= 3);

  await page.click('#toggle');
  const away = await until(`${transport}: disconnected`, (s) => s.connected === 'false');
  const publishedBefore = node.ids.length;
  await sleep(AWAY);
  const stillAway = await state();
  assert.equal(stillAway.connected, 'false', `${transport}: still disconnected`);
  assert.deepEqual(stillAway.ids, away.ids, `${transport}: nothing arrives while disconnected`);
  const publishedAway = node.ids.length - publishedBefore;
  assert.ok(publishedAway >= 3, `${transport}: the hub published while the log was away (${publishedAway})`);

  const newestAtReconnect = node.ids.at(-1);
  await page.click('#toggle');
  const back = await until(`${transport}: reconnected, replayed and live again`, (s) =>
    s.connected === 'true' &&
    s.replayed > 0 &&
    s.ids.length > 0 &&
    compareIds(s.ids.at(-1), newestAtReconnect) > 0);
  // Live events follow the replay, so the replay is over: it counted about
  // what was published meanwhile (the page estimates the hub's clock).
  assert.ok(
    back.replayed >= publishedAway - 2,
    `${transport}: the page shows the replayed events (${back.replayed} of about ${publishedAway})`,
  );
  assert.equal(back.lastId, back.ids.at(-1), `${transport}: the counter shows the log's last id`);
  return assertNoneMissing(transport);
}

test('the page shows live charts and a live log over SSE', { timeout: 60_000 }, async () => {
  const response = await page.goto(`${url}/demo`);
  assert.equal(response.status(), 200);
  assert.equal(await page.title(), 'Sluice · live demo');
  const s = await until('both charts draw points and the log gets events over SSE', (s) =>
    s.measurements > 3 && s.trades > 3 && s.count > 0 && s.transport === 'sse' && s.via.includes('sse'));
  assert.ok(s.measurements <= 120 && s.trades <= 240, 'the charts keep the last points only');
  await until('the counters show the rate and the clients', (s) =>
    s.rate > 0 && Number(s.clients) >= 3 && s.lastId === s.ids.at(-1));
});

test('SSE: Disconnect then Reconnect replays, nothing missing, nothing twice', { timeout: 60_000 }, async () => {
  await page.fill('#topics', TOPIC);
  await page.click('#subscribe');
  await until(`the log shows only ${TOPIC}`, (s) =>
    s.count >= 3 && s.topics.every((t) => t === TOPIC));
  await disconnectAndReconnect('sse');
});

test('WebSocket: the log carries on, then Disconnect/Reconnect replays without loss', { timeout: 60_000 }, async () => {
  await page.check('input[name="transport"][value="ws"]');
  const s = await until('log events over WebSocket', (s) =>
    s.transport === 'ws' && s.connected === 'true' && s.via.filter((v) => v === 'ws').length >= 2);
  assert.ok(s.via.includes('sse'), 'the SSE events stay in the log');
  // Switching transports resumed after the last SSE id: the seam is checked too.
  await assertNoneMissing('switch from SSE to WebSocket');
  const back = await disconnectAndReconnect('ws');
  assert.ok(back.via.includes('sse') && back.via.includes('ws'));
});

test('screenshot of the page with data, and no errors on it', { timeout: 60_000 }, async () => {
  // Back to the default topics, with one replay to show.
  await page.check('input[name="transport"][value="sse"]');
  await page.fill('#topics', 'metrics,alerts,logs/**');
  await page.click('#subscribe');
  await until('the default topics arrive', (s) => s.count >= 12 && new Set(s.topics).size >= 2);
  await page.click('#toggle');
  await sleep(1500);
  await page.click('#toggle');
  await until('replayed', (s) => s.connected === 'true' && s.replayed > 0);
  await sleep(1200);
  // The page, its charts' stream and the Node subscriber, at the next poll.
  await until('the clients counter caught up', (s) => Number(s.clients) >= 3);
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.deepEqual(pageErrors, [], 'no errors in the page');
});
