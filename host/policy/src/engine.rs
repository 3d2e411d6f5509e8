//! The process-wide wasmtime engine (component model, pooling allocator, epoch
//! interruption with a 1 ms ticker thread), compilation with an on-disk cache of
//! compiled code keyed by content hash and engine, and role detection.

use std::fmt::Write as _;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::bindings::{auth, merge, rate_limit, router};
use crate::host_api::{PluginState, Scope, link_component, linker};
use crate::kv::KvStore;
use crate::role::Role;

/// Interval of the epoch ticker; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;
/// Component instances the pool holds at once (all plugins, tenants, documents).
pub const POOL_INSTANCES: u32 = 1000;

/// SHA-256 of a plugin file.
pub type ContentHash = [u8; 32];

/// Lowercase hex of a hash.
pub fn hex(hash: &ContentHash) -> String {
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
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

/// The shared engine and linker.
pub(crate) struct Runtime {
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    /// Identifies compiled code compatible with this engine (cache file names).
    pub fingerprint: String,
}

/// The process-wide runtime, created on first use (starts the epoch ticker).
pub(crate) fn runtime() -> Result<&'static Runtime, LoadError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| build_runtime().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| LoadError::Runtime(e.clone()))
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
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            }
        })?;
    Ok(Runtime {
        engine,
        linker,
        fingerprint,
    })
}

/// Pre-instantiated component for its role's world.
#[derive(Clone)]
pub(crate) enum RolePre {
    Auth(auth::AuthPluginPre<PluginState>),
    Router(router::RouterPluginPre<PluginState>),
    RateLimit(rate_limit::RateLimitPluginPre<PluginState>),
    Merge(merge::MergePluginPre<PluginState>),
}

/// One compiled plugin version.
pub(crate) struct Compiled {
    pub hash: ContentHash,
    pub role: Role,
    pub pre: RolePre,
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
pub(crate) fn compile(bytes: &[u8], cache_dir: &Path) -> Result<Compiled, LoadError> {
    let rt = runtime()?;
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
fn detect(pre: InstancePre<PluginState>) -> Result<(Role, RolePre), LoadError> {
    let mut found = Vec::new();
    if let Ok(p) = auth::AuthPluginPre::new(pre.clone()) {
        found.push((Role::Auth, RolePre::Auth(p)));
    }
    if let Ok(p) = router::RouterPluginPre::new(pre.clone()) {
        found.push((Role::Router, RolePre::Router(p)));
    }
    if let Ok(p) = rate_limit::RateLimitPluginPre::new(pre.clone()) {
        found.push((Role::RateLimit, RolePre::RateLimit(p)));
    }
    if let Ok(p) = merge::MergePluginPre::new(pre) {
        found.push((Role::Merge, RolePre::Merge(p)));
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(LoadError::World(
            "exports none of the worlds auth-plugin, router-plugin, rate-limit-plugin, merge-plugin of switchyard:gateway@0.2.0".into(),
        )),
        _ => Err(LoadError::World(format!(
            "exports several role worlds ({}); one file implements one role",
            found.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Instantiates once in a throw-away store (default limits) to catch components
/// that compile but cannot start.
fn probe(c: &Compiled) -> Result<(), LoadError> {
    let rt = runtime()?;
    let scope = Arc::new(Scope {
        plugin: Arc::from("probe"),
        tenant: Arc::from(""),
        config_json: Arc::from("{}"),
        kv: Arc::new(KvStore::new(16)),
        figures: Arc::new(crate::figures::Figures::unlisted()),
        replay: None,
    });
    let mut store = Store::new(&rt.engine, PluginState::new(scope, 64 << 20));
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(deadline_ticks(Duration::from_millis(100)));
    let r = match &c.pre {
        RolePre::Auth(p) => p.instantiate(&mut store).map(drop),
        RolePre::Router(p) => p.instantiate(&mut store).map(drop),
        RolePre::RateLimit(p) => p.instantiate(&mut store).map(drop),
        RolePre::Merge(p) => p.instantiate(&mut store).map(drop),
    };
    r.map_err(|e| LoadError::Instantiate(bounded(format!("{e:#}"))))
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
