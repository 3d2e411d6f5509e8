//! Reusable instances of one plugin version for one tenant: a small stack of
//! (Store, instance) pairs. A call takes one (instantiating from the
//! `InstancePre` only when none is idle), runs under the epoch deadline, and
//! gives it back; a call that trapped, timed out or returned garbage drops its
//! store, since a trapped instance is poisoned.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::{Store, Trap};

use crate::engine::{Compiled, bounded, deadline_ticks};
use crate::host_api::{PluginState, Scope};
use crate::isolation::{InstanceTicket, TenantBudget};
pub(crate) use crate::roles::RoleInstance;

/// Idle instances kept per pool (more are dropped when given back).
const MAX_IDLE: usize = 16;

/// Document-sized merge calls get this many call timeouts.
pub const BULK_FACTOR: u32 = 25;
/// ... and at least this long.
pub const BULK_MIN: Duration = Duration::from_millis(250);

/// Least deadline for instantiating (running a guest's start code).
const INSTANTIATE_TIMEOUT: Duration = Duration::from_millis(100);

/// Why a call did not produce a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call ran past its CPU deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The guest trapped (panic, unreachable, out of memory, …).
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest returned a value the host refuses.
    #[error("invalid return: {0}")]
    Invalid(String),
    /// No instance could be created (pool exhausted, instantiation failed).
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The tenant is at its limit of live instances or off-loop calls
    /// ([`crate::isolation`]); nothing ran.
    #[error("busy: {0}")]
    Busy(String),
    /// The plugin is not loaded.
    #[error("not loaded: {0}")]
    Unavailable(String),
}

/// One live instance with its own store.
pub(crate) struct Loaded<B> {
    pub store: Store<PluginState>,
    pub bindings: B,
    /// The tenant's instance slot, given back when the instance is dropped.
    _ticket: InstanceTicket,
}

/// Limits a pool applies to its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub call_timeout: Duration,
    pub memory_limit: usize,
}

/// Instances of one plugin version for one tenant.
pub(crate) struct InstancePool<B> {
    compiled: Arc<Compiled>,
    scope: Arc<Scope>,
    limits: Limits,
    ticks: u64,
    budget: Arc<TenantBudget>,
    idle: Mutex<Vec<Loaded<B>>>,
}

impl<B: RoleInstance> InstancePool<B> {
    pub(crate) fn new(
        compiled: Arc<Compiled>,
        scope: Arc<Scope>,
        limits: Limits,
        budget: Arc<TenantBudget>,
    ) -> Self {
        Self {
            compiled,
            scope,
            limits,
            ticks: deadline_ticks(limits.call_timeout),
            budget,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A fresh instance in its own store (not taken from or returned to the pool).
    pub(crate) fn instantiate(&self) -> Result<Loaded<B>, CallError> {
        let ticket = self.budget.instance().ok_or_else(|| {
            CallError::Busy(format!(
                "tenant {} has its limit of {} live plugin instances",
                self.scope.tenant,
                self.budget.max_instances()
            ))
        })?;
        let mut store = Store::new(
            &self.compiled.engine,
            PluginState::new(self.scope.clone(), self.limits.memory_limit),
        );
        store.limiter(|s| &mut s.limits);
        // Instantiation (guest start code) gets its own, roomier deadline.
        store.set_epoch_deadline(self.ticks.max(deadline_ticks(INSTANTIATE_TIMEOUT)));
        let bindings = crate::roles::instantiate::<B::Role>(&self.compiled.pre, &mut store)
            .map_err(|e| match classify(&e, self.limits.call_timeout) {
                CallError::Trap(t) => CallError::Instantiate(t),
                CallError::Timeout(_) => {
                    CallError::Timeout(INSTANTIATE_TIMEOUT.max(self.limits.call_timeout))
                }
                other => other,
            })?;
        Ok(Loaded {
            store,
            bindings,
            _ticket: ticket,
        })
    }

    /// Runs `f` on an idle (or new) instance under the call deadline. On success
    /// the instance goes back to the pool; on any error it is dropped.
    pub(crate) fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<PluginState>, &B) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let popped = self.idle.lock().pop();
        let mut inst = match popped {
            Some(i) => i,
            None => self.instantiate()?,
        };
        inst.store.set_epoch_deadline(self.ticks);
        let r = f(&mut inst.store, &inst.bindings);
        if r.is_ok() {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(inst);
            }
        }
        r
    }

    /// Re-arms the deadline of a pinned instance before a call on it.
    pub(crate) fn arm(&self, store: &mut Store<PluginState>) {
        store.set_epoch_deadline(self.ticks);
    }

    /// Arms the deadline of a call whose work grows with the document
    /// (open from a snapshot, snapshot, state vector, diff): [`bulk_timeout`].
    pub(crate) fn arm_bulk(&self, store: &mut Store<PluginState>) {
        store.set_epoch_deadline(deadline_ticks(self.bulk_timeout()));
    }

    /// The call timeout in force.
    pub(crate) fn timeout(&self) -> Duration {
        self.limits.call_timeout
    }

    /// The deadline of a document-sized call: [`BULK_FACTOR`] × the call
    /// timeout, at least [`BULK_MIN`]. An update is small whatever the
    /// document's size; a snapshot of a megabyte document is not, and timing
    /// it out would lose the document's state with the instance.
    pub(crate) fn bulk_timeout(&self) -> Duration {
        (self.limits.call_timeout * BULK_FACTOR).max(BULK_MIN)
    }
}

/// Classifies an error from a guest call.
pub(crate) fn classify(e: &wasmtime::Error, timeout: Duration) -> CallError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout(timeout),
        Some(_) => CallError::Trap(bounded(format!("{e:#}"))),
        None => CallError::Trap(bounded(format!("{e:#}"))),
    }
}
