// Unit tests of document channels in the client: the StatePatch protobuf
// codec, the LWW map, the replica's version bookkeeping, and the client's
// document flow (snapshot, patches, resume by version, msgId reuse, queued
// patches) against a scripted transport that plays the gateway.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  SwitchyardClient,
  Kind,
  encodeStatePatch,
  decodeStatePatch,
  ProtobufError,
  Replica,
  lwwMerge,
  applyLww,
  decodeLww,
  encodeLww,
} from '../src/index.js';

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const utf8 = (s) => new TextEncoder().encode(s);

// ---- codec ----

test('StatePatch encodes to the bytes protoc would produce, fields in number order, defaults left out', () => {
  const bytes = encodeStatePatch({ version: 7, delta: utf8('{"a":1}'), channel: 'doc:1', kind: Kind.SNAPSHOT });
  //              1:varint 7 | 2:len 7 '{"a":1}'         | 4:len 5 'doc:1'     | 5:varint 1
  assert.equal(hex(bytes), '0807' + '1207' + hex(utf8('{"a":1}')) + '2205' + hex(utf8('doc:1')) + '2801');
  assert.equal(hex(encodeStatePatch({})), '', 'an all-default message is empty');
  assert.equal(hex(encodeStatePatch({ kind: Kind.PATCH, version: 0, msgId: '' })), '');
  // 300 = 0xac 0x02; field 8 tag = 0x40.
  assert.equal(hex(encodeStatePatch({ id: 300 })), '40ac02');
  assert.equal(hex(encodeStatePatch({ delta: 'é' })), '1202c3a9', 'a string delta is UTF-8 encoded');
});

test('StatePatch round-trips every field, including 64-bit and negative values', () => {
  const p = {
    version: 123456789,
    delta: utf8('{"k":"v","n":null}'),
    clientId: 'alice',
    channel: 'doc:ünï',
    kind: Kind.DIFF,
    lamport: 2n ** 63n + 5n,
    msgId: '9b2f6a4e-0000-4000-8000-000000000001',
    id: Number.MAX_SAFE_INTEGER,
    epoch: 'e-1',
  };
  const back = decodeStatePatch(encodeStatePatch(p));
  assert.deepEqual({ ...back, delta: hex(back.delta) }, { ...p, delta: hex(p.delta) });
  assert.equal(typeof back.id, 'number', 'safe integers decode to numbers');
  assert.equal(typeof back.lamport, 'bigint', 'beyond 2^53: BigInt');
  assert.equal(decodeStatePatch(encodeStatePatch({ lamport: 2n ** 64n - 1n })).lamport, 2n ** 64n - 1n);
  // int64 -1 is ten bytes of two's complement, and decodes back to -1.
  const neg = encodeStatePatch({ version: -1 });
  assert.equal(hex(neg), '08ffffffffffffffffff01');
  assert.equal(decodeStatePatch(neg).version, -1);
  assert.equal(decodeStatePatch(encodeStatePatch({ version: -(2n ** 63n) })).version, -(2n ** 63n));
  // Accepts ArrayBuffer, Buffer and other views.
  const ab = encodeStatePatch({ channel: 'doc:x' });
  assert.equal(decodeStatePatch(ab.buffer.slice(0)).channel, 'doc:x');
  assert.equal(decodeStatePatch(Buffer.from(ab)).channel, 'doc:x');
  const padded = new Uint8Array(ab.length + 4);
  padded.set(ab, 2);
  assert.equal(decodeStatePatch(new DataView(padded.buffer, 2, ab.length)).channel, 'doc:x');
  // The decoded delta is a copy, not a view into the frame.
  const frame = encodeStatePatch({ delta: utf8('{}') });
  const d = decodeStatePatch(frame);
  frame.fill(0);
  assert.equal(new TextDecoder().decode(d.delta), '{}');
});

test('StatePatch decoding skips unknown fields of every wire type; the last value of a field wins', () => {
  const known = encodeStatePatch({ version: 3, channel: 'doc:1' });
  const unknown = [
    '7801', // 15: varint 1
    '81 01 0102030405060708', // 16: fixed64
    '8a 01 03 616263', // 17: len 3
    '95 01 01020304', // 18: fixed32
    'a3 01 08 96 01 aa 01 02 6869 a4 01', // 20: group { 1: varint 150, 21: len "hi" } end 20
    'f8 ff ff ff 0f 00', // field 2^29-1: varint 0
  ];
  const bytes = unhex(unknown.join('') + hex(known) + '0809'); // version again: 9
  const p = decodeStatePatch(bytes);
  assert.equal(p.version, 9);
  assert.equal(p.channel, 'doc:1');
  assert.equal(p.kind, Kind.PATCH);
  assert.equal(decodeStatePatch(unhex('2807')).kind, 7, 'an unknown enum value is kept');
});

