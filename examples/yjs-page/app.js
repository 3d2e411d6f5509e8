// A collaborative textarea: unmodified npm `yjs` + `y-websocket` against the
// gateway's y-websocket endpoint `/yjs/{tenant}/{room}` (a document channel
// `yjs:{room}` merged by the `yjs-merge` plugin). No build step: the import
// map in index.html points at the npm packages. See README.md.
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';

const $ = (id) => /** @type {HTMLElement & HTMLTextAreaElement} */ (document.getElementById(id));
const params = new URLSearchParams(location.search);
const gateway = (params.get('gateway') ?? `http://${location.hostname}:8080`).replace(/^http/, 'ws').replace(/\/+$/, '');
const tenant = params.get('tenant') ?? 'default';
const room = params.get('room') ?? 'demo';
const token = params.get('token');

const doc = new Y.Doc();
const text = doc.getText('text');
const provider = new WebsocketProvider(`${gateway}/yjs/${encodeURIComponent(tenant)}`, room, doc, {
  params: token ? { token } : {},
  // Every tab goes through the gateway (BroadcastChannel would sync tabs of
  // one browser directly, hiding what the gateway does).
  disableBc: true,
});
const { awareness } = provider;

/** For people poking at the console, and for tests/js/browser.test.mjs. */
window.yjsPage = { Y, doc, text, provider, awareness, room };

// ---- textarea ⇄ Y.Text ----
const area = $('text');
const LOCAL = Symbol('textarea');

area.addEventListener('input', () => {
  const before = text.toString();
  const after = area.value;
  let start = 0;
  while (start < before.length && start < after.length && before[start] === after[start]) start++;
  let end = 0;
  while (
    end < before.length - start &&
    end < after.length - start &&
    before[before.length - 1 - end] === after[after.length - 1 - end]
  ) end++;
  doc.transact(() => {
    const removed = before.length - start - end;
    if (removed > 0) text.delete(start, removed);
    const inserted = after.slice(start, after.length - end);
    if (inserted) text.insert(start, inserted);
  }, LOCAL);
});

/** Where index `i` of the old text is after the change `delta`. */
function mapIndex(i, delta) {
  let at = 0; // position in the old text
  let out = i;
  for (const op of delta) {
    if (op.retain) at += op.retain;
    else if (op.insert) {
      if (at < i) out += op.insert.length;
    } else if (op.delete) {
      if (at < i) out -= Math.min(op.delete, i - at);
      at += op.delete;
    }
    if (at >= i) break;
  }
  return out;
}

text.observe((event, tr) => {
  if (tr.origin === LOCAL) return;
  const focused = document.activeElement === area;
  const [s, e] = [area.selectionStart, area.selectionEnd];
  area.value = text.toString();
  if (focused) area.setSelectionRange(mapIndex(s, event.delta), mapIndex(e, event.delta));
});
area.value = text.toString();

// ---- status and who is here ----
$('room').textContent = `${tenant}/${room}`;
provider.on('status', ({ status }) => {
  $('connection').textContent = status;
});
provider.on('sync', (synced) => {
  $('synced').textContent = synced ? 'yes' : 'no';
  document.body.dataset.synced = String(synced);
});
$('toggle').onclick = () => {
  if (provider.shouldConnect) {
    provider.disconnect();
    $('toggle').textContent = 'Go online';
  } else {
    provider.connect();
    $('toggle').textContent = 'Go offline';
  }
};

const color = `hsl(${Math.floor(Math.random() * 360)} 60% 45%)`;
awareness.setLocalStateField('user', { name: params.get('name') ?? `guest-${doc.clientID % 1000}`, color });
// Where this page's caret is, as a Yjs relative position (it stays put while others edit).
function shareCaret() {
  const at = Y.createRelativePositionFromTypeIndex(text, area.selectionStart);
  awareness.setLocalStateField('caret', Y.relativePositionToJSON(at));
}
for (const ev of ['input', 'keyup', 'mouseup', 'focus']) area.addEventListener(ev, shareCaret);
function caretIndex(state) {
  if (!state.caret) return null;
  const abs = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(state.caret), doc);
  return abs ? abs.index : null;
}
function showPeers() {
  const list = $('peers');
  list.replaceChildren();
  for (const [id, state] of awareness.getStates()) {
    if (!state.user) continue;
    const li = document.createElement('li');
    const at = caretIndex(state);
    li.textContent = `${state.user.name}${id === doc.clientID ? ' (you)' : ''}${at === null ? '' : ` @ ${at}`}`;
    li.style.background = state.user.color;
    list.append(li);
  }
}
awareness.on('change', showPeers);
text.observe(showPeers);
showPeers();
