// Headless-Chromium tests of sdk/client-js and examples/demo-page against the
// real gateway. Driven by tests/browser.rs, which starts the gateway and passes:
//   GATEWAY_URL  http://127.0.0.1:<port> of the running gateway
//   PAGE_PORT    port for the static server (the gateway's origins allow it)
//   REPO_ROOT    repository root (served: /examples/demo-page/, /sdk/client-js/src/)
//   CHROMIUM     browser binary (default /usr/bin/chromium)
// Gateway restarts are asked of the driver on stdout ("CONTROL kill" /
// "CONTROL drain"); it answers "ok" on stdin once the new process is up on the
// same port. Each passed scenario prints "PASS <name>". The gateway's tenant
// declares `documents = ["doc:*"]` for the document-channel scenarios; its
// tenant `yjs` has `documents = ["yjs:*"]` merged by the `yjs-merge` plugin
// for examples/yjs-page (served from /examples/yjs-page/ with its npm
// packages from /tests/js/node_modules/).
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

// ---- document channels ----

/**
 * Opens a demo page over WebSocket and the document `channel` in it
 * (`window.docTest = {doc, log}`, `log` = every applied change); resolves
 * once the first snapshot is applied.
 */
async function openDocPage(channel, setup) {
  const page = await openDemo('transports=websocket', setup);
  await page.evaluate(async (ch) => {
    const log = [];
    const doc = window.demo.client.document(ch, {
      onChange: (state, c) => log.push({ kind: c.kind, version: c.version, msgId: c.msgId, clientId: c.clientId, delta: c.delta }),
    });
    window.docTest = { doc, log };
    await doc.ready;
  }, channel);
  return page;
}

const docOf = (page) => page.evaluate(() => ({ state: window.docTest.doc.state, version: window.docTest.doc.version, epoch: window.docTest.doc.epoch }));
const docLog = (page) => page.evaluate(() => window.docTest.log);
const patchDoc = (page, delta) => page.evaluate((d) => window.docTest.doc.patch(d), delta);
const docAt = (page, version) => page.waitForFunction((v) => window.docTest.doc.version >= v, version);

/** A page's change log is one snapshot, then patches at consecutive versions, each msgId once. */
function assertCleanLog(log, who) {
  assert.equal(log[0]?.kind, 'snapshot', `${who}: starts with the snapshot`);
  const patches = log.slice(1);
  assert.ok(patches.every((c) => c.kind === 'patch'), `${who}: one snapshot only (resumed by version): ${JSON.stringify(log.map((c) => c.kind))}`);
  patches.forEach((c, i) => assert.equal(c.version, log[0].version + i + 1, `${who}: consecutive versions`));
  const ids = patches.map((c) => c.msgId);
  assert.equal(new Set(ids).size, ids.length, `${who}: no patch applied twice`);
}

/** Two pages edit one LWW document at once and end with the same state; a late joiner's snapshot matches. */
async function documentConverge() {
  const channel = `doc:conv-${Date.now()}`;
  const a = await openDocPage(channel);
  const b = await openDocPage(channel);
  const start = await docOf(a);
  assert.equal(start.version, (await docOf(b)).version);
  assert.deepEqual(start.state, {});
  // 20 patches from each page without waiting for acks: shared keys, own keys, deletes.
  const edit = (page, who) =>
    page.evaluate(async (who) => {
      const { doc } = window.docTest;
      const acks = [];
      for (let i = 0; i < 20; i++) {
        const d = { [`k${i % 5}`]: `${who}${i}`, [`${who}${i}`]: i };
        if (i % 7 === 6) d[`k${(i + 1) % 5}`] = null;
        acks.push(doc.patch(d));
      }
      return Promise.all(acks);
    }, who);
  const [va, vb] = await Promise.all([edit(a, 'a'), edit(b, 'b')]);
  const all = [...va, ...vb];
  assert.equal(new Set(all).size, 40, `every patch changed the document: its own version (${all})`);
  const top = Math.max(...all);
  assert.equal(top, start.version + 40);
  for (const p of [a, b]) await docAt(p, top);
  const [da, db] = [await docOf(a), await docOf(b)];
  assert.equal(da.version, top);
  assert.equal(db.version, top);
  assert.deepEqual(da.state, db.state, 'both replicas converged');
  for (let i = 0; i < 20; i++) {
    assert.equal(da.state[`a${i}`], i);
    assert.equal(da.state[`b${i}`], i);
  }
  assertCleanLog(await docLog(a), 'a');
  assertCleanLog(await docLog(b), 'b');
  // Each page's own acks match the versions its broadcasts arrived at.
  const ownVersions = (log, id) => log.filter((c) => c.clientId === id).map((c) => c.version).sort((x, y) => x - y);
  const idA = await a.evaluate(() => window.demo.client.clientId);
  assert.deepEqual(ownVersions(await docLog(b), idA), [...va].sort((x, y) => x - y), "b saw a's patches at a's acked versions");
  // A late joiner gets one snapshot equal to the converged state.
  const c = await openDocPage(channel);
  const dc = await docOf(c);
  assert.equal(dc.version, top);
  assert.deepEqual(dc.state, da.state, 'the snapshot is the converged state');
  for (const p of [a, b, c]) await closePage(p);
}

