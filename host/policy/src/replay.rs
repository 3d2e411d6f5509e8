//! `switchyard replay`: runs a plugin offline on a recording
//! ([`crate::record`]) and reports each decision that differs from the
//! recorded one.
//!
//! Deterministic: the host clocks answer with the recorded values, the
//! key-value store holds what each call read in production (set before the
//! call), `take-tokens` answers as recorded, WASI randomness is seeded, calls
//! run one after the other on one instance (a fresh one after a failure), and
//! the crash breaker is reset before every call. Decisions are compared with
//! the shadow runs' role-aware comparison ([`crate::shadow`]): equal
//! principals or routes, the same kind of denial or rate decision. Calls go
//! through the gateway's own adapters, so a replayed decision is checked,
//! bounded and resolved by `on_error` exactly as it is when serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_core::config::OnError;
use switchyard_core::policy::{AuthPolicy, PublishRequest, RateKey, RateLimitPolicy, RouterPolicy};

use crate::adapters::Caller;
use crate::breaker::Breaker;
use crate::engine::{Compiled, LoadError, MAX_PLUGIN_BYTES, Runtime, compile};
use crate::figures::Figures;
use crate::host_api::Scope;
use crate::isolation::{Placement, TenantBudget};
use crate::kv::KvStore;
use crate::metrics::PluginMetrics;
use crate::pool::{InstancePool, Limits, RoleInstance};
use crate::record::{self, FormatError, RecordTap, RecordedCall, Recording, ReplayCtl};
use crate::role::Role;
use crate::roles::{WasmAuth, WasmRateLimit, WasmRouter};
use crate::shadow::{REDACTED, same_principal, same_rate, same_routing, same_unit};

/// Version of the `--json` report.
pub const REPORT_VERSION: u64 = 1;
/// Largest recording file read.
pub const MAX_RECORDING_BYTES: u64 = 1 << 30;

/// Why a replay could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording cannot be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The recording is malformed.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: String,
        /// Where and why.
        source: FormatError,
    },
    /// The plugin cannot be loaded.
    #[error("{path}: {source}")]
    Plugin {
        /// The file.
        path: String,
        /// Why.
        source: LoadError,
    },
    /// The plugin implements another role than the recording's.
    #[error("{0}")]
    Mismatch(String),
    /// `--config` is not JSON.
    #[error("--config is not JSON: {0}")]
    Config(String),
}

/// Replay settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The plugin's config (JSON text) instead of the recorded one.
    pub config: Option<String>,
    /// Seed of WASI randomness.
    pub seed: u64,
    /// Call deadline; `None` = the recorded one, at least 1 s (a loaded
    /// machine must not turn a slow call into a timeout the recording lacks).
    pub call_timeout: Option<Duration>,
}

/// One call whose replayed decision differs from the recorded one.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// `seq` of the recorded call.
    pub seq: u64,
    /// `authenticate`, `authorize-subscribe`, `authorize-publish`, `route`, `check`.
    pub call: String,
    /// The recorded input (redacted as recorded).
    pub input: Value,
    /// The recorded decision.
    pub recorded: Value,
    /// The replayed decision.
    pub replayed: Value,
    /// Why the replayed call failed (trap, timeout, bad return), if it did.
    pub failed: Option<String>,
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Tenant of the recording.
    pub tenant: String,
    /// Role of the recording.
    pub role: String,
    /// Plugin that served when recording.
    pub recorded_plugin: String,
    /// Calls replayed.
    pub calls: u64,
    /// Calls with the same decision.
    pub same: u64,
    /// Replayed calls that failed (trap, timeout, bad return); counted in
    /// `same` or `differ` by their `on_error` decision.
    pub failed: u64,
    /// The calls that differ, in recording order.
    pub differences: Vec<Difference>,
}

impl Report {
    /// Calls whose decision differs.
    pub fn differ(&self) -> u64 {
        self.differences.len() as u64
    }

    /// The `--json` report.
    pub fn json(&self, plugin: &str, recording: &str) -> Value {
        json!({
            "format": "switchyard-replay",
            "version": REPORT_VERSION,
            "plugin": plugin,
            "recording": recording,
            "tenant": self.tenant,
            "role": self.role,
            "recorded_plugin": self.recorded_plugin,
            "calls": self.calls,
            "same": self.same,
            "differ": self.differ(),
            "failed": self.failed,
            "differences": self.differences.iter().map(|d| json!({
                "seq": d.seq,
                "call": d.call,
                "input": d.input,
                "recorded": d.recorded,
                "replayed": d.replayed,
                "failed": d.failed,
            })).collect::<Vec<_>>(),
        })
    }

