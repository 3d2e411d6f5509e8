//! Tenants: per-tenant settings and the policies they run, resolved per request
//! from the path (`/ws/{tenant}`), a Host mapping, or `default`.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::broker::ChannelOptions;
use crate::config::{Config, TenantConfig};
use crate::policy::PolicySet;

/// One tenant. Settings and policies are swapped atomically on reload; sessions
/// holding the tenant see the new ones on their next call.
#[derive(Debug)]
pub struct Tenant {
    /// Tenant id.
    pub id: Arc<str>,
    /// Its `tenant` label in the per-tenant metric families (id or `other`).
    metric_label: ArcSwap<String>,
    config: ArcSwap<TenantConfig>,
    options: ArcSwap<ChannelOptions>,
    policies: ArcSwap<PolicySet>,
}

impl Tenant {
    /// A tenant with built-in policies.
    pub fn new(id: &str, config: TenantConfig, dedupe_window: usize) -> Self {
        let options = options_of(&config, dedupe_window);
        Self {
            id: Arc::from(id),
            metric_label: ArcSwap::from_pointee(id.to_owned()),
            config: ArcSwap::from_pointee(config),
            options: ArcSwap::from_pointee(options),
            policies: ArcSwap::from_pointee(PolicySet::default()),
        }
    }

    /// Its `tenant` label in the per-tenant metric families.
    pub fn metric_label(&self) -> Arc<String> {
        self.metric_label.load_full()
    }

    /// Current settings.
    pub fn config(&self) -> Arc<TenantConfig> {
        self.config.load_full()
    }

    /// Channel settings for the broker.
    pub fn channel_options(&self) -> ChannelOptions {
        **self.options.load()
    }

    /// Channel settings for publishing on `channel`: with its `channel_limits`
    /// entry (the first whose pattern matches), if any.
    pub fn publish_options(&self, channel: &str) -> ChannelOptions {
        let mut opts = self.channel_options();
        let cfg = self.config.load();
        opts.limit = cfg
            .channel_limits
            .iter()
            .find(|l| crate::channel::pattern_matches(&l.pattern, channel))
            .map(|l| crate::broker::ChannelLimit {
                rate: l.rate,
                burst: l.burst.unwrap_or(l.rate).max(1),
            });
        opts
    }

    /// Current policies (cheap, lock-free).
    pub fn policies(&self) -> arc_swap::Guard<Arc<PolicySet>> {
        self.policies.load()
    }

    /// Replaces the policies atomically.
    pub fn set_policies(&self, set: PolicySet) {
        self.policies.store(Arc::new(set));
    }

    fn update(&self, config: TenantConfig, dedupe_window: usize) {
        self.options
            .store(Arc::new(options_of(&config, dedupe_window)));
        self.config.store(Arc::new(config));
    }

    /// Whether `channel` is a document channel (matches `documents`).
    pub fn is_document(&self, channel: &str) -> bool {
        let cfg = self.config.load();
        !cfg.documents.is_empty()
            && cfg
                .documents
                .iter()
                .any(|p| crate::channel::pattern_matches(p, channel))
    }

    /// Whether a present `Origin` header is on the allow-list.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let cfg = self.config.load();
        cfg.origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// Whether `key` is one of the tenant's API keys (constant-time per key).
    pub fn api_key_valid(&self, key: &str) -> bool {
        let cfg = self.config.load();
        cfg.api_keys.iter().fold(false, |ok, k| {
            ok | constant_time_eq(k.as_bytes(), key.as_bytes())
        })
    }
}

fn options_of(c: &TenantConfig, dedupe_window: usize) -> ChannelOptions {
    ChannelOptions {
        history_size: c.history_size,
        history_ttl: c.history_ttl,
        dedupe_window,
        limit: None,
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// All tenants of the node.
#[derive(Debug)]
pub struct Tenants {
    map: ArcSwap<HashMap<String, Arc<Tenant>>>,
    hosts: ArcSwap<HashMap<String, String>>,
}

impl Tenants {
    /// Builds tenants from configuration.
    pub fn from_config(cfg: &Config) -> Self {
        let t = Self {
            map: ArcSwap::from_pointee(HashMap::new()),
            hosts: ArcSwap::from_pointee(HashMap::new()),
        };
        t.reload(cfg);
        t
    }

    /// Applies a new configuration: updates existing tenants in place (sessions
    /// keep working), adds new ones, drops removed ones from lookup.
    pub fn reload(&self, cfg: &Config) {
        let old = self.map.load();
        let mut map = HashMap::with_capacity(cfg.tenants.len());
        for (id, tc) in &cfg.tenants {
            let t = match old.get(id) {
                Some(t) => {
                    t.update(tc.clone(), cfg.limits.dedupe_window);
                    t.clone()
                }
                None => Arc::new(Tenant::new(id, tc.clone(), cfg.limits.dedupe_window)),
            };
            t.metric_label.store(Arc::new(
                cfg.telemetry.tenant_label(id, &cfg.tenants).to_owned(),
            ));
            map.insert(id.clone(), t);
        }
        self.map.store(Arc::new(map));
        let hosts = cfg
            .server
            .hosts
            .iter()
            .map(|(h, t)| (h.to_ascii_lowercase(), t.clone()))
            .collect();
        self.hosts.store(Arc::new(hosts));
    }

    /// A tenant by id.
    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.map.load().get(id).cloned()
    }

    /// All tenants.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.map.load().values().cloned().collect()
    }

    /// Resolves a request's tenant: path segment, else Host mapping, else `default`.
    /// A path naming an unknown tenant resolves to `None`.
    pub fn resolve(&self, path_tenant: Option<&str>, host: Option<&str>) -> Option<Arc<Tenant>> {
        if let Some(id) = path_tenant {
            return self.get(id);
        }
        if let Some(host) = host {
            let host = host.to_ascii_lowercase();
            let bare = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
            let hosts = self.hosts.load();
            if let Some(id) = hosts.get(&host).or_else(|| hosts.get(bare)) {
                return self.get(id);
            }
        }
        self.get("default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_checks() {
        let cfg = Config::from_toml(
            "[server.hosts]\n\"chat.acme.test\" = \"acme\"\n[tenants.acme]\norigins=[\"https://app.acme.test\"]\napi_keys=[\"k1\"]\n",
        )
        .expect("cfg");
        let t = Tenants::from_config(&cfg);
        assert_eq!(&*t.resolve(Some("acme"), None).expect("acme").id, "acme");
        assert!(t.resolve(Some("nope"), None).is_none());
        assert_eq!(
            &*t.resolve(None, Some("chat.acme.test:8080"))
                .expect("host")
                .id,
            "acme"
        );
        assert_eq!(
            &*t.resolve(None, Some("other")).expect("default").id,
            "default"
        );
        let acme = t.get("acme").expect("acme");
        assert!(acme.origin_allowed("https://app.acme.test"));
        assert!(!acme.origin_allowed("https://evil.test"));
        assert!(acme.api_key_valid("k1"));
        assert!(!acme.api_key_valid("k2"));
        assert!(!acme.api_key_valid(""));
        assert!(t.get("default").expect("d").origin_allowed("https://any"));
    }
}
