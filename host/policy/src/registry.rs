//! The plugin registry: plugin files and their compiled versions, load status,
//! and installation of each tenant's `PolicySet` from its policy mappings.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde_json::json;
use switchyard_core::Node;
use switchyard_core::config::{OnError, PluginsConfig, PoliciesConfig, PolicyConfig};
use switchyard_core::policy::PolicySet;
use switchyard_core::tenant::Tenant;

use crate::adapters::{Caller, Unavailable};
use crate::breaker::Breaker;
use crate::engine::{
    Compiled, ContentHash, LoadError, MAX_PLUGIN_BYTES, Runtime, compile, content_hash, hex,
};
use crate::figures::Figures;
use crate::host_api::Scope;
use crate::isolation::{Placement, TenantBudget};
use crate::kv::KvStore;
use crate::metrics::PluginMetrics;
use crate::pool::{CallError, InstancePool, Limits, RoleInstance};
use crate::record::{RecordError, RecordRequest, RecordStatus, RecordTap};
use crate::role::Role;
use crate::roles::{PluginRole, RoleVisitor, each_role};
use crate::shadow::{Lane, ShadowStats};

/// Largest memory cap a policy may ask for (32-bit linear memory).
const MAX_MEMORY_LIMIT: usize = 4 << 30;

/// Load state of one plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The current file is compiled and serving.
    Loaded,
    /// The current file failed; the previous version (if any) keeps serving.
    Failed,
    /// The file is gone; mappings fall back (see docs/plugins.md).
    Removed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Loaded => "loaded",
            Status::Failed => "failed",
            Status::Removed => "removed",
        }
    }
}

/// (mtime, length, inode): a cheap "file unchanged" check before hashing.
type FileSig = (SystemTime, u64, u64);

struct PluginEntry {
    file_sig: Option<FileSig>,
    file_hash: Option<ContentHash>,
    status: Status,
    serving: Option<Arc<Compiled>>,
    loaded_at: Option<SystemTime>,
    last_error: Option<String>,
}

/// What a tenant's role is bound to.
#[derive(Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a few per tenant, built on reload only
enum Binding {
    BuiltIn,
    Plugin {
        hash: ContentHash,
        policy: PolicyConfig,
        limits: Limits,
        kv_max: usize,
        /// The loaded shadow plugin (`shadow = …`), if any.
        shadow: Option<ShadowBinding>,
    },
    Refuse {
        reason: String,
    },
}

/// Why a promotion was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    /// Unknown role name (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// No such tenant, or no shadow running for that role (HTTP 404).
    #[error("{0}")]
    NotFound(String),
}

/// A shadow plugin a binding runs beside the serving one ([`crate::shadow`]).
#[derive(Debug, Clone, PartialEq)]
struct ShadowBinding {
    plugin: String,
    hash: ContentHash,
}

/// `POST /admin/shadow/promote`: the tenant role whose config maps `plugin`
/// with `shadow` serves the shadow instead, until that mapping changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Promotion {
    plugin: String,
    shadow: String,
}

/// Each role's binding of one tenant.
type Bindings = BTreeMap<Role, Binding>;

struct TenantInstall {
    bindings: Bindings,
    set: PolicySet,
}

struct MappingIssue {
    tenant: String,
    role: Role,
    plugin: String,
    message: String,
}

struct State {
    defaults: PluginsConfig,
    plugins: BTreeMap<String, PluginEntry>,
    kv: HashMap<(String, String), Arc<KvStore>>,
    installed: HashMap<String, TenantInstall>,
    issues: Vec<MappingIssue>,
    /// Each tenant's share of the runtime; kept across reloads (its counts are
    /// held by live instances), replaced when the configured bounds change.
    budgets: HashMap<String, Arc<TenantBudget>>,
    /// The breaker of each tenant's plugin-served role, for the listing.
    breakers: HashMap<(String, Role), Arc<Breaker>>,
    /// What each tenant's plugin-served role costs, for the listing.
    figures: HashMap<(String, Role), Arc<Figures>>,
    /// Shadowed tenant roles, for `GET /admin/shadow`.
    shadows: HashMap<(String, Role), Arc<ShadowStats>>,
    /// Promoted shadows.
    promoted: HashMap<(String, Role), Promotion>,
    /// The recording switch of each plugin-served tenant role (kept across
    /// reloads, so a recording goes on through them).
    taps: HashMap<(String, Role), Arc<RecordTap>>,
    /// Recordings, running and the last finished ones, for `GET /admin/record`.
    recordings: Vec<Arc<RecordStatus>>,
}