    /// The text report: each difference, then a summary line.
    pub fn text(&self, plugin: &str) -> String {
        let mut out = String::new();
        for d in &self.differences {
            out.push_str(&format!("call {} ({}) differs\n", d.seq, d.call));
            out.push_str(&format!("  input:    {}\n", d.input));
            out.push_str(&format!("  recorded: {}\n", d.recorded));
            out.push_str(&format!("  replayed: {}\n", d.replayed));
            if let Some(f) = &d.failed {
                out.push_str(&format!("  failed:   {f}\n"));
            }
        }
        out.push_str(&format!(
            "{plugin}: {} calls replayed ({} of tenant {}, recorded with {}): {} same, {} differ, {} failed\n",
            self.calls,
            self.role,
            self.tenant,
            self.recorded_plugin,
            self.same,
            self.differ(),
            self.failed
        ));
        out
    }
}

/// Replays the recording at `recording` through the plugin at `plugin`.
pub fn replay(plugin: &Path, recording: &Path, opts: &Options) -> Result<Report, ReplayError> {
    let rec_name = recording.display().to_string();
    let read_err = |message: String| ReplayError::Read {
        path: rec_name.clone(),
        message,
    };
    let meta = std::fs::metadata(recording).map_err(|e| read_err(format!("cannot read: {e}")))?;
    if meta.len() > MAX_RECORDING_BYTES {
        return Err(read_err(format!("larger than {MAX_RECORDING_BYTES} bytes")));
    }
    let text =
        std::fs::read_to_string(recording).map_err(|e| read_err(format!("cannot read: {e}")))?;
    let rec = Recording::parse(&text).map_err(|source| ReplayError::Format {
        path: rec_name.clone(),
        source,
    })?;
    let plugin_name = plugin.display().to_string();
    let perr = |source: LoadError| ReplayError::Plugin {
        path: plugin_name.clone(),
        source,
    };
    let meta = std::fs::metadata(plugin).map_err(|e| perr(LoadError::Io(e.to_string())))?;
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(perr(LoadError::TooLarge));
    }
    let bytes = std::fs::read(plugin).map_err(|e| perr(LoadError::Io(e.to_string())))?;
    let cache = std::env::temp_dir().join("switchyard-replay-cache");
    let runtime = Runtime::new().map_err(perr)?;
    let compiled = Arc::new(compile(&runtime, &bytes, &cache).map_err(perr)?);
    if compiled.role.as_str() != rec.header.role {
        return Err(ReplayError::Mismatch(format!(
            "{plugin_name} implements the {} role; {rec_name} recorded the {} role",
            compiled.role, rec.header.role
        )));
    }
    let config = match &opts.config {
        Some(c) => {
            serde_json::from_str::<Value>(c).map_err(|e| ReplayError::Config(e.to_string()))?;
            c.clone()
        }
        None => rec.header.config_json.clone(),
    };
    let mut run = Run::new(&rec, compiled, &config, opts);
    let mut report = Report {
        tenant: rec.header.tenant.clone(),
        role: rec.header.role.clone(),
        recorded_plugin: rec.header.plugin.clone(),
        calls: 0,
        same: 0,
        failed: 0,
        differences: Vec::new(),
    };
    for c in &rec.calls {
        let (same, replayed, failed) = run.call(c);
        report.calls += 1;
        report.failed += u64::from(failed.is_some());
        if same {
            report.same += 1;
        } else {
            report.differences.push(Difference {
                seq: c.seq,
                call: c.call.clone(),
                input: c.input.clone(),
                recorded: c.decision.clone(),
                replayed,
                failed,
            });
        }
    }
    Ok(report)
}

enum Adapter {
    Auth(WasmAuth),
    Router(WasmRouter),
    RateLimit(WasmRateLimit),
}

struct Run {
    adapter: Adapter,
    ctl: Arc<ReplayCtl>,
    kv: Arc<KvStore>,
}

