// Two clients share one document channel (the built-in last-writer-wins map):
// one edits, both print the state they converge on. Run against a gateway
// started by scripts/run.sh (the default tenant has `doc:*` documents there):
//
//   node --experimental-websocket examples/documents/sync.mjs [ws://127.0.0.1:8080/ws]
import { SwitchyardClient } from '../../sdk/client-js/src/index.js';

const url = process.argv[2] ?? 'ws://127.0.0.1:8080/ws';
const channel = `doc:demo-${Date.now()}`;
const alice = await SwitchyardClient.connect(url, { clientId: 'alice', transports: ['websocket'] });
const bob = await SwitchyardClient.connect(url, { clientId: 'bob', transports: ['websocket'] });

const show = (who) => (state, change) =>
  console.log(`${who} v${change.version} ${change.kind.padEnd(8)} ${JSON.stringify(state)}`);
const a = alice.document(channel, { onChange: show('alice') });
const b = bob.document(channel, { onChange: show('bob  ') });
await Promise.all([a.ready, b.ready]);

await a.patch({ title: 'Groceries', milk: 1 });
await b.patch({ eggs: 12, milk: 2 });
await a.patch({ milk: null });                  // null deletes a key
while (a.version < 3 || b.version < 3) await new Promise((r) => setTimeout(r, 20));
console.log(JSON.stringify(a.state) === JSON.stringify(b.state) ? 'converged' : 'DIVERGED');
alice.close();
bob.close();
