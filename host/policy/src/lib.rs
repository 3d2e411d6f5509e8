//! switchyard-policy: runs tenant policies as WebAssembly components.
//!
//! One wasmtime engine per host ([`Runtime`], a value: component model, pooling
//! allocator, epoch interruption) compiles each plugin file once per content hash into an
//! `InstancePre`, cached on disk. Each tenant's role gets a small pool of reused
//! instances (never one per message) with a per-instance memory cap and a
//! per-call CPU deadline; a trap, timeout or invalid return is contained and
//! resolved by the policy's `on_error`. The plugins folder is watched and
//! changes are swapped in atomically with `Tenant::set_policies`.
//! See docs/plugins.md ("Roles and when they are called").

mod adapters;
mod bindings;
pub mod breaker;
pub mod buckets;
mod engine;
mod figures;
mod host_api;
pub mod isolation;
pub mod kv;
mod metrics;
mod pool;
pub mod record;
mod registry;
pub mod replay;
mod role;
mod roles;
pub mod shadow;
mod watch;

use std::sync::Arc;

use parking_lot::Mutex;
use switchyard_core::{Config, Node};

pub use adapters::{
    MAX_CHANNEL_BYTES, MAX_CLAIMS_BYTES, MAX_MERGE_BYTES, MAX_PRINCIPAL_BYTES,
    MAX_ROUTED_DATA_BYTES,
};
pub use engine::{EPOCH_TICK, LoadError, MAX_PLUGIN_BYTES, POOL_INSTANCES, Runtime};
pub use metrics::{CallLabels, PluginLabel, RoleLabels};
pub use pool::CallError;
pub use record::RecordError;
pub use registry::{PromoteError, Status};
pub use role::Role;

/// Loads plugins from `plugins.dir`, applies tenant policy mappings and keeps them fresh.
pub struct PluginHost {
    registry: Arc<registry::Registry>,
    watcher: Mutex<Option<watch::DirWatcher>>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("dir", &self.registry.dir())
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Starts the runtime: loads every plugin, installs each tenant's `PolicySet`,
    /// and (when `plugins.watch`) watches the folder for changes.
    pub async fn start(node: Arc<Node>) -> anyhow::Result<Arc<Self>> {
        Self::start_with(node, Runtime::new()?).await
    }

    /// [`start`](Self::start) on a given engine (several hosts may share one).
    pub async fn start_with(node: Arc<Node>, runtime: Arc<Runtime>) -> anyhow::Result<Arc<Self>> {
        let watch = node.config.plugins.watch;
        let registry = Arc::new(registry::Registry::new(node, runtime));
        registry.scan().await;
        let watcher = watch.then(|| watch::spawn(Arc::downgrade(&registry), registry.dir()));
        Ok(Arc::new(Self {
            registry,
            watcher: Mutex::new(watcher),
        }))
    }

    /// Re-applies the tenant → plugin mapping of a new config (SIGHUP). Call
    /// `node.tenants.reload(config)` first. Also rescans the plugins folder and
    /// takes the new sandbox defaults (`call_timeout`, `memory_limit`,
    /// `kv_max_entries`); `plugins.dir` cannot change at runtime.
    pub async fn reload(&self, config: &Config) -> anyhow::Result<()> {
        self.registry.set_defaults(&config.plugins);
        self.registry.scan().await;
        Ok(())
    }

    /// Rescans the plugins folder now (what the watcher does after a change):
    /// loads new or changed files and swaps the affected policies.
    pub async fn rescan(&self) {
        self.registry.scan().await;
    }

    /// Instantiates the current version of `plugin` once in a fresh store with
    /// default limits and returns how long that took (benchmarks, diagnostics).
    pub fn instantiate_once(&self, plugin: &str) -> Result<std::time::Duration, CallError> {
        self.registry.instantiate_once(plugin)
    }

    /// Stops watching the folder (policies stay installed).
    pub fn stop_watching(&self) {
        self.watcher.lock().take();
    }

    /// `GET /admin/plugins` body: `[{"name","role","hash","loaded_at","status","last_error"}]`,
    /// plus `file_hash` (of a file that failed), `used_by` and `mapping_errors`.
    /// `status` is `loaded`, `failed` (the previous version, if any, keeps
    /// serving), `removed`, or `missing` (mapped but no such file).
    pub fn status_json(&self) -> serde_json::Value {
        self.registry.status_json()
    }

    /// `GET /admin/shadow` body: `{"shadows":[{"tenant","role","plugin","shadow",
    /// "sample","calls","same","differ","errors","dropped","last_differences"}],
    /// "promoted":[{"tenant","role","plugin","instead_of"}]}`.
    pub fn shadow_json(&self) -> serde_json::Value {
        self.registry.shadow_json()
    }

    /// `POST /admin/shadow/promote`: makes `tenant`'s shadow for `role` the
    /// serving plugin (returns its name); no connection is dropped.
    pub fn promote(&self, tenant: &str, role: &str) -> Result<String, PromoteError> {
        self.registry.promote(tenant, role)
    }

    /// `POST /admin/record`: records `tenant`'s next `calls` calls of `role`
    /// (inputs, decision, clocks, key-value reads) to a JSON-lines file under
    /// `plugins.record_dir`; returns the recording's status (with `file`).
    pub fn record(
        &self,
        tenant: &str,
        role: &str,
        calls: u64,
    ) -> Result<serde_json::Value, RecordError> {
        self.registry.record(tenant, role, calls)
    }

    /// `GET /admin/record` body: `{"recordings":[{"tenant","role","plugin",
    /// "file","calls","recorded","dropped","bytes","started_at","state"}]}`.
    pub fn recordings_json(&self) -> serde_json::Value {
        self.registry.recordings_json()
    }
}
