// Unit tests of the client's pure logic: backoff and jitter bounds, position
// tracking, msgId reuse across reconnects, fallback order, give-up and auth
// rules. The gateway itself is exercised by tests/browser.rs (real binary,
// real Chromium); here a scripted transport stands in for the network.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SwitchyardClient, calculateDelay, shutdownDelay, DEFAULT_RECONNECT, Positions } from '../src/index.js';

test('calculateDelay is the seed formula and stays within ±20% of the capped exponential', () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const base = Math.min(30000, 1000 * Math.pow(2, attempt));
    for (const r of [0, 0.25, 0.5, 0.999999]) {
      const seed = base * (1 + (r * 0.4 - 0.2));
      assert.equal(calculateDelay(attempt, DEFAULT_RECONNECT, () => r), seed);
    }
    for (let i = 0; i < 200; i++) {
      const d = calculateDelay(attempt);
      assert.ok(d >= base * 0.8 && d <= base * 1.2, `attempt ${attempt}: ${d} outside [${base * 0.8}, ${base * 1.2}]`);
    }
  }
  assert.equal(calculateDelay(20, DEFAULT_RECONNECT, () => 0.5), 30000, 'capped at maxDelay');
  // Jitter spreads: not all the same.
  const many = new Set(Array.from({ length: 50 }, () => calculateDelay(3)));
  assert.ok(many.size > 40);
});

test('shutdownDelay waits at least reconnectIn and at most reconnectIn * (1 + jitter)', () => {
  for (let i = 0; i < 200; i++) {
    const d = shutdownDelay(2000);
    assert.ok(d >= 2000 && d <= 2800, String(d));
  }
  assert.equal(shutdownDelay(-5, DEFAULT_RECONNECT, () => 0), 1000, 'a bad reconnectIn falls back to baseDelay');
});

test('positions: deliver in order, drop duplicates, hold gaps, flag epoch changes', () => {
  const p = new Positions();
  assert.deepEqual(p.onSubscribed({ channel: 'c:1', epoch: 'e1', seq: 5, recovered: false }), { recovered: false, resumed: false });
  assert.deepEqual(p.get('c:1'), { epoch: 'e1', seq: 5 });
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 6 }), 'deliver');
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 6 }), 'duplicate');
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 3 }), 'duplicate');
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 8 }), 'gap');
  assert.deepEqual(p.get('c:1'), { epoch: 'e1', seq: 6 }, 'a gap does not move the position');
  // Recovery keeps the position: the missed messages follow the reply.
  assert.deepEqual(p.onSubscribed({ channel: 'c:1', epoch: 'e1', seq: 9, recovered: true }), { recovered: true, resumed: true });
  assert.deepEqual(p.get('c:1'), { epoch: 'e1', seq: 6 });
  for (const s of [7, 8, 9]) assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: s }), 'deliver');
  // recovered:true under another epoch cannot be trusted: jump to the new head.
  assert.deepEqual(p.onSubscribed({ channel: 'c:1', epoch: 'e2', seq: 2, recovered: true }), { recovered: false, resumed: true });
  assert.deepEqual(p.get('c:1'), { epoch: 'e2', seq: 2 });
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e3', seq: 1 }), 'epoch');
  assert.deepEqual(p.get('c:1'), { epoch: 'e3', seq: 1 });
  p.delete('c:1');
  assert.equal(p.get('c:1'), undefined);
});

/** A scripted transport: the test plays the gateway. */
function scripted(name = 'fake', log = []) {
  return class Scripted {
    static transportName = name;
    static supportsInitial = false;
    static available() {
      return true;
    }
    constructor(endpoint, options, initial, handlers) {
      Object.assign(this, { endpoint, options, initial, handlers, sent: [], closed: false });
      log.push(this);
    }
    open() {
      this.opened = true;
    }
    send(frame) {
      this.sent.push(structuredClone(frame));
    }
    close() {
      this.closed = true;
    }
    welcome(extra = {}) {
      this.handlers.onFrame({ type: 'welcome', session: `s${log.length}`, client: 'c-1', node: 'n', protocol: 1, ...extra });
    }
    frame(f) {
      this.handlers.onFrame(f);
    }
    drop(code = 1006, reason = '') {
      this.handlers.onClose({ code, reason });
    }
  };
}

