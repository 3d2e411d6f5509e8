//! Prometheus metrics of the node (`GET /metrics`). Other crates (policy runtime,
//! Redis broker) register their own families into the same registry.

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Label: close code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Numeric close code.
    pub code: u16,
}

/// Label: reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Short reason.
    pub reason: &'static str,
}

/// Label: transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `ws`, `echo`, `sse`, `poll`.
    pub transport: &'static str,
}

/// The node's metric families.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Open connections.
    pub connections_active: Gauge,
    /// Connections opened, by transport.
    pub connections_opened: Family<TransportLabel, Counter>,
    /// Connections closed, by close code (churn).
    pub connections_closed: Family<CodeLabel, Counter>,
    /// Upgrade requests refused, by reason.
    pub handshake_rejections: Family<ReasonLabel, Counter>,
    /// Inbound frames.
    pub messages_in: Counter,
    /// Outbound frames written to sockets.
    pub messages_out: Counter,
    /// Inbound frames that failed, by reason.
    pub messages_failed: Family<ReasonLabel, Counter>,
    /// Messages accepted by the broker (publishes).
    pub publishes: Counter,
    /// Inbound frame sizes.
    pub frame_size: Histogram,
    /// Publish accepted → frame written to a subscriber's socket.
    pub publish_latency: Histogram,
    /// Ping → pong round trip.
    pub heartbeat_rtt: Histogram,
    /// Slow-consumer queue overflows.
    pub send_queue_overflows: Counter,
    /// Peers terminated by the zombie sweep.
    pub zombies: Counter,
    /// Document replicas held in memory on this node.
    pub documents_open: Gauge,
    /// Document patches accepted (versions created on this node or applied from others).
    pub document_patches: Counter,
    /// Patches retried after another node took the version first.
    pub document_append_retries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the core families.
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            connections_active: Gauge::default(),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            handshake_rejections: Family::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            messages_failed: Family::default(),
            publishes: Counter::default(),
            frame_size: Histogram::new(exponential_buckets(16.0, 4.0, 9)),
            publish_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            heartbeat_rtt: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            send_queue_overflows: Counter::default(),
            zombies: Counter::default(),
            documents_open: Gauge::default(),
            document_patches: Counter::default(),
            document_append_retries: Counter::default(),
        };
        {
            let mut r = m.registry.lock();
            r.register(
                "switchyard_connections_active",
                "Open connections",
                m.connections_active.clone(),
            );
            r.register(
                "switchyard_documents_open",
                "Document replicas held in memory",
                m.documents_open.clone(),
            );
            r.register(
                "switchyard_document_patches",
                "Document changes applied to this node's replicas",
                m.document_patches.clone(),
            );
            r.register(
                "switchyard_document_append_retries",
                "Patches retried after another node took the version first",
                m.document_append_retries.clone(),
            );
            r.register(
                "switchyard_connections_opened",
                "Connections opened, by transport",
                m.connections_opened.clone(),
            );
            r.register(
                "switchyard_connections_closed",
                "Connections closed, by close code",
                m.connections_closed.clone(),
            );
            r.register(
                "switchyard_handshake_rejections",
                "Upgrade requests refused, by reason",
                m.handshake_rejections.clone(),
            );
            r.register(
                "switchyard_messages_in",
                "Inbound frames",
                m.messages_in.clone(),
            );
            r.register(
                "switchyard_messages_out",
                "Outbound frames written",
                m.messages_out.clone(),
            );
            r.register(
                "switchyard_messages_failed",
                "Inbound frames that failed, by reason",
                m.messages_failed.clone(),
            );
            r.register(
                "switchyard_publishes",
                "Messages accepted by the broker",
                m.publishes.clone(),
            );
            r.register(
                "switchyard_frame_size_bytes",
                "Inbound frame size",
                m.frame_size.clone(),
            );
            r.register(
                "switchyard_publish_to_deliver_seconds",
                "Time from publish accepted to frame written to a subscriber",
                m.publish_latency.clone(),
            );
            r.register(
                "switchyard_heartbeat_rtt_seconds",
                "Ping to pong round trip",
                m.heartbeat_rtt.clone(),
            );
            r.register(
                "switchyard_send_queue_overflows",
                "Slow-consumer send queue overflows (close 4008)",
                m.send_queue_overflows.clone(),
            );
            r.register(
                "switchyard_zombies_terminated",
                "Peers silent past idle_timeout that were terminated",
                m.zombies.clone(),
            );
        }
        m
    }

    /// Registers another family (plugin runtime, broker).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// Counts a closed connection.
    pub fn closed(&self, code: u16) {
        self.connections_closed
            .get_or_create(&CodeLabel { code })
            .inc();
    }

    /// Counts a failed inbound frame.
    pub fn failed(&self, reason: &'static str) {
        self.messages_failed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a refused upgrade.
    pub fn rejected(&self, reason: &'static str) {
        self.handshake_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        let r = self.registry.lock();
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_families() {
        let m = Metrics::new();
        m.closed(4008);
        m.failed("malformed");
        m.frame_size.observe(100.0);
        let text = m.encode();
        for fam in [
            "switchyard_connections_active",
            "switchyard_connections_closed_total{code=\"4008\"} 1",
            "switchyard_messages_failed_total{reason=\"malformed\"} 1",
            "switchyard_frame_size_bytes_bucket",
            "switchyard_heartbeat_rtt_seconds",
            "switchyard_publish_to_deliver_seconds",
            "switchyard_send_queue_overflows_total",
        ] {
            assert!(text.contains(fam), "missing {fam} in\n{text}");
        }
    }
}
