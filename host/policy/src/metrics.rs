//! Plugin metric families, registered into the node's registry:
//! `switchyard_plugin_calls_total{plugin,role,outcome}`,
//! `switchyard_plugin_call_duration_seconds{plugin,role}`,
//! `switchyard_plugin_load_failures_total{plugin}`,
//! `switchyard_plugin_shadow_total{tenant,role,plugin,verdict}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use switchyard_core::metrics::Metrics;

use crate::role::Role;

/// Labels of `plugin_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Plugin name.
    pub plugin: String,
    /// Role.
    pub role: &'static str,
    /// `ok`, `denied`, `error`, `timeout`, `trap`, `cooling_down` (not called: breaker open),
    /// `busy` (not called: the tenant is at its instance or off-loop call limit).
    pub outcome: &'static str,
}

/// Labels of `plugin_call_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// Plugin name.
    pub plugin: String,
    /// Role.
    pub role: &'static str,
}

/// Labels of `tenant_plugin_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantCallLabels {
    /// Tenant id, or `other` (see `telemetry.tenant_labels`).
    pub tenant: String,
    /// Role.
    pub role: &'static str,
    /// As in [`CallLabels`].
    pub outcome: &'static str,
}

/// Labels of `plugin_shadow_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// Tenant.
    pub tenant: String,
    /// Role.
    pub role: &'static str,
    /// The shadow plugin.
    pub plugin: String,
    /// `same`, `differ`, `error`, or `dropped` (queue full: not run).
    pub verdict: &'static str,
}

/// Labels of `plugin_load_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// Plugin name.
    pub plugin: String,
}

type HistogramFamily = Family<RoleLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 100 ns … ~0.4 s
    Histogram::new(exponential_buckets(1e-7, 4.0, 12))
}

/// The runtime's families.
#[derive(Debug, Clone)]
pub(crate) struct PluginMetrics {
    calls: Family<CallLabels, Counter>,
    duration: HistogramFamily,
    load_failures: Family<PluginLabel, Counter>,
    shadow: Family<ShadowLabels, Counter>,
    tenant_calls: Family<TenantCallLabels, Counter>,
    cpu: HistogramFamily,
    memory_peak: Family<RoleLabels, Gauge>,
}

/// What happened to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Denied,
    Error,
    Timeout,
    Trap,
    /// Not called: the plugin's breaker is open.
    CoolingDown,
    /// Not called: the tenant is at its limit of instances or slow calls.
    Busy,
}

/// Counters of one plugin+role, resolved once so a call touches no label map.
#[derive(Debug, Clone)]
pub(crate) struct CallMetrics {
    /// `plugin_calls_total{plugin,role,outcome}`, indexed by [`Outcome`].
    by_plugin: [Counter; OUTCOMES.len()],
    /// `tenant_plugin_calls_total{tenant,role,outcome}`, the same outcomes.
    by_tenant: [Counter; OUTCOMES.len()],
    pub duration: Histogram,
}

/// Every outcome, in [`Outcome`] order, with its label value.
const OUTCOMES: [(Outcome, &str); 7] = [
    (Outcome::Ok, "ok"),
    (Outcome::Denied, "denied"),
    (Outcome::Error, "error"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Trap, "trap"),
    (Outcome::CoolingDown, "cooling_down"),
    (Outcome::Busy, "busy"),
];

impl CallMetrics {
    pub(crate) fn count(&self, outcome: Outcome) {
        let i = outcome as usize;
        self.by_plugin[i].inc();
        self.by_tenant[i].inc();
    }
}

impl PluginMetrics {
    /// Creates the families and registers them with `metrics`.
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let m = Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            load_failures: Family::default(),
            shadow: Family::default(),
            tenant_calls: Family::default(),
            cpu: Family::new_with_constructor(duration_histogram),
            memory_peak: Family::default(),
        };
        metrics.register(
            "switchyard_tenant_plugin_calls",
            "Plugin calls by tenant, role and outcome (tenant = its id, or other beyond telemetry.tenant_labels)",
            m.tenant_calls.clone(),
        );
        metrics.register(
            "switchyard_plugin_call_cpu_seconds",
            "CPU time of a plugin call (one call in 64 per thread is measured), by plugin and role",
            m.cpu.clone(),
        );
        metrics.register(
            "switchyard_plugin_memory_peak_bytes",
            "Largest linear memory any instance of the plugin grew to, by plugin and role",
            m.memory_peak.clone(),
        );
        metrics.register(
            "switchyard_plugin_shadow",
            "Shadow plugin calls by tenant, role, shadow plugin and verdict (same, differ, error, dropped)",
            m.shadow.clone(),
        );
        metrics.register(
            "switchyard_plugin_calls",
            "Plugin calls by plugin, role and outcome (ok, denied, error, timeout, trap, cooling_down, busy)",
            m.calls.clone(),
        );
        metrics.register(
            "switchyard_plugin_call_duration_seconds",
            "Plugin call duration, by plugin and role",
            m.duration.clone(),
        );
        metrics.register(
            "switchyard_plugin_load_failures",
            "Plugin files that failed to load (compile, world check, instantiate)",
            m.load_failures.clone(),
        );
        m
    }

    /// The resource figures of `plugin` in `role`, exported in these families.
    pub(crate) fn figures(&self, plugin: &str, role: Role) -> crate::figures::Figures {
        let labels = RoleLabels {
            plugin: plugin.to_owned(),
            role: role.as_str(),
        };
        crate::figures::Figures::new(
            Some(self.cpu.get_or_create(&labels).clone()),
            Some(self.memory_peak.get_or_create(&labels).clone()),
        )
    }

    /// The shadow counters of `plugin` shadowing `tenant`'s `role`.
    pub(crate) fn shadow_counters(
        &self,
        tenant: &str,
        role: Role,
        plugin: &str,
    ) -> crate::shadow::ShadowCounters {
        let c = |verdict| {
            self.shadow
                .get_or_create(&ShadowLabels {
                    tenant: tenant.to_owned(),
                    role: role.as_str(),
                    plugin: plugin.to_owned(),
                    verdict,
                })
                .clone()
        };
        crate::shadow::ShadowCounters {
            same: c("same"),
            differ: c("differ"),
            error: c("error"),
            dropped: c("dropped"),
        }
    }

    /// Counters for `plugin` in `role`.
    pub(crate) fn for_call(&self, plugin: &str, role: Role, tenant: &str) -> CallMetrics {
        CallMetrics {
            by_plugin: OUTCOMES.map(|(_, outcome)| {
                self.calls
                    .get_or_create(&CallLabels {
                        plugin: plugin.to_owned(),
                        role: role.as_str(),
                        outcome,
                    })
                    .clone()
            }),
            by_tenant: OUTCOMES.map(|(_, outcome)| {
                self.tenant_calls
                    .get_or_create(&TenantCallLabels {
                        tenant: tenant.to_owned(),
                        role: role.as_str(),
                        outcome,
                    })
                    .clone()
            }),
            duration: self
                .duration
                .get_or_create(&RoleLabels {
                    plugin: plugin.to_owned(),
                    role: role.as_str(),
                })
                .clone(),
        }
    }

    /// Counts a failed load of `plugin`.
    pub(crate) fn load_failed(&self, plugin: &str) {
        self.load_failures
            .get_or_create(&PluginLabel {
                plugin: plugin.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_listed_in_enum_order() {
        for (i, (o, _)) in OUTCOMES.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
    }
}
