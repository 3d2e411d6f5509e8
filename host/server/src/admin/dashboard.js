// Switchyard live dashboard: polls /admin/stats, /admin/plugins, /admin/shadow and
// /admin/connections every second with the admin token (kept in
// sessionStorage, never in the URL) and renders them. No build step, no
// dependencies; every value is written with textContent (client ids and
// errors are untrusted text).
'use strict';

const TOKEN_KEY = 'switchyard.admin.token';
const POLL_MS = 1000;
const HISTORY = 120;
const TRANSPORTS = ['websocket', 'sse', 'poll', 'yjs'];

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let timer = null;
// Bumped by every (re)start: a poll of an older loop drops its answer.
let generation = 0;
const history = [];

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}

async function api(path) {
  const r = await fetch(path, {
    headers: { Authorization: `Bearer ${token}` },
    cache: 'no-store',
  });
  if (r.status === 401) throw new AuthError('bad admin token');
  if (!r.ok) {
    let msg = `${path}: HTTP ${r.status}`;
    try {
      const body = await r.json();
      if (body && body.message) msg = `${path}: ${body.message}`;
    } catch (_) {
      /* not JSON */
    }
    throw new Error(msg);
  }
  return r.json();
}

function fmtRate(x) {
  if (typeof x !== 'number') return '–';
  return x >= 100 ? Math.round(x).toString() : x.toFixed(1);
}

function fmtMs(x) {
  if (typeof x !== 'number') return '–';
  if (x < 1) return `${(x * 1000).toFixed(0)} µs`;
  return `${x.toFixed(x < 10 ? 2 : 0)} ms`;
}

function fmtCount(x) {
  return typeof x === 'number' ? Math.round(x).toLocaleString('en') : '–';
}

