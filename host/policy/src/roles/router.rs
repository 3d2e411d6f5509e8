//! The `router-plugin` world as [`RouterPolicy`].

use std::sync::Arc;

use serde_json::value::RawValue;
use switchyard_core::config::{PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{
    Denial, PolicySet, PublishRequest, Route, RouteTarget, RouterPolicy,
};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use self::world::{RouterPlugin, RouterPluginPre};
use super::{PluginRole, RoleInstance};
use crate::adapters::{
    Caller, MAX_CHANNEL_BYTES, MAX_ROUTED_DATA_BYTES, principal_param, to_denial,
};
use crate::bindings::types;
use crate::host_api::PluginState;
use crate::pool::{CallError, classify};
use crate::record;
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedRouter};

/// Bindings of the `router-plugin` world (the shared `types` and `host`
/// interfaces come from [`crate::bindings`]).
// SAFETY: only the generated code uses `unsafe` (typed function handles whose
// signatures bindgen derived from the same WIT it type-checks against).
#[allow(unsafe_code, missing_docs, clippy::all)]
pub(crate) mod world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "router-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

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

fn check_route(route: types::Route) -> Result<Route, CallError> {
    let targets = match route {
        types::Route::Direct => return Ok(Route::Direct),
        types::Route::To(t) => t,
    };
    if targets.len() > switchyard_core::publish::MAX_ROUTES {
        return Err(CallError::Invalid(format!(
            "{} routes (at most {})",
            targets.len(),
            switchyard_core::publish::MAX_ROUTES
        )));
    }
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        if t.channel.is_empty() || t.channel.len() > MAX_CHANNEL_BYTES {
            return Err(CallError::Invalid(format!(
                "route channel must be 1-{MAX_CHANNEL_BYTES} bytes"
            )));
        }
        let data = match t.data_json {
            None => None,
            Some(d) if d.len() > MAX_ROUTED_DATA_BYTES => {
                return Err(CallError::Invalid(format!(
                    "routed payload larger than {MAX_ROUTED_DATA_BYTES} bytes"
                )));
            }
            Some(d) => Some(
                RawValue::from_string(d)
                    .map_err(|e| CallError::Invalid(format!("routed payload is not JSON: {e}")))?,
            ),
        };
        out.push(RouteTarget {
            channel: t.channel,
            data,
        });
    }
    Ok(Route::To(out))
}

/// Router role backed by a plugin.
pub(crate) struct WasmRouter(pub Caller<RouterPlugin>);

impl RouterPolicy for WasmRouter {
    fn route(&self, req: &PublishRequest<'_>) -> Result<Route, Denial> {
        let wreq = types::PublishRequest {
            principal: principal_param(req.principal),
            client_id: req.client,
            channel: req.channel,
            data_json: req.data.get(),
        };
        let mut ticket = self.0.recorder.begin();
        let timeout = self.0.pool.timeout();
        let r = self.0.run(
            ticket.as_mut(),
            |store, b| match b
                .switchyard_gateway_router()
                .call_route(store, wreq)
                .map_err(|e| classify(&e, timeout))?
            {
                Ok(route) => check_route(route).map(Ok),
                Err(d) => Ok(Err(to_denial(d))),
            },
            Result::is_err,
        );
        let d = self.0.resolve(r, || Ok(Route::Direct));
        if let Some(t) = ticket {
            let input = record::route_json(req.principal, req.client, req.channel, req.data);
            t.finish(
                &self.0.plugin,
                record::ROUTE,
                input,
                record::route_decision(&d),
            );
        }
        d
    }
}
