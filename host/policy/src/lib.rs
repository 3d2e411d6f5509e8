//! switchyard-policy: runs tenant policies as WebAssembly components.
//!
//! STUB — being implemented (issue 3). The binary calls exactly this API.

use std::sync::Arc;

use switchyard_core::{Config, Node};

/// Loads plugins from `plugins.dir`, applies tenant policy mappings and keeps them fresh.
#[derive(Debug)]
pub struct PluginHost {
    _node: Arc<Node>,
}

impl PluginHost {
    /// Starts the runtime: loads every plugin, installs each tenant's `PolicySet`,
    /// and (when `plugins.watch`) watches the folder for changes.
    pub async fn start(node: Arc<Node>) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self { _node: node }))
    }

    /// Re-applies the tenant → plugin mapping of a new config (SIGHUP).
    pub async fn reload(&self, _config: &Config) -> anyhow::Result<()> {
        Ok(())
    }

    /// `GET /admin/plugins` body: `[{"name","role","hash","loaded_at","status","last_error"}]`.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }
}
