// Unmodified npm `yjs` + `y-websocket` clients (Node, `ws`) against two real
// gateways sharing one redis-server: the `/yjs/{tenant}/{room}` endpoint of
// DESIGN §2b ("Yjs clients"). Run by tests/yjs.rs, which passes:
//   GW_A, GW_B   http://127.0.0.1:<port> of node-a and node-b
//   API_KEY      API key of tenant `t` (documents `yjs:*`, merge `yjs-merge`)
//   JWT_SECRET, JWT_AUDIENCE   the jwt-auth config of tenant `j` (same documents)
// Every scenario waits for events (document 'update', provider 'sync' and
// 'connection-close', awareness 'change', raw socket messages); the only
// timed wait is the idle scenario's 65 s, run concurrently with the others.
// Providers use `disableBc: true`: they share this process, and
// BroadcastChannel would otherwise sync them without the gateway.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import * as awarenessProtocol from 'y-protocols/awareness';
import * as syncProtocol from 'y-protocols/sync';
import * as encoding from 'lib0/encoding';
import * as decoding from 'lib0/decoding';
import WebSocket from 'ws';

const A = required('GW_A');
const B = required('GW_B');
const API_KEY = required('API_KEY');
const JWT_SECRET = required('JWT_SECRET');
const JWT_AUDIENCE = required('JWT_AUDIENCE');
// Each provider adds a process 'exit' listener; a scenario holds up to eight.
process.setMaxListeners(64);
/** Longest wait for any one expected event. */
const WAIT = 20_000;
/**
 * Longest a joiner may wait for the room's current awareness: well under the
 * 15 s after which y-protocols clients renew their states (so a joiner that
 * only learned states from renewals would miss it).
 */
const JOIN_AWARENESS_WAIT = 5_000;

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set (run through tests/yjs.rs)`);
    process.exit(2);
  }
  return v;
}

let seq = 0;
/** A fresh room name per scenario. */
const room = (tag) => `${tag}-${process.pid}-${Date.now()}-${++seq}`;
const yjsUrl = (gw, tenant) => `${gw.replace(/^http/, 'ws')}/yjs/${tenant}`;

/** @type {Set<WebsocketProvider>} */
const providers = new Set();
/** @type {Set<WebSocket>} */
const sockets = new Set();
after(() => {
  for (const p of providers) destroy(p);
  for (const s of sockets) s.terminate();
});

/**
 * A y-websocket client of `room` on gateway `gw` (tenant `t` unless told);
 * it records its status events and connection closes.
 */
function client(gw, name, { tenant = 't', params = {}, connect = true } = {}) {
  const doc = new Y.Doc();
  const p = new WebsocketProvider(yjsUrl(gw, tenant), name, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    params,
    connect,
  });
  p.log = { status: [], closes: [] };
  p.on('status', (e) => p.log.status.push(e.status));
  p.on('connection-close', (e) => p.log.closes.push(e ? { code: e.code, reason: e.reason } : null));
  providers.add(p);
  return p;
}

/** Closes the provider and its document (and so its Awareness timer). */
function destroy(p) {
  p.destroy();
  p.doc.destroy();
  providers.delete(p);
}

const text = (p) => p.doc.getText('t').toString();

/**
 * Resolves with the event's arguments the first time `check()` holds, checked
 * now and after every `event` of `emitter`; rejects after `ms`.
 */
function until(emitter, event, check, what, ms = WAIT) {
  return new Promise((resolve, reject) => {
    const probe = (...args) => {
      let ok;
      try {
        ok = check(...args);
      } catch (e) {
        ok = false;
      }
      if (!ok) return false;
      clearTimeout(timer);
      emitter.off(event, probe);
      resolve(args);
      return true;
    };
    const timer = setTimeout(() => {
      emitter.off(event, probe);
      reject(new Error(`timed out after ${ms} ms waiting for: ${what}`));
    }, ms);
    emitter.on(event, probe);
    probe();
  });
}

/** The provider's first `sync(true)` (now if already synced). */
const synced = (p) => until(p, 'sync', () => p.synced, `${p.url} synced`);

/** Waits until the provider's text satisfies `check` (re-checked on every document update). */
const textUntil = (p, check, what) => until(p.doc, 'update', () => check(text(p)), `${what} (text now ${JSON.stringify(text(p))})`);

/** Polls a condition (for state read over HTTP, which has no events). */
async function poll(check, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await check();
    if (last.ok) return last.value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what} (last ${JSON.stringify(last.value)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `GET /api/documents/yjs:<room>` on `gw`: the JSON reply, or null when there is none yet. */
async function v1Document(gw, name) {
  const res = await fetch(`${gw}/api/documents/${encodeURIComponent(`yjs:${name}`)}`, {
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  if (res.status === 404) return null;
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

/** The text of the document as protocol v1 reads it: its `state` is a Yjs v1 update. */
async function v1Text(gw, name) {
  const d = await v1Document(gw, name);
  if (!d) return null;
  const doc = new Y.Doc();
  Y.applyUpdate(doc, Buffer.from(d.state, 'base64'));
  return doc.getText('t').toString();
}

/** `switchyard_messages_failed_total{reason}` on `gw`. */
async function failedMetric(gw, reason) {
  const text = await (await fetch(`${gw}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`switchyard_messages_failed_total{reason="${reason}"} `));
  return line ? Number(line.trim().split(/\s+/).pop()) : 0;
}

