//! The wasmtime engine as a value ([`Runtime`]: component model, pooling
//! allocator, epoch interruption with a 1 ms ticker thread), compilation with
//! an on-disk cache of compiled code keyed by content hash and engine, and role
//! detection. A plugin host makes one runtime and passes it to what compiles;
//! each compiled plugin carries its engine to the pools that instantiate it.

use std::fmt::Write as _;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::host_api::{PluginState, Scope, link_component, linker};
use crate::kv::KvStore;
use crate::role::Role;
use crate::roles::{AnyPre, PluginRole, RoleVisitor, each_role};

/// Interval of the epoch ticker; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;
/// Component instances the pool holds at once (all plugins, tenants, documents).
pub const POOL_INSTANCES: u32 = 1000;

/// SHA-256 of a plugin file.
pub type ContentHash = [u8; 32];

/// Lowercase hex of `bytes` (hashes, recorded bytes, shown bytes).
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> ContentHash {
    Sha256::digest(bytes).into()
}

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The runtime itself could not start.
    #[error("runtime unavailable: {0}")]
    Runtime(String),
    /// The file could not be read.
    #[error("cannot read plugin file: {0}")]
    Io(String),
    /// The file is larger than [`MAX_PLUGIN_BYTES`].
    #[error("plugin file larger than {MAX_PLUGIN_BYTES} bytes")]
    TooLarge,
    /// Not a valid WebAssembly component.
    #[error("not a valid component: {0}")]
    Compile(String),
    /// Imports something the gateway does not provide.
    #[error("unsupported imports: {0}")]
    Imports(String),
    /// Exports no role world, or more than one.
    #[error("{0}")]
    World(String),
    /// Fails to instantiate in a probe store.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

/// The engine and linker plugins are compiled, linked and run with. Dropping
/// the last handle stops its epoch ticker.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    /// Identifies compiled code compatible with this engine (cache file names).
    pub(crate) fingerprint: String,
    ticking: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A new engine (pooling allocator for [`POOL_INSTANCES`] instances) with
    /// its epoch ticker thread.
    pub fn new() -> Result<Arc<Self>, LoadError> {
        build_runtime()
            .map(Arc::new)
            .map_err(|e| LoadError::Runtime(format!("{e:#}")))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

fn build_runtime() -> wasmtime::Result<Runtime> {
    // Calibrates the TSC clock used to time calls (up to ~200 ms, once) here,
    // at start, rather than in the first plugin call.
    let _ = quanta::Instant::now();
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 4)
        .total_memories(POOL_INSTANCES)
        .total_tables(POOL_INSTANCES * 2)
        .total_stacks(POOL_INSTANCES)
        // A componentize-py (Python) plugin instantiates 38 core modules.
        .max_core_instances_per_component(64)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_unused_warm_slots(100);
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&cfg)?;
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let fingerprint = format!("wasmtime48.0.8-{:016x}", h.finish());
    let linker = linker(&engine)?;
    let ticker = engine.clone();
    let ticking = Arc::new(AtomicBool::new(true));
    let on = ticking.clone();
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while on.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            }
        })?;
    Ok(Runtime {
        engine,
        linker,
        fingerprint,
        ticking,
    })
}

