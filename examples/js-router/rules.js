// Routing rules of the JavaScript router: the twin of the Rust
// `namespace-router` (same config format and behaviour), in plain JavaScript so
// it can be unit-tested with Node without a component (`node --test`).

export const MAX_TARGETS = 16;
export const DIRECT = "direct";
const RULE_KEYS = new Set(["match", "to", "drop", "wrap", "add"]);

const isTable = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** `*` matches any run of characters (including none); others match themselves. */
export function globMatch(p, c) {
  let pi = 0;
  let ci = 0;
  let star = -1; // pattern index of the last `*`
  let mark = 0; // channel index that `*` absorbs up to
  while (ci < c.length) {
    if (pi < p.length && p[pi] === "*") {
      star = pi++;
      mark = ci;
    } else if (pi < p.length && p[pi] === c[ci]) {
      pi++;
      ci++;
    } else if (star >= 0) {
      pi = star + 1;
      ci = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.length && p[pi] === "*") pi++;
  return pi === p.length;
}

/** One-pass replacement of $channel, $namespace, $name, $principal, $client. */
export function substitute(template, channel, principal, client) {
  if (!template.includes("$")) return template;
  const colon = channel.indexOf(":");
  const namespace = colon < 0 ? channel : channel.slice(0, colon);
  const name = colon < 0 ? "" : channel.slice(colon + 1);
  const vars = [
    ["$channel", channel],
    ["$namespace", namespace], // before $name, its prefix
    ["$name", name],
    ["$principal", principal],
    ["$client", client],
  ];
  let out = "";
  let i = 0;
  while (i < template.length) {
    if (template[i] === "$") {
      const hit = vars.find(([v]) => template.startsWith(v, i));
      if (hit) {
        out += hit[1];
        i += hit[0].length;
      } else {
        out += "$";
        i += 1;
      }
    } else {
      let j = template.indexOf("$", i);
      if (j < 0) j = template.length;
      out += template.slice(i, j);
      i = j;
    }
  }
  return out;
}

function parseRule(raw) {
  if (!isTable(raw)) throw new Error("a rule must be a table");
  const unknown = Object.keys(raw).filter((k) => !RULE_KEYS.has(k)).sort();
  if (unknown.length) throw new Error(`unknown rule key(s): ${unknown.join(", ")}`);
  if (typeof raw.match !== "string") throw new Error('a rule needs match = "<glob>"');
  const pattern = raw.match;
  const drop = raw.drop === true;
  let to = raw.to;
  if (drop && to !== undefined) throw new Error(`rule ${pattern}: drop and to exclude each other`);
  if (drop) {
    to = [];
  } else if (to === undefined) {
    to = ["$channel"];
  } else if (!(Array.isArray(to) && to.length && to.every((t) => typeof t === "string" && t))) {
    throw new Error(`rule ${pattern}: to must be a non-empty list of channels`);
  }
  if (to.length > MAX_TARGETS) throw new Error(`rule ${pattern}: more than ${MAX_TARGETS} targets`);
  const wrap = raw.wrap ?? null;
  if (wrap !== null && wrap !== "envelope") throw new Error(`rule ${pattern}: unknown wrap ${wrap}`);
  const add = raw.add ?? {};
  if (!isTable(add)) throw new Error(`rule ${pattern}: add must be a table`);
  return { pattern, to, wrap, add };
}

/** Parses the policy's `config` JSON text into a rule list; throws on a bad config. */
export function parseRules(configJson) {
  const cfg = JSON.parse(configJson || "{}");
  if (!isTable(cfg) || Object.keys(cfg).some((k) => k !== "rules")) {
    throw new Error("config accepts only `rules`");
  }
  const rules = cfg.rules ?? [];
  if (!Array.isArray(rules)) throw new Error("rules must be a list");
  return rules.map(parseRule);
}

/** DIRECT, or a list of [channel, rewritten data JSON or undefined]; [] = drop. */
export function route(rules, channel, dataJson, principal = "", client = "") {
  const rule = rules.find((r) => globMatch(r.pattern, channel));
  if (!rule) return DIRECT;
  if (!rule.to.length) return [];
  let data;
  const adds = Object.entries(rule.add);
  if (rule.wrap || adds.length) {
    let value = JSON.parse(dataJson);
    if (rule.wrap === "envelope") value = { channel, data: value };
    if (isTable(value)) {
      for (const [k, v] of adds) {
        value[k] = typeof v === "string" ? substitute(v, channel, principal, client) : v;
      }
    }
    data = JSON.stringify(value);
  }
  const targets = [];
  const seen = new Set();
  for (const t of rule.to) {
    const ch = substitute(t, channel, principal, client);
    if (ch && !seen.has(ch)) {
      seen.add(ch);
      targets.push([ch, data]);
    }
  }
  if (data === undefined && targets.length === 1 && targets[0][0] === channel) return DIRECT;
  return targets;
}
