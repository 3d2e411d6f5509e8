//! What every role adapter shares: [`Caller`] (one plugin's pooled instances
//! for one tenant role, its failure policy, metrics, breaker and recorder),
//! the bounds on what a plugin may return, and the conversions of the shared
//! WIT types. Each role's adapter — the core policy trait implemented by calls
//! into the plugin — is in its file under [`crate::roles`]; a failed call
//! (trap, timeout, invalid return) resolves by the policy's `on_error`.

use std::sync::Arc;

use quanta::Instant;
use serde_json::value::RawValue;
use switchyard_core::config::OnError;
use switchyard_core::policy::{AuthPolicy, ConnectRequest, Denial, Principal};
use wasmtime::Store;

use crate::bindings::types;
use crate::breaker::Breaker;
use crate::engine::bounded;
use crate::host_api::PluginState;
use crate::isolation::{Busy, Placement};
use crate::metrics::{CallMetrics, Outcome};
use crate::pool::{CallError, InstancePool, RoleInstance};
use crate::record::{RecordTap, Ticket};

/// Longest principal id a plugin may return.
pub const MAX_PRINCIPAL_BYTES: usize = 256;
/// Largest claims JSON a plugin may return.
pub const MAX_CLAIMS_BYTES: usize = 16 * 1024;
/// Longest channel name a router may return (core validates the syntax).
pub const MAX_CHANNEL_BYTES: usize = 256;
/// Largest rewritten payload a router may return.
pub const MAX_ROUTED_DATA_BYTES: usize = 1 << 20;
/// Largest merge update or snapshot a plugin may return.
pub const MAX_MERGE_BYTES: usize = 16 << 20;
/// Upper bound on retry-after / delay values from a plugin (ms).
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// Retry-after used when a failing rate limiter denies (`on_error = deny`).
pub const FAILED_RETRY_MS: u64 = 1000;

/// Calls into one plugin for one tenant and role: the pool, the failure policy
/// and the pre-resolved metrics.
pub(crate) struct Caller<B> {
    pub pool: InstancePool<B>,
    pub on_error: OnError,
    pub metrics: CallMetrics,
    pub plugin: Arc<str>,
    pub tenant: Arc<str>,
    pub role: &'static str,
    /// Takes a crash-looping plugin out of service ([`crate::breaker`]).
    pub breaker: Arc<Breaker>,
    /// Inline or off the event loop, within the tenant's budget ([`crate::isolation`]).
    pub placement: Placement,
    /// CPU per call (sampled) and peak memory ([`crate::figures`]).
    pub figures: Arc<crate::figures::Figures>,
    /// `POST /admin/record` of this tenant role ([`crate::record`]).
    pub recorder: Arc<RecordTap>,
}

/// The `switchyard.outcome` of a plugin span: the call metric's outcome label.
fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Denied => "denied",
        Outcome::Error => "error",
        Outcome::Timeout => "timeout",
        Outcome::Trap => "trap",
        Outcome::CoolingDown => "cooling_down",
        Outcome::Busy => "busy",
    }
}

impl<B: RoleInstance> Caller<B> {
    /// Runs one call, timing and counting it; `denied` tells whether an answer
    /// is a refusal. With a recording `ticket`, what the call reads is captured.
    pub(crate) fn run<R>(
        &self,
        mut ticket: Option<&mut Ticket>,
        f: impl FnOnce(&mut Store<PluginState>, &B) -> Result<R, CallError>,
        denied: impl FnOnce(&R) -> bool,
    ) -> Result<R, CallError> {
        // One relaxed load when tracing is off.
        let span = if switchyard_core::telemetry::enabled() {
            switchyard_core::telemetry::plugin_span(self.role, &self.plugin, &self.tenant)
        } else {
            None
        };
        if !self.breaker.is_closed() && !self.breaker.allows(std::time::Instant::now()) {
            self.metrics.count(Outcome::CoolingDown);
            crate::shadow::note_failure();
            if let Some(s) = span {
                s.outcome(outcome_name(Outcome::CoolingDown));
            }
            let e = CallError::Unavailable(format!(
                "{} plugin {} is cooling down after repeated crashes",
                self.role, self.plugin
            ));
            if let Some(t) = ticket {
                t.capture.error = Some(e.to_string());
            }
            return Err(e);
        }
        let start = Instant::now();
        let r = self.figures.sampled(|| {
            self.placed(|| {
                self.pool.call(|store, b| match ticket.as_deref_mut() {
                    None => f(store, b),
                    Some(t) => {
                        store.data_mut().begin_capture();
                        let r = f(store, b);
                        t.capture = store.data_mut().end_capture();
                        r
                    }
                })
            })
        });
        if let (Some(t), Err(e)) = (ticket, &r) {
            t.capture.error = Some(e.to_string());
        }
        let outcome = self.record(start, &r, denied);
        if let Some(s) = span {
            s.outcome(outcome_name(outcome));
        }
        r
    }

