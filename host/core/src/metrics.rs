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

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// One delivery in this many (per connection, the first always) is recorded
/// in the latency and outbound size histograms: a histogram update is several
/// atomic operations, and a sample keeps the distribution per delivery (not
/// per write batch).
pub const DELIVERY_SAMPLE: u32 = 8;

/// The delivery histograms of one transport.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    latency: Histogram,
    /// The connection's tenant's series of the same samples, when known.
    tenant_latency: Option<Histogram>,
    size: Histogram,
}

/// Deliveries picked for [`DeliveryMetrics`]: the first and then one in
/// [`DELIVERY_SAMPLE`] of the deliveries (and, separately, of the frames)
/// offered to this sampler, which a transport keeps for the connection. Offered
/// while a batch is encoded, recorded once it is flushed (so the latency is
/// publish → written, with one clock read per batch).
#[derive(Debug, Default)]
pub struct DeliverySample {
    picked: [(Option<std::time::Instant>, u32); 16],
    n: usize,
    frames: u32,
    deliveries: u32,
}

impl DeliverySample {
    /// A frame of `len` bytes published at `published_at` (`None` = a reply,
    /// not a delivery) is in the batch.
    pub fn offer(&mut self, published_at: Option<std::time::Instant>, len: usize) {
        let size = self.frames.is_multiple_of(DELIVERY_SAMPLE);
        self.frames = self.frames.wrapping_add(1);
        let at = published_at.filter(|_| {
            let pick = self.deliveries.is_multiple_of(DELIVERY_SAMPLE);
            self.deliveries = self.deliveries.wrapping_add(1);
            pick
        });
        if (size || at.is_some()) && self.n < self.picked.len() {
            let len = if size {
                u32::try_from(len).unwrap_or(u32::MAX)
            } else {
                u32::MAX
            };
            self.picked[self.n] = (at, len);
            self.n += 1;
        }
    }

    /// Records the picked deliveries as written now.
    pub fn record(&mut self, m: &DeliveryMetrics) {
        if self.n == 0 {
            return;
        }
        let now = std::time::Instant::now();
        for (at, len) in &self.picked[..self.n] {
            if *len != u32::MAX {
                m.size.observe(f64::from(*len));
            }
            if let Some(t) = at {
                let secs = now.saturating_duration_since(*t).as_secs_f64();
                m.latency.observe(secs);
                if let Some(h) = &m.tenant_latency {
                    h.observe(secs);
                }
            }
        }
        self.n = 0;
    }
}

/// Label: tenant (its own id, or `other`: see `telemetry.tenant_labels`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// Tenant id or `other`.
    pub tenant: String,
}

