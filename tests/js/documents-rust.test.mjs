// Our JS client (sdk/client-js) and the Rust client (sdk/client-rust) edit one
// LWW document at once; driven by tests/client_rust.rs
// (`documents_converge_between_the_rust_client_and_the_js_client`), which
// starts the gateway, opens the document from Rust and runs `node --test` on
// this file while it edits.
//
// The two sides coordinate through the document only: this script waits for
// the Rust client's `rust:ready` key, writes `js:ready`, then its KEYS keys
// `js:{i}` and SHARED_WRITES writes to `shared` (one after the other), then
// `js:done`; it waits until it has seen every `rust:{i}` key and both `done`
// keys (after which neither side writes), and writes its replica (version,
// epoch, state, the versions it saw and the acks it got) to RESULT_FILE.
//
// Environment: GATEWAY_URL, DOC, KEYS, SHARED_WRITES, RESULT_FILE.
// Node 20 has no global WebSocket: the `ws` package is the client's then.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import WsWebSocket from 'ws';
import { SwitchyardClient } from '../../sdk/client-js/src/index.js';

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through tests/client_rust.rs)`);
  return v;
}

const GW = required('GATEWAY_URL');
const DOC = required('DOC');
const KEYS = Number(required('KEYS'));
const SHARED_WRITES = Number(required('SHARED_WRITES'));
const RESULT_FILE = required('RESULT_FILE');
/** Longest any single wait for the other side may take. */
const EVENT_MS = 20_000;

/** Resolves with the state once `pred(state)` holds (now or after a change), within EVENT_MS. */
function until(doc, what, pred) {
  return new Promise((resolve, reject) => {
    if (pred(doc.state)) {
      resolve(doc.state);
      return;
    }
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${EVENT_MS} ms waiting for ${what}; at version ${doc.version}: ${JSON.stringify(doc.state)}`));
    }, EVENT_MS);
    const off = doc.onChange((state) => {
      if (pred(state)) {
        clearTimeout(timer);
        off();
        resolve(state);
      }
    });
  });
}

test('the JS replica converges with the Rust client', { timeout: 90_000 }, async () => {
  const client = await SwitchyardClient.connect(GW, {
    transports: ['websocket'],
    clientId: 'js-editor',
    WebSocket: globalThis.WebSocket ?? WsWebSocket,
  });
  try {
    assert.equal(client.transport, 'websocket');
    /** Versions of every change this replica applied, in order. */
    const seen = [];
    const doc = client.document(DOC, { onChange: (_state, change) => seen.push([change.kind, change.version]) });
    await doc.ready;
    const start = doc.version;

    await until(doc, "the Rust client's rust:ready", (s) => s['rust:ready'] === true);
    const ready = await doc.patch({ 'js:ready': true });

    // one patch in flight at a time, so that the two sides' patches interleave
    const every = KEYS / SHARED_WRITES;
    const acks = [];
    for (let i = 0; i < KEYS; i++) {
      acks.push({ version: await doc.patch({ [`js:${i}`]: i }) });
      if (i % every === 0) {
        const value = `js-${i}`;
        acks.push({ version: await doc.patch({ shared: value }), shared: value });
      }
    }
    const done = await doc.patch({ 'js:done': true });

    const state = await until(doc, 'every rust:{i} key and both done keys', (s) => {
      if (s['rust:done'] !== true || s['js:done'] !== true) return false;
      for (let i = 0; i < KEYS; i++) if (s[`rust:${i}`] !== i) return false;
      return true;
    });
    for (let i = 0; i < KEYS; i++) assert.equal(state[`js:${i}`], i, `own key js:${i}`);
    assert.equal(state['js:ready'], true);
    // the own patches came back as broadcasts like everyone's: each change in
    // order, no gap, no duplicate
    const versions = seen.map(([, v]) => v);
    assert.deepEqual(seen[0], ['snapshot', start]);
    assert.deepEqual(
      versions,
      Array.from({ length: versions.length }, (_, i) => start + i),
      'consecutive versions'
    );
    assert.ok(seen.slice(1).every(([k]) => k === 'patch'), JSON.stringify(seen));
    assert.equal(versions.at(-1), doc.version);

    writeFileSync(
      RESULT_FILE,
      JSON.stringify({
        version: doc.version,
        epoch: doc.epoch,
        state,
        start,
        ready,
        done,
        acks,
      })
    );
    console.log(`js replica at version ${doc.version} (from ${start}), ${acks.length + 2} patches acked`);
  } finally {
    client.close();
  }
});
