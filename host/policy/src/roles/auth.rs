//! The `auth-plugin` world as [`AuthPolicy`].

use std::sync::Arc;

use serde_json::value::RawValue;
use switchyard_core::config::{PoliciesConfig, PolicyConfig};
use switchyard_core::policy::{AuthPolicy, BuiltIn, ConnectRequest, Denial, PolicySet, Principal};
use wasmtime::Store;
use wasmtime::component::{InstancePre, Resource};

use self::world::{AuthPlugin, AuthPluginPre};
use super::{PluginRole, RoleInstance};
use crate::adapters::{
    Caller, MAX_CLAIMS_BYTES, MAX_PRINCIPAL_BYTES, Unavailable, principal_param, to_denial,
};
use crate::bindings::types;
use crate::engine::bounded;
use crate::host_api::{PluginState, RequestRes};
use crate::pool::{CallError, classify};
use crate::record::{self, Ticket};
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy, ShadowedAuth};

/// Bindings of the `auth-plugin` world (the shared `types` and `host`
/// interfaces come from [`crate::bindings`]).
// SAFETY: only the generated code uses `unsafe` (typed function handles whose
// signatures bindgen derived from the same WIT it type-checks against).
#[allow(unsafe_code, missing_docs, clippy::all)]
pub(crate) mod world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "auth-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

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

fn check_principal(p: types::PrincipalResult) -> Result<Principal, CallError> {
    if p.id.len() > MAX_PRINCIPAL_BYTES {
        return Err(CallError::Invalid(format!(
            "principal id longer than {MAX_PRINCIPAL_BYTES} bytes"
        )));
    }
    if p.claims_json.len() > MAX_CLAIMS_BYTES {
        return Err(CallError::Invalid(format!(
            "claims larger than {MAX_CLAIMS_BYTES} bytes"
        )));
    }
    let claims: Arc<str> = if p.claims_json.trim().is_empty() {
        Arc::from("{}")
    } else {
        let raw: &RawValue = serde_json::from_str(&p.claims_json)
            .map_err(|e| CallError::Invalid(format!("claims are not JSON: {e}")))?;
        if !raw.get().starts_with('{') {
            return Err(CallError::Invalid("claims are not a JSON object".into()));
        }
        Arc::from(raw.get())
    };
    Ok(Principal { id: p.id, claims })
}

/// Auth role backed by a plugin.
pub(crate) struct WasmAuth(pub Caller<AuthPlugin>);

impl WasmAuth {
    fn authorize(
        &self,
        ticket: Option<&mut Ticket>,
        f: impl FnOnce(
            &mut Store<PluginState>,
            &AuthPlugin,
        ) -> wasmtime::Result<Result<(), types::Denial>>,
    ) -> Result<(), Denial> {
        let timeout = self.0.pool.timeout();
        let r = self.0.run(
            ticket,
            |store, b| {
                f(store, b)
                    .map(|a| a.map_err(to_denial))
                    .map_err(|e| classify(&e, timeout))
            },
            Result::is_err,
        );
        self.0.resolve(r, || Ok(()))
    }
}

impl AuthPolicy for WasmAuth {
    fn authenticate(&self, req: &Arc<ConnectRequest>) -> Result<Principal, Denial> {
        let mut ticket = self.0.recorder.begin();
        let timeout = self.0.pool.timeout();
        let r = self.0.run(
            ticket.as_mut(),
            |store, b| {
                let res = store
                    .data_mut()
                    .lend(req.clone())
                    .map_err(|e| CallError::Trap(bounded(format!("{e:#}"))))?;
                let borrowed = Resource::<RequestRes>::new_borrow(res.rep());
                let r = b
                    .switchyard_gateway_auth()
                    .call_authenticate(&mut *store, borrowed);
                store.data_mut().unlend(res);
                match r.map_err(|e| classify(&e, timeout))? {
                    Ok(p) => check_principal(p).map(Ok),
                    Err(d) => Ok(Err(to_denial(d))),
                }
            },
            Result::is_err,
        );
        let d = self.0.resolve(r, || BuiltIn.authenticate(req));
        if let Some(t) = ticket {
            let (input, decision) = (record::connect_json(req), record::principal_decision(&d));
            t.finish(&self.0.plugin, record::AUTHENTICATE, input, decision);
        }
        d
    }

    fn authorize_subscribe(&self, principal: &Principal, channel: &str) -> Result<(), Denial> {
        let mut ticket = self.0.recorder.begin();
        let d = self.authorize(ticket.as_mut(), |store, b| {
            b.switchyard_gateway_auth().call_authorize_subscribe(
                store,
                principal_param(principal),
                channel,
            )
        });
        if let Some(t) = ticket {
            let input = record::subscribe_json(principal, channel);
            t.finish(
                &self.0.plugin,
                record::SUBSCRIBE,
                input,
                record::unit_decision(&d),
            );
        }
        d
    }

    fn authorize_publish(
        &self,
        principal: &Principal,
        channel: &str,
        data: &RawValue,
    ) -> Result<(), Denial> {
        let mut ticket = self.0.recorder.begin();
        let d = self.authorize(ticket.as_mut(), |store, b| {
            b.switchyard_gateway_auth().call_authorize_publish(
                store,
                principal_param(principal),
                channel,
                data.get(),
            )
        });
        if let Some(t) = ticket {
            let input = record::publish_json(principal, channel, data);
            t.finish(
                &self.0.plugin,
                record::PUBLISH,
                input,
                record::unit_decision(&d),
            );
        }
        d
    }
}