impl Run {
    fn new(rec: &Recording, compiled: Arc<Compiled>, config: &str, opts: &Options) -> Self {
        let ctl = Arc::new(ReplayCtl::new(opts.seed));
        let kv = Arc::new(KvStore::new(100_000));
        let h = &rec.header;
        let scope = Arc::new(Scope {
            plugin: Arc::from(h.plugin.as_str()),
            tenant: Arc::from(h.tenant.as_str()),
            config_json: Arc::from(config),
            kv: kv.clone(),
            figures: Arc::new(Figures::unlisted()),
            replay: Some(ctl.clone()),
        });
        let limits = Limits {
            call_timeout: opts.call_timeout.unwrap_or_else(|| {
                Duration::from_millis(h.call_timeout_ms).max(Duration::from_secs(1))
            }),
            memory_limit: h.memory_limit,
        };
        let role = compiled.role;
        let on_error = if h.on_error == "allow" {
            OnError::Allow
        } else {
            OnError::Deny
        };
        let metrics = PluginMetrics::register(&switchyard_core::metrics::Metrics::new());
        fn caller<B: RoleInstance>(
            compiled: Arc<Compiled>,
            scope: Arc<Scope>,
            limits: Limits,
            on_error: OnError,
            metrics: &PluginMetrics,
            role: Role,
        ) -> Caller<B> {
            let budget = Arc::new(TenantBudget::unbounded());
            Caller {
                pool: InstancePool::new(compiled, scope.clone(), limits, budget.clone()),
                on_error,
                metrics: metrics.for_call(&scope.plugin, role, &scope.tenant),
                plugin: scope.plugin.clone(),
                tenant: scope.tenant.clone(),
                role: role.as_str(),
                breaker: Arc::new(Breaker::default()),
                placement: Placement::new(budget),
                figures: scope.figures.clone(),
                recorder: Arc::new(RecordTap::default()),
            }
        }
        let adapter = match role {
            Role::Auth => Adapter::Auth(WasmAuth(caller(
                compiled, scope, limits, on_error, &metrics, role,
            ))),
            Role::Router => Adapter::Router(WasmRouter(caller(
                compiled, scope, limits, on_error, &metrics, role,
            ))),
            Role::RateLimit => Adapter::RateLimit(WasmRateLimit(caller(
                compiled, scope, limits, on_error, &metrics, role,
            ))),
            Role::Merge => unreachable!("recordings are never of the merge role"),
        };
        Self { adapter, ctl, kv }
    }

    /// Replays one call: (same decision, replayed decision, why it failed).
    fn call(&mut self, c: &RecordedCall) -> (bool, Value, Option<String>) {
        self.ctl.load(c);
        for (k, v) in &c.kv {
            match v {
                Some(v) => {
                    let _ = self.kv.set(k.clone(), v.clone());
                }
                None => self.kv.delete(k),
            }
        }
        // Inputs were checked when the recording was parsed.
        let ok = "checked by Recording::parse";
        crate::shadow::take_failure();
        let failure = |caller_failed: bool, what: &str| {
            caller_failed.then(|| format!("the replayed {what} call failed (trap, timeout or bad return); on_error decided"))
        };
        let (same, replayed) = match &mut self.adapter {
            Adapter::Auth(a) => {
                a.0.breaker = Arc::new(Breaker::default());
                match c.call.as_str() {
                    record::AUTHENTICATE => {
                        let req = Arc::new(c.connect_request().expect(ok));
                        let mut got = a.authenticate(&req);
                        let want = record::decode_principal_result(&c.decision).expect(ok);
                        // Claims were redacted when recording: compare ids only.
                        if let (Ok(w), Ok(g)) = (&want, &mut got)
                            && &*w.claims == REDACTED
                        {
                            g.claims = Arc::from(REDACTED);
                        }
                        (
                            same_principal(&want, &got),
                            record::principal_decision(&got),
                        )
                    }
                    record::SUBSCRIBE => {
                        let who = c.principal().expect(ok);
                        let got = a.authorize_subscribe(&who, &c.text("channel").expect(ok));
                        let want = record::decode_unit(&c.decision).expect(ok);
                        (same_unit(&want, &got), record::unit_decision(&got))
                    }
                    _ => {
                        let who = c.principal().expect(ok);
                        let data = c.data().expect(ok);
                        let got = a.authorize_publish(&who, &c.text("channel").expect(ok), &data);
                        let want = record::decode_unit(&c.decision).expect(ok);
                        (same_unit(&want, &got), record::unit_decision(&got))
                    }
                }
            }
            Adapter::Router(r) => {
                r.0.breaker = Arc::new(Breaker::default());
                let who = c.principal().expect(ok);
                let (client, channel) = (c.text("client").expect(ok), c.text("channel").expect(ok));
                let data = c.data().expect(ok);
                let got = r.route(&PublishRequest {
                    principal: &who,
                    client: &client,
                    channel: &channel,
                    data: &data,
                });
                let want = record::decode_route(&c.decision).expect(ok);
                (same_routing(&want, &got), record::route_decision(&got))
            }
            Adapter::RateLimit(l) => {
                l.0.breaker = Arc::new(Breaker::default());
                let (principal, client, channel) = (
                    c.text("principal").expect(ok),
                    c.text("client").expect(ok),
                    c.text("channel").expect(ok),
                );
                let got = l.check(
                    &RateKey {
                        principal: &principal,
                        client: &client,
                        channel: &channel,
                    },
                    c.cost().expect(ok),
                );
                let want = record::decode_rate(&c.decision).expect(ok);
                (same_rate(&want, &got), record::rate_decision(&got))
            }
        };
        let failed = failure(crate::shadow::take_failure(), &c.call);
        (same, replayed, failed)
    }
}
