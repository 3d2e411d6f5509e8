// Headless-Chromium tests of sdk/client-js and examples/demo-page against the
// real gateway. Driven by tests/browser.rs, which starts the gateway and passes:
//   GATEWAY_URL  http://127.0.0.1:<port> of the running gateway
//   PAGE_PORT    port for the static server (the gateway's origins allow it)
//   REPO_ROOT    repository root (served: /examples/demo-page/, /sdk/client-js/src/)
//   CHROMIUM     browser binary (default /usr/bin/chromium)
// Gateway restarts are asked of the driver on stdout ("CONTROL kill" /
// "CONTROL drain"); it answers "ok" on stdin once the new process is up on the
// same port. Each passed scenario prints "PASS <name>".
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { serveStatic } from './static-server.mjs';

const GW = required('GATEWAY_URL');
const PAGE_PORT = Number(required('PAGE_PORT'));
const ROOT = required('REPO_ROOT');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PAGE = `http://127.0.0.1:${PAGE_PORT}`;

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set (run through tests/browser.rs)`);
    process.exit(2);
  }
  return v;
}

const watchdog = setTimeout(() => {
  console.log('FAIL watchdog: the browser test took over 100 s');
  process.exit(1);
}, 100_000);

// ---- driver control over stdin/stdout ----
const lines = createInterface({ input: process.stdin });
/** @type {string[]} */
const queued = [];
/** @type {Array<(l: string) => void>} */
const waiting = [];
lines.on('line', (l) => {
  const w = waiting.shift();
  if (w) w(l);
  else queued.push(l);
});
async function control(cmd) {
  console.log(`CONTROL ${cmd}`);
  const reply = queued.shift() ?? (await new Promise((r) => waiting.push(r)));
  assert.equal(reply, 'ok', `driver answered ${reply} to ${cmd}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- browser helpers ----
let browser;
let context;
/** @type {Set<import('playwright-core').Page>} */
const pages = new Set();

/** Pages without special routing, reused across scenarios (a new page costs ~0.5 s). */
const spare = [];

/** Opens the demo page with these query parameters (the page connects at once). */
async function openDemo(query, setup) {
  let page = setup ? undefined : spare.pop();
  if (!page) {
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    page.on('pageerror', (e) => console.log(`[page error] ${e}`));
    page.on('console', (m) => {
      if (m.type() === 'error') console.log(`[console] ${m.text()}`);
    });
    if (setup) {
      await setup(page);
      page.routed = true;
    }
  }
  await page.goto(`${PAGE}/examples/demo-page/?gateway=${encodeURIComponent(GW)}&${query}`);
  await page.waitForFunction(() => window.demo?.client?.state === 'open');
  pages.add(page);
  return page;
}

async function closePage(page) {
  await page.evaluate(() => window.demo.client?.close()).catch(() => {});
  pages.delete(page);
  if (page.routed) await page.close();
  else spare.push(page);
}

/** Subscribes through the page's UI and waits for the subscribed reply. */
async function subscribeUi(page, channel) {
  await page.fill('#channel', channel);
  await page.click('#subscribe');
  await page.waitForFunction((ch) => document.body.dataset.subscribed === ch, channel);
}

/** Publishes through the page's UI and waits for the ack; returns its seq. */
async function publishUi(page, text) {
  await page.evaluate(() => {
    document.getElementById('ack').textContent = '';
  });
  await page.fill('#message', text);
  await page.click('#publish');
  await page.waitForFunction(() => /^ack seq \d+$/.test(document.getElementById('ack').textContent));
  return Number((await page.textContent('#ack')).replace('ack seq ', ''));
}

const received = (page) => page.evaluate(() => window.demo.received);
const events = (page) => page.evaluate(() => window.demo.events);

