"""Routing rules of the Python router: the twin of the Rust `namespace-router`
plugin (same config format and behaviour), in plain Python so it can be
unit-tested without a component (`python3 -m unittest test_rules`).

Config: {"rules": [{"match": "chat:*", "to": ["chat:all", "$channel"]},
                   {"match": "spam:*", "drop": true},
                   {"match": "log:*", "to": ["audit:$channel"], "wrap": "envelope"},
                   {"match": "news:*", "add": {"source": "$namespace"}}]}
The first rule whose `match` (a glob: `*` = any run of characters) fits the
channel wins; no match = direct.
"""

import json

MAX_TARGETS = 16
_RULE_KEYS = {"match", "to", "drop", "wrap", "add"}


class ConfigError(ValueError):
    """The config is not a valid rule list."""


def glob_match(pattern: str, channel: str) -> bool:
    """`*` matches any run of characters (including none); others match themselves."""
    p, c = pattern, channel
    pi = ci = 0
    star = None  # (pattern index of the last `*`, channel index it absorbs up to)
    while ci < len(c):
        if pi < len(p) and p[pi] == "*":
            star = (pi, ci)
            pi += 1
        elif pi < len(p) and p[pi] == c[ci]:
            pi += 1
            ci += 1
        elif star is not None:
            pi = star[0] + 1
            ci = star[1] + 1
            star = (star[0], star[1] + 1)
        else:
            return False
    return all(ch == "*" for ch in p[pi:])


def substitute(template: str, channel: str, principal: str, client: str) -> str:
    """One-pass replacement of $channel, $namespace, $name, $principal, $client."""
    if "$" not in template:
        return template
    namespace, _, name = channel.partition(":")
    variables = [
        ("$channel", channel),
        ("$namespace", namespace),  # before $name, its prefix
        ("$name", name),
        ("$principal", principal),
        ("$client", client),
    ]
    out, i = [], 0
    while i < len(template):
        if template[i] == "$":
            for var, value in variables:
                if template.startswith(var, i):
                    out.append(value)
                    i += len(var)
                    break
            else:
                out.append("$")
                i += 1
        else:
            j = template.find("$", i)
            j = len(template) if j < 0 else j
            out.append(template[i:j])
            i = j
    return "".join(out)


class Rule:
    def __init__(self, raw):
        if not isinstance(raw, dict):
            raise ConfigError("a rule must be a table")
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise ConfigError(f"unknown rule key(s): {sorted(unknown)}")
        if not isinstance(raw.get("match"), str):
            raise ConfigError("a rule needs match = \"<glob>\"")
        self.pattern = raw["match"]
        drop = raw.get("drop", False)
        to = raw.get("to")
        if drop is True and to is not None:
            raise ConfigError(f"rule {self.pattern!r}: drop and to exclude each other")
        if drop is True:
            to = []
        elif to is None:
            to = ["$channel"]
        elif not (isinstance(to, list) and to and all(isinstance(t, str) and t for t in to)):
            raise ConfigError(f"rule {self.pattern!r}: to must be a non-empty list of channels")
        if len(to) > MAX_TARGETS:
            raise ConfigError(f"rule {self.pattern!r}: more than {MAX_TARGETS} targets")
        self.to = to
        self.wrap = raw.get("wrap")
        if self.wrap not in (None, "envelope"):
            raise ConfigError(f"rule {self.pattern!r}: unknown wrap {self.wrap!r}")
        self.add = raw.get("add") or {}
        if not isinstance(self.add, dict):
            raise ConfigError(f"rule {self.pattern!r}: add must be a table")


def parse_rules(config_json: str):
    cfg = json.loads(config_json or "{}")
    if not isinstance(cfg, dict) or set(cfg) - {"rules"}:
        raise ConfigError("config accepts only `rules`")
    rules = cfg.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("rules must be a list")
    return [Rule(r) for r in rules]


DIRECT = "direct"


def route(rules, channel: str, data_json: str, principal: str = "", client: str = ""):
    """DIRECT, or a list of (channel, rewritten data JSON or None); [] = drop."""
    rule = next((r for r in rules if glob_match(r.pattern, channel)), None)
    if rule is None:
        return DIRECT
    if not rule.to:
        return []
    data = None
    if rule.wrap or rule.add:
        value = json.loads(data_json)
        if rule.wrap == "envelope":
            value = {"channel": channel, "data": value}
        if isinstance(value, dict):
            for k, v in rule.add.items():
                value[k] = substitute(v, channel, principal, client) if isinstance(v, str) else v
        data = json.dumps(value, separators=(",", ":"))
    targets, seen = [], set()
    for t in rule.to:
        ch = substitute(t, channel, principal, client)
        if ch and ch not in seen:
            seen.add(ch)
            targets.append((ch, data))
    if data is None and targets == [(channel, None)]:
        return DIRECT
    return targets
