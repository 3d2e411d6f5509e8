// Demo of switchyard-client in a browser: connect (with a forced transport if
// asked), subscribe, publish, presence, and a "drop connection" button that
// shows reconnect with resume. Serve the repository root with any static
// server and open /examples/demo-page/ (see README.md).
import { SwitchyardClient } from '../../sdk/client-js/src/index.js';

const $ = (id) => /** @type {HTMLElement & HTMLInputElement & HTMLSelectElement} */ (document.getElementById(id));
const params = new URLSearchParams(location.search);

$('gateway').value = params.get('gateway') ?? `http://${location.hostname}:8080`;
if (params.get('transports')) {
  const t = params.get('transports');
  if (![...$('transports').options].some((o) => o.value === t)) $('transports').add(new Option(t, t));
  $('transports').value = t;
}
if (params.get('channel')) $('channel').value = params.get('channel');

/** What the page showed, for people and for tests. */
const demo = { client: /** @type {SwitchyardClient | null} */ (null), received: [], events: [], unsubscribe: null };
window.demo = demo;
window.SwitchyardClient = SwitchyardClient;

function log(text, cls = '') {
  const li = document.createElement('li');
  li.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  if (cls) li.className = cls;
  $('log').prepend(li);
}

function showState() {
  $('state').textContent = demo.client?.state ?? 'idle';
  $('transport').textContent = demo.client?.transport ?? 'none';
  $('client').textContent = demo.client?.clientId ?? '–';
}

function connect() {
  demo.client?.close();
  const client = new SwitchyardClient($('gateway').value, {
    transports: $('transports').value.split(',').filter(Boolean),
    token: params.get('token') ?? undefined,
    clientId: params.get('clientId') ?? undefined,
    tenant: params.get('tenant') ?? undefined,
  });
  demo.client = client;
  for (const ev of ['open', 'close', 'reconnecting', 'transport', 'error', 'recovery']) {
    client.on(ev, (e) => {
      demo.events.push({ event: ev, ...(ev === 'error' ? { error: String(e.error?.message ?? e.error) } : e) });
      log(`${ev} ${JSON.stringify(ev === 'error' ? { error: String(e.error?.message ?? e.error) } : e)}`, 'event');
      showState();
      if (ev === 'recovery' && !e.recovered) log(`missed messages on ${e.channel} could not be replayed: reload its state`, 'event');
    });
  }
  client.connect().catch((e) => log(`connect failed: ${e.message}`, 'event'));
  showState();
}

$('connect').onclick = connect;
$('disconnect').onclick = () => {
  demo.client?.close();
  showState();
};
$('drop').onclick = () => demo.client?.simulateConnectionLoss();

$('subscribe').onclick = async () => {
  if (!demo.client) connect();
  const channel = $('channel').value;
  demo.unsubscribe?.();
  demo.unsubscribe = demo.client.subscribe(channel, (data, frame) => {
    demo.received.push({ channel, seq: frame.seq, epoch: frame.epoch, data });
    log(`${channel} #${frame.seq}: ${JSON.stringify(data)}`);
  });
  try {
    const s = await demo.unsubscribe.ready;
    log(`subscribed to ${channel} at seq ${s.seq}`, 'event');
    document.body.dataset.subscribed = channel;
  } catch (e) {
    log(`subscribe failed: ${e.code} ${e.message}`, 'event');
  }
};

$('unsubscribe').onclick = () => {
  demo.unsubscribe?.();
  demo.unsubscribe = null;
  delete document.body.dataset.subscribed;
};

$('publish').onclick = async () => {
  if (!demo.client) connect();
  try {
    const seq = await demo.client.publish($('channel').value, { text: $('message').value });
    $('ack').textContent = `ack seq ${seq}`;
  } catch (e) {
    $('ack').textContent = `failed: ${e.code}`;
  }
};

$('presence').onclick = async () => {
  try {
    const clients = await demo.client.presence($('channel').value);
    log(`presence: ${clients.map((c) => c.client).join(', ') || 'nobody'}`, 'event');
  } catch (e) {
    log(`presence failed: ${e.code}`, 'event');
  }
};

setInterval(showState, 250);
if (params.get('autoconnect') !== '0') connect();