/// One compiled plugin version.
pub(crate) struct Compiled {
    pub hash: ContentHash,
    pub role: Role,
    /// The engine it was compiled for (its instances' stores use it).
    pub engine: Engine,
    /// The role's [`crate::roles::PluginRole::Pre`].
    pub pre: AnyPre,
    /// Whether the compiled code came from the disk cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("hash", &hex(&self.hash))
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn cache_path(rt: &Runtime, cache_dir: &Path, hash: &ContentHash) -> PathBuf {
    cache_dir.join(format!("{}-{}.cwasm", hex(hash), rt.fingerprint))
}

/// Compiles `bytes` (or loads the cached compiled code), detects the role world
/// it implements and checks that it instantiates. Blocking: run off the hot path.
pub(crate) fn compile(rt: &Runtime, bytes: &[u8], cache_dir: &Path) -> Result<Compiled, LoadError> {
    let hash = content_hash(bytes);
    let path = cache_path(rt, cache_dir, &hash);
    let mut component = None;
    if path.is_file() {
        // SAFETY: the file was written by `Component::serialize` of this engine
        // build into the gateway's own cache directory (named by content hash and
        // engine fingerprint; wasmtime re-checks engine compatibility). The cache
        // directory must be writable only by the gateway (docs/plugins.md).
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize_file(&rt.engine, &path) } {
            Ok(c) => component = Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding unusable compiled-code cache entry: {e:#}");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let from_cache = component.is_some();
    let component = match component {
        Some(c) => c,
        None => {
            let c = Component::new(&rt.engine, bytes)
                .map_err(|e| LoadError::Compile(bounded(format!("{e:#}"))))?;
            store_cache(&c, cache_dir, &path);
            c
        }
    };
    let pre = link_component(&rt.linker, &rt.engine, &component)
        .and_then(|l| l.instantiate_pre(&component))
        .map_err(|e| LoadError::Imports(bounded(format!("{e:#}"))))?;
    let (role, pre) = detect(pre)?;
    let compiled = Compiled {
        hash,
        role,
        engine: rt.engine.clone(),
        pre,
        from_cache,
    };
    probe(&compiled)?;
    Ok(compiled)
}

fn store_cache(c: &Component, cache_dir: &Path, path: &Path) {
    let write = || -> std::io::Result<()> {
        let bytes = c.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(cache_dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), "cannot write compiled-code cache: {e}");
    }
}

/// Which role world `pre` implements; exactly one must match.
fn detect(pre: InstancePre<PluginState>) -> Result<(Role, AnyPre), LoadError> {
    struct Detect {
        pre: InstancePre<PluginState>,
        found: Vec<(Role, AnyPre)>,
    }
    impl RoleVisitor for Detect {
        fn visit<R: PluginRole>(&mut self) {
            if let Ok(p) = R::pre(self.pre.clone()) {
                self.found.push((R::ROLE, Arc::new(p)));
            }
        }
    }
    let mut d = Detect {
        pre,
        found: Vec::new(),
    };
    each_role(&mut d);
    let mut found = d.found;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(LoadError::World(format!(
            "exports none of the worlds {} of switchyard:gateway@0.2.0",
            Role::ALL.map(Role::world).join(", ")
        ))),
        _ => Err(LoadError::World(format!(
            "exports several role worlds ({}); one file implements one role",
            found
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Instantiates once in a throw-away store (default limits) to catch components
/// that compile but cannot start.
fn probe(c: &Compiled) -> Result<(), LoadError> {
    let scope = Arc::new(Scope {
        plugin: Arc::from("probe"),
        tenant: Arc::from(""),
        config_json: Arc::from("{}"),
        kv: Arc::new(KvStore::new(16)),
        figures: Arc::new(crate::figures::Figures::unlisted()),
        replay: None,
    });
    let mut store = Store::new(&c.engine, PluginState::new(scope, 64 << 20));
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(deadline_ticks(Duration::from_millis(100)));
    struct Probe<'a> {
        c: &'a Compiled,
        store: &'a mut Store<PluginState>,
        result: Option<wasmtime::Result<()>>,
    }
    impl RoleVisitor for Probe<'_> {
        fn visit<R: PluginRole>(&mut self) {
            if R::ROLE == self.c.role {
                self.result =
                    Some(crate::roles::instantiate::<R>(&self.c.pre, self.store).map(drop));
            }
        }
    }
    let mut p = Probe {
        c,
        store: &mut store,
        result: None,
    };
    each_role(&mut p);
    p.result
        .unwrap_or_else(|| Err(wasmtime::Error::msg("no such role")))
        .map_err(|e| LoadError::Instantiate(bounded(format!("{e:#}"))))
}

/// Epoch ticks for a deadline (at least the full duration elapses).
pub(crate) fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    u64::try_from(timeout.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX / 2)
        .max(1)
        + 1
}

/// Caps an error text at 1 KiB.
pub(crate) fn bounded(mut s: String) -> String {
    const MAX: usize = 1024;
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}
