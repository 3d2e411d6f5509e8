//! Role adapters: the core policy traits implemented by calls into a plugin's
//! pooled instances. Every returned value is checked and bounded here; a failed
//! call (trap, timeout, invalid return) resolves by the policy's `on_error`.

use std::cell::RefCell;
use std::sync::Arc;

use quanta::Instant;
use serde_json::value::RawValue;
use switchyard_core::config::OnError;
use switchyard_core::policy::{
    AuthPolicy, BuiltIn, ConnectRequest, Denial, MergeDocument, MergeError, MergePolicy, Principal,
    PublishRequest, RateDecision, RateKey, RateLimitPolicy, Route, RouteTarget, RouterPolicy,
    Stamp,
};
use wasmtime::Store;
use wasmtime::component::{Resource, ResourceAny};

use crate::bindings::{auth, merge, rate_limit, router, types};
use crate::breaker::Breaker;
use crate::engine::bounded;
use crate::host_api::{PluginState, RequestRes};
use crate::isolation::{Busy, Placement};
use crate::metrics::{CallMetrics, Outcome};
use crate::pool::{CallError, InstancePool, Loaded, RoleInstance, classify};
use crate::record::{self, RecordTap, Ticket};

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
    fn run<R>(
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
    fn placed<R>(&self, f: impl FnOnce() -> Result<R, CallError>) -> Result<R, CallError> {
        self.placement.run(f).unwrap_or_else(|Busy| {
            Err(CallError::Busy(format!(
                "tenant {} has its limit of slow plugin calls running",
                self.tenant
            )))
        })
    }

    /// Times with the TSC (`quanta`): two `clock_gettime` calls were a sixth of
    /// the host's share of a small call.
    fn record<R>(
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

    fn failed(&self, e: &CallError) -> Denial {
        Denial::Failed(format!("{} plugin {}: {e}", self.role, self.plugin))
    }

    /// The answer, or the `on_error` decision for a failed call.
    fn resolve<R>(
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

fn to_denial(d: types::Denial) -> Denial {
    match d {
        types::Denial::Unauthorized(s) => Denial::Unauthorized(bounded(s)),
        types::Denial::Forbidden(s) => Denial::Forbidden(bounded(s)),
        types::Denial::RateLimited(ms) => Denial::RateLimited {
            retry_after_ms: ms.min(MAX_WAIT_MS),
        },
        types::Denial::Other(s) => Denial::Other(bounded(s)),
    }
}

fn to_merge_error(e: types::MergeError) -> MergeError {
    match e {
        types::MergeError::Conflict(s) => MergeError::Conflict(bounded(s)),
        types::MergeError::Invalid(s) => MergeError::Invalid(bounded(s)),
        types::MergeError::Other(s) => MergeError::Failed(bounded(s)),
    }
}

fn principal_param(p: &Principal) -> types::PrincipalParam<'_> {
    types::PrincipalParam {
        id: &p.id,
        claims_json: &p.claims,
    }
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
pub(crate) struct WasmAuth(pub Caller<auth::AuthPlugin>);

impl WasmAuth {
    fn authorize(
        &self,
        ticket: Option<&mut Ticket>,
        f: impl FnOnce(
            &mut Store<PluginState>,
            &auth::AuthPlugin,
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
pub(crate) struct WasmRouter(pub Caller<router::RouterPlugin>);

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

/// Rate-limit role backed by a plugin.
pub(crate) struct WasmRateLimit(pub Caller<rate_limit::RateLimitPlugin>);

impl RateLimitPolicy for WasmRateLimit {
    fn check(&self, key: &RateKey<'_>, cost: u32) -> RateDecision {
        let wkey = types::RateKey {
            principal: key.principal,
            client_id: key.client,
            channel: key.channel,
        };
        let mut ticket = self.0.recorder.begin();
        let timeout = self.0.pool.timeout();
        let r = self.0.run(
            ticket.as_mut(),
            |store, b| {
                let d = b
                    .switchyard_gateway_rate_limit()
                    .call_check(store, wkey, cost)
                    .map_err(|e| classify(&e, timeout))?;
                Ok(match d {
                    types::RateDecision::Allow => RateDecision::Allow,
                    types::RateDecision::Reject(ms) => RateDecision::Reject {
                        retry_after_ms: ms.min(MAX_WAIT_MS),
                    },
                    types::RateDecision::Delay(ms) => RateDecision::Delay {
                        ms: ms.min(MAX_WAIT_MS),
                    },
                })
            },
            |d| matches!(d, RateDecision::Reject { .. }),
        );
        let d = match r {
            Ok(d) => d,
            Err(_) => match self.0.on_error {
                OnError::Deny => RateDecision::Reject {
                    retry_after_ms: FAILED_RETRY_MS,
                },
                OnError::Allow => RateDecision::Allow,
            },
        };
        if let Some(t) = ticket {
            let input = record::check_json(key, cost);
            t.finish(
                &self.0.plugin,
                record::CHECK,
                input,
                record::rate_decision(&d),
            );
        }
        d
    }
}

/// Merge role backed by a plugin: each open document pins its own instance.
pub(crate) struct WasmMerge(pub Arc<Caller<merge::MergePlugin>>);

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
    inst: Loaded<merge::MergePlugin>,
    handle: ResourceAny,
}

/// A live document inside a pinned plugin instance. After a failed call the
/// instance is dropped and the document reports `MergeError::Lost` from then
/// on (its state lived in the instance); the caller reopens from its snapshot.
pub(crate) struct WasmDocument {
    caller: Arc<Caller<merge::MergePlugin>>,
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

impl WasmDocument {
    /// Calls a document method that returns bytes (snapshot, state vector),
    /// refusing more than [`MAX_MERGE_BYTES`].
    fn bytes(
        &self,
        what: &str,
        f: impl FnOnce(
            merge::exports::switchyard::gateway::merge::GuestDocument<'_>,
            &mut Store<PluginState>,
            ResourceAny,
        ) -> wasmtime::Result<Vec<u8>>,
    ) -> Result<Vec<u8>, MergeError> {
        let timeout = self.caller.pool.bulk_timeout();
        self.call(
            true,
            |p| {
                let b = f(
                    p.inst.bindings.switchyard_gateway_merge().document(),
                    &mut p.inst.store,
                    p.handle,
                )
                .map_err(|e| classify(&e, timeout))?;
                if b.len() > MAX_MERGE_BYTES {
                    return Err(CallError::Invalid(format!(
                        "{what} larger than {MAX_MERGE_BYTES} bytes"
                    )));
                }
                Ok(b)
            },
            |_| false,
        )
    }
}

impl MergeDocument for WasmDocument {
    /// WIT 0.2's `apply` has no stamp: the plugin orders writes itself (the
    /// gateway applies them in log order, so a Lamport clock kept by the
    /// plugin rises with the gateway's).
    fn apply(&mut self, update: &[u8], _stamp: &Stamp<'_>) -> Result<Option<Vec<u8>>, MergeError> {
        let timeout = self.caller.pool.timeout();
        self.call(
            false,
            |p| {
                let r = p
                    .inst
                    .bindings
                    .switchyard_gateway_merge()
                    .document()
                    .call_apply(&mut p.inst.store, p.handle, update)
                    .map_err(|e| classify(&e, timeout))?;
                match r {
                    Ok(Some(u)) if u.len() > MAX_MERGE_BYTES => Err(CallError::Invalid(format!(
                        "update larger than {MAX_MERGE_BYTES} bytes"
                    ))),
                    // Empty updates are never broadcast.
                    Ok(Some(u)) if u.is_empty() => Ok(Ok(None)),
                    Ok(u) => Ok(Ok(u)),
                    Err(e) => Ok(Err(to_merge_error(e))),
                }
            },
            Result::is_err,
        )?
    }

    fn snapshot(&self) -> Result<Vec<u8>, MergeError> {
        self.bytes("snapshot", |d, store, h| d.call_snapshot(store, h))
    }

    fn state_vector(&self) -> Result<Option<Vec<u8>>, MergeError> {
        self.bytes("state vector", |d, store, h| d.call_state_vector(store, h))
            .map(|sv| (!sv.is_empty()).then_some(sv))
    }

    fn diff(&self, state_vector: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        let timeout = self.caller.pool.bulk_timeout();
        self.call(
            true,
            |p| {
                let r = p
                    .inst
                    .bindings
                    .switchyard_gateway_merge()
                    .document()
                    .call_diff(&mut p.inst.store, p.handle, state_vector)
                    .map_err(|e| classify(&e, timeout))?;
                match r {
                    Ok(d) if d.len() > MAX_MERGE_BYTES => Err(CallError::Invalid(format!(
                        "diff larger than {MAX_MERGE_BYTES} bytes"
                    ))),
                    Ok(d) => Ok(Ok(Some(d))),
                    Err(e) => Ok(Err(to_merge_error(e))),
                }
            },
            Result::is_err,
        )?
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