/**
 * One page goes offline (its WebSocket cut and reconnects refused), edits,
 * comes back: it resumes by version, its offline edits are applied once
 * (including the one whose ack was lost when the connection dropped) and
 * both pages converge.
 */
async function documentOfflineResume() {
  const channel = `doc:off-${Date.now()}`;
  const net = { offline: false };
  const a = await openDocPage(channel);
  const b = await openDocPage(channel, (page) =>
    page.routeWebSocket(/\/ws/, (ws) => {
      if (net.offline) ws.close(); // like the fallback scenarios: the upgrade fails
      else ws.connectToServer();
    }));
  const idB = await b.evaluate(() => window.demo.client.clientId);
  const v1 = await patchDoc(a, { shared: 'a0', a0: 1 });
  await docAt(b, v1);
  await b.evaluate(() => {
    window.demo.events.length = 0;
  });

  // Offline: the patch frame is on the wire, its ack will not reach b.
  net.offline = true;
  await b.evaluate(() => {
    const { doc } = window.docTest;
    window.docTest.lostAck = doc.patch({ lost: true });
    window.demo.client.simulateConnectionLoss();
    window.docTest.offline = [doc.patch({ shared: 'b-offline', off1: 1 }), doc.patch({ a0: null }), doc.patch({ off2: 2 })];
  });
  assert.equal(await b.evaluate(() => window.demo.client.state), 'reconnecting');
  await patchDoc(a, { shared: 'a-during', a1: 1 });
  // The lost-ack patch reached the gateway: a saw it while b was away.
  await a.waitForFunction((id) => window.docTest.log.some((c) => c.clientId === id && c.delta?.lost === true), idB);
  // Stay offline until b's client has failed a reconnect attempt.
  await b.waitForFunction(() => window.demo.events.filter((e) => e.event === 'reconnecting').length >= 2, null, { timeout: 20_000 });
  assert.equal(await b.evaluate(() => window.demo.client.state), 'reconnecting', 'still offline');
  assert.equal((await docOf(b)).version, v1, 'b saw nothing while offline');
  net.offline = false;

  await b.waitForFunction(() => window.demo.events.some((e) => e.event === 'recovery' && e.document), null, { timeout: 20_000 });
  const rec = (await events(b)).find((e) => e.event === 'recovery');
  assert.equal(rec.recovered, true, `resumed by version: ${JSON.stringify(rec)}`);
  assert.equal(rec.channel, channel);
  const [lostV, ...offV] = await b.evaluate(() => Promise.all([window.docTest.lostAck, ...window.docTest.offline]));
  const seenLost = (await docLog(a)).find((c) => c.clientId === idB && c.delta?.lost === true);
  assert.equal(lostV, seenLost.version, 'the resent patch was acked with its original version');
  assert.deepEqual(offV, [offV[0], offV[0] + 1, offV[0] + 2], `offline patches applied in order: ${offV}`);
  const vAfter = await patchDoc(a, { a2: 'after' });
  assert.equal(vAfter, offV[2] + 1);
  for (const p of [a, b]) await docAt(p, vAfter);
  const [da, db] = [await docOf(a), await docOf(b)];
  assert.deepEqual(db, da, 'both pages converged');
  assert.equal(da.version, v1 + 6, 'six patches after v1: lost-ack, a-during, three offline, after (none twice)');
  assert.equal(da.state.lost, true);
  assert.equal(da.state.off1, 1);
  assert.equal(da.state.off2, 2);
  assert.equal(da.state.a1, 1);
  assert.equal(da.state.a2, 'after');
  assert.ok(!('a0' in da.state), "b's offline delete of a0 applied");
  assert.ok(['b-offline', 'a-during'].includes(da.state.shared), da.state.shared);
  const logA = await docLog(a);
  const logB = await docLog(b);
  assertCleanLog(logA, 'a');
  assertCleanLog(logB, 'b');
  assert.equal(logA.filter((c) => c.clientId === idB).length, 4, "a applied each of b's four patches once");
  assert.deepEqual(logB.map((c) => c.version), logA.map((c) => c.version), 'b replayed exactly the versions it missed');
  await closePage(a);
  await closePage(b);
}