function fmtUptime(s) {
  if (typeof s !== 'number') return '–';
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${Math.floor(s % 60)}s`;
}

function setStatus(text, cls) {
  const el = $('status');
  el.textContent = text;
  el.className = `status ${cls || ''}`;
}

function cell(tr, text, cls, field) {
  const td = document.createElement('td');
  td.textContent = text == null ? '' : String(text);
  if (cls) td.className = cls;
  if (field) td.dataset.field = field;
  tr.appendChild(td);
  return td;
}

function fillTable(id, rows, columns, emptyText) {
  const tbody = $(id).tBodies[0];
  const frag = document.createDocumentFragment();
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    tr.className = 'empty';
    const td = cell(tr, emptyText);
    td.colSpan = columns;
    frag.appendChild(tr);
  }
  for (const r of rows) frag.appendChild(r);
  tbody.replaceChildren(frag);
}

function renderNode(stats) {
  const n = stats.node;
  $('node-id').textContent = n.id;
  $('node-version').textContent = `v${n.version}`;
  const broker = $('node-broker');
  broker.textContent = `${n.broker} ${n.broker_up ? 'up' : 'down'}`;
  broker.className = `badge ${n.broker_up ? 'ok' : 'bad'}`;
  $('node-draining').hidden = !n.draining;
  $('node-uptime').textContent = fmtUptime(n.uptime_seconds);
  $('kpi-connections').textContent = fmtCount(n.connections);
  $('kpi-transports').textContent = TRANSPORTS.filter((t) => n.transports[t])
    .map((t) => `${t} ${n.transports[t]}`)
    .join(' · ');
  $('kpi-subscriptions').textContent = fmtCount(n.subscriptions);
  $('kpi-in').textContent = fmtRate(n.messages_in_per_sec);
  $('kpi-out').textContent = fmtRate(n.messages_out_per_sec);
  const lat = n.delivery_latency;
  $('kpi-p50').textContent = fmtMs(lat.p50_ms);
  $('kpi-p99').textContent = fmtMs(lat.p99_ms);
  $('kpi-latency-over').textContent =
    lat.count > 0 ? `${fmtCount(lat.count)} deliveries, ${lat.over === 'window' ? 'last second' : 'since start'}` : 'no deliveries yet';
  history.push([n.messages_in_per_sec, n.messages_out_per_sec]);
  if (history.length > HISTORY) history.shift();
  drawSpark();
}

function drawSpark() {
  const c = $('spark');
  const w = (c.width = c.clientWidth * (window.devicePixelRatio || 1));
  const h = (c.height = 64 * (window.devicePixelRatio || 1));
  const g = c.getContext('2d');
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...history.flat());
  const colors = ['#4fb3ff', '#7ee08a'];
  for (let k = 0; k < 2; k++) {
    g.beginPath();
    g.strokeStyle = colors[k];
    g.lineWidth = 1.5 * (window.devicePixelRatio || 1);
    history.forEach((p, i) => {
      const x = w - ((history.length - 1 - i) / (HISTORY - 1)) * w;
      const y = h - 2 - (p[k] / max) * (h - 6);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}

function renderTenants(stats) {
  const rows = Object.entries(stats.tenants).map(([id, t]) => {
    const tr = document.createElement('tr');
    tr.dataset.tenant = id;
    cell(tr, id, '', 'tenant');
    cell(tr, fmtCount(t.connections), 'n', 'connections');
    for (const tp of TRANSPORTS) cell(tr, fmtCount(t.transports[tp] || 0), 'n', tp);
    cell(tr, fmtCount(t.subscriptions), 'n', 'subscriptions');
    cell(tr, fmtRate(t.messages_in_per_sec), 'n', 'in');
    cell(tr, fmtRate(t.messages_out_per_sec), 'n', 'out');
    cell(tr, fmtRate(t.plugin_calls_per_sec), 'n', 'plugin_calls');
    cell(tr, fmtCount(t.plugin_failures), t.plugin_failures > 0 ? 'n bad' : 'n', 'plugin_failures');
    return tr;
  });
  fillTable('tenants', rows, 11, 'no tenants');
}

function renderPlugins(list, stats) {
  const calls = new Map(stats.plugins.map((p) => [`${p.plugin}\u001f${p.role}`, p]));
  const rows = list.map((p) => {
    const c = calls.get(`${p.name}\u001f${p.role}`) || {};
    const tr = document.createElement('tr');
    tr.dataset.plugin = p.name;
    cell(tr, p.name, '', 'name');
    cell(tr, p.role || '–', '', 'role');
    cell(tr, p.hash ? p.hash.slice(0, 12) : '–', '', 'hash').title = p.hash || '';
    cell(tr, p.status, p.status === 'ok' || p.status === 'loaded' ? '' : 'bad', 'status');
    cell(tr, p.loaded_at || '–', '', 'loaded_at');
    cell(tr, (p.used_by || []).map((u) => `${u.tenant}/${u.role}`).join(', ') || '–', 'wrap', 'used_by');
    cell(tr, fmtRate(c.calls_per_sec || 0), 'n', 'calls_per_sec');
    cell(tr, fmtCount(c.calls || 0), 'n', 'calls');
    cell(tr, fmtCount(c.failures || 0), c.failures > 0 ? 'n bad' : 'n', 'failures');
    cell(tr, p.last_error || '', 'wrap bad', 'last_error');
    return tr;
  });
  fillTable('plugins', rows, 10, 'no plugins loaded');
}

function renderShadows(data) {
  const rows = (data.shadows || []).map((s) => {
    const tr = document.createElement('tr');
    tr.dataset.shadow = `${s.tenant}/${s.role}`;
    cell(tr, s.tenant, '', 'tenant');
    cell(tr, s.role, '', 'role');
    cell(tr, s.plugin, '', 'plugin');
    cell(tr, s.shadow, '', 'shadow');
    cell(tr, String(s.sample), 'n', 'sample');
    cell(tr, fmtCount(s.calls), 'n', 'calls');
    cell(tr, fmtCount(s.same), 'n', 'same');
    cell(tr, fmtCount(s.differ), s.differ > 0 ? 'n bad' : 'n', 'differ');
    cell(tr, fmtCount(s.errors), s.errors > 0 ? 'n bad' : 'n', 'errors');
    cell(tr, fmtCount(s.dropped), 'n', 'dropped');
    const last = (s.last_differences || []).slice(-1)[0];
    cell(tr, last ? `${JSON.stringify(last.input)} → serving ${JSON.stringify(last.serving)}, shadow ${JSON.stringify(last.shadow)}` : '–', 'wrap', 'last');
    return tr;
  });
  fillTable('shadows', rows, 11, 'no shadow runs');
}

function renderConnections(data) {
  const rows = data.connections.map((c) => {
    const tr = document.createElement('tr');
    tr.dataset.session = c.session;
    cell(tr, c.session.slice(0, 8), '', 'session').title = c.session;
    cell(tr, c.tenant, '', 'tenant');
    cell(tr, c.client, '', 'client');
    cell(tr, c.principal || '–', '', 'principal');
    cell(tr, c.transport, '', 'transport');
    cell(tr, c.remote, '', 'remote');
    cell(tr, c.connected_at.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), '', 'connected_at');
    cell(tr, c.channels.join(', '), 'wrap', 'channels');
    cell(tr, fmtCount(c.queued), 'n', 'queued');
    return tr;
  });
  $('conn-count').textContent = data.truncated
    ? `(first ${data.connections.length} of ${data.total})`
    : `(${data.total})`;
  fillTable('connections', rows, 9, 'no connections');
}

async function tick(gen) {
  try {
    const [stats, plugins, conns, shadows] = await Promise.all([
      api('/admin/stats'),
      api('/admin/plugins'),
      api('/admin/connections?limit=50'),
      api('/admin/shadow'),
    ]);
    if (gen !== generation) return;
    renderNode(stats);
    renderTenants(stats);
    renderPlugins(plugins.plugins || [], stats);
    renderShadows(shadows);
    renderConnections(conns);
    setStatus(`live · ${new Date().toLocaleTimeString('en-GB')}`, 'live');
  } catch (e) {
    if (gen !== generation) return;
    if (e instanceof AuthError) {
      stop();
      setStatus('bad admin token', 'error');
      return;
    }
    setStatus(`error: ${e.message}`, 'error');
  }
  timer = setTimeout(() => tick(gen), POLL_MS);
}

function stop() {
  generation += 1;
  if (timer !== null) clearTimeout(timer);
  timer = null;
}

function start() {
  stop();
  if (!token) {
    setStatus('enter the admin token', '');
    return;
  }
  setStatus('connecting…', '');
  tick(generation);
}

document.addEventListener('DOMContentLoaded', () => {
  $('token').value = token;
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('token').value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    history.length = 0;
    start();
  });
  start();
});
