//! The `host` interface every plugin imports (log, clocks, config, scoped
//! key-value store), the per-store state, and the linker that provides it along
//! with an empty WASI context (no files, environment, network or stdio).

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{host, shared, types};
use crate::kv::KvStore;

/// Longest log line a plugin may write (longer ones are truncated).
const MAX_LOG_BYTES: usize = 4096;

/// Who a store belongs to: one plugin for one tenant, with that tenant's config.
#[derive(Debug)]
pub(crate) struct Scope {
    /// Plugin name (file stem).
    pub plugin: Arc<str>,
    /// Tenant id.
    pub tenant: Arc<str>,
    /// The tenant's `config` table for this plugin, as JSON text.
    pub config_json: Arc<str>,
    /// Key-value store of this plugin+tenant.
    pub kv: Arc<KvStore>,
}

/// Data of one wasmtime `Store`: WASI (empty), limits and the scope.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    scope: Arc<Scope>,
}

impl PluginState {
    /// Fresh state with a memory cap of `memory_limit` bytes per instance.
    pub(crate) fn new(scope: Arc<Scope>, memory_limit: usize) -> Self {
        Self {
            // Nothing inherited: no preopens, no env, no args, stdio closed,
            // sockets denied by the default address check.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .instances(64)
                .tables(64)
                .memories(16)
                .table_elements(100_000)
                .build(),
            scope,
        }
    }
}

impl PluginState {
    fn clocks(&mut self) -> wasmtime_wasi::clocks::WasiClocksCtxView<'_> {
        wasmtime_wasi::clocks::WasiClocksView::clocks(self)
    }

    fn random(&mut self) -> &mut wasmtime_wasi::random::WasiRandomCtx {
        wasmtime_wasi::random::WasiRandomView::random(self)
    }

    fn cli(&mut self) -> wasmtime_wasi::cli::WasiCliCtxView<'_> {
        wasmtime_wasi::cli::WasiCliView::cli(self)
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let msg = truncate(&message, MAX_LOG_BYTES);
        let (plugin, tenant) = (&*self.scope.plugin, &*self.scope.tenant);
        match level {
            types::LogLevel::Trace => tracing::trace!(plugin, tenant, "{msg}"),
            types::LogLevel::Debug => tracing::debug!(plugin, tenant, "{msg}"),
            types::LogLevel::Info => tracing::info!(plugin, tenant, "{msg}"),
            types::LogLevel::Warn => tracing::warn!(plugin, tenant, "{msg}"),
            types::LogLevel::Error => tracing::error!(plugin, tenant, "{msg}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&mut self) -> u64 {
        u64::try_from(process_start().elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn config(&mut self) -> String {
        self.scope.config_json.to_string()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.scope.kv.get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.scope.kv.set(key, value).map_err(|e| e.to_string())
    }

    fn kv_delete(&mut self, key: String) {
        self.scope.kv.delete(&key);
    }
}

/// The base linker: the `host` interface plus the WASI p2 interfaces a std guest
/// uses that never block (wall clock, random, environment (empty), exit).
/// Everything else is added per component by [`link_component`].
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    use wasmtime_wasi::cli::WasiCli;
    use wasmtime_wasi::clocks::WasiClocks;
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::WasiRandom;

    let _ = process_start();
    let mut l = Linker::new(engine);
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(&mut l, PluginState::clocks)?;
    random::random::add_to_linker::<_, WasiRandom>(&mut l, PluginState::random)?;
    random::insecure::add_to_linker::<_, WasiRandom>(&mut l, PluginState::random)?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(&mut l, PluginState::random)?;
    cli::exit::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::environment::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    shared::AllRoles::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut l, |s| s)?;
    Ok(l)
}

/// Whether a component may import `name`: WASI, or this package's `host`/`types`.
pub(crate) fn import_allowed(name: &str) -> bool {
    name.starts_with("wasi:")
        || name.starts_with("switchyard:gateway/host@0.1.")
        || name.starts_with("switchyard:gateway/types@0.1.")
}

/// A linker for one component: the base linker, the monotonic clock's `now` and
/// `resolution` under the version the component imports, and every other WASI
/// import (stdio, streams, poll, filesystem, sockets, …) as a function that
/// traps. wasmtime-wasi's blocking stream and poll calls would block on the
/// Tokio runtime the policy calls run on; a guest has no use for them (a panic
/// message write traps, which ends the call as the panic would).
pub(crate) fn link_component(
    base: &Linker<PluginState>,
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<Linker<PluginState>> {
    let mut l = base.clone();
    let names: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if let Some(bad) = names.iter().find(|n| !import_allowed(n)) {
        wasmtime::bail!("imports {bad}, which the gateway does not provide");
    }
    for name in names
        .iter()
        .filter(|n| n.starts_with("wasi:clocks/monotonic-clock@0.2."))
    {
        let mut inst = l.instance(name)?;
        inst.func_wrap("now", |_, (): ()| {
            Ok((u64::try_from(process_start().elapsed().as_nanos()).unwrap_or(u64::MAX),))
        })?;
        inst.func_wrap("resolution", |_, (): ()| Ok((1u64,)))?;
    }
    l.define_unknown_imports_as_traps(component)?;
    Ok(l)
}
