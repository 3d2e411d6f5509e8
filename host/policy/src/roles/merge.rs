//! The `merge-plugin` world as [`MergePolicy`]: each open document pins an
//! instance of its own.

use std::sync::Arc;

use std::cell::RefCell;

use quanta::Instant;
use switchyard_core::config::{OnError, PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{BuiltIn, MergeDocument, MergeError, MergePolicy, PolicySet, Stamp};
use wasmtime::Store;
use wasmtime::component::{InstancePre, ResourceAny};

use self::world::{MergePlugin, MergePluginPre};
use super::{PluginRole, RoleInstance};
use crate::adapters::{Caller, MAX_MERGE_BYTES};
use crate::bindings::types;
use crate::engine::bounded;
use crate::host_api::PluginState;
use crate::pool::{CallError, Loaded, classify};
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedMerge};

/// Bindings of the `merge-plugin` world (the shared `types` and `host`
/// interfaces come from [`crate::bindings`]).
// SAFETY: only the generated code uses `unsafe` (typed function handles whose
// signatures bindgen derived from the same WIT it type-checks against).
#[allow(unsafe_code, missing_docs, clippy::all)]
pub(crate) mod world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "merge-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

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

fn to_merge_error(e: types::MergeError) -> MergeError {
    match e {
        types::MergeError::Conflict(s) => MergeError::Conflict(bounded(s)),
        types::MergeError::Invalid(s) => MergeError::Invalid(bounded(s)),
        types::MergeError::Other(s) => MergeError::Failed(bounded(s)),
    }
}

/// Merge role backed by a plugin: each open document pins its own instance.
pub(crate) struct WasmMerge(pub Arc<Caller<MergePlugin>>);

impl MergePolicy for WasmMerge {
    fn open(&self, snapshot: &[u8]) -> Result<Box<dyn MergeDocument>, MergeError> {
        let caller = &self.0;
        let timeout = caller.pool.bulk_timeout();
        let start = Instant::now();
        let r = caller.placed(|| {
            let mut inst = caller.pool.instantiate()?;
            // Opening from a snapshot is as big as the document.
            caller.pool.arm_bulk(&mut inst.store);
            let opened = inst
                .bindings
                .switchyard_gateway_merge()
                .document()
                .call_open(&mut inst.store, snapshot)
                .map_err(|e| classify(&e, timeout))?;
            Ok((inst, opened))
        });
        caller.record(start, &r, |(_, o)| o.is_err());
        match r {
            Ok((inst, Ok(handle))) => Ok(Box::new(WasmDocument {
                caller: caller.clone(),
                inner: RefCell::new(Some(Pinned { inst, handle })),
            })),
            Ok((_, Err(e))) => Err(to_merge_error(e)),
            Err(e) => match caller.on_error {
                OnError::Allow => BuiltIn.open(snapshot),
                OnError::Deny => Err(MergeError::Failed(caller.failed(&e).to_string())),
            },
        }
    }
}

struct Pinned {
    inst: Loaded<MergePlugin>,
    handle: ResourceAny,
}

/// A live document inside a pinned plugin instance. After a failed call the
/// instance is dropped and the document reports `MergeError::Lost` from then
/// on (its state lived in the instance); the caller reopens from its snapshot.
pub(crate) struct WasmDocument {
    caller: Arc<Caller<MergePlugin>>,
    inner: RefCell<Option<Pinned>>,
}

impl WasmDocument {
    /// One call on the pinned instance; `bulk` for calls whose work grows
    /// with the document (their deadline is [`InstancePool::bulk_timeout`]).
    fn call<R>(
        &self,
        bulk: bool,
        f: impl FnOnce(&mut Pinned) -> Result<R, CallError>,
        denied: impl FnOnce(&R) -> bool,
    ) -> Result<R, MergeError> {
        let mut guard = self.inner.borrow_mut();
        let Some(pinned) = guard.as_mut() else {
            return Err(MergeError::Lost(format!(
                "merge plugin {}: document lost after an earlier failure",
                self.caller.plugin
            )));
        };
        let start = Instant::now();
        if bulk {
            self.caller.pool.arm_bulk(&mut pinned.inst.store);
        } else {
            self.caller.pool.arm(&mut pinned.inst.store);
        }
        let r = self
            .caller
            .figures
            .sampled(|| self.caller.placed(|| f(pinned)));
        self.caller.record(start, &r, denied);
        r.map_err(|e| {
            *guard = None;
            MergeError::Failed(self.caller.failed(&e).to_string())
        })
    }
}

/// A document resource's methods, as bindgen names them.
type GuestDocument<'a> = world::exports::switchyard::gateway::merge::GuestDocument<'a>;

impl WasmDocument {
    /// One document call answering bytes or the plugin's merge error;
    /// refuses more than [`MAX_MERGE_BYTES`] (`what` names them). `bulk` for
    /// calls whose work grows with the document.
    fn answer(
        &self,
        bulk: bool,
        what: &str,
        f: impl FnOnce(
            GuestDocument<'_>,
            &mut Store<PluginState>,
            ResourceAny,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, types::MergeError>>,
    ) -> Result<Option<Vec<u8>>, MergeError> {
        let timeout = if bulk {
            self.caller.pool.bulk_timeout()
        } else {
            self.caller.pool.timeout()
        };
        self.call(
            bulk,
            |p| {
                let r = f(
                    p.inst.bindings.switchyard_gateway_merge().document(),
                    &mut p.inst.store,
                    p.handle,
                )
                .map_err(|e| classify(&e, timeout))?;
                match r {
                    Ok(Some(b)) if b.len() > MAX_MERGE_BYTES => Err(CallError::Invalid(format!(
                        "{what} larger than {MAX_MERGE_BYTES} bytes"
                    ))),
                    Ok(b) => Ok(Ok(b)),
                    Err(e) => Ok(Err(to_merge_error(e))),
                }
            },
            Result::is_err,
        )?
    }
}

impl MergeDocument for WasmDocument {
    /// WIT 0.2's `apply` has no stamp: the plugin orders writes itself (the
    /// gateway applies them in log order, so a Lamport clock kept by the
    /// plugin rises with the gateway's). Empty updates are never broadcast.
    fn apply(&mut self, update: &[u8], _stamp: &Stamp<'_>) -> Result<Option<Vec<u8>>, MergeError> {
        self.answer(false, "update", |d, store, h| {
            d.call_apply(store, h, update)
        })
        .map(|u| u.filter(|u| !u.is_empty()))
    }

    fn snapshot(&self) -> Result<Vec<u8>, MergeError> {
        self.answer(true, "snapshot", |d, store, h| {
            d.call_snapshot(store, h).map(|b| Ok(Some(b)))
        })
        .map(Option::unwrap_or_default)
    }

    fn state_vector(&self) -> Result<Option<Vec<u8>>, MergeError> {
        self.answer(true, "state vector", |d, store, h| {
            d.call_state_vector(store, h).map(|b| Ok(Some(b)))
        })
        .map(|sv| sv.filter(|sv| !sv.is_empty()))
    }

    fn diff(&self, state_vector: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        self.answer(true, "diff", |d, store, h| {
            d.call_diff(store, h, state_vector).map(|r| r.map(Some))
        })
    }
}
