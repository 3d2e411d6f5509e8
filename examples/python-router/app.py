"""Switchyard router plugin in Python (componentize-py, world `router-plugin`).

The twin of the Rust `namespace-router`: same config, same decisions (see
rules.py). Built by scripts/build-plugins.sh into target/plugins/python-router.wasm.
"""

import json

from wit_world import exports
from wit_world.imports import host, types
from componentize_py_types import Err

import rules as rules_mod

# Parsed rules, re-parsed only when the config text changes.
_cache = {"raw": None, "rules": None}


def _rules():
    raw = host.config()
    if raw != _cache["raw"]:
        _cache["rules"] = rules_mod.parse_rules(raw)
        _cache["raw"] = raw
    return _cache["rules"]


class Router(exports.Router):
    def route(self, req: types.PublishRequest) -> types.Route:
        try:
            rules = _rules()
        except (rules_mod.ConfigError, ValueError) as e:
            raise Err(types.Denial_Other(f"python-router is misconfigured: {e}"))
        try:
            decision = rules_mod.route(
                rules, req.channel, req.data_json, req.principal.id, req.client_id
            )
        except json.JSONDecodeError as e:
            raise Err(types.Denial_Other(f"payload is not JSON: {e}"))
        if decision == rules_mod.DIRECT:
            return types.Route_Direct()
        return types.Route_To([types.RouteTarget(ch, data) for ch, data in decision])