test('StatePatch decoding rejects malformed input with a ProtobufError', () => {
  const bad = {
    'truncated varint': '08',
    'truncated long varint': '08 ffffffffffffff',
    'varint longer than 10 bytes': '08 ffffffffffffffffffff01',
    'varint over 64 bits': '08 ffffffffffffffffff02',
    'length past the end': '12 05 6162',
    'huge length': '12 ffffffffffffffff7f',
    'wrong wire type for a known field': '0a 01 00',
    'string field as varint': '20 01',
    'field number 0': '00 01',
    'wire type 6': '0e',
    'wire type 7': '0f',
    'unexpected end group': '7c',
    'unclosed group': '7b 0801',
    'group closed by another field': '7b 84 01',
    'truncated fixed64': '79 0102',
    'truncated fixed32': '7d 01',
    'invalid UTF-8 in a string': '22 02 c328',
    'tag over 32 bits': '80 80 80 80 80 01',
  };
  for (const [what, h] of Object.entries(bad)) {
    assert.throws(() => decodeStatePatch(unhex(h)), ProtobufError, what);
  }
  const deep = unhex('7b'.repeat(100) + '7c'.repeat(100));
  assert.throws(() => decodeStatePatch(deep), /nested too deep/);
  assert.throws(() => decodeStatePatch('0807'), ProtobufError, 'a string is not binary');
  assert.throws(() => encodeStatePatch({ version: 1.5 }), ProtobufError);
  assert.throws(() => encodeStatePatch({ id: -1 }), /out of range/);
  assert.throws(() => encodeStatePatch({ lamport: 2n ** 64n }), /out of range/);
  assert.throws(() => encodeStatePatch({ version: 2n ** 63n }), /out of range/);
  assert.throws(() => encodeStatePatch({ channel: 5 }), ProtobufError);
});

test('StatePatch decoding of random bytes terminates: a message or a ProtobufError, nothing else', () => {
  let seed = 42;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed >>> 16;
  };
  let ok = 0;
  for (let i = 0; i < 20000; i++) {
    const b = new Uint8Array(rnd() % 40);
    for (let j = 0; j < b.length; j++) b[j] = rnd() & 0xff;
    try {
      decodeStatePatch(b);
      ok++;
    } catch (e) {
      assert.ok(e instanceof ProtobufError, `${hex(b)}: ${e}`);
    }
  }
  assert.ok(ok > 0);
  // Mutations of a valid frame too.
  const valid = encodeStatePatch({ version: 5, delta: utf8('{"a":[1,2]}'), channel: 'doc:1', msgId: 'm', epoch: 'e', lamport: 9, id: 3 });
  for (let i = 0; i < valid.length; i++) {
    for (const v of [0x00, 0x7f, 0x80, 0xff]) {
      const m = valid.slice();
      m[i] = v;
      try {
        decodeStatePatch(m);
      } catch (e) {
        assert.ok(e instanceof ProtobufError, String(e));
      }
    }
    // A prefix ends at a field boundary (a shorter valid message) or inside a field (an error).
    try {
      decodeStatePatch(valid.subarray(0, i));
    } catch (e) {
      assert.ok(e instanceof ProtobufError, String(e));
    }
  }
});

// ---- LWW map ----

test('applyLww sets keys, deletes on null, never mutates its input', () => {
  const s0 = Object.freeze({ a: 1, b: { x: [1] }, c: 'keep' });
  const s1 = applyLww(s0, { a: 2, b: null, d: false, e: 0, f: '' });
  assert.deepEqual(s1, { a: 2, c: 'keep', d: false, e: 0, f: '' });
  assert.deepEqual(s0, { a: 1, b: { x: [1] }, c: 'keep' });
  assert.deepEqual(applyLww(s1, { missing: null }), s1, 'deleting an absent key is no change');
  const evil = applyLww({}, JSON.parse('{"__proto__":{"polluted":true}}'));
  assert.equal(Object.getPrototypeOf(evil), Object.prototype);
  assert.deepEqual(Object.keys(evil), ['__proto__']);
  assert.equal(/** @type {any} */ ({}).polluted, undefined);
});

