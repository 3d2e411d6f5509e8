// Switchyard router plugin in JavaScript (componentize-js, world `router-plugin`).
//
// The twin of the Rust `namespace-router` and of examples/python-router: same
// config, same decisions. Built by scripts/build-plugins.sh into
// target/plugins/js-router.wasm.
//
// Config: {"rules": [{"match": "chat:*", "to": ["chat:all", "$channel"]},
//                    {"match": "spam:*", "drop": true},
//                    {"match": "log:*", "to": ["audit:$channel"], "wrap": "envelope"},
//                    {"match": "news:*", "add": {"source": "$namespace"}}]}
// The first rule whose `match` (a glob: `*` = any run of characters) fits the
// channel wins; no match = direct.

import { config } from "switchyard:gateway/host@0.2.0";
import { parseRules, route as decide, DIRECT } from "./rules.js";

// Parsed rules, re-parsed only when the config text changes.
let cache = { raw: null, rules: null };

function rules() {
  const raw = config();
  if (raw !== cache.raw) {
    cache = { raw, rules: parseRules(raw) };
  }
  return cache.rules;
}

// A thrown `{ tag, val }` is returned as the `err` of `result<route, denial>`.
const other = (msg) => ({ tag: "other", val: msg });

export const router = {
  route(req) {
    let rs;
    try {
      rs = rules();
    } catch (e) {
      throw other(`js-router is misconfigured: ${e.message}`);
    }
    let decision;
    try {
      decision = decide(rs, req.channel, req.dataJson, req.principal.id, req.clientId);
    } catch (e) {
      throw other(`payload is not JSON: ${e.message}`);
    }
    if (decision === DIRECT) {
      return { tag: "direct" };
    }
    return {
      tag: "to",
      val: decision.map(([channel, dataJson]) => ({ channel, dataJson })),
    };
  },
};
