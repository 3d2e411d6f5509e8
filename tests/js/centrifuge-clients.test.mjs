// Unmodified npm `centrifuge` (5.x) clients against the real gateway's
// Centrifuge endpoint (`/connection/websocket`, DESIGN §2c), driven by
// tests/centrifuge.rs, which starts the gateway and runs `node --test` on this
// file. Node's `ws` package is the clients' WebSocket.
//
// Environment:
//   GW                         the gateway's base URL (http://127.0.0.1:PORT)
//   API_KEY                    tenant `default`'s API key (POST /api/publish)
//   JWT_SECRET, JWT_AUDIENCE   tenant `default`'s jwt-auth config
//
// Every wait is for an event (a client event, a frame); the timeouts only
// bound how long an event may take.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through tests/centrifuge.rs)`);
  return v;
}

const GW = required('GW').replace(/\/$/, '');
const WS = GW.replace(/^http/, 'ws');
const URL_DEFAULT = `${WS}/connection/websocket`;
const API_KEY = required('API_KEY');
const JWT_SECRET = required('JWT_SECRET');
const JWT_AUDIENCE = required('JWT_AUDIENCE');
/** Longest any single event may take. */
const EVENT_MS = 10_000;

/** Every client and socket made, closed after the tests (also after a failure). */
const live = [];
function track(x) {
  live.push(x);
  return x;
}
after(() => {
  for (const x of live) {
    try {
      if (x instanceof Centrifuge) x.disconnect();
      else x.terminate();
    } catch {
      // already gone
    }
  }
});

const b64url = (s) => Buffer.from(s).toString('base64url');
/** An HS256 JWT for jwt-auth. */
function jwt(claims, secret = JWT_SECRET) {
  const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}
const token = (sub, channels = ['room:*']) =>
  jwt({ sub, aud: JWT_AUDIENCE, exp: Math.floor(Date.now() / 1000) + 300, channels });

/** Resolves with the first `event` of `emitter` for which `pred` holds. */
function waitFor(emitter, event, pred = () => true, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out waiting for ${what}`));
    }, EVENT_MS);
    const on = (ctx) => {
      if (!pred(ctx)) return;
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(ctx);
    };
    emitter.on(event, on);
  });
}

/** Everything a subscription receives, with a wait for a predicate over it. */
function inbox(sub) {
  const items = [];
  const waiters = [];
  sub.on('publication', (ctx) => {
    items.push(ctx);
    for (const w of waiters.splice(0)) {
      if (w.pred(items)) w.resolve(items);
      else waiters.push(w);
    }
  });
  return {
    items,
    until(pred, what) {
      if (pred(items)) return Promise.resolve(items);
      return new Promise((resolve, reject) => {
        const w = {
          pred,
          resolve: (x) => {
            clearTimeout(w.timer);
            resolve(x);
          },
        };
        waiters.push(w);
        w.timer = setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) {
            waiters.splice(i, 1);
            reject(new Error(`timed out waiting for ${what}: got ${JSON.stringify(items.map((p) => [p.offset, p.data]))}`));
          }
        }, EVENT_MS);
      });
    },
  };
}

function client(sub, opts = {}) {
  return track(new Centrifuge(opts.url ?? URL_DEFAULT, { websocket: WebSocket, token: token(sub), ...opts }));
}

async function connected(c) {
  const ctx = waitFor(c, 'connected');
  c.connect();
  return ctx;
}

async function subscribed(c, channel) {
  const sub = c.newSubscription(channel);
  const box = inbox(sub);
  const ctx = waitFor(sub, 'subscribed');
  sub.subscribe();
  return { sub, box, ctx: await ctx };
}

async function apiPublish(channel, data) {
  const r = await fetch(`${GW}/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()).seq;
}

/** A protocol v1 client over a real WebSocket. */
async function v1Client(sub) {
  const ws = track(new WebSocket(`${WS}/ws?token=${token(sub)}`, 'switchyard.v1'));
  const frames = [];
  const waiters = [];
  ws.on('message', (data) => {
    const f = JSON.parse(data.toString());
    frames.push(f);
    for (const w of waiters.splice(0)) {
      const hit = frames.find(w.pred);
      if (hit) w.resolve(hit);
      else waiters.push(w);
    }
  });
  const next = (pred, what) => {
    const hit = frames.find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (x) => {
          clearTimeout(w.timer);
          resolve(x);
        },
      };
      waiters.push(w);
      w.timer = setTimeout(() => {
        const i = waiters.indexOf(w);
        if (i >= 0) {
          waiters.splice(i, 1);
          reject(new Error(`v1 client: timed out waiting for ${what}: ${JSON.stringify(frames)}`));
        }
      }, EVENT_MS);
    });
  };
  const welcome = await next((f) => f.type === 'welcome', 'welcome');
  return { ws, frames, next, welcome, send: (cmd) => ws.send(JSON.stringify(cmd)) };
}

