// Browser test of examples/js/browser/: the page is served by a small static
// server of this test (so it comes from another origin than the hub, as a
// real page would, and relies on the hub's CORS), opened in headless
// Chromium with Playwright, and must list exactly the events published, in
// order, over both EventSource and WebSocket.
//
// Run: `node --test examples/js/` after `cargo build` and `npm ci` in
// examples/js (bash scripts/test does both; SLUICE_BIN overrides the binary,
// CHROMIUM the browser). It fails, never skips, when something is missing.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const JS = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ROOT = resolve(JS, '../..');
const PAGE_DIR = join(JS, 'browser');
const BIN = process.env.SLUICE_BIN || join(ROOT, 'target/debug/sluice');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOPIC = 'examples';
/** Bound of every wait. */
const WAIT = 20_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts `sluice serve` on an ephemeral port; resolves to its URL. */
function startHub() {
  if (!existsSync(BIN)) {
    throw new Error(`the sluice binary is missing at ${BIN}: run \`bash scripts/test\` (or cargo build; SLUICE_BIN overrides)`);
  }
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr = [];
  child.stderr.setEncoding('utf8').on('data', (chunk) => stderr.push(chunk));
  const url = new Promise((resolveUrl, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`the hub printed no URL; stderr: ${stderr.join('')}`)), WAIT);
    child.stdout.setEncoding('utf8').on('data', (chunk) => {
      out += chunk;
      const match = out.match(/listening on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolveUrl(match[1]);
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the hub exited (${code ?? signal}) before listening; stderr: ${stderr.join('')}`));
    });
  });
  return { child, url };
}

/** Serves the files of browser/ on an ephemeral port; resolves to its URL. */
async function startStaticServer() {
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };
  const server = createServer(async (request, response) => {
    const name = new URL(request.url, 'http://x').pathname.slice(1) || 'index.html';
    const type = types[extname(name)];
    if (!type || name.includes('/')) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(join(PAGE_DIR, name));
      response.writeHead(200, { 'Content-Type': type }).end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${server.address().port}` };
}

let hub;
let hubUrl;
let site;
let browser;
let page;
const pageErrors = [];

before(async () => {
  assert.ok(
    existsSync(join(JS, 'node_modules/playwright-core')),
    'examples/js/node_modules is missing: run `bash scripts/test` (it runs `npm ci` in examples/js)',
  );
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: run \`bash scripts/test\` (it installs it) or set CHROMIUM`);
  const { chromium } = await import('playwright-core');
  hub = startHub();
  hubUrl = await hub.url;
  site = await startStaticServer();
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
  page = await browser.newPage();
  page.on('pageerror', (error) => pageErrors.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(`console error: ${message.text()}`);
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  site?.server.close();
  if (hub) {
    hub.child.kill('SIGTERM');
    hub.url.catch(() => {});
  }
});

/** Polls until `check()` resolves to a truthy value; fails with `what`. */
async function until(what, check) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `${what}: not within ${WAIT} ms; page errors: ${JSON.stringify(pageErrors)}`);
    await sleep(50);
  }
}

/** The names of the hub's connected subscribers. */
async function clientNames() {
  const response = await fetch(`${hubUrl}/clients`);
  const body = await response.json();
  return body.clients.map((c) => c.client_name);
}

/** The lines a list of the page shows, in order. */
const listed = (id) => page.$$eval(`#${id} li`, (items) => items.map((item) => item.textContent));

async function publish(body, contentType) {
  const response = await fetch(`${hubUrl}/publish`, { method: 'POST', headers: { 'Content-Type': contentType }, body });
  assert.equal(response.status, 201, 'the hub takes the events');
  return response.json();
}

test('the page lists every event over EventSource and WebSocket, and publishes', { timeout: 60_000 }, async () => {
  const response = await page.goto(`${site.url}/index.html?hub=${encodeURIComponent(hubUrl)}&topics=${TOPIC}`);
  assert.equal(response.status(), 200);
  // Both subscriptions are in place before anything is published.
  await until('the page subscribes over SSE and WebSocket', async () => {
    const names = await clientNames();
    return names.includes('browser-sse') && names.includes('browser-ws');
  });
  assert.equal(await page.textContent('#sse-state'), 'open');
  await until('the WebSocket reply arrives', async () => (await page.textContent('#ws-state')) === 'subscribed');

  // From outside: one event, an event on another topic, then a batch of two.
  const events = [1, 2, 3].map((n) => ({ topic: TOPIC, data: { n, text: `event ${n}` } }));
  const { id } = await publish(JSON.stringify(events[0]), 'application/json');
  await publish(JSON.stringify({ topic: 'other', data: 'not for the page' }), 'application/json');
  const { ids } = await publish(events.slice(1).map((e) => `${JSON.stringify(e)}\n`).join(''), 'application/x-ndjson');
  const expected = [id, ...ids].map((eventId, i) => `${eventId} ${TOPIC} ${JSON.stringify(events[i].data)}`);

  // From the page: its form POSTs to the hub, another origin (CORS).
  await page.fill('input[name=text]', 'from the page');
  await page.click('#publish button');
  const ownId = await until('the page shows the id of its publish', async () => page.textContent('#published'));
  assert.match(ownId, /^\d+-\d+$/);
  expected.push(`${ownId} ${TOPIC} {"text":"from the page"}`);

  for (const list of ['sse', 'ws']) {
    await until(`${list}: ${expected.length} events listed`, async () => (await listed(list)).length >= expected.length);
    assert.deepEqual(await listed(list), expected, `${list}: exactly the events published, in order`);
  }
  assert.deepEqual(pageErrors, []);
});
