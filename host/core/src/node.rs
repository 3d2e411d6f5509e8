//! The node: everything a connection needs, shared by all of them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::bridge::PublishTap;
use crate::broker::Broker;
use crate::config::{Config, Limits};
use crate::document::log::{DocumentLog, MemoryDocumentLog};
use crate::document::{DocLimits, Documents};
use crate::hub::{Hub, SessionId};
use crate::metrics::Metrics;
use crate::tenant::Tenants;

/// Shared state of one gateway node.
pub struct Node {
    /// Node id.
    pub id: Arc<str>,
    /// Configuration at start (limits are fixed for the process lifetime).
    pub config: Arc<Config>,
    /// Local fan-out and registry.
    pub hub: Arc<Hub>,
    /// Sequencing, history, cross-node delivery.
    pub broker: Arc<dyn Broker>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Tenants and their policies.
    pub tenants: Tenants,
    /// Document channels (state sync).
    pub documents: Arc<Documents>,
    draining: AtomicBool,
    next_session: AtomicU64,
    taps: OnceLock<Box<[Arc<dyn PublishTap>]>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Assembles a node from its parts.
    pub fn new(config: Arc<Config>, hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Arc<Self> {
        let tenants = Tenants::from_config(&config);
        let l = &config.limits;
        let log = broker
            .document_log()
            .unwrap_or_else(|| MemoryDocumentLog::new() as Arc<dyn DocumentLog>);
        let documents = Documents::new(
            log,
            hub.clone(),
            hub.metrics().clone(),
            DocLimits {
                max_bytes: l.document_max_bytes,
                log_len: l.document_log_size,
                max_open: l.documents_max_open,
                idle: l.document_idle_timeout,
                dedupe_window: l.dedupe_window,
            },
            l.max_message_bytes,
        );
        documents.spawn_sweeper(std::time::Duration::from_secs(15).min(l.document_idle_timeout));
        hub.set_presence_events_max(l.presence_events_max);
        if let Some(every) = broker.presence_reconcile_interval()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            crate::presence::spawn_reconciler(&hub, &broker, every);
        }
        Arc::new(Self {
            documents,
            id: hub.node_id().clone(),
            metrics: hub.metrics().clone(),
            config,
            hub,
            broker,
            tenants,
            draining: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
            taps: OnceLock::new(),
        })
    }

    /// A node with the embedded memory broker.
    pub fn with_memory_broker(config: Arc<Config>) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(
            config.server.node_id.as_str(),
            config.limits.send_queue_messages,
            metrics,
        ));
        let broker = crate::broker::memory::MemoryBroker::new(hub.clone());
        let idle = config
            .tenants
            .values()
            .map(|t| t.history_ttl)
            .max()
            .unwrap_or_default();
        broker.spawn_sweeper(std::time::Duration::from_secs(30), idle);
        Self::new(config, hub, broker)
    }

    /// Installs the taps that see every accepted publication (bridges), once,
    /// at start; `false` if some were installed already.
    pub fn set_publish_taps(&self, taps: Vec<Arc<dyn PublishTap>>) -> bool {
        self.taps.set(taps.into_boxed_slice()).is_ok()
    }

    /// The installed taps (none: an empty slice, one atomic load).
    pub fn publish_taps(&self) -> &[Arc<dyn PublishTap>] {
        self.taps.get().map_or(&[], |t| t)
    }

    /// Limits in force.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a drain began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the node as draining (readiness fails, no new connections).
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
