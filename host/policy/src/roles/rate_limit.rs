//! The `rate-limit-plugin` world as [`RateLimitPolicy`].

use std::sync::Arc;

use switchyard_core::config::{PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{PolicySet, RateLimitPolicy};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{PluginRole, RoleInstance};
use crate::adapters::{Caller, WasmRateLimit};
use crate::bindings::rate_limit::{RateLimitPlugin, RateLimitPluginPre};
use crate::host_api::PluginState;
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedRateLimit};

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