async function metric(name, label) {
  const text = await (await fetch(`${GW}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name) && l.includes(label));
  return line ? Number(line.trim().split(/\s+/).pop()) : 0;
}

// ---- scenarios ----

/** (a)–(c): two pages, subscribe and publish both ways over one transport. */
async function roundTrip(transports, expected, setup) {
  const channel = `room:rt-${expected}-${Date.now()}`;
  const q = transports ? `transports=${transports}&` : '';
  const a = await openDemo(`${q}channel=${channel}`, setup);
  const b = await openDemo(`${q}channel=${channel}`, setup);
  for (const p of [a, b]) assert.equal(await p.textContent('#transport'), expected, 'transport shown on the page');
  await subscribeUi(a, channel);
  await subscribeUi(b, channel);
  const seq1 = await publishUi(b, `from b over ${expected}`);
  const seq2 = await publishUi(a, `from a over ${expected}`);
  assert.equal(seq2, seq1 + 1);
  for (const p of [a, b]) {
    await p.waitForFunction(() => window.demo.received.length === 2);
    const got = await received(p);
    assert.deepEqual(
      got.map((m) => [m.seq, m.data.text]),
      [
        [seq1, `from b over ${expected}`],
        [seq2, `from a over ${expected}`],
      ],
    );
  }
  const who = await a.evaluate((ch) => window.demo.client.presence(ch), channel);
  const ids = await Promise.all([a, b].map((p) => p.evaluate(() => window.demo.client.clientId)));
  assert.deepEqual(who.map((c) => c.client).sort(), [...ids].sort(), 'presence lists both pages');
  await closePage(a);
  await closePage(b);
}

/** (e): drop one page's connection while another publishes; the missed messages are replayed. */
async function recoverAfterDrop(transport) {
  const channel = `room:rec-${transport}-${Date.now()}`;
  const a = await openDemo(`transports=${transport}&channel=${channel}`);
  const b = await openDemo(`transports=${transport}&channel=${channel}`);
  await subscribeUi(a, channel);
  const publish = (n) => b.evaluate(([ch, n]) => window.demo.client.publish(ch, { n }), [channel, n]);
  await publish(1);
  await a.waitForFunction(() => window.demo.received.length === 1);
  assert.equal(await a.evaluate(() => window.demo.client.simulateConnectionLoss()), true);
  assert.equal(await a.evaluate(() => window.demo.client.state), 'reconnecting');
  const seqs = [];
  for (const n of [2, 3, 4]) seqs.push(await publish(n));
  assert.equal(await a.evaluate(() => window.demo.client.state), 'reconnecting', 'published while a was away');
  await a.waitForFunction(() => window.demo.events.some((e) => e.event === 'recovery'));
  const rec = (await events(a)).find((e) => e.event === 'recovery');
  assert.equal(rec.recovered, true, `recovery: ${JSON.stringify(rec)}`);
  assert.equal(rec.channel, channel);
  seqs.push(await publish(5));
  await a.waitForFunction(() => window.demo.received.length >= 5);
  await sleep(300); // nothing more may arrive: no duplicates
  const got = await received(a);
  assert.deepEqual(
    got.map((m) => m.data.n),
    [1, 2, 3, 4, 5],
    'missed messages replayed in order, then live ones, no duplicates',
  );
  for (let i = 1; i < got.length; i++) assert.equal(got[i].seq, got[i - 1].seq + 1, 'consecutive seqs');
  assert.equal(got[1].seq, seqs[0]);
  assert.equal(await a.textContent('#transport'), transport, 'reconnected over the same transport');
  const ev = await events(a);
  const reconnecting = ev.find((e) => e.event === 'reconnecting');
  assert.ok(reconnecting.delay >= 800 && reconnecting.delay <= 1200, `first retry after 1 s ± 20 %: ${reconnecting.delay}`);
  assert.ok(ev.some((e) => e.event === 'open' && e.reconnected === true));
  await closePage(a);
  await closePage(b);
}

/**
 * A publish whose ack is lost (the connection drops right after sending it)
 * is resent with the same msgId after the reconnect: delivered once, acked
 * with one seq.
 */
async function publishRetryExactlyOnce() {
  const channel = `room:once-${Date.now()}`;
  const a = await openDemo(`transports=websocket&channel=${channel}`);
  const b = await openDemo(`transports=websocket&channel=${channel}`);
  await subscribeUi(b, channel);
  const publishesBefore = await metric('switchyard_publishes_total', '');
  const seq = await a.evaluate(async (ch) => {
    const acked = window.demo.client.publish(ch, { n: 'once' });
    window.demo.client.simulateConnectionLoss(); // the frame is on the wire, the ack will not arrive here
    return acked;
  }, channel);
  await b.waitForFunction(() => window.demo.received.length >= 1);
  await a.evaluate((ch) => window.demo.client.publish(ch, { n: 'next' }), channel);
  await b.waitForFunction(() => window.demo.received.length >= 2);
  await sleep(200);
  const got = await received(b);
  assert.deepEqual(got.map((m) => m.data.n), ['once', 'next'], 'delivered exactly once');
  assert.equal(got[0].seq, seq, 'the resend was acknowledged with the original seq');
  // The gateway saw three publishes (the lost-ack one, its resend, 'next') and delivered two.
  assert.equal((await metric('switchyard_publishes_total', '')) - publishesBefore, 3, 'the first send reached the gateway');
  assert.ok((await events(a)).some((e) => e.event === 'open' && e.reconnected), 'a reconnected');
  await closePage(a);
  await closePage(b);
}

/**
 * A page on an origin the gateway does not allow (localhost instead of
 * 127.0.0.1): WebSocket and SSE fail opaquely, long-polling reads the 403 and
 * the client stops for good instead of retrying.
 */
async function refusedOriginStops() {
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  await page.goto(`http://localhost:${PAGE_PORT}/examples/demo-page/?gateway=${encodeURIComponent(GW)}`);
  await page.waitForFunction(() => window.demo?.client?.state === 'closed');
  const ev = await events(page);
  assert.ok(!ev.some((e) => e.event === 'open'), 'never connected');
  assert.ok(!ev.some((e) => e.event === 'reconnecting'), `no retries: ${JSON.stringify(ev)}`);
  assert.ok(ev.some((e) => e.event === 'error' && /4003/.test(e.error)), `refusal reported: ${JSON.stringify(ev)}`);
  assert.deepEqual(ev.at(-1), { event: 'close', code: 4003, reason: 'HTTP 403', willReconnect: false });
  await page.close();
}

/** A page subscribed to a fresh channel that has seen one message; events cleared. */
async function subscribedPage(channel) {
  const a = await openDemo(`channel=${channel}`);
  await subscribeUi(a, channel);
  await publishUi(a, 'before');
  await a.waitForFunction(() => window.demo.received.length === 1);
  await a.evaluate(() => {
    window.demo.events.length = 0;
  });
  return a;
}

/** (d) SIGKILL, restart on the same port after a pause: backoff, then recovered:false. */
async function killAndRestart() {
  const channel = `room:kill-${Date.now()}`;
  const a = await subscribedPage(channel);
  const epochBefore = (await received(a))[0].epoch;
  const t0 = Date.now();
  await control('kill'); // the driver waits 1.5 s before restarting: the first retry fails
  await a.waitForFunction(() => window.demo.events.some((e) => e.event === 'recovery'), null, { timeout: 20_000 });
  const ev = await events(a);
  const kinds = ev.map((e) => e.event);
  assert.equal(kinds[0], 'close');
  assert.equal(ev[0].willReconnect, true);
  const retries = ev.filter((e) => e.event === 'reconnecting');
  assert.ok(retries.length >= 2, `at least one failed retry: ${JSON.stringify(ev)}`);
  assert.ok(retries[0].delay >= 800 && retries[0].delay <= 1200, `retry 1 delay ${retries[0].delay}`);
  assert.ok(retries[1].delay >= 1600 && retries[1].delay <= 2400, `retry 2 delay ${retries[1].delay}`);
  assert.ok(retries.every((r) => r.reason === 'backoff'));
  assert.ok(kinds.includes('error'), 'the failed attempt is reported');
  const open = ev.find((e) => e.event === 'open');
  assert.equal(open.reconnected, true);
  const rec = ev.find((e) => e.event === 'recovery');
  assert.equal(rec.recovered, false, 'history died with the process: the app must reload');
  assert.notEqual(rec.epoch, epochBefore, 'a new epoch');
  assert.ok(Date.now() - t0 >= 2400, 'waited for the backoff');
  await publishUi(a, 'after');
  await a.waitForFunction(() => window.demo.received.length === 2);
  assert.equal((await received(a))[1].data.text, 'after');
  await closePage(a);
}

/** (d) SIGTERM drain: SERVER_SHUTDOWN, reconnect after reconnectIn to the next process on the port. */
async function drainAndReplace() {
  const channel = `room:drain-${Date.now()}`;
  const a = await subscribedPage(channel);
  const nodeBefore = await a.evaluate(() => window.demo.client.welcome.node);
  await control('drain');
  await a.waitForFunction(() => window.demo.events.some((e) => e.event === 'recovery'), null, { timeout: 20_000 });
  const ev = await events(a);
  const close = ev.find((e) => e.event === 'close');
  assert.equal(close.code, 1001, 'closed with going away');
  const first = ev.find((e) => e.event === 'reconnecting');
  assert.equal(first.reason, 'server_shutdown');
  assert.ok(first.delay >= 2000 && first.delay <= 2800, `reconnectIn 2000 + jitter: ${first.delay}`);
  const open = ev.find((e) => e.event === 'open');
  assert.equal(open.reconnected, true);
  assert.notEqual(open.node, nodeBefore, 'a new process');
  assert.equal(ev.find((e) => e.event === 'recovery').recovered, false);
  await publishUi(a, 'after drain');
  await a.waitForFunction(() => window.demo.received.length === 2);
  await closePage(a);
}

const scenarios = [
  ['websocket-roundtrip', () => roundTrip('', 'websocket')],
  ['sse-roundtrip', async () => {
    const before = await metric('switchyard_connections_opened', 'transport="sse"');
    await roundTrip('sse', 'sse');
    assert.ok((await metric('switchyard_connections_opened', 'transport="sse"')) >= before + 2, 'gateway counted SSE sessions');
  }],
  ['poll-roundtrip', async () => {
    const before = await metric('switchyard_connections_opened', 'transport="poll"');
    await roundTrip('poll', 'poll');
    assert.ok((await metric('switchyard_connections_opened', 'transport="poll"')) >= before + 2, 'gateway counted poll sessions');
  }],
  ['fallback-websocket-blocked', () =>
    roundTrip('', 'sse', (page) => page.routeWebSocket(/\/ws/, (ws) => ws.close()))],
  ['fallback-websocket-and-sse-blocked', () =>
    roundTrip('', 'poll', async (page) => {
      await page.routeWebSocket(/\/ws/, (ws) => ws.close());
      await page.route(/\/sse/, (route) => route.abort());
    })],
  ['recover-websocket', () => recoverAfterDrop('websocket')],
  ['recover-sse', () => recoverAfterDrop('sse')],
  ['recover-poll', () => recoverAfterDrop('poll')],
  ['publish-retry-exactly-once', publishRetryExactlyOnce],
  ['refused-origin-stops', refusedOriginStops],
  ['kill-restart-unrecovered', killAndRestart],
  ['drain-reconnect', drainAndReplace],
];

let failed = false;
const server = await serveStatic(ROOT, PAGE_PORT);
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  context = await browser.newContext();
  const only = process.env.ONLY ? new Set(process.env.ONLY.split(',')) : null;
  for (const [name, run] of scenarios) {
    if (only && !only.has(name)) continue;
    const t0 = Date.now();
    try {
      await run();
      console.log(`PASS ${name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed = true;
      console.log(`FAIL ${name}: ${e?.stack ?? e}`);
      for (const p of pages) {
        const ev = await p.evaluate(() => window.demo?.events).catch(() => null);
        console.log(`  page events: ${JSON.stringify(ev)}`);
        await p.close().catch(() => {});
      }
      pages.clear();
      spare.length = 0;
    }
  }
} catch (e) {
  failed = true;
  console.log(`FAIL setup: ${e?.stack ?? e}`);
} finally {
  await browser?.close().catch(() => {});
  server.close();
  clearTimeout(watchdog);
  lines.close();
}
console.log(failed ? 'DONE with failures' : 'DONE');
process.exit(failed ? 1 : 0);