/// Shared by the `PluginHost`, its watcher and its reload path.
pub(crate) struct Registry {
    node: Arc<Node>,
    /// The engine every plugin of this host is compiled for.
    runtime: Arc<Runtime>,
    metrics: PluginMetrics,
    dir: PathBuf,
    cache_dir: PathBuf,
    state: Mutex<State>,
    /// Serialises scans and reloads (held across awaits; `state` never is).
    scan_lock: tokio::sync::Mutex<()>,
}

/// Outcome of reading one file.
enum FileLoad {
    Unchanged,
    Loaded(Arc<Compiled>),
    Failed(Option<ContentHash>, LoadError),
}

impl Registry {
    pub(crate) fn new(node: Arc<Node>, runtime: Arc<Runtime>) -> Self {
        let defaults = node.config.plugins.clone();
        let dir = defaults.dir.clone();
        let cache_dir = if defaults.cache_dir.as_os_str().is_empty() {
            dir.join(".cache")
        } else {
            defaults.cache_dir.clone()
        };
        Self {
            metrics: PluginMetrics::register(&node.metrics),
            node,
            runtime,
            dir,
            cache_dir,
            state: Mutex::new(State {
                defaults,
                plugins: BTreeMap::new(),
                kv: HashMap::new(),
                installed: HashMap::new(),
                issues: Vec::new(),
                budgets: HashMap::new(),
                breakers: HashMap::new(),
                shadows: HashMap::new(),
                figures: HashMap::new(),
                promoted: HashMap::new(),
                taps: HashMap::new(),
                recordings: Vec::new(),
            }),
            scan_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the sandbox defaults (call timeout, memory cap, kv bound).
    pub(crate) fn set_defaults(&self, plugins: &PluginsConfig) {
        if plugins.dir != self.dir {
            tracing::warn!(
                old = %self.dir.display(),
                new = %plugins.dir.display(),
                "plugins.dir cannot change at runtime; restart to use the new folder"
            );
        }
        self.state.lock().defaults = plugins.clone();
    }

    /// Reads the folder, (re)loads new or changed files, marks removed ones, and
    /// re-installs every tenant's policies.
    pub(crate) async fn scan(&self) {
        let _serial = self.scan_lock.lock().await;
        let dir = self.dir.clone();
        let files = tokio::task::spawn_blocking(move || list_wasm(&dir))
            .await
            .unwrap_or_default();
        for (name, path, sig) in &files {
            let (known_sig, known_hash) = {
                let st = self.state.lock();
                match st.plugins.get(name) {
                    Some(e) if e.status != Status::Removed => (e.file_sig, e.file_hash),
                    _ => (None, None),
                }
            };
            if known_sig == Some(*sig) {
                continue;
            }
            let load = self.read_and_compile(path.clone(), known_hash).await;
            self.record_load(name, *sig, load);
        }
        {
            let mut st = self.state.lock();
            for (name, e) in st.plugins.iter_mut() {
                if e.status != Status::Removed && !files.iter().any(|(n, _, _)| n == name) {
                    tracing::warn!(plugin = %name, "plugin file removed; its mappings fall back to the built-in policy (auth with on_error = deny refuses)");
                    e.status = Status::Removed;
                    e.serving = None;
                    e.file_sig = None;
                    e.file_hash = None;
                    e.last_error = None;
                }
            }
        }
        self.install();
    }

    async fn read_and_compile(&self, path: PathBuf, known: Option<ContentHash>) -> FileLoad {
        let cache_dir = self.cache_dir.clone();
        let rt = self.runtime.clone();
        let job = tokio::task::spawn_blocking(move || {
            let bytes = read_bounded(&path).map_err(|e| (None, e))?;
            let hash = content_hash(&bytes);
            if known == Some(hash) {
                return Ok(None);
            }
            compile(&rt, &bytes, &cache_dir)
                .map(|c| Some(Arc::new(c)))
                .map_err(|e| (Some(hash), e))
        });
        match job.await {
            Ok(Ok(None)) => FileLoad::Unchanged,
            Ok(Ok(Some(c))) => FileLoad::Loaded(c),
            Ok(Err((hash, e))) => FileLoad::Failed(hash, e),
            Err(e) => FileLoad::Failed(None, LoadError::Compile(format!("compile task: {e}"))),
        }
    }

    fn record_load(&self, name: &str, sig: FileSig, load: FileLoad) {
        let mut st = self.state.lock();
        let e = st
            .plugins
            .entry(name.to_owned())
            .or_insert_with(|| PluginEntry {
                file_sig: None,
                file_hash: None,
                status: Status::Failed,
                serving: None,
                loaded_at: None,
                last_error: None,
            });
        e.file_sig = Some(sig);
        let load = match load {
            FileLoad::Loaded(c) if e.serving.as_ref().is_some_and(|old| old.role != c.role) => {
                let old = e.serving.as_ref().map_or(c.role, |o| o.role);
                FileLoad::Failed(
                    Some(c.hash),
                    LoadError::World(format!(
                        "the new file implements the {} role, the serving version {old}; remove the file first (or use a new name) to change a plugin's role",
                        c.role
                    )),
                )
            }
            other => other,
        };
        match load {
            FileLoad::Unchanged => {}
            FileLoad::Loaded(c) => {
                tracing::info!(
                    plugin = %name,
                    role = %c.role,
                    hash = %hex(&c.hash),
                    from_cache = c.from_cache,
                    "plugin loaded"
                );
                e.file_hash = Some(c.hash);
                e.status = Status::Loaded;
                e.serving = Some(c);
                e.loaded_at = Some(SystemTime::now());
                e.last_error = None;
            }
            FileLoad::Failed(hash, err) => {
                self.metrics.load_failed(name);
                match &e.serving {
                    Some(old) => tracing::warn!(
                        plugin = %name,
                        serving = %hex(&old.hash),
                        "plugin failed to load; the previous version keeps serving: {err}"
                    ),
                    None => tracing::warn!(plugin = %name, "plugin failed to load: {err}"),
                }
                e.file_hash = hash;
                e.status = Status::Failed;
                e.last_error = Some(err.to_string());
            }
        }
    }

    /// Builds and installs every tenant's `PolicySet`, reusing the adapters (and
    /// their warm instances) of roles whose binding did not change.
    pub(crate) fn install(&self) {
        let mut st = self.state.lock();
        st.issues.clear();
        let tenants = self.node.tenants.all();
        for tenant in &tenants {
            self.install_tenant(&mut st, tenant);
        }
        st.installed
            .retain(|id, _| tenants.iter().any(|t| &*t.id == id.as_str()));
        let live = |id: &str| tenants.iter().any(|t| &*t.id == id);
        st.shadows.retain(|(id, _), _| live(id));
        st.promoted.retain(|(id, _), _| live(id));
        st.breakers.retain(|(id, _), _| live(id));
        st.figures.retain(|(id, _), _| live(id));
        st.taps.retain(|(id, _), _| live(id));
        for i in &st.issues {
            tracing::warn!(
                tenant = %i.tenant,
                role = %i.role,
                plugin = %i.plugin,
                "policy mapping not served by its plugin: {}",
                i.message
            );
        }
    }

    fn install_tenant(&self, st: &mut State, tenant: &Arc<Tenant>) {
        let cfg = tenant.config();
        let policies = &cfg.policies;
        // What each role is bound to.
        struct Bind<'a> {
            reg: &'a Registry,
            st: &'a mut State,
            tenant: &'a str,
            policies: &'a PoliciesConfig,
            bindings: Bindings,
        }
        impl RoleVisitor for Bind<'_> {
            fn visit<R: PluginRole>(&mut self) {
                let mapping = R::mapping(self.policies);
                let b = self
                    .reg
                    .binding(self.st, self.tenant, R::ROLE, mapping, R::FAILS_CLOSED);
                self.bindings.insert(R::ROLE, b);
            }
        }
        let mut bind = Bind {
            reg: self,
            st,
            tenant: &tenant.id,
            policies,
            bindings: Bindings::new(),
        };
        each_role(&mut bind);
        let bindings = bind.bindings;
        for (role, b) in &bindings {
            if !matches!(
                b,
                Binding::Plugin {
                    shadow: Some(_),
                    ..
                }
            ) {
                st.shadows.remove(&(tenant.id.to_string(), *role));
            }
        }
        let old = st.installed.remove(&*tenant.id);
        if let Some(o) = old.as_ref().filter(|o| o.bindings == bindings) {
            let set = o.set.clone();
            st.installed
                .insert(tenant.id.to_string(), TenantInstall { bindings, set });
            return;
        }
        // The policy set, reusing the old one's policy for each role whose
        // binding is unchanged (its instances and state go on).
        struct Build<'a> {
            reg: &'a Registry,
            st: &'a mut State,
            tenant: &'a Arc<Tenant>,
            policies: &'a PoliciesConfig,
            bindings: &'a Bindings,
            old: Option<&'a TenantInstall>,
            set: PolicySet,
        }
        impl RoleVisitor for Build<'_> {
            fn visit<R: PluginRole>(&mut self) {
                let b = &self.bindings[&R::ROLE];
                if let Some(old) = self.old.filter(|o| o.bindings.get(&R::ROLE) == Some(b)) {
                    *R::slot(&mut self.set) = R::slot(&mut old.set.clone()).clone();
                    return;
                }
                let policy = match b {
                    Binding::BuiltIn => return, // the default set's
                    Binding::Refuse { reason } => {
                        let plugin = R::mapping(self.policies).map_or("", |p| p.plugin.as_str());
                        let refusal = Unavailable {
                            reason: reason.clone(),
                            metrics: self.reg.metrics.for_call(
                                plugin,
                                R::ROLE,
                                &self.tenant.metric_label(),
                            ),
                        };
                        match R::unavailable(refusal) {
                            Some(p) => p,
                            None => return,
                        }
                    }
                    Binding::Plugin { .. } => {
                        let serving = R::serve(self.reg.caller(self.st, self.tenant, R::ROLE, b));
                        match self.reg.shadow_lane::<R>(self.st, self.tenant, b) {
                            Some(lane) => R::shadowed(serving, lane),
                            None => serving,
                        }
                    }
                };
                *R::slot(&mut self.set) = policy;
            }
        }
        let mut build = Build {
            reg: self,
            st,
            tenant,
            policies,
            bindings: &bindings,
            old: old.as_ref(),
            set: PolicySet::default(),
        };
        each_role(&mut build);
        let set = build.set;
        tenant.set_policies(set.clone());
        st.installed
            .insert(tenant.id.to_string(), TenantInstall { bindings, set });
    }

    fn binding(
        &self,
        st: &mut State,
        tenant: &str,
        role: Role,
        policy: Option<&PolicyConfig>,
        fails_closed: bool,
    ) -> Binding {
        let Some(policy) = policy else {
            st.promoted.remove(&(tenant.to_owned(), role));
            return Binding::BuiltIn;
        };
        let promoted;
        let policy = match st.promoted.get(&(tenant.to_owned(), role)) {
            Some(p)
                if p.plugin == policy.plugin && policy.shadow.as_deref() == Some(&*p.shadow) =>
            {
                promoted = PolicyConfig {
                    plugin: p.shadow.clone(),
                    shadow: None,
                    ..policy.clone()
                };
                &promoted
            }
            Some(_) => {
                // The mapping changed since the promotion: the config rules again.
                st.promoted.remove(&(tenant.to_owned(), role));
                policy
            }
            None => policy,
        };
        let entry = st.plugins.get(&policy.plugin);
        let problem = match entry.and_then(|e| e.serving.as_ref()) {
            Some(c) if c.role == role => {
                let limits = Limits {
                    call_timeout: policy
                        .call_timeout
                        .unwrap_or(st.defaults.call_timeout)
                        .max(Duration::from_millis(1)),
                    memory_limit: policy
                        .memory_limit
                        .unwrap_or(st.defaults.memory_limit)
                        .min(MAX_MEMORY_LIMIT),
                };
                let hash = c.hash;
                let shadow = self.shadow_binding(st, tenant, role, policy);
                return Binding::Plugin {
                    hash,
                    policy: policy.clone(),
                    limits,
                    kv_max: st.defaults.kv_max_entries,
                    shadow,
                };
            }
            Some(c) => format!(
                "plugin {} implements the {} role, but is mapped as {role}",
                policy.plugin, c.role
            ),
            None => match entry {
                None => format!("plugin {} is not in {}", policy.plugin, self.dir.display()),
                Some(e) => format!(
                    "plugin {} is {}{}",
                    policy.plugin,
                    e.status.as_str(),
                    e.last_error
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            },
        };
        st.issues.push(MappingIssue {
            tenant: tenant.to_owned(),
            role,
            plugin: policy.plugin.clone(),
            message: problem.clone(),
        });
        if fails_closed && policy.on_error == OnError::Deny {
            Binding::Refuse {
                reason: format!("auth policy unavailable: {problem}"),
            }
        } else {
            Binding::BuiltIn
        }
    }

    /// The shadow of `policy`, when one is mapped and can run (else a
    /// mapping issue says why not; serving is unaffected).
    fn shadow_binding(
        &self,
        st: &mut State,
        tenant: &str,
        role: Role,
        policy: &PolicyConfig,
    ) -> Option<ShadowBinding> {
        let name = policy.shadow.as_ref()?;
        let problem = match st.plugins.get(name).and_then(|e| e.serving.as_ref()) {
            Some(c) if c.role == role => {
                return Some(ShadowBinding {
                    plugin: name.clone(),
                    hash: c.hash,
                });
            }
            Some(c) => format!(
                "shadow plugin {name} implements the {} role, not {role}",
                c.role
            ),
            None => format!("shadow plugin {name} is not loaded"),
        };
        st.issues.push(MappingIssue {
            tenant: tenant.to_owned(),
            role,
            plugin: name.clone(),
            message: format!("{problem}; no shadow runs"),
        });
        None
    }

    /// Starts the shadow lane of a binding that has a shadow: the shadow
    /// plugin's adapter on its own thread, and its stats in the listing.
    fn shadow_lane<R: PluginRole>(
        &self,
        st: &mut State,
        tenant: &Tenant,
        binding: &Binding,
    ) -> Option<Lane> {
        let role = R::ROLE;
        let Binding::Plugin {
            policy,
            limits,
            kv_max,
            shadow: Some(sb),
            ..
        } = binding
        else {
            return None;
        };
        let (l, k) = (*limits, *kv_max);
        let target =
            R::shadow(self.build_caller(st, tenant, role, &sb.plugin, policy, l, k, false));
        let stats = Arc::new(ShadowStats::new(
            &tenant.id,
            role.as_str(),
            &policy.plugin,
            &sb.plugin,
            policy.shadow_sample,
            self.metrics.shadow_counters(&tenant.id, role, &sb.plugin),
        ));
        match Lane::start(target, stats.clone()) {
            Ok(lane) => {
                st.shadows.insert((tenant.id.to_string(), role), stats);
                Some(lane)
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant.id, %role, shadow = %sb.plugin, error = %e, "cannot start the shadow thread; no shadow runs");
                None
            }
        }
    }

    fn caller<B: RoleInstance>(
        &self,
        st: &mut State,
        tenant: &Tenant,
        role: Role,
        binding: &Binding,
    ) -> Caller<B> {
        let Binding::Plugin {
            policy,
            limits,
            kv_max,
            ..
        } = binding
        else {
            unreachable!("caller() is only built for plugin bindings")
        };
        self.build_caller(
            st,
            tenant,
            role,
            &policy.plugin,
            policy,
            *limits,
            *kv_max,
            true,
        )
    }

    /// A caller of `plugin` for `tenant` in `role`, with `policy`'s config and
    /// failure decision; `serving` callers are listed (breaker) in
    /// `/admin/plugins`, shadow ones decide `deny` on failure and are not.
    #[allow(clippy::too_many_arguments)]
    fn build_caller<B: RoleInstance>(
        &self,
        st: &mut State,
        tenant: &Tenant,
        role: Role,
        plugin_name: &str,
        policy: &PolicyConfig,
        limits: Limits,
        kv_max: usize,
        serving: bool,
    ) -> Caller<B> {
        let compiled = st
            .plugins
            .get(plugin_name)
            .and_then(|e| e.serving.clone())
            .expect("binding() checked the plugin is serving");
        let kv = st
            .kv
            .entry((plugin_name.to_owned(), tenant.id.to_string()))
            .or_insert_with(|| Arc::new(KvStore::new(kv_max)))
            .clone();
        // A shadow's instances have a budget of their own: they never take
        // the slots the tenant's serving plugins need.
        let budget = if serving {
            budget_for(st, &tenant.id)
        } else {
            Arc::new(TenantBudget::new(
                st.defaults.max_concurrent_calls,
                crate::shadow::MAX_INSTANCES,
            ))
        };
        let breaker = Arc::new(Breaker::default());
        if serving {
            st.breakers
                .insert((tenant.id.to_string(), role), breaker.clone());
        }
        let plugin: Arc<str> = Arc::from(plugin_name);
        let figures = Arc::new(self.metrics.figures(plugin_name, role));
        if serving {
            st.figures
                .insert((tenant.id.to_string(), role), figures.clone());
        }
        let recorder = if serving {
            st.taps
                .entry((tenant.id.to_string(), role))
                .or_default()
                .clone()
        } else {
            Arc::new(RecordTap::default())
        };
        let scope = Arc::new(Scope {
            plugin: plugin.clone(),
            tenant: tenant.id.clone(),
            config_json: Arc::from(policy.config_json()),
            kv,
            figures: figures.clone(),
            replay: None,
        });
        Caller {
            pool: InstancePool::new(compiled, scope, limits, budget.clone()),
            placement: Placement::new(budget),
            on_error: if serving {
                policy.on_error
            } else {
                OnError::Deny
            },
            metrics: self
                .metrics
                .for_call(plugin_name, role, &tenant.metric_label()),
            plugin,
            tenant: tenant.id.clone(),
            role: role.as_str(),
            breaker,
            figures,
            recorder,
        }
    }

    /// `POST /admin/record`: records the next `calls` calls of `tenant`'s
    /// `role` into a new file under `plugins.record_dir`.
    pub(crate) fn record(
        &self,
        tenant: &str,
        role: &str,
        calls: u64,
    ) -> Result<serde_json::Value, RecordError> {
        let role = Role::ALL
            .into_iter()
            .find(|r| r.as_str() == role)
            .ok_or_else(|| RecordError::BadRequest(format!("unknown role {role:?}")))?;
        if role == Role::Merge {
            return Err(RecordError::BadRequest(
                "merge documents are not recorded (their state lives in the plugin instance)"
                    .into(),
            ));
        }
        let mut st = self.state.lock();
        let max = st.defaults.record_max_calls;
        if calls == 0 || calls > max {
            return Err(RecordError::BadRequest(format!(
                "calls must be 1-{max} (plugins.record_max_calls)"
            )));
        }
        let inst = st
            .installed
            .get(tenant)
            .ok_or_else(|| RecordError::NotFound(format!("no tenant {tenant:?}")))?;
        let Some(Binding::Plugin {
            hash,
            policy,
            limits,
            ..
        }) = inst.bindings.get(&role)
        else {
            return Err(RecordError::NotFound(format!(
                "tenant {tenant}'s {role} role is not served by a plugin"
            )));
        };
        let tap = st
            .taps
            .get(&(tenant.to_owned(), role))
            .cloned()
            .ok_or_else(|| {
                RecordError::NotFound(format!(
                    "tenant {tenant}'s {role} role is not served by a plugin"
                ))
            })?;
        let config_json = policy.config_json();
        let status = crate::record::start(
            &tap,
            &RecordRequest {
                tenant,
                role: role.as_str(),
                plugin: &policy.plugin,
                plugin_hash: hex(hash),
                config_json: &config_json,
                on_error: match policy.on_error {
                    OnError::Deny => "deny",
                    OnError::Allow => "allow",
                },
                call_timeout: limits.call_timeout,
                memory_limit: limits.memory_limit,
                calls,
                dir: &st.defaults.record_dir,
                max_bytes: st.defaults.record_max_bytes,
            },
        )?;
        let v = status.json();
        st.recordings.push(status);
        let finished = st.recordings.iter().filter(|r| r.finished()).count();
        if finished > crate::record::KEEP_FINISHED {
            let mut drop_n = finished - crate::record::KEEP_FINISHED;
            st.recordings.retain(|r| {
                let gone = drop_n > 0 && r.finished();
                drop_n -= usize::from(gone);
                !gone
            });
        }
        Ok(v)
    }

    /// `GET /admin/record` body: `{"recordings":[…]}`, oldest first.
    pub(crate) fn recordings_json(&self) -> serde_json::Value {
        let st = self.state.lock();
        json!({"recordings": st.recordings.iter().map(|r| r.json()).collect::<Vec<_>>()})
    }

    /// See [`crate::PluginHost::instantiate_once`].
    pub(crate) fn instantiate_once(&self, plugin: &str) -> Result<Duration, CallError> {
        let (compiled, defaults) = {
            let st = self.state.lock();
            let c = st
                .plugins
                .get(plugin)
                .and_then(|e| e.serving.clone())
                .ok_or_else(|| CallError::Unavailable(plugin.to_owned()))?;
            (c, st.defaults.clone())
        };
        let scope = Arc::new(Scope {
            plugin: Arc::from(plugin),
            tenant: Arc::from(""),
            config_json: Arc::from("{}"),
            kv: Arc::new(KvStore::new(16)),
            figures: Arc::new(Figures::unlisted()),
            replay: None,
        });
        let limits = Limits {
            call_timeout: defaults.call_timeout,
            memory_limit: defaults.memory_limit,
        };
        let unbounded = Arc::new(TenantBudget::unbounded());
        let start = std::time::Instant::now();
        struct Once {
            compiled: Option<Arc<Compiled>>,
            scope: Arc<Scope>,
            limits: Limits,
            budget: Arc<TenantBudget>,
            result: Option<Result<(), CallError>>,
        }
        impl RoleVisitor for Once {
            fn visit<R: PluginRole>(&mut self) {
                if let Some(c) = self.compiled.take_if(|c| c.role == R::ROLE) {
                    let pool = InstancePool::<R::Bindings>::new(
                        c,
                        self.scope.clone(),
                        self.limits,
                        self.budget.clone(),
                    );
                    self.result = Some(pool.instantiate().map(drop));
                }
            }
        }
        let mut once = Once {
            compiled: Some(compiled),
            scope,
            limits,
            budget: unbounded,
            result: None,
        };
        each_role(&mut once);
        once.result
            .unwrap_or_else(|| Err(CallError::Unavailable(plugin.to_owned())))?;
        Ok(start.elapsed())
    }

    /// `GET /admin/shadow` body.
    pub(crate) fn shadow_json(&self) -> serde_json::Value {
        let st = self.state.lock();
        let mut shadows: Vec<_> = st.shadows.values().map(|s| s.json()).collect();
        shadows.sort_by(|a, b| {
            (a["tenant"].as_str(), a["role"].as_str())
                .cmp(&(b["tenant"].as_str(), b["role"].as_str()))
        });
        let mut promoted: Vec<_> = st
            .promoted
            .iter()
            .map(|((t, r), p)| json!({"tenant": t, "role": r.as_str(), "plugin": p.shadow, "instead_of": p.plugin}))
            .collect();
        promoted.sort_by_key(|v| v.to_string());
        json!({"shadows": shadows, "promoted": promoted})
    }

    /// `POST /admin/shadow/promote`: `tenant`'s `role` serves its shadow from
    /// now on (until its mapping in the config changes); the policy set is
    /// swapped atomically, connections stay.
    pub(crate) fn promote(&self, tenant: &str, role: &str) -> Result<String, PromoteError> {
        let role = Role::ALL
            .into_iter()
            .find(|r| r.as_str() == role)
            .ok_or_else(|| PromoteError::BadRequest(format!("unknown role {role:?}")))?;
        {
            let mut st = self.state.lock();
            let inst = st
                .installed
                .get(tenant)
                .ok_or_else(|| PromoteError::NotFound(format!("no tenant {tenant:?}")))?;
            let Some(Binding::Plugin {
                policy,
                shadow: Some(sb),
                ..
            }) = inst.bindings.get(&role)
            else {
                return Err(PromoteError::NotFound(format!(
                    "tenant {tenant} has no running shadow for {role}"
                )));
            };
            let promotion = Promotion {
                plugin: policy.plugin.clone(),
                shadow: sb.plugin.clone(),
            };
            tracing::info!(tenant, %role, from = %promotion.plugin, to = %promotion.shadow, "shadow promoted to serving");
            st.promoted.insert((tenant.to_owned(), role), promotion);
        }
        self.install();
        let st = self.state.lock();
        Ok(st
            .promoted
            .get(&(tenant.to_owned(), role))
            .map(|p| p.shadow.clone())
            .unwrap_or_default())
    }

    /// `GET /admin/plugins` body.
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let guard = self.state.lock();
        let st: &State = &guard;
        let now = std::time::Instant::now();
        let mut out = Vec::with_capacity(st.plugins.len());
        for (name, e) in &st.plugins {
            let used_by: Vec<_> = st
                .installed
                .iter()
                .flat_map(|(tenant, inst)| {
                    inst.bindings.iter().filter_map(move |(&role, b)| match b {
                        Binding::Plugin { policy, .. } if &policy.plugin == name => {
                            let breaker = st
                                .breakers
                                .get(&(tenant.clone(), role))
                                .map(|b| b.status_json(now));
                            let instances = st
                                .budgets
                                .get(tenant)
                                .map(|b| json!({"live": b.instances(), "max": b.max_instances()}));
                            let figures = st.figures.get(&(tenant.clone(), role)).map(|f| f.json());
                            Some(json!({
                                "tenant": tenant,
                                "role": role.as_str(),
                                "breaker": breaker,
                                "tenant_instances": instances,
                                "figures": figures,
                            }))
                        }
                        _ => None,
                    })
                })
                .collect();
            let mapping_errors: Vec<_> = st
                .issues
                .iter()
                .filter(|i| &i.plugin == name)
                .map(|i| json!({"tenant": i.tenant, "role": i.role.as_str(), "error": i.message}))
                .collect();
            let last_error = e.last_error.clone().or_else(|| {
                st.issues
                    .iter()
                    .find(|i| &i.plugin == name)
                    .map(|i| format!("tenant {}: {}", i.tenant, i.message))
            });
            out.push(json!({
                "name": name,
                "role": e.serving.as_ref().map(|c| c.role.as_str()),
                "hash": e.serving.as_ref().map(|c| hex(&c.hash)),
                "file_hash": e.file_hash.as_ref().map(|h| hex(h)),
                "loaded_at": e.loaded_at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                "status": e.status.as_str(),
                "compiled_from_cache": e.serving.as_ref().map(|c| c.from_cache),
                "last_error": last_error,
                "used_by": used_by,
                "mapping_errors": mapping_errors,
            }));
        }
        for i in &st.issues {
            if !st.plugins.contains_key(&i.plugin) {
                out.push(json!({
                    "name": i.plugin,
                    "role": i.role.as_str(),
                    "hash": null,
                    "file_hash": null,
                    "loaded_at": null,
                    "status": "missing",
                    "last_error": format!("tenant {}: {}", i.tenant, i.message),
                    "used_by": [],
                    "mapping_errors": [{"tenant": i.tenant, "role": i.role.as_str(), "error": i.message}],
                }));
            }
        }
        serde_json::Value::Array(out)
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|e| LoadError::Io(e.to_string()))?;
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge);
    }
    std::fs::read(path).map_err(|e| LoadError::Io(e.to_string()))
}

/// `*.wasm` files of `dir`: (stem, path, signature). A missing folder is empty.
/// The tenant's budget, made (or remade, when the bounds changed) from the
/// defaults in force.
fn budget_for(st: &mut State, tenant: &str) -> Arc<TenantBudget> {
    let (calls, instances) = (st.defaults.max_concurrent_calls, st.defaults.max_instances);
    let fresh = || Arc::new(TenantBudget::new(calls, instances));
    let b = st.budgets.entry(tenant.to_owned()).or_insert_with(fresh);
    if !b.has_bounds(calls, instances) {
        *b = fresh();
    }
    b.clone()
}

fn list_wasm(dir: &Path) -> Vec<(String, PathBuf, FileSig)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .filter_map(Result::ok)
        .filter_map(|ent| {
            let path = ent.path();
            if path.extension()? != "wasm" {
                return None;
            }
            let meta = std::fs::metadata(&path).ok()?;
            if !meta.is_file() {
                return None;
            }
            let name = path.file_stem()?.to_str()?.to_owned();
            if name.starts_with('.') {
                return None;
            }
            let sig = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
                std::os::unix::fs::MetadataExt::ino(&meta),
            );
            Some((name, path, sig))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
