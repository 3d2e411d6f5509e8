//! The policy roles, one file each, beside its WIT world in `wit/`: the
//! world's `bindgen!`, the adapter implementing the core policy trait by calls
//! into the plugin (every returned value checked and bounded), and the role's
//! [`PluginRole`] implementation. [`each_role`] is the one list of them.
//! Everything role-specific the runtime does — recognising a component of the
//! role, instantiating it, serving the core trait through it, shadowing it,
//! finding its slot in the tenant's config and policy set — goes through the
//! trait, so the engine, pools and registry iterate roles instead of naming
//! them (as Spin's `Factor` does for host features).
//!
//! Adding a role: its world in `wit/` (and the WIT CHANGELOG), its core trait
//! with a `PolicySet` slot and a `PoliciesConfig` key in `switchyard-core`, a
//! variant of [`Role`], and one file here, listed in [`each_role`]. Shadow
//! comparison and replay say per role what "the same decision" is, in
//! `shadow.rs` / `replay.rs`.

mod auth;
mod merge;
mod rate_limit;
mod router;

use std::any::Any;
use std::sync::Arc;

use switchyard_core::config::{PoliciesConfig, PolicyConfig};
use switchyard_core::policy::PolicySet;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use crate::adapters::{Caller, Unavailable};
use crate::host_api::PluginState;
use crate::role::Role;
use crate::shadow::{Lane, ShadowPolicy};

pub(crate) use auth::{Auth, WasmAuth};
pub(crate) use merge::Merge;
pub(crate) use rate_limit::{RateLimit, WasmRateLimit};
pub(crate) use router::{Router, WasmRouter};

/// One policy role: its WIT world's bindings, the core trait it serves as and
/// how a plugin is wired into it. Implemented by a unit type per role.
pub(crate) trait PluginRole: Sized + 'static {
    /// Which role (config key, metric label).
    const ROLE: Role;
    /// Whether a mapping its plugin cannot serve refuses everything under
    /// `on_error = deny` (auth: an unserved auth must not open the door);
    /// otherwise the built-in serves.
    const FAILS_CLOSED: bool = false;
    /// One instance of the world's generated bindings.
    type Bindings: RoleInstance<Role = Self>;
    /// The world's pre-instantiated component (kept in [`crate::engine::Compiled`]).
    type Pre: Clone + Send + Sync + 'static;
    /// The core trait the role serves as (`dyn AuthPolicy`, …).
    type Policy: ?Sized + Send + Sync + 'static;

    /// The typed pre-instance when the component exports this role's world
    /// (an error otherwise). Runs once per loaded file, at load.
    fn pre(pre: InstancePre<PluginState>) -> wasmtime::Result<Self::Pre>;
    /// A new instance in `store`. Runs when a pool has no idle instance.
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self::Bindings>;
    /// The tenant's mapping of this role (`[tenants.<id>.policies.<role>]`).
    fn mapping(policies: &PoliciesConfig) -> Option<&PolicyConfig>;
    /// The role's slot in a tenant's policy set.
    fn slot(set: &mut PolicySet) -> &mut Arc<Self::Policy>;
    /// The serving policy answering through `caller`'s plugin.
    fn serve(caller: Caller<Self::Bindings>) -> Arc<Self::Policy>;
    /// `serving` with each (sampled) call offered to `lane` afterwards.
    fn shadowed(serving: Arc<Self::Policy>, lane: Lane) -> Arc<Self::Policy>;
    /// The shadow side of a lane: `caller`'s plugin as the role's policy.
    fn shadow(caller: Caller<Self::Bindings>) -> ShadowPolicy;
    /// What serves while the mapped plugin cannot and the role
    /// [fails closed](Self::FAILS_CLOSED); `None` for the other roles.
    fn unavailable(refusal: Unavailable) -> Option<Arc<Self::Policy>> {
        let _ = refusal;
        None
    }
}

/// Code generic over a role, run for each of them by [`each_role`].
pub(crate) trait RoleVisitor {
    /// Called once per role, in [`Role::ALL`] order.
    fn visit<R: PluginRole>(&mut self);
}

/// Runs `v` for every role, in [`Role::ALL`] order: the one list of roles.
pub(crate) fn each_role(v: &mut impl RoleVisitor) {
    v.visit::<Auth>();
    v.visit::<Router>();
    v.visit::<RateLimit>();
    v.visit::<Merge>();
}

/// A compiled component's pre-instance, type-erased ([`PluginRole::Pre`] of
/// its role).
pub(crate) type AnyPre = Arc<dyn Any + Send + Sync>;

/// Instantiates `pre` as role `R` (an error when it is another role's).
pub(crate) fn instantiate<R: PluginRole>(
    pre: &AnyPre,
    store: &mut Store<PluginState>,
) -> wasmtime::Result<R::Bindings> {
    match pre.downcast_ref::<R::Pre>() {
        Some(p) => R::instantiate(p, store),
        None => Err(wasmtime::Error::msg("plugin role mismatch")),
    }
}

/// Bindings of one role's world: how a pool instantiates them.
pub(crate) trait RoleInstance: Send + Sized + 'static {
    /// The role whose world these bindings are.
    type Role: PluginRole<Bindings = Self>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_visits_every_role_once_in_order() {
        struct Seen(Vec<Role>);
        impl RoleVisitor for Seen {
            fn visit<R: PluginRole>(&mut self) {
                self.0.push(R::ROLE);
            }
        }
        let mut seen = Seen(Vec::new());
        each_role(&mut seen);
        assert_eq!(seen.0, Role::ALL);
    }

    #[test]
    fn only_auth_fails_closed() {
        struct Closed(Vec<Role>);
        impl RoleVisitor for Closed {
            fn visit<R: PluginRole>(&mut self) {
                if R::FAILS_CLOSED {
                    self.0.push(R::ROLE);
                }
            }
        }
        let mut c = Closed(Vec::new());
        each_role(&mut c);
        assert_eq!(c.0, [Role::Auth]);
    }
}