const b64url = (s) => Buffer.from(s).toString('base64url');
/** An HS256 JWT for tenant `j`. */
function jwt(claims, secret = JWT_SECRET) {
  const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}
const claims = (channels) => ({ sub: 'yjs-test', aud: JWT_AUDIENCE, exp: Math.floor(Date.now() / 1000) + 300, channels });

// ---- a raw y-protocols client over `ws` ----

const MSG_SYNC = 0;
const MSG_AWARENESS = 1;
const MSG_AUTH = 2;
const MSG_QUERY_AWARENESS = 3;

/** Decodes one y-websocket message into {type, sub?, payload?, reason?}. */
function decode(buf) {
  const d = decoding.createDecoder(new Uint8Array(buf));
  const type = decoding.readVarUint(d);
  if (type === MSG_SYNC) return { type, sub: decoding.readVarUint(d), payload: decoding.readVarUint8Array(d) };
  if (type === MSG_AWARENESS) return { type, payload: decoding.readVarUint8Array(d) };
  if (type === MSG_AUTH) {
    const sub = decoding.readVarUint(d);
    return { type, sub, reason: decoding.readVarString(d) };
  }
  return { type };
}

function encodeMsg(write) {
  const e = encoding.createEncoder();
  write(e);
  return encoding.toUint8Array(e);
}

/** A raw socket to `url` recording every message and its close. */
function raw(url) {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  sockets.add(ws);
  ws.got = [];
  ws.closed = null;
  ws.on('message', (data, isBinary) => ws.got.push(isBinary ? decode(data) : { text: String(data) }));
  ws.on('close', (code, reason) => {
    ws.closed = { code, reason: String(reason) };
  });
  ws.on('error', () => {});
  ws.opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('close', (code) => reject(new Error(`closed before open: ${code}`)));
  });
  return ws;
}

const rawMessage = (ws, check, what) => until(ws, 'message', () => ws.got.find(check), what);

/** The client ids with a state (not null) in an awareness update. */
function awarenessIds(update) {
  const d = decoding.createDecoder(update);
  const ids = [];
  for (let n = decoding.readVarUint(d); n > 0; n--) {
    const id = decoding.readVarUint(d);
    decoding.readVarUint(d);
    if (JSON.parse(decoding.readVarString(d)) !== null) ids.push(id);
  }
  return ids;
}