/** A raw socket on the Centrifuge endpoint: resolves with the close code after sending `frames`. */
function rawClose(frames, url = URL_DEFAULT) {
  return new Promise((resolve, reject) => {
    const ws = track(new WebSocket(url));
    const timer = setTimeout(() => reject(new Error('no close')), EVENT_MS);
    ws.on('open', () => {
      for (const f of frames) ws.send(f);
    });
    ws.on('close', (code, reason) => {
      clearTimeout(timer);
      resolve({ code, reason: reason.toString() });
    });
    ws.on('error', () => {});
  });
}

/**
 * WebSockets whose connection can be dropped (terminated: no close frame) and
 * whose next connections wait until released, so a test decides what the
 * client misses while it is away.
 */
function droppable() {
  const ctl = { open: true, waiting: [], sockets: [] };
  class DroppableWebSocket {
    constructor(url, protocols) {
      this.readyState = 0;
      this.onopen = this.onclose = this.onmessage = this.onerror = null;
      this._closed = false;
      const start = () => {
        if (this._closed) return;
        const ws = track(new WebSocket(url, protocols));
        this._ws = ws;
        ctl.sockets.push(ws);
        ws.onopen = (e) => {
          this.readyState = 1;
          this.onopen?.(e);
        };
        ws.onmessage = (e) => this.onmessage?.(e);
        ws.onerror = (e) => this.onerror?.(e);
        ws.onclose = (e) => {
          this.readyState = 3;
          this.onclose?.(e);
        };
      };
      if (ctl.open) start();
      else ctl.waiting.push(start);
    }
    send(data) {
      this._ws.send(data);
    }
    close() {
      this._closed = true;
      this._ws?.close();
    }
  }
  ctl.WebSocket = DroppableWebSocket;
  ctl.drop = () => {
    ctl.open = false;
    ctl.sockets.at(-1).terminate();
  };
  ctl.release = () => {
    ctl.open = true;
    for (const start of ctl.waiting.splice(0)) start();
  };
  return ctl;
}

const offsets = (items) => items.map((p) => p.offset);

test('1. connect with a token through the auth policy', async () => {
  const c = client('alice');
  const ctx = await connected(c);
  assert.equal(typeof ctx.client, 'string');
  assert.ok(ctx.client.length > 0);
  assert.equal(c.state, 'connected');
  c.disconnect();
});

test('2. refused credentials: disconnected with 3500 (invalid token), no reconnect', async () => {
  for (const [what, tok] of [
    ['bad token', 'not.a.jwt'],
    ['bad signature', jwt({ sub: 'x', aud: JWT_AUDIENCE, exp: Math.floor(Date.now() / 1000) + 300, channels: ['room:*'] }, 'wrong-secret')],
    ['no token', ''],
  ]) {
    const c = track(new Centrifuge(URL_DEFAULT, { websocket: WebSocket, token: tok, minReconnectDelay: 50 }));
    const connecting = [];
    c.on('connecting', (ctx) => connecting.push(ctx));
    const ctx = waitFor(c, 'disconnected', () => true, `disconnected (${what})`);
    c.connect();
    const d = await ctx;
    assert.equal(d.code, 3500, `${what}: ${JSON.stringify(d)}`);
    assert.equal(c.state, 'disconnected', what);
    assert.deepEqual(connecting.map((x) => x.code), [0], `${what}: only the first connect`);
  }
});

