//! The bridge's series, registered into the node's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_core::metrics::Metrics;

/// Labels: bridge and topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// Bridge name.
    pub bridge: String,
    /// Topic.
    pub topic: String,
}

/// Labels: bridge, topic and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Bridge name.
    pub bridge: String,
    /// Topic.
    pub topic: String,
    /// What happened.
    pub outcome: &'static str,
}

/// Labels: bridge, topic and partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Bridge name.
    pub bridge: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// Labels: bridge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabel {
    /// Bridge name.
    pub bridge: String,
}

/// Every series of every Kafka bridge of the node.
#[derive(Debug, Clone, Default)]
pub struct KafkaMetrics {
    /// `switchyard_kafka_consumed_total{bridge,topic,outcome}`: records read,
    /// by outcome: `published`, `duplicate` (a redelivery the broker's
    /// `msgId` window recognised), `routed_away` (the router dropped it),
    /// `refused` (a policy or the channel refused it), `bad_channel`,
    /// `too_large`.
    pub consumed: Family<OutcomeLabels, Counter>,
    /// `switchyard_kafka_publish_retries_total{bridge}`: publishes retried
    /// while the broker was unavailable or the channel over its limit.
    pub retries: Family<BridgeLabel, Counter>,
    /// `switchyard_kafka_in_flight{bridge}`: records published, not yet accepted.
    pub in_flight: Family<BridgeLabel, Gauge>,
    /// `switchyard_kafka_consumer_lag{bridge,topic,partition}`: records behind
    /// the partition's end, per assigned partition (librdkafka's statistics,
    /// once a second).
    pub lag: Family<PartitionLabels, Gauge>,
    /// `switchyard_kafka_rebalances_total{bridge}`: partition assignments and
    /// revocations this node took part in.
    pub rebalances: Family<BridgeLabel, Counter>,
    /// `switchyard_kafka_produced_total{bridge,topic,outcome}`: channel
    /// publishes handed to a topic: `delivered` (acknowledged by every
    /// in-sync replica), `failed` (gave up after `delivery.timeout.ms`),
    /// `queue_full` (dropped at once: the bounded producer queue was full).
    pub produced: Family<OutcomeLabels, Counter>,
}

impl KafkaMetrics {
    /// Registers the families into the node's registry.
    pub fn register(m: &Metrics) -> Self {
        let k = Self::default();
        m.register(
            "switchyard_kafka_consumed",
            "Kafka records read by a bridge, by outcome",
            k.consumed.clone(),
        );
        m.register(
            "switchyard_kafka_publish_retries",
            "Bridge publishes retried (broker unavailable, channel over its limit)",
            k.retries.clone(),
        );
        m.register(
            "switchyard_kafka_in_flight",
            "Kafka records being published, not yet accepted by the broker",
            k.in_flight.clone(),
        );
        m.register(
            "switchyard_kafka_consumer_lag",
            "Records behind the end of each assigned partition",
            k.lag.clone(),
        );
        m.register(
            "switchyard_kafka_rebalances",
            "Consumer-group assignments and revocations",
            k.rebalances.clone(),
        );
        m.register(
            "switchyard_kafka_produced",
            "Channel publishes produced to Kafka topics, by outcome",
            k.produced.clone(),
        );
        k
    }
}