/** The client ids of every awareness message a raw socket got from index `from` on. */
const rawAwarenessIds = (ws, from = 0) => new Set(ws.got.slice(from).filter((m) => m.type === MSG_AWARENESS).flatMap((m) => awarenessIds(m.payload)));
const rawClose = (ws, what) => until(ws, 'close', () => ws.closed, what).then(() => ws.closed);

/** A deterministic PRNG (mulberry32): the hostile inputs are the same every run. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- scenarios ----

describe('y-websocket clients on two gateways', { concurrency: 2 }, () => {
  // Runs beside the sequential scenarios below: it only asserts nothing happened for 65 s.
  test('6. an idle client stays connected past 60 s (keepalive awareness, no reconnect)', { timeout: 120_000 }, async () => {
    const name = room('idle');
    const a = client(A, name);
    const b = client(B, name);
    await Promise.all([synced(a), synced(b)]);
    a.doc.getText('t').insert(0, 'idle');
    await textUntil(b, (t) => t === 'idle', 'b has the text');
    // Count what each socket hears; a keepalive is an awareness update with no clients.
    const frames = { a: { all: 0, keepalive: 0 }, b: { all: 0, keepalive: 0 } };
    for (const [who, p] of [['a', a], ['b', b]]) {
      p.ws.on('message', (data) => {
        frames[who].all++;
        const m = decode(data);
        if (m.type === MSG_AWARENESS && m.payload.length === 1 && m.payload[0] === 0) frames[who].keepalive++;
      });
    }
    const before = { a: [...a.log.status], b: [...b.log.status] };
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 65_000));
    for (const [who, p] of [['a', a], ['b', b]]) {
      assert.equal(p.wsconnected, true, `${who} still connected after ${Date.now() - t0} ms`);
      assert.deepEqual(p.log.status, before[who], `${who}: no status change (no 'disconnected') during 65 s`);
      assert.deepEqual(p.log.closes, [], `${who}: no connection-close`);
      assert.equal(p.synced, true);
      assert.ok(Date.now() / 1000 - p.wsLastMessageReceived / 1000 < 15, `${who} heard from the server recently`);
    }
    console.log(`# idle: messages heard in 65 s: ${JSON.stringify(frames)}`);
    // The server's keepalive (every <= 10 s) besides the peers' awareness renewals (every 15 s).
    for (const who of ['a', 'b']) assert.ok(frames[who].keepalive >= 3, `${who}: keepalives received: ${JSON.stringify(frames)}`);
    // Still a working connection.
    b.doc.getText('t').insert(4, ' after');
    await textUntil(a, (t) => t === 'idle after', 'a gets an edit made after the idle period');
    destroy(a);
    destroy(b);
  });

  describe('scenarios', { concurrency: 1 }, () => {
    test('1. initial sync: text written on node-a before a client of node-b connects arrives by its sync', async () => {
      const name = room('initial');
      const a = client(A, name);
      await synced(a);
      assert.equal(text(a), '', 'a new room is empty');
      a.doc.getText('t').insert(0, 'hello from node-a');
      // Wait until node-b's replica has it (read over protocol v1: no events there).
      await poll(async () => {
        const t = await v1Text(B, name);
        return { ok: t === 'hello from node-a', value: t };
      }, 'node-b holds the text');
      const b = client(B, name);
      let atSync;
      b.once('sync', () => {
        atSync = text(b);
      });
      await synced(b);
      assert.equal(atSync, 'hello from node-a', 'the text is there when sync fires');
      destroy(a);
      destroy(b);
    });

    test('2. concurrent edits: 3 clients per node insert at once and all six converge', async () => {
      const name = room('concurrent');
      const clients = [A, A, A, B, B, B].map((gw) => client(gw, name));
      await Promise.all(clients.map(synced));
      const tokens = [];
      // All inserts in one tick: no client has seen another's edit when it makes its own.
      clients.forEach((p, i) => {
        const t = p.doc.getText('t');
        for (let k = 0; k < 10; k++) {
          const tok = `[${i}.${k}]`;
          tokens.push(tok);
          // At the start or the end: between whole tokens (an insert is one Yjs item, never split).
          t.insert((i + k) % 2 ? t.length : 0, tok);
        }
      });
      const all = (s) => tokens.every((tok) => s.includes(tok));
      await Promise.all(clients.map((p, i) => textUntil(p, all, `client ${i} has every insert`)));
      const texts = clients.map(text);
      for (const t of texts) assert.equal(t, texts[0], 'all six converged to one string');
      assert.equal(texts[0].length, tokens.join('').length, 'every insert exactly once');
      assert.equal(await v1Text(A, name), texts[0], 'node-a holds the converged text');
      assert.equal(await v1Text(B, name), texts[0], 'node-b holds the converged text');
      clients.forEach(destroy);
    });

    test('3. offline edits reach everyone after provider.connect()', async () => {
      const name = room('offline');
      const a = client(A, name);
      const b = client(B, name);
      await Promise.all([synced(a), synced(b)]);
      a.doc.getText('t').insert(0, 'base.');
      await textUntil(b, (t) => t === 'base.', 'b has the base text');

      a.disconnect();
      assert.equal(a.log.status.at(-1), 'disconnected');
      a.doc.getText('t').insert(5, 'offline-a.');
      b.doc.getText('t').insert(0, 'online-b.');
      const c = client(B, name);
      await synced(c);
      await textUntil(c, (t) => t.includes('online-b.'), "c has b's edit");
      assert.ok(!text(b).includes('offline-a.') && !text(c).includes('offline-a.'), 'the offline edit stayed local');

      a.connect();
      await synced(a);
      const both = (t) => t.includes('offline-a.') && t.includes('online-b.');
      await Promise.all([a, b, c].map((p) => textUntil(p, both, `${p.url} has both edits`)));
      assert.equal(text(a), text(b));
      assert.equal(text(c), text(b));
      assert.equal(text(a), 'online-b.base.offline-a.');
      // A late joiner gets the merged document too.
      const d = client(A, name);
      await synced(d);
      assert.equal(text(d), text(a));
      [a, b, c, d].forEach(destroy);
    });

    test('4. awareness across nodes: state set on node-a is seen on node-b and removed when a leaves', async () => {
      const name = room('awareness');
      const b = client(B, name);
      const a = client(A, name);
      await Promise.all([synced(a), synced(b)]);
      a.awareness.setLocalStateField('user', { name: 'alice', color: '#f00' });
      const idA = a.doc.clientID;
      await until(b.awareness, 'change', () => b.awareness.getStates().get(idA)?.user?.name === 'alice', "b sees a's state");
      b.awareness.setLocalStateField('user', { name: 'bob' });
      const idB = b.doc.clientID;
      await until(a.awareness, 'change', () => a.awareness.getStates().get(idB)?.user?.name === 'bob', "a sees b's state");

      // A client joining later gets the states already there at once (node-b's
      // own and node-a's answer to its query), not at the others' next renewal.
      const c = client(B, name);
      const t0 = Date.now();
      const has = () => c.awareness.getStates().get(idA)?.user?.name === 'alice' && c.awareness.getStates().get(idB)?.user?.name === 'bob';
      await until(c.awareness, 'change', has, "late joiner c sees a's and b's states", JOIN_AWARENESS_WAIT);
      console.log(`# awareness: a late joiner saw the existing states after ${Date.now() - t0} ms`);

      const removed = until(b.awareness, 'change', ({ removed }) => removed.includes(idA), "b sees a's state removed");
      destroy(a);
      await removed;
      assert.equal(b.awareness.getStates().has(idA), false);
      await until(c.awareness, 'change', () => !c.awareness.getStates().has(idA), "c sees a's state removed");
      assert.equal(b.wsconnected, true);
      [b, c].forEach(destroy);
    });

    test('4b. a joiner gets the room\'s current awareness at once, from its own node and the other', async () => {
      const name = room('join-awareness');
      const a = client(A, name);
      await synced(a);
      a.awareness.setLocalStateField('user', { name: 'alice' });
      const idA = a.doc.clientID;
      // a's edit goes out after its awareness update on the same socket: once
      // node-a applied the edit, it has handled the awareness update too.
      a.doc.getText('t').insert(0, 'a');
      await poll(async () => {
        const t = await v1Text(A, name);
        return { ok: t === 'a', value: t };
      }, "node-a applied a's edit");

      // The first client of the room on node-b: only node-a knows a's state.
      const b = client(B, name);
      const t0 = Date.now();
      await until(b.awareness, 'change', () => b.awareness.getStates().get(idA)?.user?.name === 'alice', "b (node-b) sees a's state on joining", JOIN_AWARENESS_WAIT);
      const tookB = Date.now() - t0;
      b.awareness.setLocalStateField('user', { name: 'bob' });
      const idB = b.doc.clientID;
      await until(a.awareness, 'change', () => a.awareness.getStates().get(idB)?.user?.name === 'bob', "a sees b's state");

      // A joiner on node-a: a's state from its own node, b's from node-b.
      const c = client(A, name);
      const t1 = Date.now();
      const both = (p) => p.awareness.getStates().get(idA)?.user?.name === 'alice' && p.awareness.getStates().get(idB)?.user?.name === 'bob';
      await until(c.awareness, 'change', () => both(c), "c (node-a) sees a's and b's states on joining", JOIN_AWARENESS_WAIT);
      console.log(`# join-awareness: joiners saw the room's states after ${tookB} ms (other node) and ${Date.now() - t1} ms (both nodes)`);

      // query-awareness (raw y-protocols client on node-b) gets the same, after joining too.
      const ws = raw(`${yjsUrl(B, 't')}/${name}`);
      await ws.opened;
      ws.send(encodeMsg((e) => {
        encoding.writeVarUint(e, MSG_SYNC);
        syncProtocol.writeSyncStep1(e, new Y.Doc());
      }));
      const hasBoth = (from) => () => {
        const ids = rawAwarenessIds(ws, from);
        return ids.has(idA) && ids.has(idB);
      };
      await until(ws, 'message', hasBoth(0), 'the raw client gets both states on joining', JOIN_AWARENESS_WAIT);
      const before = ws.got.length;
      ws.send(Uint8Array.from([MSG_QUERY_AWARENESS]));
      await until(ws, 'message', hasBoth(before), 'query-awareness is answered with both states', JOIN_AWARENESS_WAIT);
      ws.close();

      // A state that left is not replayed to a later joiner.
      const removed = until(c.awareness, 'change', () => !c.awareness.getStates().has(idA), "c sees a's state removed");
      destroy(a);
      await removed;
      const d = client(B, name);
      await until(d.awareness, 'change', () => d.awareness.getStates().get(idB)?.user?.name === 'bob', "d sees b's state", JOIN_AWARENESS_WAIT);
      assert.equal(d.awareness.getStates().has(idA), false, 'the state of a client that left is not replayed');
      [b, c, d].forEach(destroy);
    });

    test('5. a late joiner after everyone left gets the full document', async () => {
      const name = room('late');
      const a = client(A, name);
      const b = client(B, name);
      await Promise.all([synced(a), synced(b)]);
      a.doc.getText('t').insert(0, 'from a; ');
      b.doc.getText('t').insert(0, 'from b; ');
      const both = (t) => t.includes('from a; ') && t.includes('from b; ');
      await Promise.all([textUntil(a, both, 'a converged'), textUntil(b, both, 'b converged')]);
      const full = text(a);
      const closed = [a, b].map((p) => until(p, 'connection-close', () => p.log.closes.length > 0, 'closed'));
      destroy(a);
      destroy(b);
      await Promise.all(closed);
      for (const gw of [A, B]) {
        const late = client(gw, name);
        await synced(late);
        assert.equal(text(late), full, `late joiner on ${gw} has the full document at sync`);
        destroy(late);
      }
    });

    test('7. refused clients: no or bad token → permission denied + 4001; a token without the room → permission denied; no document data', async () => {
      const name = room('refused');
      // Seed the room with a valid token, so refused clients have data to (not) see.
      const good = jwt(claims(['yjs:*', 'yjs-awareness:*']));
      const ok = client(A, name, { tenant: 'j', params: { token: good } });
      await synced(ok);
      ok.doc.getText('t').insert(0, 'secret');

      // Raw view of the refusal: the auth message, then close 4001, nothing else.
      for (const [what, params] of [['no token', ''], ['bad signature', `?token=${jwt(claims(['yjs:*']), 'wrong-secret')}`]]) {
        const ws = raw(`${yjsUrl(A, 'j')}/${name}${params}`);
        await ws.opened;
        ws.send(encodeMsg((e) => {
          encoding.writeVarUint(e, MSG_SYNC);
          syncProtocol.writeSyncStep1(e, new Y.Doc());
        }));
        const close = await rawClose(ws, `${what}: close`);
        assert.equal(close.code, 4001, `${what}: ${JSON.stringify(close)}`);
        assert.equal(ws.got[0]?.type, MSG_AUTH, `${what}: first message is auth: ${JSON.stringify(ws.got)}`);
        assert.equal(ws.got[0].sub, 0, 'permission denied');
        assert.ok(ws.got[0].reason.length > 0, 'with a reason');
        assert.ok(!ws.got.some((m) => m.type === MSG_SYNC || m.type === MSG_AWARENESS), `${what}: no document data: ${JSON.stringify(ws.got)}`);
      }

      // The same through the unmodified provider: it logs the denial (console.warn) and sees 4001.
      const warned = [];
      const warn = console.warn;
      console.warn = (...args) => warned.push(args.join(' '));
      try {
        for (const [what, params] of [['no token', {}], ['bad token', { token: 'not.a.jwt' }], ['token without this room', { token: jwt(claims(['yjs:other', 'yjs-awareness:other'])) }]]) {
          const p = client(A, name, { tenant: 'j', params });
          const [ev] = await until(p, 'connection-close', (e) => e != null, `${what}: connection-close`);
          assert.ok(ev.code === 4001 || ev.code === 4003, `${what}: close ${ev.code}`);
          if (what !== 'token without this room') assert.equal(ev.code, 4001, what);
          assert.ok(warned.some((w) => w.includes('Permission denied') && w.includes(name)), `${what}: permission denied reported: ${JSON.stringify(warned)}`);
          warned.length = 0;
          assert.equal(p.synced, false, `${what}: never synced`);
          assert.equal(text(p), '', `${what}: no document data`);
          assert.equal(p.awareness.getStates().size, 1, `${what}: no one else's awareness`);
          destroy(p);
        }
      } finally {
        console.warn = warn;
      }
      // The granted client saw nothing of this and still works.
      const other = client(B, name, { tenant: 'j', params: { token: good } });
      await synced(other);
      await textUntil(other, (t) => t === 'secret', 'a granted client on node-b gets the text');
      assert.equal(ok.wsconnected, true);
      [ok, other].forEach(destroy);
    });

    test('8. hostile updates over a raw socket harm neither the document nor another room', async () => {
      const name = room('hostile');
      const otherRoom = room('bystander');
      const b = client(B, name);
      const by = client(A, otherRoom);
      await Promise.all([synced(b), synced(by)]);
      b.doc.getText('t').insert(0, 'precious');
      by.doc.getText('t').insert(0, 'bystander');
      await poll(async () => {
        const t = await v1Text(A, name);
        return { ok: t === 'precious', value: t };
      }, 'node-a holds the text');
      const uncaught = [];
      const onUncaught = (e) => uncaught.push(String(e?.stack ?? e));
      process.on('uncaughtException', onUncaught);

      const ws = raw(`${yjsUrl(A, 't')}/${name}`);
      await ws.opened;
      const step1 = encodeMsg((e) => {
        encoding.writeVarUint(e, MSG_SYNC);
        syncProtocol.writeSyncStep1(e, new Y.Doc());
      });
      ws.send(step1);
      await rawMessage(ws, (m) => m.type === MSG_SYNC && m.sub === 1, 'step 2 for the raw client');

      const rnd = prng(0x5eed);
      const bytes = (n) => Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256));
      // (a) 200 frames of random bytes (random type byte: mostly unknown types).
      for (let i = 0; i < 200; i++) ws.send(bytes(1 + Math.floor(rnd() * 300)));
      // (b) random payloads inside well-formed sync update / step 2 frames (reach the merge plugin).
      for (let i = 0; i < 50; i++) {
        const payload = bytes(1 + Math.floor(rnd() * 300));
        ws.send(encodeMsg((e) => {
          encoding.writeVarUint(e, MSG_SYNC);
          encoding.writeVarUint(e, i % 2 ? 1 : 2);
          encoding.writeVarUint8Array(e, payload);
        }));
      }
      // (c) a real update, truncated: inside a well-formed frame, and as a frame whose length lies.
      const src = new Y.Doc();
      src.getText('t').insert(0, 'this must never appear '.repeat(20));
      const update = Y.encodeStateAsUpdate(src);
      for (const cut of [1, 2, 5, Math.floor(update.length / 2), update.length - 1]) {
        ws.send(encodeMsg((e) => {
          encoding.writeVarUint(e, MSG_SYNC);
          encoding.writeVarUint(e, 2);
          encoding.writeVarUint8Array(e, update.slice(0, cut));
        }));
      }
      const framed = encodeMsg((e) => {
        encoding.writeVarUint(e, MSG_SYNC);
        encoding.writeVarUint(e, 2);
        encoding.writeVarUint8Array(e, update);
      });
      ws.send(framed.slice(0, framed.length - 10));
      // (d) malformed awareness (truncated, lying counts), an unknown sync type, auth and text frames.
      for (const m of [[MSG_AWARENESS], [MSG_AWARENESS, 5, 1, 9], [MSG_AWARENESS, 3, 200, 1, 1, 1], [MSG_SYNC, 7, 1, 0], [MSG_SYNC], [MSG_AUTH, 0, 1, 65], [MSG_QUERY_AWARENESS], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]) {
        ws.send(Uint8Array.from(m));
      }
      ws.send('{"type":"subscribe","id":1,"channel":"yjs:other"}');
      // (e) a well-formed awareness update whose state is not JSON (y-protocols JSON.parses what it is relayed).
      ws.send(encodeMsg((e) => {
        encoding.writeVarUint(e, MSG_AWARENESS);
        encoding.writeVarUint8Array(e, encodeMsg((u) => {
          encoding.writeVarUint(u, 1);
          encoding.writeVarUint(u, 424242);
          encoding.writeVarUint(u, 1);
          encoding.writeVarString(u, 'not json{');
        }));
      }));
      // Still answered: a sync step 1 gets a step 2 with exactly the real document.
      const before = ws.got.length;
      ws.send(step1);
      await until(ws, 'message', () => ws.got.slice(before).some((m) => m.type === MSG_SYNC && m.sub === 1), 'the raw client is still answered after the garbage');
      const step2 = ws.got.slice(before).find((m) => m.type === MSG_SYNC && m.sub === 1);
      const seen = new Y.Doc();
      Y.applyUpdate(seen, step2.payload);
      assert.equal(seen.getText('t').toString(), 'precious', 'the document is unharmed');
      assert.equal(ws.closed, null, 'malformed input is ignored, not a reason to close');

      // (f) a 10 MB update: over limits.max_message_bytes (default 64 KiB). The
      // gateway refuses it from the frame header and closes with 1009, then reads
      // (and discards) the rest of the frame until the client's EOF: a socket
      // dropped with input unread is reset by the kernel, and the client would
      // see 1006 instead. It counted it as too big, and nothing of it was applied.
      const tooBigBefore = await failedMetric(A, 'too_big');
      const huge = new Y.Doc();
      huge.getText('t').insert(0, 'x'.repeat(10 * 1024 * 1024));
      ws.send(encodeMsg((e) => {
        encoding.writeVarUint(e, MSG_SYNC);
        encoding.writeVarUint(e, 2);
        encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(huge));
      }));
      const close = await rawClose(ws, 'close after the 10 MB update');
      console.log(`# hostile: the 10 MB update closed the raw socket with ${close.code}`);
      assert.equal(close.code, 1009, `closed as too big, not reset: ${JSON.stringify(close)}`);
      assert.equal(await failedMetric(A, 'too_big'), tooBigBefore + 1, 'node-a refused it as too big');
      assert.ok((await failedMetric(A, 'yjs_malformed')) > 0, 'node-a counted the malformed messages');

      // Everyone else is unharmed: fresh clients on both nodes sync the right content.
      for (const gw of [A, B]) {
        const fresh = client(gw, name);
        await synced(fresh);
        assert.equal(text(fresh), 'precious', `fresh client on ${gw}`);
        const freshBy = client(gw, otherRoom);
        await synced(freshBy);
        assert.equal(text(freshBy), 'bystander', `other room on ${gw}`);
        [fresh, freshBy].forEach(destroy);
      }
      assert.equal(b.wsconnected, true, 'the honest client stayed connected');
      assert.equal(text(b), 'precious');
      // And it still edits.
      const c = client(A, name);
      await synced(c);
      b.doc.getText('t').insert(8, '!');
      await textUntil(c, (t) => t === 'precious!', 'an edit after the attack propagates');
      process.off('uncaughtException', onUncaught);
      assert.deepEqual(uncaught, [], 'no client crashed on what the server relayed');
      [b, by, c].forEach(destroy);
    });

    test('protocol v1 reads the same document: GET /api/documents/yjs:<room> state is a Yjs v1 update', async () => {
      const name = room('v1');
      const a = client(A, name);
      const b = client(B, name);
      await Promise.all([synced(a), synced(b)]);
      const t = a.doc.getText('t');
      t.insert(0, 'Hello');
      b.doc.getText('t').insert(0, '>> ');
      t.insert(t.length, ' world');
      const want = (s) => s.includes('Hello') && s.includes(' world') && s.includes('>> ');
      await Promise.all([textUntil(a, want, 'a converged'), textUntil(b, want, 'b converged')]);
      assert.equal(text(a), text(b));
      for (const gw of [A, B]) {
        const d = await poll(async () => {
          const v = await v1Document(gw, name);
          const doc = new Y.Doc();
          if (v) Y.applyUpdate(doc, Buffer.from(v.state, 'base64'));
          return { ok: doc.getText('t').toString() === text(a), value: v };
        }, `${gw} serves the converged document`);
        assert.equal(d.channel, `yjs:${name}`);
        assert.ok(d.version >= 3, `one version per accepted update: ${d.version}`);
        assert.equal(typeof d.epoch, 'string');
        // The state is a whole document: a fresh Y.Doc from it equals the clients' document.
        const doc = new Y.Doc();
        Y.applyUpdate(doc, Buffer.from(d.state, 'base64'));
        assert.deepEqual(Y.encodeStateVector(doc), Y.encodeStateVector(a.doc), 'same state vector as the clients');
      }
      [a, b].forEach(destroy);
    });
  });
});