const tick = () => new Promise((r) => setTimeout(r, 0));
async function until(cond, what, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function client(log, opts = {}) {
  return new SwitchyardClient('http://gw.test', {
    transports: [scripted('fake', log)],
    reconnect: { baseDelay: 1, maxDelay: 4, maxRetries: 3 },
    ...opts,
  });
}

test('a publish resent after a reconnect keeps its msgId and resolves once', async () => {
  const log = [];
  const c = client(log);
  const opened = c.connect();
  log[0].welcome();
  await opened;
  const acked = c.publish('room:1', { n: 1 });
  const first = log[0].sent.find((f) => f.type === 'publish');
  assert.match(first.msgId, /^[0-9a-f-]{36}$/);
  log[0].drop(1006);
  await until(() => log.length === 2, 'reconnect');
  log[1].welcome();
  const again = log[1].sent.find((f) => f.type === 'publish');
  assert.equal(again.msgId, first.msgId, 'same msgId after the reconnect');
  assert.notEqual(again.id, first.id, 'a new request id');
  assert.deepEqual(again.data, { n: 1 });
  log[1].frame({ type: 'ack', id: again.id, seq: 7 });
  log[1].frame({ type: 'ack', id: again.id, seq: 7 }); // a late repeat is ignored
  assert.equal(await acked, 7);
  // A publish made while disconnected waits for the connection.
  log[1].drop(1006);
  const queued = c.publish('room:1', 'x', { msgId: 'given-id' });
  await until(() => log.length === 3, 'second reconnect');
  log[2].welcome();
  const q = log[2].sent.find((f) => f.type === 'publish');
  assert.equal(q.msgId, 'given-id');
  log[2].frame({ type: 'error', id: q.id, code: 'rate_limited', message: 'slow down' });
  await assert.rejects(queued, { code: 'rate_limited' });
  c.close();
});

test('resubscribes with since after a reconnect and reports recovery', async () => {
  const log = [];
  const c = client(log);
  const recoveries = [];
  c.on('recovery', (e) => recoveries.push(e));
  const got = [];
  const unsub = c.subscribe('room:1', (data) => got.push(data));
  const opened = c.connect();
  log[0].welcome();
  await opened;
  const sub = log[0].sent.find((f) => f.type === 'subscribe');
  assert.equal(sub.since, undefined);
  log[0].frame({ type: 'subscribed', id: sub.id, channel: 'room:1', epoch: 'e1', seq: 10, recovered: false });
  await unsub.ready;
  log[0].frame({ type: 'message', channel: 'room:1', epoch: 'e1', seq: 11, data: 'a' });
  log[0].drop(1006);
  await until(() => log.length === 2, 'reconnect');
  log[1].welcome();
  const resub = log[1].sent.find((f) => f.type === 'subscribe');
  assert.deepEqual(resub.since, { epoch: 'e1', seq: 11 });
  log[1].frame({ type: 'subscribed', id: resub.id, channel: 'room:1', epoch: 'e1', seq: 13, recovered: true });
  for (const [seq, data] of [[11, 'a'], [12, 'b'], [13, 'c'], [13, 'c']]) {
    log[1].frame({ type: 'message', channel: 'room:1', epoch: 'e1', seq, data });
  }
  assert.deepEqual(got, ['a', 'b', 'c'], 'replayed in order, duplicates dropped');
  assert.equal(c.stats.duplicatesDropped, 2);
  assert.deepEqual(recoveries.map((r) => [r.recovered, r.cause]), [[true, 'reconnect']]);
  // Next time history is gone: recovered:false reaches the app.
  log[1].drop(1006);
  await until(() => log.length === 3, 'reconnect');
  log[2].welcome();
  const r3 = log[2].sent.find((f) => f.type === 'subscribe');
  assert.deepEqual(r3.since, { epoch: 'e1', seq: 13 });
  log[2].frame({ type: 'subscribed', id: r3.id, channel: 'room:1', epoch: 'e9', seq: 0, recovered: false });
  assert.deepEqual(recoveries.at(-1), { channel: 'room:1', recovered: false, epoch: 'e9', seq: 0, cause: 'reconnect' });
  log[2].frame({ type: 'message', channel: 'room:1', epoch: 'e9', seq: 1, data: 'd' });
  assert.deepEqual(got, ['a', 'b', 'c', 'd']);
  // A gap on a live stream resubscribes from the last position.
  log[2].frame({ type: 'message', channel: 'room:1', epoch: 'e9', seq: 3, data: 'f' });
  const gapSub = log[2].sent.filter((f) => f.type === 'subscribe').at(-1);
  assert.deepEqual(gapSub.since, { epoch: 'e9', seq: 1 });
  assert.deepEqual(got, ['a', 'b', 'c', 'd'], 'the message after the gap is held');
  unsub();
  assert.equal(log[2].sent.at(-1).type, 'unsubscribe');
  c.close();
});

test('falls back to the next transport when one fails, and prefers the one that worked', async () => {
  const wsLog = [];
  const sseLog = [];
  const c = new SwitchyardClient('http://gw.test', {
    transports: [scripted('ws-like', wsLog), scripted('sse-like', sseLog)],
    reconnect: { baseDelay: 1, maxDelay: 4, maxRetries: 3 },
    welcomeTimeout: 30,
  });
  const names = [];
  c.on('transport', (e) => names.push(e.name));
  const opened = c.connect();
  wsLog[0].drop(1006); // upgrade refused
  await tick();
  assert.equal(sseLog.length, 1);
  sseLog[0].welcome();
  await opened;
  assert.equal(c.transport, 'sse-like');
  sseLog[0].drop(1006);
  await until(() => sseLog.length === 2, 'reconnect over the transport that worked');
  assert.equal(wsLog.length, 1, 'did not go back to the failing one first');
  // A transport that never says welcome times out and the next is tried.
  await until(() => wsLog.length === 2, 'welcome timeout then next transport', 1000);
  wsLog[1].welcome();
  assert.equal(c.transport, 'ws-like');
  assert.deepEqual(names, ['sse-like', 'ws-like']);
  c.close();
});

test('backs off with growing delays, gives up after maxRetries', async () => {
  const log = [];
  const c = client(log, { reconnect: { baseDelay: 2, maxDelay: 1000, maxRetries: 3 }, random: () => 0.5 });
  const delays = [];
  c.on('reconnecting', (e) => delays.push(e.delay));
  const closes = [];
  c.on('close', (e) => closes.push(e));
  const opened = c.connect();
  log[0].drop(1006);
  for (let n = 2; n <= 4; n++) {
    await until(() => log.length === n, `attempt ${n}`);
    log[n - 1].drop(1006);
  }
  await assert.rejects(opened, { code: 'gave_up' });
  assert.deepEqual(delays, [2, 4, 8]);
  assert.equal(c.state, 'closed');
  assert.equal(closes.at(-1).willReconnect, false);
});

test('4001/4003 do not retry; close() stops reconnecting; SERVER_SHUTDOWN delays the reconnect', async () => {
  const log = [];
  const c = client(log);
  const opened = c.connect();
  log[0].drop(4001, 'unauthorized');
  await assert.rejects(opened, { closeCode: 4001 });
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(log.length, 1, 'no retry after 4001');

  const log2 = [];
  const c2 = client(log2, { random: () => 0 });
  const o2 = c2.connect();
  log2[0].welcome();
  await o2;
  const events = [];
  c2.on('reconnecting', (e) => events.push(e));
  log2[0].frame({ type: 'SERVER_SHUTDOWN', reconnectIn: 40 });
  log2[0].drop(1001);
  assert.deepEqual(events, [{ attempt: 0, delay: 40, reason: 'server_shutdown' }]);
  await new Promise((r) => setTimeout(r, 15));
  assert.equal(log2.length, 1, 'waits reconnectIn');
  await until(() => log2.length === 2, 'reconnect after reconnectIn');
  log2[1].welcome();
  c2.close();
  log2[1].drop(1000);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(log2.length, 2, 'no reconnect after close()');
  assert.equal(c2.state, 'closed');
});

test('a silent connection is probed with ping; no pong in time means reconnect', async () => {
  const log = [];
  const c = client(log, { heartbeat: 30, requestTimeout: 40 });
  const lost = [];
  c.on('close', (e) => lost.push(e.reason));
  const opened = c.connect();
  log[0].welcome();
  await opened;
  await until(() => log[0].sent.some((f) => f.type === 'ping'), 'a ping after 30 ms of silence');
  const ping = log[0].sent.find((f) => f.type === 'ping');
  log[0].frame({ type: 'pong', id: ping.id });
  await new Promise((r) => setTimeout(r, 45));
  assert.equal(log.length, 1, 'answered: still the same connection');
  assert.equal(c.state, 'open');
  // Now the peer goes silent: the next ping gets no pong.
  await until(() => log.length === 2, 'reconnect after the heartbeat timeout');
  assert.deepEqual(lost, ['heartbeat timeout']);
  assert.ok(log[0].closed, 'the dead transport was closed');
  c.close();
});

test('presence: subscribe({presence: true}) asks for events, keeps asking after a reconnect, and emits them', async () => {
  const log = [];
  const c = client(log);
  const events = [];
  c.on('presence', (e) => events.push(e));
  c.subscribe('room:1', () => {}, { presence: true });
  c.subscribe('room:2', () => {});
  const opened = c.connect();
  log[0].welcome();
  await opened;
  const subs = log[0].sent.filter((f) => f.type === 'subscribe');
  assert.equal(subs.find((f) => f.channel === 'room:1').presence, true);
  assert.equal(subs.find((f) => f.channel === 'room:2').presence, undefined, 'off unless asked');
  for (const f of subs) log[0].frame({ type: 'subscribed', id: f.id, channel: f.channel, epoch: 'e', seq: 0, recovered: false });
  log[0].frame({ type: 'join', channel: 'room:1', client: 'bob', principal: 'u-1', node: 'node-b' });
  log[0].frame({ type: 'leave', channel: 'room:1', client: 'bob', principal: 'u-1', node: 'node-b' });
  log[0].frame({ type: 'join', channel: 5, client: 'bad' }); // malformed: ignored
  assert.deepEqual(events, [
    { channel: 'room:1', change: 'join', client: 'bob', principal: 'u-1', node: 'node-b' },
    { channel: 'room:1', change: 'leave', client: 'bob', principal: 'u-1', node: 'node-b' },
  ]);
  // asking later on a live subscription subscribes again, with since
  c.subscribe('room:2', () => {}, { presence: true });
  const again = log[0].sent.filter((f) => f.type === 'subscribe' && f.channel === 'room:2');
  assert.equal(again.length, 2);
  assert.equal(again[1].presence, true);
  assert.deepEqual(again[1].since, { epoch: 'e', seq: 0 });
  log[0].drop(1006);
  await until(() => log.length === 2, 'reconnect');
  log[1].welcome();
  const resub = log[1].sent.filter((f) => f.type === 'subscribe');
  assert.deepEqual(resub.map((f) => [f.channel, f.presence]).sort(), [['room:1', true], ['room:2', true]]);
  c.close();
});

test('publish({skipSelf: true}) sends skipSelf, also when resent after a reconnect', async () => {
  const log = [];
  const c = client(log);
  const opened = c.connect();
  log[0].welcome();
  await opened;
  const acked = c.publish('room:1', 1, { skipSelf: true });
  c.publish('room:1', 2).catch(() => {});
  const [first, plain] = log[0].sent.filter((f) => f.type === 'publish');
  assert.equal(first.skipSelf, true);
  assert.equal(plain.skipSelf, undefined, 'off unless asked');
  log[0].drop(1006);
  await until(() => log.length === 2, 'reconnect');
  log[1].welcome();
  const again = log[1].sent.find((f) => f.type === 'publish' && f.msgId === first.msgId);
  assert.equal(again.skipSelf, true);
  log[1].frame({ type: 'ack', id: again.id, seq: 3 });
  assert.equal(await acked, 3);
  c.close();
});

test('positions: own skipSelf seqs are not gaps, and their replay is dropped', () => {
  const p = new Positions();
  p.onSubscribed({ channel: 'c:1', epoch: 'e1', seq: 3, recovered: false });
  p.onSkipped('c:1', 4);
  assert.deepEqual(p.get('c:1'), { epoch: 'e1', seq: 4 });
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 5 }), 'deliver');
  // the next message (7) before the ack of our 6
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 7 }), 'gap');
  p.onSkipped('c:1', 6);
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 7 }), 'deliver');
  p.onSkipped('c:1', 9);
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 9 }), 'duplicate', 'a replay of our own');
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 8 }), 'deliver');
  assert.deepEqual(p.get('c:1'), { epoch: 'e1', seq: 9 });
  assert.equal(p.onMessage({ channel: 'c:1', epoch: 'e1', seq: 11 }), 'gap', 'a real gap still is one');
});

test('a skipSelf publish acked on a subscribed channel moves the position over its seq', async () => {
  const log = [];
  const c = client(log);
  const got = [];
  c.subscribe('room:1', (d) => got.push(d));
  const opened = c.connect();
  log[0].welcome();
  await opened;
  const sub = log[0].sent.find((f) => f.type === 'subscribe');
  log[0].frame({ type: 'subscribed', id: sub.id, channel: 'room:1', epoch: 'e', seq: 0, recovered: false });
  const acked = c.publish('room:1', 'mine', { skipSelf: true });
  const pub = log[0].sent.find((f) => f.type === 'publish');
  log[0].frame({ type: 'ack', id: pub.id, seq: 1 });
  assert.equal(await acked, 1);
  log[0].frame({ type: 'message', channel: 'room:1', epoch: 'e', seq: 2, data: 'theirs' });
  assert.deepEqual(got, ['theirs']);
  assert.equal(log[0].sent.filter((f) => f.type === 'subscribe').length, 1, 'no resubscribe: not a gap');
  c.close();
});
