#!/usr/bin/env node
// The Yjs benchmark's markdown tables from bench/yjs.sh's JSON lines.
// Usage: node report.mjs RESULTS.jsonl [--preamble TEXT] [--update docs/benchmarks.md] [--max-other PCT]
// --max-other: leave out room runs during which other processes used more than
// PCT % of a core (other_cpu_pct), and say how many were left out.
// With --update, the tables replace what is between <!-- bench:yjs:start -->
// and <!-- bench:yjs:end --> in that file (nothing else is touched).
import fs from 'node:fs';

const args = process.argv.slice(2);
let file = '', preamble = '', update = '', maxOther = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--preamble') preamble = args[++i];
  else if (args[i] === '--update') update = args[++i];
  else if (args[i] === '--max-other') maxOther = Number(args[++i]);
  else file = args[i];
}
if (!file) {
  console.error('usage: report.mjs RESULTS.jsonl [--preamble TEXT] [--update FILE]');
  process.exit(2);
}
let rows = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
let leftOut = [];
if (maxOther != null) {
  const noisy = (r) => r.scenario === 'yjs-room' && r.other_cpu_pct != null && r.other_cpu_pct > maxOther;
  leftOut = rows.filter(noisy);
  rows = rows.filter((r) => !noisy(r));
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const f0 = (v) => (v == null ? 'n/a' : Math.round(v).toLocaleString('en-US'));
const f1 = (v) => (v == null ? 'n/a' : v.toFixed(1));
const f2 = (v) => (v == null ? 'n/a' : v.toFixed(2));
const ms = (us) => (us == null ? 'n/a' : us >= 100_000 ? `${(us / 1000).toFixed(0)} ms` : `${(us / 1000).toFixed(1)} ms`);
const pct = (v) => (v == null ? 'n/a' : `${Math.round(v)} %`);

const out = [];
if (preamble) out.push(preamble, '');
if (maxOther != null) {
  out.push(`Runs during which other processes used more than ${maxOther} % of a core are left out: ${leftOut.length}` +
    (leftOut.length ? ` (${leftOut.map((r) => `${r.case} ${r.server} ${Math.round(r.other_cpu_pct)} %`).join(', ')})` : '') + '.', '');
}

// ---------------------------------------------------------------- room throughput
const room = rows.filter((r) => r.scenario === 'yjs-room');
const cases = [...new Set(room.map((r) => r.case))];
const ORDER = ['switchyard', 'y-websocket', 'hocuspocus'];
const verdicts = [];
for (const c of cases) {
  const inCase = room.filter((r) => r.case === c);
  const servers = [...new Set(inCase.map((r) => r.server))].sort((a, b) => ORDER.indexOf(a) - ORDER.indexOf(b));
  // Per server: the median run by updates/s (its other columns come with it).
  const pick = new Map();
  for (const s of servers) {
    const runs = inCase.filter((r) => r.server === s && r.updates_per_s != null);
    if (!runs.length) {
      pick.set(s, inCase.find((r) => r.server === s));
      continue;
    }
    const m = median(runs.map((r) => r.updates_per_s));
    pick.set(s, { ...runs.find((r) => r.updates_per_s === m), runs: runs.length });
  }
  const ref = pick.get('hocuspocus');
  const first = inCase.find((r) => r.note && !r.note.startsWith('n/a'));
  out.push(`**${c}** — ${first ? first.note : ''}${first?.target ? `; target: ${first.target}` : ''}`, '');
  out.push('| server | updates/s (at all editors) | deliveries/s | latency p50 | p99 | max | at-all p99 | ÷ Hocuspocus (updates/s) | client CPU / busy (event loop or runtime) | other CPU | server CPU (user) | server CPU µs/update (user) | → updates/s one core could take | server RSS | checks |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of servers) {
    const r = pick.get(s);
    if (!r || r.updates_per_s == null) {
      out.push(`| ${s} | ${r?.note ?? 'n/a'} |||||||||||||| `);
      continue;
    }
    const ratio = ref?.updates_per_s ? r.updates_per_s / ref.updates_per_s : null;
    const checks = [
      r.converged ? 'converged' : 'DIVERGED',
      r.observed_all === false ? 'not observed by all' : null,
      r.undelivered ? `${r.undelivered} undelivered` : null,
      r.closes ? `${r.closes} closes ${JSON.stringify(r.close_codes)}` : null,
      r.skipped ? `${r.skipped} skipped` : null,
    ].filter(Boolean).join(', ');
    out.push(`| ${s} | ${f0(r.updates_per_s)} | ${f0(r.deliveries_per_s)} | ${ms(r.latency?.p50_us)} | ${ms(r.latency?.p99_us)} | ${ms(r.latency?.max_us)} | ${ms(r.latency_all?.p99_us)} | ${ratio == null ? '' : `${f2(ratio)}×`} | ${pct(r.client_cpu_pct)} / ${r.client_elu == null ? 'n/a' : pct(100 * r.client_elu)} | ${r.other_cpu_pct == null ? 'n/a' : `${pct(r.other_cpu_pct)}${r.other_cpu_pct > 10 ? ' ⚠' : ''}`} | ${pct(r.server_cpu_pct)} (${pct(r.server_cpu_user_pct)}) | ${f0(r.server_cpu_us_per_update)} (${f0(r.server_user_us_per_update)}) | ${r.server_cpu_us_per_update ? f0(1e6 / r.server_cpu_us_per_update) : 'n/a'} | ${r.server_rss_kib == null ? 'n/a' : `${(r.server_rss_kib / 1024).toFixed(0)} MiB`} | ${checks} |`);
  }
  out.push('');
  const sy = pick.get('switchyard');
  if (sy?.updates_per_s != null && ref?.updates_per_s != null) {
    const ratio = sy.updates_per_s / ref.updates_per_s;
    const cpuRatio = sy.server_cpu_us_per_update && ref.server_cpu_us_per_update
      ? ref.server_cpu_us_per_update / sy.server_cpu_us_per_update : null;
    const userRatio = sy.server_user_us_per_update && ref.server_user_us_per_update
      ? ref.server_user_us_per_update / sy.server_user_us_per_update : null;
    const bound = [sy, ref].some((r) => (r.client_elu ?? 0) > 0.9 && (r.server_cpu_pct ?? 100) < 90);
    verdicts.push(`- ${c}: Switchyard ${f2(ratio)}× Hocuspocus updates/s (target ≥ 2×), p99 ${ms(sy.latency?.p99_us)} vs ${ms(ref.latency?.p99_us)}` +
      (cpuRatio ? `; Hocuspocus spends ${f1(cpuRatio)}× Switchyard's server CPU per update (${userRatio ? f1(userRatio) : 'n/a'}× in user space)` : '') +
      (bound ? '; **client-bound** (the client is busy > 90 % of the time while the server core is not saturated): the updates/s ratio measures the client, the server CPU per update compares the servers' : ''));
  }
}
if (verdicts.length) out.push(...verdicts, '');

// ---------------------------------------------------------------- merge cost
const merge = rows.filter((r) => r.scenario === 'yjs-merge-cost');
if (merge.length) {
  out.push('**Merge cost vs document size** — `yjs-merge` `document.apply` of one small update (8 characters at a random position), through `switchyard-policy` (the gateway\'s plugin runtime)', '');
  out.push('| document | state bytes | text chars | update bytes | apply p50 | p90 | p99 | ÷ smallest (p50) | open (load snapshot) | snapshot (encode) |');
  out.push('|---|---|---|---|---|---|---|---|---|---|');
  const ok = merge.filter((r) => r.apply_us);
  const base = ok[0]?.apply_us.p50;
  for (const r of merge) {
    if (!r.apply_us) {
      out.push(`| ${r.case} | ${r.note ?? 'n/a'} |||||||||`);
      continue;
    }
    out.push(`| ${r.case} | ${f0(r.doc_bytes)} | ${f0(r.doc_text_chars)} | ${f0(r.update_bytes_mean)} | ${f2(r.apply_us.p50)} µs | ${f2(r.apply_us.p90)} µs | ${f2(r.apply_us.p99)} µs | ${base ? `${f2(r.apply_us.p50 / base)}×` : ''} | ${f0(r.open_us_p50)} µs | ${f0(r.snapshot_us_p50)} µs |`);
  }
  out.push('');
}
const calls = rows.filter((r) => r.scenario === 'yjs-plugin-calls');
if (calls.length) {
  const ok = calls.reduce((a, r) => a + r.ok, 0);
  const bad = calls.reduce((a, r) => a + r.not_ok, 0);
  out.push(`yjs-merge merge calls counted by the gateways (\`switchyard_plugin_calls_total\`): ${f0(ok)} ok, ${f0(bad)} other outcomes.`, '');
}

const text = out.join('\n');
console.log(text);
if (update) {
  const doc = fs.readFileSync(update, 'utf8');
  const start = '<!-- bench:yjs:start -->';
  const end = '<!-- bench:yjs:end -->';
  const a = doc.indexOf(start), b = doc.indexOf(end);
  if (a < 0 || b < a) {
    console.error(`report.mjs: ${update} has no ${start} … ${end} markers`);
    process.exit(1);
  }
  fs.writeFileSync(update, `${doc.slice(0, a + start.length)}\n${text}\n${doc.slice(b)}`);
  console.error(`report.mjs: wrote the tables into ${update}`);
}
