//! The `router-plugin` world as [`RouterPolicy`].

use std::sync::Arc;

use switchyard_core::config::{PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{PolicySet, RouterPolicy};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{PluginRole, RoleInstance};
use crate::adapters::{Caller, WasmRouter};
use crate::bindings::router::{RouterPlugin, RouterPluginPre};
use crate::host_api::PluginState;
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedRouter};

/// Map a publish to channels.
pub(crate) struct Router;

impl PluginRole for Router {
    const ROLE: Role = Role::Router;
    type Bindings = RouterPlugin;
    type Pre = RouterPluginPre<PluginState>;
    type Policy = dyn RouterPolicy;

    fn pre(pre: InstancePre<PluginState>) -> wasmtime::Result<Self::Pre> {
        RouterPluginPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<RouterPlugin> {
        pre.instantiate(store)
    }

    fn mapping(policies: &PoliciesConfig) -> Option<&PolicyConfig> {
        policies.router.as_ref()
    }

    fn slot(set: &mut PolicySet) -> &mut Arc<dyn RouterPolicy> {
        &mut set.router
    }

    fn serve(caller: Caller<RouterPlugin>) -> Arc<dyn RouterPolicy> {
        Arc::new(WasmRouter(caller))
    }

    fn shadowed(serving: Arc<dyn RouterPolicy>, lane: Lane) -> Arc<dyn RouterPolicy> {
        Arc::new(ShadowedRouter { serving, lane })
    }

    fn shadow(caller: Caller<RouterPlugin>) -> ShadowPolicy {
        ShadowPolicy::Router(Arc::new(WasmRouter(caller)))
    }
}

impl RoleInstance for RouterPlugin {
    type Role = Router;
}