/// One tenant's series, resolved once per connection: nothing is looked up
/// per message.
#[derive(Debug, Clone)]
pub struct TenantMetrics {
    /// `switchyard_tenant_connections_active`.
    pub connections: Gauge,
    /// `switchyard_tenant_messages_in_total`.
    pub messages_in: Counter,
    /// `switchyard_tenant_messages_out_total`.
    pub messages_out: Counter,
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
    /// Write batches flushed to WebSocket sockets (one or more frames each;
    /// `messages_out / socket_writes` is the coalescing).
    pub socket_writes: Counter,
    /// Inbound frames that failed, by reason.
    pub messages_failed: Family<ReasonLabel, Counter>,
    /// Messages accepted by the broker (publishes).
    pub publishes: Counter,
    /// Inbound frame sizes.
    pub frame_size: Histogram,
    /// Publish accepted → frame written to a subscriber's socket, per
    /// delivery (sampled, see [`DeliverySample`]), by transport.
    pub publish_latency: Family<TransportLabel, Histogram, fn() -> Histogram>,
    /// Outbound frame sizes (sampled like the latency).
    pub frame_size_out: Histogram,
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
    /// Open connections by tenant.
    pub tenant_connections: Family<TenantLabel, Gauge>,
    /// Inbound frames by tenant.
    pub tenant_messages_in: Family<TenantLabel, Counter>,
    /// Outbound frames by tenant.
    pub tenant_messages_out: Family<TenantLabel, Counter>,
    /// Publish-to-deliver latency by tenant (the same samples as `publish_latency`).
    pub tenant_publish_latency: Family<TenantLabel, Histogram>,
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
            socket_writes: Counter::default(),
            messages_failed: Family::default(),
            publishes: Counter::default(),
            frame_size: Histogram::new(exponential_buckets(16.0, 4.0, 9)),
            publish_latency: Family::new_with_constructor(latency_histogram),
            frame_size_out: Histogram::new(exponential_buckets(16.0, 4.0, 9)),
            heartbeat_rtt: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            send_queue_overflows: Counter::default(),
            zombies: Counter::default(),
            documents_open: Gauge::default(),
            document_patches: Counter::default(),
            document_append_retries: Counter::default(),
            tenant_connections: Family::default(),
            tenant_messages_in: Family::default(),
            tenant_messages_out: Family::default(),
            tenant_publish_latency: Family::new_with_constructor(latency_histogram),
        };
        for transport in Self::DELIVERY_TRANSPORTS {
            drop(
                m.publish_latency
                    .get_or_create(&TransportLabel { transport }),
            );
        }
        {
            let mut r = m.registry.lock();
            r.register(
                "switchyard_connections_active",
                "Open connections",
                m.connections_active.clone(),
            );
            r.register(
                "switchyard_tenant_connections_active",
                "Open connections by tenant (own label for telemetry.tenant_labels, else other)",
                m.tenant_connections.clone(),
            );
            r.register(
                "switchyard_tenant_messages_in",
                "Inbound frames handled, by tenant",
                m.tenant_messages_in.clone(),
            );
            r.register(
                "switchyard_tenant_messages_out",
                "Outbound frames taken for the socket, by tenant",
                m.tenant_messages_out.clone(),
            );
            r.register(
                "switchyard_tenant_publish_to_deliver_seconds",
                "Time from publish accepted to frame written, by tenant (the samples of switchyard_publish_to_deliver_seconds)",
                m.tenant_publish_latency.clone(),
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
                "switchyard_socket_writes",
                "Write batches flushed to WebSocket sockets (frames per write = messages_out / socket_writes)",
                m.socket_writes.clone(),
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
                "Time from publish accepted to frame written to a subscriber, per delivery (a connection's first, then one in 8), by transport",
                m.publish_latency.clone(),
            );
            r.register(
                "switchyard_outbound_frame_size_bytes",
                "Outbound frame size (one in 8 frames sampled)",
                m.frame_size_out.clone(),
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

    /// The series of tenant label `label` (see `TelemetryConfig::tenant_label`).
    pub fn for_tenant(&self, label: &str) -> TenantMetrics {
        let l = TenantLabel {
            tenant: label.to_owned(),
        };
        TenantMetrics {
            connections: self.tenant_connections.get_or_create(&l).clone(),
            messages_in: self.tenant_messages_in.get_or_create(&l).clone(),
            messages_out: self.tenant_messages_out.get_or_create(&l).clone(),
        }
    }

    /// Transports whose delivery series exist from the start (at zero).
    pub const DELIVERY_TRANSPORTS: [&'static str; 4] = ["ws", "sse", "poll", "yjs"];

    /// The delivery histograms of one transport, resolved once per connection.
    /// `tenant` is the connection's tenant label (see [`Metrics::for_tenant`];
    /// `None`: no tenant series, e.g. the echo endpoint).
    pub fn deliveries(&self, transport: &'static str, tenant: Option<&str>) -> DeliveryMetrics {
        DeliveryMetrics {
            latency: self
                .publish_latency
                .get_or_create(&TransportLabel { transport })
                .clone(),
            tenant_latency: tenant.map(|t| {
                self.tenant_publish_latency
                    .get_or_create(&TenantLabel {
                        tenant: t.to_owned(),
                    })
                    .clone()
            }),
            size: self.frame_size_out.clone(),
        }
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

    fn count_of(text: &str, series: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn one_delivery_in_eight_is_recorded_per_delivery_not_per_batch() {
        let m = Metrics::new();
        let d = m.deliveries("sse", Some("acme"));
        let t = std::time::Instant::now();
        // Two batches of 40 deliveries and one of 8 replies (no publish time).
        for _ in 0..2 {
            let mut s = DeliverySample::default();
            for _ in 0..40 {
                s.offer(Some(t), 100);
            }
            s.record(&d);
        }
        let mut s = DeliverySample::default();
        for _ in 0..8 {
            s.offer(None, 10);
        }
        s.record(&d);
        let text = m.encode();
        let lat = count_of(
            &text,
            "switchyard_publish_to_deliver_seconds_count{transport=\"sse\"} ",
        );
        let size = count_of(&text, "switchyard_outbound_frame_size_bytes_count ");
        assert_eq!(lat, 10, "80 deliveries / 8, not 2 batches:\n{text}");
        assert_eq!(size, 11, "88 frames / 8");
        let by_tenant = count_of(
            &text,
            "switchyard_tenant_publish_to_deliver_seconds_count{tenant=\"acme\"} ",
        );
        assert_eq!(by_tenant, 10, "the same samples by tenant");
    }

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
