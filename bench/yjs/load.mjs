#!/usr/bin/env node
// Yjs room load client (bench/yjs.sh): E editors in ONE room, each an
// unmodified npm `yjs` Y.Doc synced by an unmodified `y-websocket`
// WebsocketProvider (`ws` as WebSocketPolyfill, BroadcastChannel off). The
// same client for every server; only Hocuspocus gets a framing adapter (its
// protocol prefixes every y-protocols message with the document name and
// wants an auth message first, see HocuspocusSocket below).
//
// Workload: every editor inserts L (8) ASCII characters at a random position
// of its text "t". An op is identified without parsing any text: editor e's
// k-th insert is exactly the clocks [k*L, (k+1)*L) of e's Yjs client id, so an
// observer knows which ops it has by its state vector after each remote
// transaction. An op is *delivered* once every other editor has it.
//   --mode closed  each editor keeps --window ops not yet delivered in flight
//                  and inserts the next one as soon as one is delivered
//                  (y-websocket has no acks: delivery at all editors is the ack)
//   --mode rate    --rate ops/s in total, round-robin over the editors, at
//                  intended times (latency counts from the intended time, so
//                  a late client counts its lateness)
// Reported over the measured window (after --warmup): updates/s delivered to
// all editors, deliveries/s (one per op per other editor), latency insert ->
// observed at another editor (p50/p99/max over every delivery) and insert ->
// observed at all, client CPU and event-loop utilization (all editors share
// this one process: near 100 % the client, not the server, is the limit),
// server CPU from /proc/PID/stat (--server-pid: user + kernel, and user
// alone: on loopback the kernel's TCP work for every send is the sender's) and
// server CPU per update.
// After the window: inserts stop, in-flight ops drain (<= 5 s), and every
// editor's document must be identical (state vector and text).
//
// Usage: node load.mjs --url ws://127.0.0.1:PORT/yjs/default --room R
//          [--kind switchyard|y-websocket|hocuspocus] [-n 50] [--mode closed|rate]
//          [--window 1] [--rate 1000] [--chars 8] [--warmup 2] [--duration 10]
//          [--server-pid PID] [--server NAME] [--case NAME] [--json FILE] [--target TEXT]
// Prints one JSON line (stdout) and appends it to --json.

import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import * as encoding from 'lib0/encoding';
import * as decoding from 'lib0/decoding';
import WebSocket from 'ws';

// ---------------------------------------------------------------- options
const opts = {
  url: '', room: '', kind: 'switchyard', n: 50, mode: 'closed', window: 1, rate: 1000,
  chars: 8, warmup: 2, duration: 10, serverPid: 0, server: '', case: '', json: '', target: '',
  connectTimeout: 10, drain: 5,
};
{
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const k = a[i];
    const v = () => {
      if (i + 1 >= a.length) die(`${k} needs a value`);
      return a[++i];
    };
    switch (k) {
      case '--url': opts.url = v(); break;
      case '--room': opts.room = v(); break;
      case '--kind': opts.kind = v(); break;
      case '-n': case '--editors': opts.n = int(v(), k); break;
      case '--mode': opts.mode = v(); break;
      case '--window': opts.window = int(v(), k); break;
      case '--rate': opts.rate = Number(v()); break;
      case '--chars': opts.chars = int(v(), k); break;
      case '--warmup': opts.warmup = secs(v()); break;
      case '--duration': opts.duration = secs(v()); break;
      case '--server-pid': opts.serverPid = int(v(), k); break;
      case '--server': opts.server = v(); break;
      case '--case': opts.case = v(); break;
      case '--json': opts.json = v(); break;
      case '--target': opts.target = v(); break;
      case '-h': case '--help':
        console.log(fs.readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(1, 35).join('\n'));
        process.exit(0);
      default: die(`unknown option ${k}`);
    }
  }
  if (!opts.url || !opts.room) die('--url and --room are required');
  if (!['switchyard', 'y-websocket', 'hocuspocus'].includes(opts.kind)) die(`--kind ${opts.kind}?`);
  if (!['closed', 'rate'].includes(opts.mode)) die(`--mode ${opts.mode}?`);
  if (opts.n < 2) die('-n must be at least 2');
  if (opts.warmup + opts.duration > 15) die('--warmup + --duration must stay <= 15 s (a run <= 20 s)');
  opts.server ||= opts.kind;
  opts.case ||= `yjs-${opts.n}e-${opts.mode === 'closed' ? `w${opts.window}` : `rate${opts.rate}`}`;
}
function die(msg) {
  console.error(`load.mjs: ${msg}`);
  process.exit(2);
}
function int(s, what) {
  const n = Number.parseInt(s, 10);
  if (!Number.isFinite(n) || n < 0) die(`${what}: not a number: ${s}`);
  return n;
}
function secs(s) {
  const m = /^([0-9.]+)(ms|s)?$/.exec(s);
  if (!m) die(`not a duration: ${s}`);
  return m[2] === 'ms' ? Number(m[1]) / 1000 : Number(m[1]);
}

