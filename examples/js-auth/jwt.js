// JWT (HS256) verification and claim checks for the JavaScript auth plugin, in
// plain JavaScript (SHA-256 and HMAC included) so it is unit-tested with Node
// without a component (`node --test`). No host calls here.

/** Longest token accepted (bytes); anything bigger is refused before decoding. */
export const MAX_TOKEN_BYTES = 8 * 1024;

const CONFIG_KEYS = new Set([
  "hs256_secret",
  "audience",
  "issuer",
  "leeway_secs",
  "require_exp",
  "channels_claim",
]);

const isTable = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** The verifier built once from the policy's `config` JSON; throws on a bad config. */
export function parseConfig(configJson) {
  const c = JSON.parse(configJson || "{}");
  if (!isTable(c)) throw new Error("config must be a table");
  for (const k of Object.keys(c)) {
    if (k === "rs256_public_key_pem") {
      throw new Error("js-auth verifies HS256 only: use jwt-auth for rs256_public_key_pem");
    }
    if (!CONFIG_KEYS.has(k)) throw new Error(`unknown field ${k}`);
  }
  if (typeof c.hs256_secret !== "string" || c.hs256_secret === "") {
    throw new Error("set hs256_secret");
  }
  const optString = (k) => {
    if (c[k] === undefined) return null;
    if (typeof c[k] !== "string") throw new Error(`${k} must be a string`);
    return c[k];
  };
  const leeway = c.leeway_secs ?? 30;
  if (!Number.isInteger(leeway) || leeway < 0) throw new Error("leeway_secs must be a whole number");
  const requireExp = c.require_exp ?? true;
  if (typeof requireExp !== "boolean") throw new Error("require_exp must be true or false");
  const channelsClaim = c.channels_claim ?? "channels";
  if (typeof channelsClaim !== "string") throw new Error("channels_claim must be a string");
  return {
    key: utf8(c.hs256_secret),
    audience: optString("audience"),
    issuer: optString("issuer"),
    leewaySecs: leeway,
    requireExp,
    channelsClaim,
  };
}

/** Verifies `token` at `nowSecs`; returns `{ sub, claims }` or throws an Error saying why. */
export function verify(v, token, nowSecs) {
  if (token.length > MAX_TOKEN_BYTES) throw new Error("malformed token: too long");
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("malformed token: expected three dot-separated parts");
  const [h, p, s] = parts;
  const header = decodeJson(h, "header");
  const sig = b64urlDecode(s);
  if (sig === null) throw new Error("malformed token: signature is not base64url");
  const alg = typeof header.alg === "string" ? header.alg : "none";
  if (alg !== "HS256") throw new Error(`unsupported or unconfigured algorithm "${alg}"`);
  const mac = hmacSha256(v.key, utf8(`${h}.${p}`));
  if (!equalBytes(mac, sig)) throw new Error("bad signature");
  const claims = decodeJson(p, "payload");
  checkClaims(v, claims, nowSecs);
  if (typeof claims.sub !== "string" || claims.sub === "") throw new Error("token has no sub claim");
  return { sub: claims.sub, claims };
}

function checkClaims(v, claims, now) {
  if (claims.exp !== undefined) {
    if (typeof claims.exp !== "number") throw new Error("malformed token: exp is not a number");
    if (now >= claims.exp + v.leewaySecs) throw new Error("token expired");
  } else if (v.requireExp) {
    throw new Error("token has no exp claim");
  }
  if (claims.nbf !== undefined) {
    if (typeof claims.nbf !== "number") throw new Error("malformed token: nbf is not a number");
    if (now + v.leewaySecs < claims.nbf) throw new Error("token not valid yet (nbf)");
  }
  if (v.audience !== null) {
    const aud = claims.aud;
    const ok = aud === v.audience || (Array.isArray(aud) && aud.includes(v.audience));
    if (!ok) throw new Error("wrong audience");
  }
  if (v.issuer !== null && claims.iss !== v.issuer) throw new Error("wrong issuer");
}

function decodeJson(part, what) {
  const bytes = b64urlDecode(part);
  if (bytes === null) throw new Error(`malformed token: ${what} is not base64url`);
  let value;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    value = null;
  }
  if (!isTable(value)) throw new Error(`malformed token: ${what} is not a JSON object`);
  return value;
}

/** The channel patterns a claims object grants: an array of strings or one space-separated string. */
export function grantedChannels(claims, claim) {
  const c = isTable(claims) ? claims[claim] : undefined;
  if (Array.isArray(c)) return c.filter((p) => typeof p === "string");
  if (typeof c === "string") return c.split(/\s+/).filter(Boolean);
  return [];
}

/** `*` matches any run of characters (including none); others match themselves. */
export function globMatch(p, c) {
  let pi = 0;
  let ci = 0;
  let star = -1;
  let mark = 0;
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

// --- bytes -------------------------------------------------------------------

export function utf8(s) {
  return new TextEncoder().encode(s);
}

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64URL_VALUE = new Map([...B64URL].map((ch, i) => [ch, i]));

/** Strict unpadded base64url; null when `s` is not that. */
export function b64urlDecode(s) {
  if (s.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((s.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (const ch of s) {
    const v = B64URL_VALUE.get(ch);
    if (v === undefined) return null;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  if ((acc & ((1 << bits) - 1)) !== 0) return null; // non-canonical trailing bits
  return out;
}

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// --- SHA-256 and HMAC (FIPS 180-4, RFC 2104) --------------------------------

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

export function sha256(msg) {
  const len = msg.length;
  const padded = new Uint8Array((((len + 9 + 63) >> 6) << 6));
  padded.set(msg);
  padded[len] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(len / 0x20000000));
  view.setUint32(padded.length - 4, (len << 3) >>> 0);
  const H = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const W = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) W[i] = view.getUint32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(W[i - 15], 7) ^ rotr(W[i - 15], 18) ^ (W[i - 15] >>> 3);
      const s1 = rotr(W[i - 2], 17) ^ rotr(W[i - 2], 19) ^ (W[i - 2] >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      const ch = (e & f) ^ (~e & g);
      const t1 = (h + S1 + ch + K[i] + W[i]) | 0;
      const S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      h = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    H[0] += a;
    H[1] += b;
    H[2] += c;
    H[3] += d;
    H[4] += e;
    H[5] += f;
    H[6] += g;
    H[7] += h;
  }
  const out = new Uint8Array(32);
  const ov = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) ov.setUint32(4 * i, H[i]);
  return out;
}

export function hmacSha256(key, msg) {
  let k = key.length > 64 ? sha256(key) : key;
  const block = new Uint8Array(64);
  block.set(k);
  const inner = new Uint8Array(64 + msg.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = block[i] ^ 0x36;
    outer[i] = block[i] ^ 0x5c;
  }
  inner.set(msg, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}
