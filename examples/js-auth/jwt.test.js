// Unit tests of the JWT checks, without a component: `node --test`.
import test from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { b64urlDecode, grantedChannels, hmacSha256, parseConfig, sha256, utf8, verify } from "./jwt.js";

const hex = (b) => Buffer.from(b).toString("hex");
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
const sign = (claims, secret, header = { alg: "HS256", typ: "JWT" }) => {
  const input = `${b64(header)}.${b64(claims)}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
};

test("sha256 and hmac match node's", () => {
  for (const s of ["", "abc", "x".repeat(55), "x".repeat(56), "x".repeat(1000), "é"]) {
    assert.equal(hex(sha256(utf8(s))), createHash("sha256").update(s).digest("hex"));
  }
  for (const k of ["k", "y".repeat(64), "y".repeat(100)]) {
    assert.equal(hex(hmacSha256(utf8(k), utf8("m"))), createHmac("sha256", k).update("m").digest("hex"));
  }
  assert.equal(b64urlDecode("aGk="), null);
  assert.equal(b64urlDecode("a+"), null);
});

test("verify", () => {
  const v = parseConfig(JSON.stringify({ hs256_secret: "s", audience: "demo", issuer: "it", leeway_secs: 2 }));
  const now = 1_000_000;
  const good = { sub: "alice", aud: "demo", iss: "it", exp: now + 300, channels: ["room:*"] };
  assert.equal(verify(v, sign(good, "s"), now).sub, "alice");
  assert.equal(verify(v, sign({ ...good, aud: ["x", "demo"] }, "s"), now).sub, "alice");
  for (const [what, token] of [
    ["expired", sign({ ...good, exp: now - 60 }, "s")],
    ["leeway", sign({ ...good, exp: now - 2 }, "s")],
    ["signature", sign(good, "other")],
    ["audience", sign({ ...good, aud: "other" }, "s")],
    ["issuer", sign({ ...good, iss: "evil" }, "s")],
    ["nbf", sign({ ...good, nbf: now + 600 }, "s")],
    ["no exp", sign({ ...good, exp: undefined }, "s")],
    ["no sub", sign({ ...good, sub: "" }, "s")],
    ["alg none", sign(good, "s", { alg: "none" })],
    ["garbage", "not.a.jwt"],
    ["two parts", "a.b"],
  ]) {
    assert.throws(() => verify(v, token, now), undefined, what);
  }
});

test("config and grants", () => {
  assert.throws(() => parseConfig("{}"));
  assert.throws(() => parseConfig('{"hs256_secret":"s","x":1}'));
  assert.throws(() => parseConfig('{"rs256_public_key_pem":"-----"}'));
  assert.equal(parseConfig('{"hs256_secret":"s"}').leewaySecs, 30);
  assert.deepEqual(grantedChannels({ channels: "a:* b" }, "channels"), ["a:*", "b"]);
  assert.deepEqual(grantedChannels({ channels: ["a", 1] }, "channels"), ["a"]);
  assert.deepEqual(grantedChannels({ channels: 3 }, "channels"), []);
});