test('LWW deltas are UTF-8 JSON objects', () => {
  assert.deepEqual(decodeLww(utf8('{"a":null,"b":[1]}')), { a: null, b: [1] });
  assert.deepEqual(decodeLww(new Uint8Array(0)), {}, 'empty bytes: the empty map');
  for (const bad of ['[1]', '1', 'null', '"s"', '{', '']) {
    if (bad === '') continue;
    assert.throws(() => decodeLww(utf8(bad)), TypeError, bad);
  }
  assert.throws(() => decodeLww(unhex('7b22c328227d')), TypeError, 'invalid UTF-8');
  assert.deepEqual(JSON.parse(new TextDecoder().decode(encodeLww({ a: 1, b: null }))), { a: 1, b: null });
  assert.throws(() => encodeLww([1]), TypeError);
  assert.throws(() => encodeLww(null), TypeError);
});

test('the replica applies a snapshot, then patches in version order; drops duplicates, flags gaps and epoch changes', () => {
  const r = new Replica(lwwMerge);
  const snap = (version, obj, epoch = 'e1') => ({ kind: Kind.SNAPSHOT, version, epoch, delta: utf8(JSON.stringify(obj)) });
  const patch = (version, obj, epoch = 'e1') => ({ kind: Kind.PATCH, version, epoch, delta: utf8(JSON.stringify(obj)) });
  assert.equal(r.since(), undefined);
  assert.equal(r.onFrame(patch(1, { a: 1 })).verdict, 'ignored', 'nothing before a snapshot');
  assert.deepEqual(r.onSubscribed({ epoch: 'e1', version: 7, recovered: false }), { recovered: false, resumed: false });
  assert.equal(r.onFrame(patch(8, { a: 1 })).verdict, 'ignored', 'a patch while the snapshot is on its way');
  assert.deepEqual(r.onFrame(snap(7, { a: 0, b: 1 })), { verdict: 'applied', update: { a: 0, b: 1 } });
  assert.deepEqual(r.since(), { epoch: 'e1', version: 7 });
  assert.equal(r.onFrame(patch(8, { a: 1, b: null })).verdict, 'applied');
  assert.deepEqual(r.state, { a: 1 });
  assert.equal(r.onFrame(patch(8, { a: 'again' })).verdict, 'duplicate');
  assert.equal(r.onFrame(patch(3, { a: 'old' })).verdict, 'duplicate');
  assert.equal(r.onFrame(patch(10, { c: 1 })).verdict, 'gap');
  assert.deepEqual(r.state, { a: 1 }, 'a gap changes nothing');
  assert.equal(r.onFrame(patch(9, { c: 1 }, 'e2')).verdict, 'epoch');
  assert.equal(r.version, 8);
  // Resume: recovered under the same epoch keeps the state; the missed patches follow.
  assert.deepEqual(r.onSubscribed({ epoch: 'e1', version: 10, recovered: true }), { recovered: true, resumed: true });
  assert.equal(r.onFrame(patch(9, { c: 1 })).verdict, 'applied');
  assert.equal(r.onFrame(patch(10, { d: 1 })).verdict, 'applied');
  assert.deepEqual(r.state, { a: 1, c: 1, d: 1 });
  // recovered:true under another epoch cannot be trusted: wait for the snapshot.
  assert.deepEqual(r.onSubscribed({ epoch: 'e2', version: 2, recovered: true }), { recovered: false, resumed: true });
  assert.equal(r.epoch, 'e2');
  assert.equal(r.onFrame(patch(11, { z: 1 }, 'e2')).verdict, 'ignored');
  r.onFrame(snap(2, { z: 0 }, 'e2'));
  assert.deepEqual(r.state, { z: 0 });
  assert.deepEqual(r.since(), { epoch: 'e2', version: 2 });
  // A delta the merge cannot read throws and leaves the state alone.
  assert.throws(() => r.onFrame({ kind: Kind.PATCH, version: 3, epoch: 'e2', delta: utf8('[1]') }), TypeError);
  assert.deepEqual(r.state, { z: 0 });
  assert.equal(r.version, 2);
});

// ---- the client's document flow ----

