//! `namespace-router`: rewrites, fans out, drops and wraps publishes by
//! channel-name rules from config. The first matching rule wins; no match →
//! direct.
//!
//! Config: `rules = [{ match = "chat:*", to = ["chat:all", "$channel"] },
//! { match = "spam:*", drop = true }, { match = "log:*", to = ["audit:$channel"],
//! wrap = "envelope" }, { match = "news:*", add = { source = "$namespace" } }]`.
//! `to` defaults to `["$channel"]`. Substitutions in `to` and in `add` string
//! values: `$channel` (full name), `$namespace` (before the first `:`), `$name`
//! (after the first `:`), `$principal`, `$client`. `wrap = "envelope"` turns the
//! payload into `{"channel": <original channel>, "data": <payload>}`; `add` sets
//! fields on an object payload (after wrapping).

mod rules;

use switchyard_sdk::{Denial, PublishRequest, Route, Router, host};

use crate::rules::Rules;

struct NamespaceRouter;

impl Router for NamespaceRouter {
    fn route(req: &PublishRequest) -> Result<Route, Denial> {
        let rules = host::config_cached::<Rules>()
            .map_err(|e| Denial::Other(format!("namespace-router is misconfigured: {e}")))?;
        rules.route(req)
    }
}

switchyard_sdk::export_router!(NamespaceRouter);
