//! Channels → topics: a [`PublishTap`] that hands each matching publication
//! to librdkafka's bounded queue (key = channel), without waiting.
//!
//! librdkafka sends, retries and orders (idempotent producer, `acks=all`);
//! its delivery reports are counted. A full queue drops the record at once
//! and counts it (`queue_full`): a slow Kafka never slows publishers down.

use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use switchyard_core::bridge::{Accepted, PublishTap};
use switchyard_core::channel::pattern_matches;
use switchyard_core::config::KafkaBridgeConfig;

use crate::metrics::{KafkaMetrics, OutcomeLabels};

/// Delivery reports → counters.
pub struct ProduceContext {
    pub(crate) bridge: String,
    pub(crate) metrics: KafkaMetrics,
}

impl ClientContext for ProduceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(bridge = %self.bridge, %error, reason, "kafka producer");
    }
}

impl ProducerContext for ProduceContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let (topic, outcome) = match result {
            Ok(m) => (m.topic(), "delivered"),
            Err((e, m)) => {
                tracing::warn!(bridge = %self.bridge, topic = m.topic(), error = %e, "kafka: a channel publish was not delivered");
                (m.topic(), "failed")
            }
        };
        self.count(topic, outcome);
    }
}

impl ProduceContext {
    fn count(&self, topic: &str, outcome: &'static str) {
        self.metrics
            .produced
            .get_or_create(&OutcomeLabels {
                bridge: self.bridge.clone(),
                topic: topic.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// The producing half of one bridge.
pub struct Producer {
    cfg: Arc<KafkaBridgeConfig>,
    producer: ThreadedProducer<ProduceContext>,
}

impl Producer {
    pub(crate) fn new(
        cfg: Arc<KafkaBridgeConfig>,
        producer: ThreadedProducer<ProduceContext>,
    ) -> Self {
        Self { cfg, producer }
    }

    /// Waits (blocking, at most `timeout`) until what is queued is delivered
    /// or failed; returns how many were still queued.
    pub fn flush(&self, timeout: std::time::Duration) -> i32 {
        use rdkafka::producer::Producer as _;
        let _ = self.producer.flush(timeout);
        self.producer.in_flight_count()
    }
}

impl PublishTap for Producer {
    fn accepted(&self, p: Accepted<'_>) {
        if p.tenant != self.cfg.tenant {
            return;
        }
        let Some(entry) = self
            .cfg
            .produce
            .iter()
            .find(|e| pattern_matches(&e.pattern, p.channel))
        else {
            return;
        };
        let seq = p.seq.to_string();
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "switchyard-seq",
            value: Some(seq.as_bytes()),
        });
        let record = BaseRecord::to(&entry.topic)
            .key(p.channel)
            .payload(p.data.get())
            .headers(headers);
        if let Err((e, _)) = self.producer.send(record) {
            let outcome = match e.rdkafka_error_code() {
                Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => "queue_full",
                _ => "failed",
            };
            tracing::debug!(bridge = %self.cfg.name, topic = %entry.topic, error = %e, "kafka: channel publish not queued");
            rdkafka::producer::Producer::context(&self.producer).count(&entry.topic, outcome);
        }
    }
}