/** A scripted WebSocket-like transport with binary frames: the test plays the gateway. */
function scripted(log, { binary = true } = {}) {
  class Scripted {
    static transportName = binary ? 'ws-like' : 'sse-like';
    static supportsInitial = false;
    static available() {
      return true;
    }
    constructor(endpoint, options, initial, handlers) {
      Object.assign(this, { handlers, sent: [], binary: [], closed: false });
      log.push(this);
    }
    open() {}
    send(frame) {
      this.sent.push(structuredClone(frame));
    }
    close() {
      this.closed = true;
    }
    welcome() {
      this.handlers.onFrame({ type: 'welcome', session: `s${log.length}`, client: 'me', node: 'n', protocol: 1 });
    }
    frame(f) {
      this.handlers.onFrame(f);
    }
    push(p) {
      this.handlers.onBinary(encodeStatePatch({ epoch: 'e1', ...p, delta: typeof p.delta === 'string' ? p.delta : JSON.stringify(p.delta) }));
    }
    drop(code = 1006) {
      this.handlers.onClose({ code, reason: '' });
    }
    /** The decoded binary frames sent so far. */
    patches() {
      return this.binary.map((b) => {
        const p = decodeStatePatch(b);
        return { ...p, delta: JSON.parse(new TextDecoder().decode(p.delta)) };
      });
    }
    lastSubscribe() {
      return this.sent.filter((f) => f.type === 'subscribe').at(-1);
    }
  }
  if (binary) {
    Scripted.prototype.sendBinary = function sendBinary(bytes) {
      this.binary.push(bytes.slice());
    };
  }
  return Scripted;
}

