//! The `host` interface every plugin imports (log, clocks, config, scoped
//! key-value store), the per-store state, and the linker that provides it along
//! with an empty WASI context (no files, environment, network or stdio).

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use switchyard_core::policy::ConnectRequest;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{host, shared, types};
use crate::buckets::Take;
use crate::figures::{Figures, PeakLimits};
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
    /// What its instances cost (CPU per call, peak memory).
    pub figures: Arc<Figures>,
    /// Set only by `switchyard replay`: the host clocks, key-value reads and
    /// token buckets answer from the recording ([`crate::record`]).
    pub replay: Option<Arc<crate::record::ReplayCtl>>,
}

/// Data of one wasmtime `Store`: WASI (empty), limits and the scope.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: PeakLimits,
    scope: Arc<Scope>,
    /// Set while a recorded call runs ([`crate::record`]): what it reads.
    pub(crate) capture: Option<crate::record::Capture>,
    /// The WASI wall clock of this store (captured or replayed like the host clocks).
    pub(crate) wall: Arc<crate::record::WallClock>,
}

impl PluginState {
    /// Fresh state with a memory cap of `memory_limit` bytes per instance.
    pub(crate) fn new(scope: Arc<Scope>, memory_limit: usize) -> Self {
        let wall = Arc::new(crate::record::WallClock::new(scope.replay.clone()));
        // Nothing inherited: no preopens, no env, no args, stdio closed,
        // sockets denied by the default address check.
        let mut wasi = WasiCtx::builder();
        wasi.wall_clock(crate::record::StoreWallClock(wall.clone()));
        if let Some(r) = &scope.replay {
            // Replay is deterministic: seeded randomness.
            r.seed_random(&mut wasi);
        }
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: PeakLimits {
                inner: StoreLimitsBuilder::new()
                    .memory_size(memory_limit)
                    .instances(64)
                    .tables(64)
                    .memories(16)
                    .table_elements(100_000)
                    .build(),
                figures: scope.figures.clone(),
            },
            scope,
            capture: None,
            wall,
        }
    }

    /// Starts capturing what the next call reads (recording).
    pub(crate) fn begin_capture(&mut self) {
        self.capture = Some(crate::record::Capture::default());
        self.wall.capture(true);
    }

    /// Ends a [`Self::begin_capture`]: what the call read.
    pub(crate) fn end_capture(&mut self) -> crate::record::Capture {
        let mut c = self.capture.take().unwrap_or_default();
        c.wall_ns = self.wall.capture(false);
        c
    }

    /// The monotonic clock plugins see (host and WASI): replayed, captured or real.
    fn monotonic(&mut self) -> u64 {
        use crate::record::Clock;
        if let Some(r) = &self.scope.replay {
            return r.clock(Clock::MonotonicNs);
        }
        let v = u64::try_from(process_start().elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Some(c) = &mut self.capture {
            c.clock.push((Clock::MonotonicNs, v));
        }
        v
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

pub(crate) fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Host side of the `connect-request` resource: the request an `authenticate`
/// call is looking at. Pushed into the store's table for the call and removed
/// after it (the guest only ever gets a borrow).
pub struct RequestRes(pub Arc<ConnectRequest>);

/// Headers a plugin can list (the rest are not shown).
pub const MAX_HEADERS: usize = 64;

impl PluginState {
    /// Shares `req` with the guest for one call; undo with [`Self::unlend`].
    pub(crate) fn lend(
        &mut self,
        req: Arc<ConnectRequest>,
    ) -> wasmtime::Result<Resource<RequestRes>> {
        Ok(self.table.push(RequestRes(req))?)
    }

    /// Ends a [`Self::lend`].
    pub(crate) fn unlend(&mut self, res: Resource<RequestRes>) {
        let _ = self.table.delete(res);
    }

    /// `f` of the lent request; a handle no longer in the table (the call it
    /// was lent for ended) reads as empty.
    fn read<R: Default>(
        &self,
        res: &Resource<RequestRes>,
        f: impl FnOnce(&ConnectRequest) -> R,
    ) -> R {
        self.table
            .get(res)
            .ok()
            .map(|r| f(&r.0))
            .unwrap_or_default()
    }
}

impl types::Host for PluginState {}

impl types::HostConnectRequest for PluginState {
    fn tenant(&mut self, res: Resource<RequestRes>) -> String {
        self.read(&res, |r| r.tenant.clone())
    }

    fn path(&mut self, res: Resource<RequestRes>) -> String {
        self.read(&res, |r| r.path.clone())
    }

    fn query(&mut self, res: Resource<RequestRes>) -> String {
        self.read(&res, |r| r.query.clone())
    }

    fn header(&mut self, res: Resource<RequestRes>, name: String) -> Option<String> {
        self.read(&res, |r| {
            let mut first64 = r.headers.iter().take(MAX_HEADERS);
            first64
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .map(|(_, v)| v.clone())
        })
    }

    fn headers(&mut self, res: Resource<RequestRes>) -> Vec<types::Header> {
        self.read(&res, |r| {
            let first64 = r.headers.iter().take(MAX_HEADERS);
            first64
                .map(|(name, value)| types::Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        })
    }

    fn remote_addr(&mut self, res: Resource<RequestRes>) -> String {
        self.read(&res, |r| r.remote_addr.clone())
    }

    fn client_id(&mut self, res: Resource<RequestRes>) -> String {
        self.read(&res, |r| r.client_id.clone())
    }

    fn token(&mut self, res: Resource<RequestRes>) -> Option<String> {
        self.read(&res, |r| r.token.clone())
    }

    fn drop(&mut self, res: Resource<RequestRes>) -> wasmtime::Result<()> {
        // The guest only gets borrows; the host removes the entry after the call.
        let _ = res;
        Ok(())
    }
}

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
        use crate::record::Clock;
        if let Some(r) = &self.scope.replay {
            return r.clock(Clock::NowMs);
        }
        let v = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Some(c) = &mut self.capture {
            c.clock.push((Clock::NowMs, v));
        }
        v
    }

    fn monotonic_ns(&mut self) -> u64 {
        self.monotonic()
    }

    fn config(&mut self) -> String {
        self.scope.config_json.to_string()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        let v = self.scope.kv.get(&key);
        if let Some(c) = &mut self.capture {
            c.kv_read(&key, v.as_deref());
        }
        v
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.scope.kv.set(key, value).map_err(|e| e.to_string())
    }

    fn kv_delete(&mut self, key: String) {
        self.scope.kv.delete(&key);
    }

    fn take_tokens(
        &mut self,
        key: String,
        rate: f64,
        burst: f64,
        cost: f64,
        max_wait_ms: u64,
    ) -> Result<u64, u64> {
        let replay = self.scope.replay.as_ref();
        if let Some(recorded) = replay.and_then(|r| r.tokens()) {
            return recorded;
        }
        let now = match replay {
            Some(r) => r.bucket_clock(),
            None => u64::try_from(process_start().elapsed().as_nanos()).unwrap_or(u64::MAX),
        };
        let r = match self
            .scope
            .kv
            .buckets
            .take(&key, rate, burst, cost, max_wait_ms, now)
        {
            Take::Granted { wait_ms } => Ok(wait_ms),
            Take::Refused { retry_after_ms } => Err(retry_after_ms),
        };
        if let Some(c) = &mut self.capture {
            c.tokens.push(r);
        }
        r
    }
}

/// The base linker: the `host` interface plus the WASI p2 interfaces a std guest
/// uses that never block (wall clock, random, environment (empty), exit).
/// Everything else is added per component by [`link_component`].
/// [`PROVIDED`] lists these interfaces; keep the two in step.
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
        || name.starts_with("switchyard:gateway/host@0.2.")
        || name.starts_with("switchyard:gateway/types@0.2.")
}