process.setMaxListeners(0); // every provider adds an 'exit' listener
const now = () => performance.now(); // ms, one clock for every editor (same process)

// ---------------------------------------------------------------- Hocuspocus framing
// Hocuspocus (2.x/3.x) multiplexes documents over a socket: every message is
// varString(documentName) + the y-protocols message, the first one for a
// document must be an auth message, sync replies come as type 4 (SyncReply)
// and every update is acked with type 8 (SyncStatus). This socket adds and
// strips the prefix, sends the auth message before the provider's first
// message, turns SyncReply into Sync and drops SyncStatus; the provider and
// the Yjs documents are untouched.
const HP_SYNC = 0, HP_AUTH = 2, HP_SYNC_REPLY = 4, HP_SYNC_STATUS = 8;
class HocuspocusSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.docName = decodeURIComponent(new URL(url).pathname.split('/').pop());
    const e = encoding.createEncoder();
    encoding.writeVarString(e, this.docName);
    this.prefix = encoding.toUint8Array(e);
  }

  send(data) {
    const body = data instanceof Uint8Array ? data : new Uint8Array(data);
    const out = new Uint8Array(this.prefix.length + body.length);
    out.set(this.prefix, 0);
    out.set(body, this.prefix.length);
    super.send(out);
  }

  set onopen(fn) {
    super.onopen = (ev) => {
      const e = encoding.createEncoder();
      encoding.writeVarUint(e, HP_AUTH);
      encoding.writeVarUint(e, 0); // token
      encoding.writeVarString(e, '');
      this.send(encoding.toUint8Array(e));
      fn?.(ev);
    };
  }

  get onopen() {
    return super.onopen;
  }

  set onmessage(fn) {
    super.onmessage = (ev) => {
      const buf = new Uint8Array(ev.data);
      const d = decoding.createDecoder(buf);
      decoding.readVarString(d);
      const start = d.pos;
      const type = decoding.readVarUint(d);
      if (type === HP_SYNC_STATUS) return;
      let body = buf.subarray(start);
      if (type === HP_SYNC_REPLY) {
        const e = encoding.createEncoder();
        encoding.writeVarUint(e, HP_SYNC);
        encoding.writeUint8Array(e, buf.subarray(d.pos));
        body = encoding.toUint8Array(e);
      }
      // The provider reads `new Uint8Array(event.data)`: hand it an exact ArrayBuffer.
      fn?.({ data: body.slice().buffer });
    };
  }

  get onmessage() {
    return super.onmessage;
  }
}

// ---------------------------------------------------------------- histogram
// Log-linear, in µs: 1 µs steps below 64 µs, then 64 steps per octave (~1.1 %).
class Hist {
  constructor() {
    this.counts = new Float64Array(64 + 64 * 40);
    this.n = 0;
    this.max = 0;
  }

  record(ms) {
    const us = Math.max(0, ms * 1000);
    const i = us < 64 ? Math.floor(us) : 64 + Math.floor(Math.log2(us / 64) * 64);
    this.counts[Math.min(i, this.counts.length - 1)]++;
    this.n++;
    if (us > this.max) this.max = us;
  }

  static upper(i) {
    return i < 64 ? i + 1 : 64 * 2 ** ((i - 64 + 1) / 64);
  }

  pct(p) {
    if (this.n === 0) return null;
    const rank = Math.ceil(this.n * p);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.round(Math.min(Hist.upper(i), this.max));
    }
    return Math.round(this.max);
  }

  summary() {
    return { count: this.n, p50_us: this.pct(0.5), p99_us: this.pct(0.99), max_us: this.n ? Math.round(this.max) : null };
  }
}