/** Document channels are WebSocket-only: over SSE the subscribe is refused with `unsupported`, and the client says so. */
async function documentUnsupportedOverSse() {
  const page = await openDemo('transports=sse');
  const channel = `doc:sse-${Date.now()}`;
  const got = await page.evaluate(async (ch) => {
    const errors = [];
    window.demo.client.on('error', (e) => errors.push({ code: e.error.code, channel: e.channel }));
    const doc = window.demo.client.document(ch);
    const patched = doc.patch({ a: 1 }).catch((e) => e.code);
    try {
      await doc.ready;
      return { ready: 'resolved' };
    } catch (e) {
      return { code: e.code, closed: doc.closed, patch: await patched, errors };
    }
  }, channel);
  assert.deepEqual(got, { code: 'unsupported', closed: true, patch: 'unsupported', errors: [{ code: 'unsupported', channel }] });
  assert.equal(await page.evaluate(() => window.demo.client.state), 'open', 'the connection stays up');
  await closePage(page);
}

// ---- examples/yjs-page ----

/** Whether `sub`'s characters appear in `s` in order. */
function isSubsequence(sub, s) {
  let i = 0;
  for (const ch of s) if (ch === sub[i]) i++;
  return i === sub.length;
}

/** Opens the Yjs page in `ctx` on `room` (tenant `yjs`); resolves once it synced. */
async function openYjsPage(ctx, room) {
  const page = await ctx.newPage();
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (e) => console.log(`[yjs page error] ${e}`));
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`[yjs console] ${m.text()}`);
  });
  pages.add(page);
  page.routed = true;
  await page.goto(`${PAGE}/examples/yjs-page/?gateway=${encodeURIComponent(GW)}&tenant=yjs&room=${room}`);
  await page.waitForFunction(() => window.yjsPage?.provider.synced === true);
  return page;
}

/** Both pages' textareas hold `n` characters, equal to their Y.Text. */
const yjsSettled = (page, n) =>
  page.waitForFunction((n) => {
    const v = document.getElementById('text').value;
    return v.length === n && v === window.yjsPage.text.toString();
  }, n);

/**
 * Two Yjs pages (separate browser contexts: nothing shared but the gateway)
 * type into one textarea at the same time and converge; then one goes
 * offline with the page's button, both type, it comes back and they converge
 * again.
 */
async function yjsPageConverge() {
  const room = `page-${Date.now()}`;
  const other = await browser.newContext();
  try {
    const a = await openYjsPage(context, room);
    const b = await openYjsPage(other, room);
    // b announces itself on connect: a sees it at once. (b learns of a when a's
    // state next changes, its caret below: the gateway does not replay the
    // room's awareness states to a joiner.)
    await a.waitForFunction(() => document.querySelectorAll('#peers li').length === 2);
    const ta = 'hello from page a. ';
    const tb = 'and page b! ';
    await Promise.all([
      a.locator('#text').pressSequentially(ta, { delay: 10 }),
      b.locator('#text').pressSequentially(tb, { delay: 10 }),
    ]);
    for (const p of [a, b]) await yjsSettled(p, ta.length + tb.length);
    for (const p of [a, b]) await p.waitForFunction(() => document.querySelectorAll('#peers li').length === 2);
    const [va, vb] = [await a.inputValue('#text'), await b.inputValue('#text')];
    assert.equal(va, vb, 'both textareas converged');
    assert.ok(isSubsequence(ta, va) && isSubsequence(tb, va), `each page's typing kept its order: ${JSON.stringify(va)}`);

    await b.click('#toggle');
    await b.waitForFunction(() => document.getElementById('connection').textContent === 'disconnected');
    await b.locator('#text').press('End');
    await b.locator('#text').pressSequentially(' [offline b]');
    await a.locator('#text').press('Home');
    await a.locator('#text').pressSequentially('[online a] ');
    assert.ok(!(await a.inputValue('#text')).includes('[offline b]'), 'b was offline');
    await b.click('#toggle');
    await b.waitForFunction(() => window.yjsPage.provider.synced === true);
    const n = va.length + ' [offline b]'.length + '[online a] '.length;
    for (const p of [a, b]) await yjsSettled(p, n);
    const [wa, wb] = [await a.inputValue('#text'), await b.inputValue('#text')];
    assert.equal(wa, wb, 'converged after the offline edit');
    assert.equal(wa, `[online a] ${va} [offline b]`);
    for (const p of [a, b]) {
      pages.delete(p);
      await p.close();
    }
  } finally {
    await other.close();
  }
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
  ['document-converge', documentConverge],
  ['document-offline-resume', documentOfflineResume],
  ['document-unsupported-sse', documentUnsupportedOverSse],
  ['yjs-page-converge', yjsPageConverge],
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
        const doc = await p.evaluate(() => window.docTest && { version: window.docTest.doc.version, log: window.docTest.log }).catch(() => null);
        if (doc) console.log(`  document: ${JSON.stringify(doc)}`);
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