async function until(cond, what, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function connected(log, opts = {}) {
  const c = new SwitchyardClient('http://gw.test', {
    transports: [scripted(log, opts)],
    reconnect: { baseDelay: 1, maxDelay: 4, maxRetries: 3 },
  });
  const opened = c.connect();
  log[0].welcome();
  await opened;
  return c;
}

test('a document: subscribe, snapshot, live patches, own patch acked with its version', async () => {
  const log = [];
  const c = await connected(log);
  const changes = [];
  const doc = c.document('doc:1', { onChange: (state, ch) => changes.push([ch.kind, ch.version, state]) });
  assert.equal(c.document('doc:1'), doc, 'the same channel gives the same document');
  assert.throws(() => c.subscribe('doc:1', () => {}), { code: 'invalid' });
  const t = log[0];
  const sub = t.lastSubscribe();
  assert.deepEqual(sub, { type: 'subscribe', id: sub.id, channel: 'doc:1' });
  t.frame({ type: 'subscribed', id: sub.id, channel: 'doc:1', document: true, epoch: 'e1', version: 7, recovered: false });
  assert.equal(doc.version, null, 'the state comes with the snapshot');
  t.push({ kind: Kind.SNAPSHOT, version: 7, channel: 'doc:1', delta: { a: 1, b: 2 } });
  assert.equal(await doc.ready, doc);
  assert.deepEqual(doc.state, { a: 1, b: 2 });
  assert.equal(doc.epoch, 'e1');
  t.push({ kind: Kind.PATCH, version: 8, channel: 'doc:1', delta: { b: null, c: 3 }, clientId: 'other', lamport: 4, msgId: 'x' });
  assert.deepEqual(doc.state, { a: 1, c: 3 });
  const acked = doc.patch({ a: 'mine' });
  const [p] = t.patches();
  assert.equal(p.kind, Kind.PATCH);
  assert.equal(p.channel, 'doc:1');
  assert.equal(p.version, 8, 'made on version 8');
  assert.deepEqual(p.delta, { a: 'mine' });
  assert.match(p.msgId, /^[0-9a-f-]{36}$/);
  assert.ok(p.id > sub.id);
  t.push({ kind: Kind.PATCH, version: 9, channel: 'doc:1', delta: { a: 'mine' }, clientId: 'me', msgId: p.msgId });
  t.frame({ type: 'ack', id: p.id, version: 9 });
  assert.equal(await acked, 9);
  assert.deepEqual(doc.state, { a: 'mine', c: 3 });
  assert.deepEqual(changes.map(([k, v]) => [k, v]), [['snapshot', 7], ['patch', 8], ['patch', 9]]);
  // A refused patch rejects with the gateway's code; the document is unchanged.
  const refused = doc.patch({ big: 'x' });
  t.frame({ type: 'error', id: t.patches().at(-1).id, code: 'invalid', message: 'over document_max_bytes' });
  await assert.rejects(refused, { code: 'invalid' });
  await assert.rejects(doc.patch([1]), { code: 'invalid' }, 'an LWW patch must be an object');
  assert.equal(t.binary.length, 2, 'a bad delta is not sent');
  // Binary frames for other channels, and undecodable ones, do not touch the document.
  const errors = [];
  c.on('error', (e) => errors.push(e.error.code));
  t.push({ kind: Kind.PATCH, version: 10, channel: 'doc:other', delta: { z: 1 } });
  t.handlers.onBinary(new Uint8Array([0x08]));
  assert.deepEqual(errors, ['bad_frame']);
  assert.equal(doc.version, 9);
  doc.close();
  assert.equal(doc.closed, true);
  assert.deepEqual(t.sent.at(-1), { type: 'unsubscribe', id: t.sent.at(-1).id, channel: 'doc:1' });
  await assert.rejects(doc.patch({ a: 1 }), { code: 'closed' });
  c.close();
});

test('offline patches wait for the resubscribe; a patch whose ack was lost is resent with the same msgId; resume by version', async () => {
  const log = [];
  const c = await connected(log);
  const recoveries = [];
  c.on('recovery', (e) => recoveries.push(e));
  const doc = c.document('doc:1');
  const t0 = log[0];
  t0.frame({ type: 'subscribed', id: t0.lastSubscribe().id, channel: 'doc:1', document: true, epoch: 'e1', version: 3, recovered: false });
  t0.push({ kind: Kind.SNAPSHOT, version: 3, channel: 'doc:1', delta: { n: 0 } });
  await doc.ready;
  const lostAck = doc.patch({ n: 1 });
  const first = t0.patches()[0];
  t0.drop(1006); // the frame reached the gateway (version 4), its ack did not come back
  const offline = [doc.patch({ off: 1 }), doc.patch({ n: null })];
  await until(() => log.length === 2, 'reconnect');
  const t1 = log[1];
  t1.welcome();
  const resub = t1.lastSubscribe();
  assert.deepEqual(resub.since, { epoch: 'e1', version: 3 });
  assert.equal(t1.binary.length, 0, 'patches wait for the subscribed reply');
  t1.frame({ type: 'subscribed', id: resub.id, channel: 'doc:1', document: true, epoch: 'e1', version: 4, recovered: true });
  assert.deepEqual(recoveries, [{ channel: 'doc:1', recovered: true, epoch: 'e1', version: 4, cause: 'reconnect', document: true }]);
  const sent = t1.patches();
  assert.equal(sent.length, 3, 'all three, in order');
  assert.equal(sent[0].msgId, first.msgId, 'the lost-ack patch keeps its msgId');
  assert.notEqual(sent[0].id, first.id, 'with a new command id');
  assert.equal(sent[0].version, 3);
  assert.deepEqual(sent.map((p) => p.delta), [{ n: 1 }, { off: 1 }, { n: null }]);
  assert.equal(new Set(sent.map((p) => p.msgId)).size, 3);
  // The gateway replays version 4 (the first send), acks the resend with it and applies the others.
  t1.push({ kind: Kind.PATCH, version: 4, channel: 'doc:1', delta: { n: 1 }, msgId: first.msgId });
  t1.frame({ type: 'ack', id: sent[0].id, version: 4 });
  t1.push({ kind: Kind.PATCH, version: 5, channel: 'doc:1', delta: { off: 1 }, msgId: sent[1].msgId });
  t1.frame({ type: 'ack', id: sent[1].id, version: 5 });
  t1.push({ kind: Kind.PATCH, version: 6, channel: 'doc:1', delta: { n: null }, msgId: sent[2].msgId });
  t1.frame({ type: 'ack', id: sent[2].id, version: 6 });
  assert.deepEqual(await Promise.all([lostAck, ...offline]), [4, 5, 6]);
  assert.deepEqual(doc.state, { off: 1 });
  // Next reconnect: the log is gone, a snapshot replaces the state.
  t1.drop(1006);
  await until(() => log.length === 3, 'second reconnect');
  const t2 = log[2];
  t2.welcome();
  assert.deepEqual(t2.lastSubscribe().since, { epoch: 'e1', version: 6 });
  t2.frame({ type: 'subscribed', id: t2.lastSubscribe().id, channel: 'doc:1', document: true, epoch: 'e2', version: 1, recovered: false });
  assert.equal(recoveries.at(-1).recovered, false);
  t2.push({ kind: Kind.PATCH, version: 7, channel: 'doc:1', delta: { stale: 1 }, epoch: 'e1' });
  t2.push({ kind: Kind.SNAPSHOT, version: 1, channel: 'doc:1', delta: { fresh: true }, epoch: 'e2' });
  assert.deepEqual(doc.state, { fresh: true });
  assert.deepEqual([doc.version, doc.epoch], [1, 'e2']);
  c.close();
});

test('a gap in the live patches resubscribes from the current version; duplicates are dropped', async () => {
  const log = [];
  const c = await connected(log);
  const doc = c.document('doc:g');
  const t = log[0];
  t.frame({ type: 'subscribed', id: t.lastSubscribe().id, channel: 'doc:g', document: true, epoch: 'e1', version: 1, recovered: false });
  t.push({ kind: Kind.SNAPSHOT, version: 1, channel: 'doc:g', delta: {} });
  t.push({ kind: Kind.PATCH, version: 2, channel: 'doc:g', delta: { a: 1 } });
  t.push({ kind: Kind.PATCH, version: 2, channel: 'doc:g', delta: { a: 'dup' } });
  t.push({ kind: Kind.PATCH, version: 4, channel: 'doc:g', delta: { c: 1 } });
  t.push({ kind: Kind.PATCH, version: 5, channel: 'doc:g', delta: { d: 1 } });
  assert.equal(c.stats.duplicatesDropped, 1);
  const subs = t.sent.filter((f) => f.type === 'subscribe');
  assert.equal(subs.length, 2, 'one resubscribe for the gap, not one per frame');
  assert.deepEqual(subs[1].since, { epoch: 'e1', version: 2 });
  assert.deepEqual(doc.state, { a: 1 });
  t.frame({ type: 'subscribed', id: subs[1].id, channel: 'doc:g', document: true, epoch: 'e1', version: 5, recovered: true });
  for (const [v, d] of [[3, { b: 1 }], [4, { c: 1 }], [5, { d: 1 }]]) t.push({ kind: Kind.PATCH, version: v, channel: 'doc:g', delta: d });
  assert.deepEqual(doc.state, { a: 1, b: 1, c: 1, d: 1 });
  assert.equal(doc.version, 5);
  // A new epoch on a live patch asks for a snapshot.
  t.push({ kind: Kind.PATCH, version: 6, channel: 'doc:g', delta: { e: 1 }, epoch: 'e2' });
  assert.deepEqual(t.lastSubscribe().since, { epoch: 'e1', version: 5 });
  c.close();
});

test('a refused document subscribe (e.g. unsupported over SSE) rejects ready and the queued patches', async () => {
  const log = [];
  const c = await connected(log, { binary: false });
  const errors = [];
  const onErrors = [];
  c.on('error', (e) => errors.push([e.error.code, e.channel]));
  const doc = c.document('doc:1', { onError: (e) => onErrors.push(e.code) });
  const queued = doc.patch({ a: 1 });
  const t = log[0];
  t.frame({ type: 'error', id: t.lastSubscribe().id, code: 'unsupported', message: 'document channels need WebSocket' });
  await assert.rejects(doc.ready, { code: 'unsupported' });
  await assert.rejects(queued, { code: 'unsupported' });
  assert.deepEqual(errors, [['unsupported', 'doc:1']]);
  assert.deepEqual(onErrors, ['unsupported']);
  assert.equal(doc.closed, true);
  assert.notEqual(c.document('doc:1'), doc, 'a closed document can be opened again');
  // A channel the gateway does not treat as a document is refused by the client.
  const plain = c.document('room:1');
  t.frame({ type: 'subscribed', id: t.lastSubscribe().id, channel: 'room:1', epoch: 'e', seq: 0, recovered: false });
  await assert.rejects(plain.ready, { code: 'invalid' });
  assert.equal(t.sent.at(-1).type, 'unsubscribe');
  c.close();
});

test('close() fails unacknowledged patches and a pending ready; patches time out', async () => {
  const log = [];
  const c = await connected(log);
  const doc = c.document('doc:1');
  const t = log[0];
  t.frame({ type: 'subscribed', id: t.lastSubscribe().id, channel: 'doc:1', document: true, epoch: 'e1', version: 0, recovered: false });
  t.push({ kind: Kind.SNAPSHOT, version: 0, channel: 'doc:1', delta: '' });
  await doc.ready;
  assert.deepEqual(doc.state, {});
  await assert.rejects(doc.patch({ a: 1 }, { timeout: 5 }), { code: 'timeout' });
  const pending = doc.patch({ a: 2 });
  const other = c.document('doc:2');
  c.close();
  await assert.rejects(pending, { code: 'closed' });
  await assert.rejects(other.ready, { code: 'closed' });
  assert.equal(doc.closed, true);
  assert.equal(other.closed, true);
  assert.throws(() => c.document('doc:3'), { code: 'closed' });
});