// ---------------------------------------------------------------- /proc
const CLK_TCK = 100;
function procCpu(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: Number(f[11]) / CLK_TCK, sys: Number(f[12]) / CLK_TCK }; // utime, stime (s)
  } catch {
    return null;
  }
}
// Busy seconds over every core (/proc/stat "cpu" line: all but idle and iowait).
function machineBusy() {
  try {
    const v = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
    return (v.reduce((a, b) => a + b, 0) - v[3] - v[4]) / CLK_TCK;
  } catch {
    return null;
  }
}
function procRssKib(pid) {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- editors
const E = opts.n;
const L = opts.chars;
const CONTENT = 'abcdefghijklmnopqrstuvwxyz';
const Socket = opts.kind === 'hocuspocus' ? HocuspocusSocket : WebSocket;
const events = { closes: 0, errors: 0, closeCodes: {} };
let phase = 'connect'; // connect -> run -> drain -> done

const editors = [];
const byClient = new Map(); // Yjs client id -> editor index
for (let i = 0; i < E; i++) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(opts.url, opts.room, doc, {
    WebSocketPolyfill: Socket,
    disableBc: true,
  });
  provider.on('connection-close', (ev) => {
    if (phase === 'done') return;
    events.closes++;
    const code = ev?.code ?? 'none';
    events.closeCodes[code] = (events.closeCodes[code] || 0) + 1;
  });
  provider.on('connection-error', () => {
    if (phase !== 'done') events.errors++;
  });
  const ed = {
    i, doc, provider, text: doc.getText('t'),
    ins: [], // insert time (ms) of each op
    seen: [], // other editors that have each op
    inflight: 0,
    done: 0, // ops delivered to everyone
    have: new Int32Array(E), // ops of each sender this editor has
  };
  editors.push(ed);
  byClient.set(doc.clientID, i);
}

// ---------------------------------------------------------------- measurement
const hDeliver = new Hist(); // insert -> observed at another editor (every delivery)
const hAll = new Hist(); // insert -> observed at the last of the other editors
let warmEnd = Infinity, tEnd = Infinity;
let deliveredInWindow = 0, deliveriesInWindow = 0, insertedInWindow = 0, skipped = 0;
let inflightTotal = 0;
const maxInflightPerEditor = opts.mode === 'closed' ? opts.window : 10_000;

function insert(ed, at) {
  const k = ed.ins.length;
  ed.ins.push(at);
  ed.seen.push(0);
  ed.inflight++;
  inflightTotal++;
  if (at >= warmEnd && at < tEnd) insertedInWindow++;
  const len = ed.text.length;
  const pos = Math.floor(Math.random() * (len + 1));
  const c = CONTENT[(ed.i + k) % 26];
  ed.text.insert(pos, c.repeat(L));
}

function delivered(s, k, t) {
  const ed = editors[s];
  ed.inflight--;
  inflightTotal--;
  ed.done++;
  const at = ed.ins[k];
  if (t >= warmEnd && t < tEnd) deliveredInWindow++;
  if (at >= warmEnd && at < tEnd) hAll.record(t - at);
  if (opts.mode === 'closed' && phase === 'run' && t < tEnd) insert(ed, now());
}

