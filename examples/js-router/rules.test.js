// Unit tests of the routing rules, without a component: `node --test`.
import test from "node:test";
import assert from "node:assert/strict";
import { DIRECT, globMatch, parseRules, route, substitute } from "./rules.js";

const DEMO = JSON.stringify({
  rules: [
    { match: "chat:*", to: ["chat:all", "$channel"] },
    { match: "spam:*", drop: true },
    { match: "log:*", to: ["audit:$channel"], wrap: "envelope" },
    { match: "news:*", add: { source: "$namespace", by: "$principal" } },
  ],
});

test("globs", () => {
  for (const [p, c, want] of [
    ["*", "", true],
    ["", "a", false],
    ["a*c", "abc", true],
    ["a*b*c", "a-c-b", false],
    ["room:*:msg", "room:1:msg", true],
    ["room:*:msg", "room:1:msgs", false],
    ["*x", "xxxx", true],
    ["chat:*", "chat", false],
  ]) {
    assert.equal(globMatch(p, c), want, `${p} ~ ${c}`);
  }
});

test("substitution is one pass", () => {
  assert.equal(substitute("$namespace/$name/$x", "a:b", "p", "c"), "a/b/$x");
  assert.equal(substitute("$principal", "a:b", "$client", "c"), "$client");
});

test("demo rules", () => {
  const rules = parseRules(DEMO);
  assert.deepEqual(route(rules, "chat:lobby", '{"t":1}'), [
    ["chat:all", undefined],
    ["chat:lobby", undefined],
  ]);
  assert.deepEqual(route(rules, "spam:x", "1"), []);
  assert.deepEqual(route(rules, "log:app", '{"l":"w"}'), [
    ["audit:log:app", '{"channel":"log:app","data":{"l":"w"}}'],
  ]);
  assert.deepEqual(route(rules, "news:today", '{"a":1}', "alice"), [
    ["news:today", '{"a":1,"source":"news","by":"alice"}'],
  ]);
  assert.equal(route(rules, "other", "1"), DIRECT);
  assert.throws(() => route(rules, "log:x", "not json"));
});

test("bad configs are refused", () => {
  for (const bad of [
    "[]",
    '{"x":1}',
    '{"rules":{}}',
    '{"rules":[{"to":["a"]}]}',
    '{"rules":[{"match":"a","drop":true,"to":["b"]}]}',
    '{"rules":[{"match":"a","to":[]}]}',
    '{"rules":[{"match":"a","wrap":"box"}]}',
    '{"rules":[{"match":"a","colour":1}]}',
  ]) {
    assert.throws(() => parseRules(bad), undefined, bad);
  }
});
