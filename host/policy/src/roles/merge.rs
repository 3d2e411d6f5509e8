//! The `merge-plugin` world as [`MergePolicy`]: each open document pins an
//! instance of its own.

use std::sync::Arc;

use switchyard_core::config::{PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{MergePolicy, PolicySet};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{PluginRole, RoleInstance};
use crate::adapters::{Caller, WasmMerge};
use crate::bindings::merge::{MergePlugin, MergePluginPre};
use crate::host_api::PluginState;
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedMerge};

/// Conflict resolution of state documents.
pub(crate) struct Merge;

impl PluginRole for Merge {
    const ROLE: Role = Role::Merge;
    type Bindings = MergePlugin;
    type Pre = MergePluginPre<PluginState>;
    type Policy = dyn MergePolicy;

    fn pre(pre: InstancePre<PluginState>) -> wasmtime::Result<Self::Pre> {
        MergePluginPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<MergePlugin> {
        pre.instantiate(store)
    }

    fn mapping(policies: &PoliciesConfig) -> Option<&PolicyConfig> {
        policies.merge.as_ref()
    }

    fn slot(set: &mut PolicySet) -> &mut Arc<dyn MergePolicy> {
        &mut set.merge
    }

    fn serve(caller: Caller<MergePlugin>) -> Arc<dyn MergePolicy> {
        Arc::new(WasmMerge(Arc::new(caller)))
    }

    fn shadowed(serving: Arc<dyn MergePolicy>, lane: Lane) -> Arc<dyn MergePolicy> {
        Arc::new(ShadowedMerge::new(serving, lane))
    }

    fn shadow(caller: Caller<MergePlugin>) -> ShadowPolicy {
        ShadowPolicy::Merge(Arc::new(WasmMerge(Arc::new(caller))))
    }
}

impl RoleInstance for MergePlugin {
    type Role = Merge;
}