test('3. one channel: Centrifuge clients, a v1 client and POST /api/publish', async () => {
  const a = client('alice');
  const b = client('bob');
  await connected(a);
  await connected(b);
  const A = await subscribed(a, 'room:1');
  const B = await subscribed(b, 'room:1');
  assert.equal(A.ctx.recoverable, true);
  assert.equal(A.ctx.wasRecovering, false);
  assert.equal(A.ctx.streamPosition.offset, 0);
  const epoch = A.ctx.streamPosition.epoch;
  assert.ok(epoch);

  const v1 = await v1Client('carol');
  v1.send({ type: 'subscribe', id: 1, channel: 'room:1' });
  const sub = await v1.next((f) => f.type === 'subscribed' && f.id === 1, 'subscribed');
  assert.equal(sub.epoch, epoch, 'one channel, one epoch');

  // Centrifuge client → Centrifuge client and v1 client.
  await B.sub.publish({ from: 'bob' });
  await A.box.until((i) => i.length >= 1, 'bob');
  const m1 = await v1.next((f) => f.type === 'message' && f.data.from === 'bob', 'bob over v1');
  assert.deepEqual(A.box.items[0].data, { from: 'bob' });
  assert.equal(A.box.items[0].offset, m1.seq);

  // v1 client → Centrifuge clients.
  v1.send({ type: 'publish', id: 2, channel: 'room:1', data: { from: 'carol' } });
  const ack = await v1.next((f) => f.type === 'ack' && f.id === 2, 'ack');
  await A.box.until((i) => i.length >= 2, 'carol');
  assert.deepEqual(A.box.items[1].data, { from: 'carol' });
  assert.equal(A.box.items[1].offset, ack.seq);

  // POST /api/publish → Centrifuge clients.
  const seq = await apiPublish('room:1', { from: 'api' });
  await A.box.until((i) => i.length >= 3, 'api');
  await B.box.until((i) => i.length >= 3, 'api at bob');
  assert.deepEqual(A.box.items[2].data, { from: 'api' });
  assert.equal(A.box.items[2].offset, seq);
  assert.deepEqual(offsets(A.box.items), [1, 2, 3]);
  assert.deepEqual(offsets(B.box.items), [1, 2, 3]);

  // Policies: a channel outside the token's claim.
  const denied = a.newSubscription('secret:1');
  const unsub = waitFor(denied, 'unsubscribed');
  denied.subscribe();
  assert.equal((await unsub).code, 103);
  await assert.rejects(a.publish('secret:1', { x: 1 }), (e) => e.code === 103);
  // A name that is not namespace:name.
  await assert.rejects(a.publish('nocolon', { x: 1 }), (e) => e.code === 102);

  // Presence and presence stats.
  const p = await A.sub.presence();
  const clients = Object.values(p.clients);
  const users = clients.map((c) => c.user).sort();
  assert.deepEqual(users, ['alice', 'bob', 'carol']);
  assert.ok(p.clients[v1.welcome.client], 'the v1 client is present under its client id');
  const stats = await A.sub.presenceStats();
  assert.deepEqual(stats, { numClients: 3, numUsers: 3 });

  // History.
  const h = await A.sub.history({ limit: 10 });
  assert.deepEqual(offsets(h.publications), [1, 2, 3]);
  assert.deepEqual(h.publications.map((x) => x.data.from), ['bob', 'carol', 'api']);
  assert.equal(h.epoch, epoch);
  assert.equal(h.offset, 3);
  const rev = await A.sub.history({ limit: 2, reverse: true });
  assert.deepEqual(offsets(rev.publications), [3, 2]);
  const since = await A.sub.history({ limit: -1, since: { offset: 1, epoch } });
  assert.deepEqual(offsets(since.publications), [2, 3]);
  const pos = await A.sub.history();
  assert.deepEqual(pos.publications, []);
  assert.equal(pos.offset, 3);
  await assert.rejects(A.sub.history({ limit: 5, since: { offset: 1, epoch: 'another-epoch' } }), (e) => e.code === 112);
  await assert.rejects(a.history('secret:1', { limit: 1 }), (e) => e.code === 103);

  v1.ws.close();
  a.disconnect();
  b.disconnect();
});

test('4. reconnect after the connection is dropped: missed publications recovered', async () => {
  const net = droppable();
  const c = client('dave', { websocket: net.WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 });
  await connected(c);
  const { sub, box, ctx } = await subscribed(c, 'room:2');
  assert.equal(ctx.wasRecovering, false);
  await apiPublish('room:2', { n: 1 });
  await apiPublish('room:2', { n: 2 });
  await box.until((i) => i.length >= 2, 'two live');

  const away = waitFor(c, 'connecting', (x) => x.code === 1, 'connecting after the drop');
  const resubscribed = waitFor(sub, 'subscribed', (x) => x.wasRecovering, 'the recovering subscribe');
  net.drop();
  await away;
  assert.equal(sub.state, 'subscribing');
  for (const n of [3, 4, 5]) await apiPublish('room:2', { n });
  net.release();
  const again = await resubscribed;
  assert.equal(again.recovered, true, JSON.stringify(again));
  assert.equal(again.hasRecoveredPublications, true);
  await box.until((i) => i.length >= 5, 'recovered');
  await apiPublish('room:2', { n: 6 });
  await box.until((i) => i.length >= 6, 'live after recovery');
  assert.deepEqual(offsets(box.items), [1, 2, 3, 4, 5, 6], 'no gap, no duplicate');
  assert.deepEqual(box.items.map((p) => p.data.n), [1, 2, 3, 4, 5, 6]);
  c.disconnect();
});