/// Interfaces the base linker provides (any 0.2.x version of them resolves to
/// the linked one by semver). Keep in step with [`linker`]: an interface added
/// there and missing here would be stubbed with traps for every component.
const PROVIDED: [&str; 8] = [
    "wasi:clocks/wall-clock@0.2.",
    "wasi:random/random@0.2.",
    "wasi:random/insecure@0.2.",
    "wasi:random/insecure-seed@0.2.",
    "wasi:cli/exit@0.2.",
    "wasi:cli/environment@0.2.",
    "switchyard:gateway/host@0.2.",
    "switchyard:gateway/types@0.2.",
];

/// A linker for one component: the base linker, the monotonic clock's `now` and
/// `resolution` under the version the component imports, and every other WASI
/// import (stdio, streams, poll, filesystem, sockets, …) as a function that
/// traps. wasmtime-wasi's blocking stream and poll calls would block on the
/// Tokio runtime the policy calls run on; a guest has no use for them (a panic
/// message write traps, which ends the call as the panic would).
///
/// Interfaces in [`PROVIDED`] are left alone: wasmtime's own
/// `define_unknown_imports_as_traps` would define an import of another 0.2.x
/// version than the linked one (Rust's std imports `wasi:random@0.2.6` for
/// `HashMap` seeds) as traps under that exact name, shadowing the real one.
pub(crate) fn link_component(
    base: &Linker<PluginState>,
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<Linker<PluginState>> {
    use wasmtime::component::ResourceType;
    use wasmtime::component::types::ComponentItem;

    let mut l = base.clone();
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        if !import_allowed(name) {
            wasmtime::bail!("imports {name}, which the gateway does not provide");
        }
        if PROVIDED.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            wasmtime::bail!("imports {name}, which is not an interface");
        };
        let mut inst = l.instance(name)?;
        let monotonic = name.starts_with("wasi:clocks/monotonic-clock@0.2.");
        for (export, item) in instance.exports(engine) {
            match (export, item.ty) {
                ("now", _) if monotonic => inst.func_wrap(
                    "now",
                    |mut cx: wasmtime::StoreContextMut<'_, PluginState>, (): ()| {
                        Ok((cx.data_mut().monotonic(),))
                    },
                )?,
                ("resolution", _) if monotonic => {
                    inst.func_wrap("resolution", |_, (): ()| Ok((1u64,)))?
                }
                (_, ComponentItem::ComponentFunc(_)) => {
                    let full = format!("{name}#{export}");
                    inst.func_new(export, move |_, _, _, _| {
                        wasmtime::bail!("`{full}` is not available to plugins")
                    })?
                }
                (_, ComponentItem::Resource(_)) => {
                    inst.resource(export, ResourceType::host::<()>(), |_, _| Ok(()))?
                }
                _ => {}
            }
        }
    }
    Ok(l)
}
