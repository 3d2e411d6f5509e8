"""Unit tests of rules.py (plain Python, no component): `python3 -m unittest test_rules`."""

import json
import unittest

from rules import DIRECT, ConfigError, glob_match, parse_rules, route, substitute

DEMO = json.dumps({"rules": [
    {"match": "chat:*", "to": ["chat:all", "$channel"]},
    {"match": "spam:*", "drop": True},
    {"match": "log:*", "to": ["audit:$channel"], "wrap": "envelope"},
    {"match": "news:*", "add": {"source": "$namespace/$name", "by": "$principal", "n": 1}},
    {"match": "*", "to": ["$channel"]},
]})


class RulesTest(unittest.TestCase):
    def test_globs(self):
        for p, c, want in [("*", "", True), ("room:*", "room:a:b", True), ("room:*", "rooms:a", False),
                           ("a*b*c", "a-c-b", False), ("*x", "xxxx", True), ("", "a", False)]:
            self.assertEqual(glob_match(p, c), want, (p, c))

    def test_same_decisions_as_the_rust_twin(self):
        rules = parse_rules(DEMO)
        self.assertEqual(route(rules, "chat:lobby", "1"), [("chat:all", None), ("chat:lobby", None)])
        self.assertEqual(route(rules, "spam:x", "1"), [])
        self.assertEqual(route(rules, "log:app", '{"l":2}'),
                         [("audit:log:app", '{"channel":"log:app","data":{"l":2}}')])
        got = route(rules, "news:sport", '{"t":"goal"}', principal="alice")
        self.assertEqual(json.loads(got[0][1]), {"t": "goal", "source": "news/sport", "by": "alice", "n": 1})
        self.assertEqual(route(rules, "other", "1"), DIRECT)
        self.assertEqual(route(parse_rules("{}"), "a", "1"), DIRECT)

    def test_substitution_is_single_pass(self):
        self.assertEqual(substitute("$principal|$name|$namespace|$x|$", "a:b", "$channel", ""),
                         "$channel|b|a|$x|$")

    def test_invalid_configs(self):
        for bad in ['{"rules": [{"match": "a", "drop": true, "to": ["b"]}]}',
                    '{"rules": [{"match": "a", "to": []}]}',
                    '{"rules": [{"match": "a", "wrap": "gift"}]}',
                    '{"rules": [{"to": ["b"]}]}',
                    '{"rules": [{"match": "a", "unknown": 1}]}',
                    '{"rulez": []}']:
            with self.assertRaises(ConfigError, msg=bad):
                parse_rules(bad)


if __name__ == "__main__":
    unittest.main()
