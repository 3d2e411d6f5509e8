//! The `rate-limit-plugin` world as [`RateLimitPolicy`].

use std::sync::Arc;

use switchyard_core::config::{OnError, PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{PolicySet, RateDecision, RateKey, RateLimitPolicy};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use self::world::{RateLimitPlugin, RateLimitPluginPre};
use super::{PluginRole, RoleInstance};
use crate::adapters::{Caller, FAILED_RETRY_MS, MAX_WAIT_MS};
use crate::bindings::types;
use crate::host_api::PluginState;
use crate::pool::classify;
use crate::record;
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedRateLimit};

/// Bindings of the `rate-limit-plugin` world (the shared `types` and `host`
/// interfaces come from [`crate::bindings`]).
// SAFETY: only the generated code uses `unsafe` (typed function handles whose
// signatures bindgen derived from the same WIT it type-checks against).
#[allow(unsafe_code, missing_docs, clippy::all)]
pub(crate) mod world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "rate-limit-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

/// Allow, reject or delay a publish.
pub(crate) struct RateLimit;

impl PluginRole for RateLimit {
    const ROLE: Role = Role::RateLimit;
    type Bindings = RateLimitPlugin;
    type Pre = RateLimitPluginPre<PluginState>;
    type Policy = dyn RateLimitPolicy;

    fn pre(pre: InstancePre<PluginState>) -> wasmtime::Result<Self::Pre> {
        RateLimitPluginPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<RateLimitPlugin> {
        pre.instantiate(store)
    }

    fn mapping(policies: &PoliciesConfig) -> Option<&PolicyConfig> {
        policies.rate_limit.as_ref()
    }

    fn slot(set: &mut PolicySet) -> &mut Arc<dyn RateLimitPolicy> {
        &mut set.rate_limit
    }

    fn serve(caller: Caller<RateLimitPlugin>) -> Arc<dyn RateLimitPolicy> {
        Arc::new(WasmRateLimit(caller))
    }

    fn shadowed(serving: Arc<dyn RateLimitPolicy>, lane: Lane) -> Arc<dyn RateLimitPolicy> {
        Arc::new(ShadowedRateLimit { serving, lane })
    }

    fn shadow(caller: Caller<RateLimitPlugin>) -> ShadowPolicy {
        ShadowPolicy::RateLimit(Arc::new(WasmRateLimit(caller)))
    }
}

impl RoleInstance for RateLimitPlugin {
    type Role = RateLimit;
}

/// Rate-limit role backed by a plugin.
pub(crate) struct WasmRateLimit(pub Caller<RateLimitPlugin>);

impl RateLimitPolicy for WasmRateLimit {
    fn check(&self, key: &RateKey<'_>, cost: u32) -> RateDecision {
        let wkey = types::RateKey {
            principal: key.principal,
            client_id: key.client,
            channel: key.channel,
        };
        let mut ticket = self.0.recorder.begin();
        let timeout = self.0.pool.timeout();
        let r = self.0.run(
            ticket.as_mut(),
            |store, b| {
                let d = b
                    .switchyard_gateway_rate_limit()
                    .call_check(store, wkey, cost)
                    .map_err(|e| classify(&e, timeout))?;
                Ok(match d {
                    types::RateDecision::Allow => RateDecision::Allow,
                    types::RateDecision::Reject(ms) => RateDecision::Reject {
                        retry_after_ms: ms.min(MAX_WAIT_MS),
                    },
                    types::RateDecision::Delay(ms) => RateDecision::Delay {
                        ms: ms.min(MAX_WAIT_MS),
                    },
                })
            },
            |d| matches!(d, RateDecision::Reject { .. }),
        );
        let d = match r {
            Ok(d) => d,
            Err(_) => match self.0.on_error {
                OnError::Deny => RateDecision::Reject {
                    retry_after_ms: FAILED_RETRY_MS,
                },
                OnError::Allow => RateDecision::Allow,
            },
        };
        if let Some(t) = ticket {
            let input = record::check_json(key, cost);
            t.finish(
                &self.0.plugin,
                record::CHECK,
                input,
                record::rate_decision(&d),
            );
        }
        d
    }
}
