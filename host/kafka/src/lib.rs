//! switchyard-kafka: `[[bridges.kafka]]`, Kafka topics ↔ channels of one
//! tenant, at least once.
//!
//! - **Consume** ([`consume`]): each node is a member of the bridge's consumer
//!   group; a record becomes a publication on the channel its consume entry's
//!   template names (`{key}` = the record key) in the envelope of
//!   [`record`], through the publish pipeline (the tenant's router applies).
//!   Offsets are committed only after the broker accepted the publish
//!   ([`offsets`]); a redelivery (crash, restart, rebalance) carries the same
//!   `msgId`, so within the broker's dedupe window it is a counted duplicate.
//! - **Produce** ([`produce`]): channel publishes of the tenant matching a
//!   `produce` pattern go to its topic, key = channel, from the node that
//!   accepted them (once cluster-wide), through a bounded queue.
//! - **Metrics** ([`metrics`]): records by outcome, retries, in-flight,
//!   consumer lag per partition, rebalances, produced by outcome.
//!
//! The client is librdkafka (the `rdkafka` crate, built from its bundled
//! source): it has the consumer-group protocol, cooperative rebalances and
//! committed offsets that a pure-Rust client such as `rskafka` lacks.

pub mod consume;
pub mod metrics;
pub mod offsets;
pub mod produce;
pub mod record;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::ThreadedProducer;
use switchyard_core::Node;
use switchyard_core::bridge::PublishTap;
use switchyard_core::config::KafkaBridgeConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consume::ConsumeContext;
use crate::metrics::KafkaMetrics;
use crate::produce::{ProduceContext, Producer};

/// A bridge that could not start (its configuration, as librdkafka sees it).
#[derive(Debug, thiserror::Error)]
#[error("bridges.kafka {bridge:?}: {message}")]
pub struct BridgeError {
    bridge: String,
    message: String,
}

/// The running bridges of a node.
pub struct Bridges {
    stop: watch::Sender<bool>,
    consumers: Vec<(String, JoinHandle<()>)>,
    producers: Vec<Arc<Producer>>,
}

impl std::fmt::Debug for Bridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridges")
            .field("consumers", &self.consumers.len())
            .field("producers", &self.producers.len())
            .finish()
    }
}

/// How long a stopping bridge waits for Kafka (final commit, queued produces).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn client_config(cfg: &KafkaBridgeConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.join(","))
        .set("client.id", format!("switchyard-{}", cfg.name));
    c
}

/// Starts every `[[bridges.kafka]]` of the node's configuration and installs
/// the producers as the node's publish taps. Kafka need not be up: the
/// clients connect (and reconnect) in the background.
pub fn start(node: &Arc<Node>) -> Result<Bridges, BridgeError> {
    let (stop, stopped) = watch::channel(false);
    let mut bridges = Bridges {
        stop,
        consumers: Vec::new(),
        producers: Vec::new(),
    };
    if node.config.bridges.kafka.is_empty() {
        return Ok(bridges);
    }
    let metrics = KafkaMetrics::register(&node.metrics);
    for cfg in &node.config.bridges.kafka {
        let cfg = Arc::new(cfg.clone());
        let fail = |e: rdkafka::error::KafkaError| BridgeError {
            bridge: cfg.name.clone(),
            message: e.to_string(),
        };
        if !cfg.consume.is_empty() {
            let mut c = client_config(&cfg);
            c.set("group.id", &cfg.group)
                // Stored by the bridge once the broker accepted a record,
                // committed by librdkafka (and on revoke and on stop).
                .set("enable.auto.commit", "true")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("statistics.interval.ms", "1000")
                // Bounded prefetch (librdkafka's defaults allow ~64 MiB).
                .set("queued.max.messages.kbytes", "16384")
                .set("queued.min.messages", "1000");
            for (k, v) in &cfg.options {
                c.set(k, v);
            }
            let consumer: StreamConsumer<ConsumeContext> = c
                .create_with_context(ConsumeContext {
                    bridge: cfg.name.clone(),
                    metrics: metrics.clone(),
                })
                .map_err(fail)?;
            let topics: Vec<&str> = cfg.consume.iter().map(|c| c.topic.as_str()).collect();
            consumer.subscribe(&topics).map_err(fail)?;
            let consumer = Arc::new(consumer);
            let task = tokio::spawn(consume::run(
                node.clone(),
                cfg.clone(),
                consumer.clone(),
                metrics.clone(),
                stopped.clone(),
            ));
            // The consumer closes (leaves the group) off the runtime, when
            // its task is done with it.
            let name = cfg.name.clone();
            let closer = tokio::spawn(async move {
                let _ = task.await;
                let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
            });
            bridges.consumers.push((name, closer));
            tracing::info!(bridge = %cfg.name, brokers = ?cfg.brokers, group = %cfg.group, ?topics, "kafka bridge consuming");
        }
        if !cfg.produce.is_empty() {
            let mut c = client_config(&cfg);
            c.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                // Bounded queue: over it a publish is dropped and counted.
                .set("queue.buffering.max.messages", "100000")
                .set("queue.buffering.max.kbytes", "65536");
            for (k, v) in &cfg.options {
                c.set(k, v);
            }
            let producer: ThreadedProducer<ProduceContext> = c
                .create_with_context(ProduceContext {
                    bridge: cfg.name.clone(),
                    metrics: metrics.clone(),
                })
                .map_err(fail)?;
            bridges
                .producers
                .push(Arc::new(Producer::new(cfg.clone(), producer)));
            tracing::info!(bridge = %cfg.name, brokers = ?cfg.brokers, "kafka bridge producing");
        }
    }
    let taps: Vec<Arc<dyn PublishTap>> = bridges
        .producers
        .iter()
        .map(|p| p.clone() as Arc<dyn PublishTap>)
        .collect();
    if !taps.is_empty() && !node.set_publish_taps(taps) {
        tracing::warn!("publish taps were installed already; kafka producers not attached");
    }
    Ok(bridges)
}

impl Bridges {
    /// Stops consuming (what is in flight ends, stored offsets are
    /// committed, the group is left) and flushes the producers, within
    /// [`STOP_TIMEOUT`] each.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.consumers {
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                tracing::warn!(bridge = %name, "kafka consumer did not stop in time");
            }
        }
        for p in self.producers {
            let left = tokio::task::spawn_blocking(move || p.flush(STOP_TIMEOUT))
                .await
                .unwrap_or(0);
            if left > 0 {
                tracing::warn!(left, "kafka: channel publishes still queued at stop (lost)");
            }
        }
    }
}
