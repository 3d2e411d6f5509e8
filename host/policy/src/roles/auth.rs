//! The `auth-plugin` world as [`AuthPolicy`].

use std::sync::Arc;

use switchyard_core::config::{PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{AuthPolicy, PolicySet};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{PluginRole, RoleInstance};
use crate::adapters::{Caller, Unavailable, WasmAuth};
use crate::bindings::auth::{AuthPlugin, AuthPluginPre};
use crate::host_api::PluginState;
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedAuth};

/// Authenticate connections, authorize subscribe and publish.
pub(crate) struct Auth;

impl PluginRole for Auth {
    const ROLE: Role = Role::Auth;
    const FAILS_CLOSED: bool = true;
    type Bindings = AuthPlugin;
    type Pre = AuthPluginPre<PluginState>;
    type Policy = dyn AuthPolicy;

    fn pre(pre: InstancePre<PluginState>) -> wasmtime::Result<Self::Pre> {
        AuthPluginPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<AuthPlugin> {
        pre.instantiate(store)
    }

    fn mapping(policies: &PoliciesConfig) -> Option<&PolicyConfig> {
        policies.auth.as_ref()
    }

    fn slot(set: &mut PolicySet) -> &mut Arc<dyn AuthPolicy> {
        &mut set.auth
    }

    fn serve(caller: Caller<AuthPlugin>) -> Arc<dyn AuthPolicy> {
        Arc::new(WasmAuth(caller))
    }

    fn shadowed(serving: Arc<dyn AuthPolicy>, lane: Lane) -> Arc<dyn AuthPolicy> {
        Arc::new(ShadowedAuth { serving, lane })
    }

    fn shadow(caller: Caller<AuthPlugin>) -> ShadowPolicy {
        ShadowPolicy::Auth(Arc::new(WasmAuth(caller)))
    }

    fn unavailable(refusal: Unavailable) -> Option<Arc<dyn AuthPolicy>> {
        Some(Arc::new(refusal))
    }
}

impl RoleInstance for AuthPlugin {
    type Role = Auth;
}
