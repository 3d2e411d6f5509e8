// Switchyard auth plugin in JavaScript (componentize-js, world `auth-plugin`).
//
// The twin of the Rust `jwt-auth` for HS256 tokens: same config keys (less
// `rs256_public_key_pem`), same decisions. Authenticates a connection with the
// bearer token (`Authorization: Bearer` or `?token=`), then authorizes
// subscribe/publish from a claim listing channel patterns. Built by
// scripts/build-plugins.sh into target/plugins/js-auth.wasm.
//
// Config: `hs256_secret` (required), `audience`, `issuer`, `leeway_secs`
// (default 30), `require_exp` (default true), `channels_claim` (default
// "channels", e.g. ["room:*", "user:alice"] or "room:* user:alice").

import { config, nowMs } from "switchyard:gateway/host@0.2.0";
import { parseConfig, verify, grantedChannels, globMatch } from "./jwt.js";

// A thrown `{ tag, val }` is returned as the `err` (a `denial`) of the call.
const denial = (tag, val) => ({ tag, val });

// The verifier, rebuilt only when the config text changes.
let cache = { raw: null, verifier: null, error: null };

function verifier() {
  const raw = config();
  if (raw !== cache.raw) {
    try {
      cache = { raw, verifier: parseConfig(raw), error: null };
    } catch (e) {
      cache = { raw, verifier: null, error: e.message };
    }
  }
  if (cache.error !== null) throw denial("other", `js-auth is misconfigured: ${cache.error}`);
  return cache.verifier;
}

// Claims text -> granted patterns (a pooled instance serves many connections).
const GRANT_CACHE_ENTRIES = 256;
const grants = new Map();

function granted(who, claim) {
  let patterns = grants.get(who.claimsJson);
  if (patterns === undefined) {
    let claims = null;
    try {
      claims = JSON.parse(who.claimsJson);
    } catch {
      claims = null;
    }
    patterns = grantedChannels(claims, claim);
    if (grants.size >= GRANT_CACHE_ENTRIES) grants.clear();
    grants.set(who.claimsJson, patterns);
  }
  return patterns;
}

function authorize(who, channel, action) {
  const v = verifier();
  if (!granted(who, v.channelsClaim).some((p) => globMatch(p, channel))) {
    throw denial(
      "forbidden",
      `claim "${v.channelsClaim}" does not allow ${action} on "${channel}"`,
    );
  }
}

export const auth = {
  authenticate(req) {
    const v = verifier();
    const token = req.token();
    if (token === undefined || token === null || token === "") {
      throw denial("unauthorized", "missing token");
    }
    const now = Math.floor(Number(nowMs()) / 1000);
    let ok;
    try {
      ok = verify(v, token, now);
    } catch (e) {
      throw denial("unauthorized", `invalid token: ${e.message}`);
    }
    return { id: ok.sub, claimsJson: JSON.stringify(ok.claims) };
  },

  authorizeSubscribe(who, channel) {
    authorize(who, channel, "subscribe");
  },

  authorizePublish(who, channel, _dataJson) {
    authorize(who, channel, "publish");
  },
};
