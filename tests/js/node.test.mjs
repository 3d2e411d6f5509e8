// sdk/client-js in Node (no browser) against the real gateway at GATEWAY_URL:
// WebSocket (Node's global, `--experimental-websocket` on Node 20) and
// long-polling (fetch); SSE needs an EventSource, which Node 20 lacks, so
// asking for ['sse', 'poll'] must land on poll. Run by tests/browser.rs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SwitchyardClient } from '../../sdk/client-js/src/index.js';

const GW = process.env.GATEWAY_URL;

async function roundTrip(transports, expected) {
  const channel = `node:${expected}-${Date.now()}`;
  const a = await SwitchyardClient.connect(GW, { transports, clientId: `node-a-${expected}` });
  const b = await SwitchyardClient.connect(GW, { transports });
  try {
    assert.equal(a.transport, expected);
    assert.equal(b.transport, expected);
    assert.equal(a.clientId, `node-a-${expected}`);
    const got = [];
    const arrived = new Promise((resolve) => {
      const unsub = a.subscribe(channel, (data, frame) => {
        got.push([frame.seq, data]);
        if (got.length === 2) resolve(unsub);
      });
      unsub.ready.then(async () => {
        const s1 = await b.publish(channel, { n: 1 });
        const s2 = await b.publish(channel, { n: 2 }, { msgId: 'fixed-id' });
        // The same msgId again: acknowledged with the same seq, not delivered twice.
        assert.equal(await b.publish(channel, { n: 2 }, { msgId: 'fixed-id' }), s2);
        assert.equal(s2, s1 + 1);
      });
    });
    await arrived;
    await new Promise((r) => setTimeout(r, 150));
    assert.deepEqual(got.map(([, d]) => d.n), [1, 2]);
    assert.deepEqual((await a.presence(channel)).map((c) => c.client), [`node-a-${expected}`]);
    assert.ok((await a.ping()) >= 0);
    await assert.rejects(a.publish('bad channel', 1), { code: 'bad_channel' });

    // presence events (join/leave of b, seen by a) and skipSelf (a's own
    // message reaches b, not a)
    const room = `${channel}-presence`;
    const joined = new Promise((resolve) => a.on('presence', (e) => {
      if (e.channel === room && e.change === 'join' && e.client === b.clientId) resolve(e);
    }));
    const left = new Promise((resolve) => a.on('presence', (e) => {
      if (e.channel === room && e.change === 'leave' && e.client === b.clientId) resolve(e);
    }));
    const gotA = [];
    let echo;
    const echoed = new Promise((r) => (echo = r));
    const unsubA = a.subscribe(room, (d) => { gotA.push(d); if (d === 'echoed') echo(); }, { presence: true });
    await unsubA.ready; // a watches before b comes
    const gotB = [];
    let bothB;
    const bDone = new Promise((r) => (bothB = r));
    const unsubB = b.subscribe(room, (d) => { gotB.push(d); if (gotB.length === 2) bothB(); });
    await unsubB.ready;
    const j = await joined;
    assert.equal(typeof j.node, 'string');
    await a.publish(room, 'skipped', { skipSelf: true });
    await a.publish(room, 'echoed');
    await echoed;
    await bDone;
    assert.deepEqual(gotA, ['echoed'], 'the skipSelf message is not delivered back');
    assert.deepEqual(gotB, ['skipped', 'echoed']);
    unsubB();
    await left;
  } finally {
    a.close();
    b.close();
  }
}

test('websocket in Node', { skip: typeof WebSocket !== 'function' && 'no global WebSocket' }, () =>
  roundTrip(['websocket'], 'websocket'));
test('long-polling in Node (SSE unavailable falls through to poll)', () =>
  roundTrip(typeof EventSource === 'function' ? ['poll'] : ['sse', 'poll'], 'poll'));