for (const ob of editors) {
  ob.doc.on('afterTransaction', (tr) => {
    if (tr.local || phase === 'connect') return;
    const t = now();
    for (const [client, clock] of tr.afterState) {
      const s = byClient.get(client);
      if (s === undefined || s === ob.i) continue;
      const k1 = Math.floor(clock / L);
      let k = ob.have[s];
      if (k1 <= k) continue;
      const sender = editors[s];
      for (; k < k1; k++) {
        const at = sender.ins[k];
        if (at >= warmEnd && at < tEnd) hDeliver.record(t - at);
        if (t >= warmEnd && t < tEnd) deliveriesInWindow++;
        if (++sender.seen[k] === E - 1) delivered(s, k, t);
      }
      ob.have[s] = k1;
    }
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(check, ms) {
  const deadline = now() + ms;
  while (!check()) {
    if (now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

function result(extra) {
  const line = {
    scenario: 'yjs-room',
    client: 'node',
    case: opts.case,
    server: opts.server,
    kind: opts.kind,
    editors: E,
    mode: opts.mode,
    window: opts.mode === 'closed' ? opts.window : null,
    rate: opts.mode === 'rate' ? opts.rate : null,
    chars: L,
    ...extra,
    target: opts.target || undefined,
  };
  const s = JSON.stringify(line);
  console.log(s);
  if (opts.json) fs.appendFileSync(opts.json, s + '\n');
}

async function main() {
  const t0 = now();
  const allSynced = await waitFor(() => editors.every((e) => e.provider.synced), opts.connectTimeout * 1000);
  const syncMs = now() - t0;
  if (!allSynced) {
    const n = editors.filter((e) => e.provider.synced).length;
    result({ note: `n/a: only ${n}/${E} editors synced within ${opts.connectTimeout} s`, closes: events.closes, close_codes: events.closeCodes });
    return finish(1);
  }
  await sleep(300); // awareness of 50 editors settles
  phase = 'run';
  const start = now();
  warmEnd = start + opts.warmup * 1000;
  tEnd = warmEnd + opts.duration * 1000;
  let cpu0 = null, srv0 = null, elu0 = null, winStart = null, mach0 = null;
  const atWindow = setTimeout(() => {
    cpu0 = process.cpuUsage();
    elu0 = performance.eventLoopUtilization();
    srv0 = opts.serverPid ? procCpu(opts.serverPid) : null;
    mach0 = machineBusy();
    winStart = now();
  }, Math.max(0, warmEnd - now()));

  if (opts.mode === 'closed') {
    for (let w = 0; w < opts.window; w++) for (const ed of editors) insert(ed, now());
  } else {
    // Open loop at --rate: a 1 ms ticker catches up on every intended send time.
    const period = 1000 / opts.rate;
    let issued = 0;
    await new Promise((resolve) => {
      const tick = () => {
        const t = now();
        const stopAt = Math.min(t, tEnd);
        while (start + issued * period <= stopAt) {
          const at = start + issued * period;
          const ed = editors[issued % E];
          issued++;
          if (ed.inflight >= maxInflightPerEditor) {
            skipped++;
            continue;
          }
          insert(ed, at);
        }
        if (t >= tEnd) return resolve();
        setTimeout(tick, 1);
      };
      tick();
    });
  }
  await waitFor(() => now() >= tEnd, opts.duration * 1000 + opts.warmup * 1000 + 1000);
  clearTimeout(atWindow);
  const windowS = (now() - (winStart ?? warmEnd)) / 1000;
  const cpu = cpu0 ? process.cpuUsage(cpu0) : null;
  const elu = elu0 ? performance.eventLoopUtilization(elu0) : null;
  const srv1 = opts.serverPid ? procCpu(opts.serverPid) : null;
  const mach1 = machineBusy();
  phase = 'drain';
  await waitFor(() => inflightTotal === 0, opts.drain * 1000);
  const undelivered = inflightTotal;
  // Convergence: every editor holds the same state and text.
  const sv0 = () => Buffer.from(Y.encodeStateVector(editors[0].doc));
  const converged = await waitFor(() => {
    const a = sv0();
    return editors.every((e) => a.equals(Buffer.from(Y.encodeStateVector(e.doc))));
  }, 3000) && editors.every((e) => e.text.toString() === editors[0].text.toString());
  const serverUserS = srv0 && srv1 ? srv1.user - srv0.user : null;
  const serverSysS = srv0 && srv1 ? srv1.sys - srv0.sys : null;
  const serverCpuS = serverUserS != null ? serverUserS + serverSysS : null;
  const ups = deliveredInWindow / opts.duration;
  // Other processes' CPU during the window (% of one core): machine busy minus client and server.
  const otherCpu = mach0 != null && mach1 != null && cpu
    ? Math.max(0, (100 * ((mach1 - mach0) - (cpu.user + cpu.system) / 1e6 - (serverCpuS ?? 0))) / windowS) : null;
  result({
    duration_s: windowS,
    warmup_s: opts.warmup,
    sync_ms: Math.round(syncMs),
    updates_per_s: ups,
    deliveries_per_s: deliveriesInWindow / opts.duration,
    inserted_per_s: insertedInWindow / opts.duration,
    latency: hDeliver.summary(),
    latency_all: hAll.summary(),
    undelivered,
    skipped,
    client_cpu_pct: cpu ? (100 * (cpu.user + cpu.system)) / 1e6 / windowS : null,
    client_elu: elu ? elu.utilization : null,
    other_cpu_pct: otherCpu,
    server_cpu_pct: serverCpuS != null ? (100 * serverCpuS) / windowS : null,
    server_cpu_user_pct: serverUserS != null ? (100 * serverUserS) / windowS : null,
    server_cpu_us_per_update: serverCpuS != null && deliveredInWindow > 0 ? (serverCpuS * 1e6) / deliveredInWindow : null,
    server_user_us_per_update: serverUserS != null && deliveredInWindow > 0 ? (serverUserS * 1e6) / deliveredInWindow : null,
    server_rss_kib: opts.serverPid ? procRssKib(opts.serverPid) : null,
    closes: events.closes,
    close_codes: events.closeCodes,
    connection_errors: events.errors,
    converged,
    doc_chars: editors[0].text.length,
    doc_bytes: Y.encodeStateAsUpdate(editors[0].doc).length,
    note: opts.mode === 'closed' ? `closed loop, ${opts.window} op(s) in flight per editor` : `fixed rate ${opts.rate}/s`,
  });
  return finish(converged && undelivered === 0 && events.closes === 0 ? 0 : 3);
}

function finish(code) {
  phase = 'done';
  for (const e of editors) e.provider.destroy();
  setTimeout(() => process.exit(code), 200).unref();
  return code;
}

const hardStop = setTimeout(() => {
  console.error('load.mjs: hard stop after 40 s');
  process.exit(4);
}, 40_000);
hardStop.unref();

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