test('4b. a recovery the history no longer covers: recovered false, live ones follow', async () => {
  // Tenant `short` keeps 2 messages per channel.
  const url = `${WS}/connection/websocket/short`;
  const net = droppable();
  const c = track(new Centrifuge(url, { websocket: net.WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 }));
  const publisher = track(new Centrifuge(url, { websocket: WebSocket }));
  await connected(c);
  await connected(publisher);
  const { sub, box } = await subscribed(c, 'news:2');
  await publisher.publish('news:2', { n: 1 });
  await box.until((i) => i.length >= 1, 'one live');
  const away = waitFor(c, 'connecting', (x) => x.code === 1, 'connecting after the drop');
  const resubscribed = waitFor(sub, 'subscribed', (x) => x.wasRecovering, 'the recovering subscribe');
  net.drop();
  await away;
  for (const n of [2, 3, 4]) await publisher.publish('news:2', { n });
  net.release();
  const again = await resubscribed;
  assert.equal(again.recovered, false, JSON.stringify(again));
  assert.equal(again.hasRecoveredPublications, false);
  assert.equal(again.streamPosition.offset, 4);
  await publisher.publish('news:2', { n: 5 });
  await box.until((i) => i.length >= 2, 'live after the failed recovery');
  assert.deepEqual(offsets(box.items), [1, 5]);
  c.disconnect();
  publisher.disconnect();
});

test('5. a path tenant without an auth plugin: anonymous clients', async () => {
  const url = `${WS}/connection/websocket/open`;
  const c = track(new Centrifuge(url, { websocket: WebSocket }));
  await connected(c);
  const { sub, box } = await subscribed(c, 'news:1');
  await sub.publish({ hello: 'open' });
  await box.until((i) => i.length >= 1, 'own publication');
  assert.deepEqual(box.items[0].data, { hello: 'open' });
  const p = await sub.presence();
  assert.deepEqual(Object.values(p.clients).map((x) => x.user), ['']);
  c.disconnect();
});

test('6. hostile input: bad request (3501), stale (3502), nothing else harmed', async () => {
  const a = client('erin');
  await connected(a);
  const A = await subscribed(a, 'room:3');
  const connect = JSON.stringify({ id: 1, connect: { token: token('mallory') } });
  assert.equal((await rawClose(['garbage'])).code, 3501);
  assert.equal((await rawClose([])).code, 3502, 'no connect within limits.handshake_timeout');
  assert.equal((await rawClose([JSON.stringify({ id: 1, subscribe: { channel: 'room:3' } })])).code, 3501, 'no connect first');
  assert.equal((await rawClose([Buffer.from([1, 2, 3])])).code, 3501, 'binary');
  assert.equal((await rawClose([connect, '{"id":2,"subscribe":'])).code, 3501, 'truncated command');
  assert.equal((await rawClose([`${connect}\n{"id":2,"publish":{"channel":"room:3","data":{"evil":true}}}\n[1,2]`])).code, 3501, 'batch with a bad line');
  // A command the server does not implement: an error reply, the connection stays.
  const ws = track(new WebSocket(URL_DEFAULT));
  const replies = [];
  const got = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no rpc reply: ${JSON.stringify(replies)}`)), EVENT_MS);
    ws.on('message', (d) => {
      for (const l of d.toString().split('\n').filter(Boolean)) replies.push(JSON.parse(l));
      if (replies.some((r) => r.id === 2)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  ws.on('open', () => ws.send(`${connect}\n${JSON.stringify({ id: 2, rpc: { method: 'x', data: {} } })}`));
  await got;
  assert.ok(replies.find((r) => r.id === 1 && r.connect), JSON.stringify(replies));
  assert.deepEqual(replies.find((r) => r.id === 2).error.code, 104);
  ws.close();
  // Data published with newlines in it (kept as sent) still reaches Centrifuge clients as one line.
  const v1 = await v1Client('frank');
  v1.ws.send('{"type":"publish","id":9,"channel":"room:3","data":{"multi":\n"line"}}');
  await v1.next((f) => f.type === 'ack' && f.id === 9, 'ack of the multi-line publish');
  await A.box.until((i) => i.some((p) => p.data.multi === 'line'), 'multi-line data');
  v1.ws.close();
  // The well-behaved client was not harmed; the batch's publish before the bad line ran.
  await A.box.until((i) => i.some((p) => p.data.evil), 'publish before the bad line');
  await A.sub.publish({ still: 'here' });
  await A.box.until((i) => i.some((p) => p.data.still), 'own publication');
  assert.equal(a.state, 'connected');
  a.disconnect();
});