    /// Runs `f` where [`Placement`] says; a tenant at its off-loop limit gets
    /// [`CallError::Busy`] and `f` does not run.
    pub(crate) fn placed<R>(
        &self,
        f: impl FnOnce() -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        self.placement.run(f).unwrap_or_else(|Busy| {
            Err(CallError::Busy(format!(
                "tenant {} has its limit of slow plugin calls running",
                self.tenant
            )))
        })
    }

    /// Times with the TSC (`quanta`): two `clock_gettime` calls were a sixth of
    /// the host's share of a small call.
    pub(crate) fn record<R>(
        &self,
        start: Instant,
        r: &Result<R, CallError>,
        denied: impl FnOnce(&R) -> bool,
    ) -> Outcome {
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        let outcome = match r {
            Ok(v) if denied(v) => Outcome::Denied,
            Ok(_) => Outcome::Ok,
            Err(CallError::Timeout(_)) => Outcome::Timeout,
            Err(CallError::Trap(_)) => Outcome::Trap,
            Err(CallError::Busy(_)) => Outcome::Busy,
            Err(_) => Outcome::Error,
        };
        self.metrics.count(outcome);
        match outcome {
            // `failure` counts the crash; true when this one opened the breaker.
            Outcome::Timeout | Outcome::Trap if self.breaker.failure(std::time::Instant::now()) => {
                tracing::error!(
                    plugin = &*self.plugin,
                    tenant = &*self.tenant,
                    role = self.role,
                    cool_down = ?crate::breaker::COOL_DOWN,
                    "plugin keeps crashing: out of service for a cool-down, on_error decides meanwhile"
                );
            }
            Outcome::Ok | Outcome::Denied if !self.breaker.is_closed() => {
                self.breaker.success(std::time::Instant::now());
            }
            _ => {}
        }
        if !matches!(outcome, Outcome::Ok | Outcome::Denied) {
            crate::shadow::note_failure();
        }
        if let Err(e) = r {
            tracing::warn!(
                plugin = &*self.plugin,
                tenant = &*self.tenant,
                role = self.role,
                on_error = ?self.on_error,
                "plugin call failed: {e}"
            );
        }
        outcome
    }

    pub(crate) fn failed(&self, e: &CallError) -> Denial {
        Denial::Failed(format!("{} plugin {}: {e}", self.role, self.plugin))
    }

    /// The answer, or the `on_error` decision for a failed call.
    pub(crate) fn resolve<R>(
        &self,
        r: Result<Result<R, Denial>, CallError>,
        built_in: impl FnOnce() -> Result<R, Denial>,
    ) -> Result<R, Denial> {
        match r {
            Ok(v) => v,
            Err(e) => match self.on_error {
                OnError::Deny => Err(self.failed(&e)),
                OnError::Allow => built_in(),
            },
        }
    }
}

pub(crate) fn to_denial(d: types::Denial) -> Denial {
    match d {
        types::Denial::Unauthorized(s) => Denial::Unauthorized(bounded(s)),
        types::Denial::Forbidden(s) => Denial::Forbidden(bounded(s)),
        types::Denial::RateLimited(ms) => Denial::RateLimited {
            retry_after_ms: ms.min(MAX_WAIT_MS),
        },
        types::Denial::Other(s) => Denial::Other(bounded(s)),
    }
}

pub(crate) fn principal_param(p: &Principal) -> types::PrincipalParam<'_> {
    types::PrincipalParam {
        id: &p.id,
        claims_json: &p.claims,
    }
}

/// Auth stand-in while a mapped plugin is missing, failed or of the wrong role
/// and `on_error = deny`: refuses everything rather than opening the door.
pub(crate) struct Unavailable {
    pub reason: String,
    pub metrics: CallMetrics,
}

impl Unavailable {
    fn refuse<R>(&self) -> Result<R, Denial> {
        self.metrics.count(Outcome::Error);
        Err(Denial::Failed(self.reason.clone()))
    }
}

impl AuthPolicy for Unavailable {
    fn authenticate(&self, _req: &Arc<ConnectRequest>) -> Result<Principal, Denial> {
        self.refuse()
    }

    fn authorize_subscribe(&self, _principal: &Principal, _channel: &str) -> Result<(), Denial> {
        self.refuse()
    }

    fn authorize_publish(
        &self,
        _principal: &Principal,
        _channel: &str,
        _data: &RawValue,
    ) -> Result<(), Denial> {
        self.refuse()
    }
}
