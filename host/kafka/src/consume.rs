//! Topics → channels: one consumer-group member per bridge and node.
//!
//! Records are published through the node's publish pipeline (the router
//! applies) with a `msgId` made of their coordinates, at most
//! `max_in_flight` at once and one at a time per channel (so per key, in
//! partition order). An offset is stored for the next auto-commit only when
//! every record before it in its partition was accepted by the broker
//! ([`crate::offsets`]); a crash, a restart or a rebalance redelivers from
//! the last commit, and the broker's `msgId` window makes a redelivered record
//! a counted duplicate, not a second message.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use switchyard_core::Node;
use switchyard_core::broker::BrokerError;
use switchyard_core::config::KafkaBridgeConfig;
use switchyard_core::policy::Principal;
use switchyard_core::publish::{self, PublishError, Publisher};
use tokio::sync::watch;

use crate::metrics::{BridgeLabel, KafkaMetrics, OutcomeLabels, PartitionLabels};
use crate::offsets::Offsets;
use crate::record::{self, Publication, RecordRef};

/// librdkafka callbacks of a consumer: statistics → lag gauges, rebalances
/// and errors → logs and counters.
pub struct ConsumeContext {
    pub(crate) bridge: String,
    pub(crate) metrics: KafkaMetrics,
}

impl ClientContext for ConsumeContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (&partition, p) in &t.partitions {
                // -1: unknown (not assigned, or no position yet); the internal
                // unassigned partition is -1 too.
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .lag
                    .get_or_create(&PartitionLabels {
                        bridge: self.bridge.clone(),
                        topic: topic.clone(),
                        partition,
                    })
                    .set(p.consumer_lag);
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(bridge = %self.bridge, %error, reason, "kafka consumer");
    }
}

impl ConsumerContext for ConsumeContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.metrics
            .rebalances
            .get_or_create(&BridgeLabel {
                bridge: self.bridge.clone(),
            })
            .inc();
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(bridge = %self.bridge, partitions = ?partitions(tpl), "kafka: partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                // Their stored offsets are committed now; what is still in
                // flight is redelivered to the next owner (a duplicate there).
                for (topic, partition) in partitions(tpl) {
                    self.metrics.lag.remove(&PartitionLabels {
                        bridge: self.bridge.clone(),
                        topic,
                        partition,
                    });
                }
                tracing::info!(bridge = %self.bridge, partitions = ?partitions(tpl), "kafka: partitions revoked")
            }
            Rebalance::Error(e) => {
                tracing::warn!(bridge = %self.bridge, error = %e, "kafka: rebalance failed")
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            // No offset stored since the last commit is the common case, not a failure.
            if !matches!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
            ) {
                tracing::warn!(bridge = %self.bridge, error = %e, "kafka: offset commit failed (retried on the next one)");
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// A consumed record on its way to the broker.
struct Job {
    topic: String,
    partition: i32,
    offset: i64,
    /// The consume entry's channel template, resolved.
    publication: Result<Publication, record::Unpublishable>,
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Published,
    Duplicate,
    RoutedAway,
    Refused,
    Unpublishable(record::Unpublishable),
    /// The bridge stopped first: not stored, redelivered after a restart.
    Stopped,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Duplicate => "duplicate",
            Outcome::RoutedAway => "routed_away",
            Outcome::Refused => "refused",
            Outcome::Unpublishable(u) => u.label(),
            Outcome::Stopped => "stopped",
        }
    }
}

/// Longest pause between two tries of a publish the broker could not take.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The consume loop of one bridge, until `stop` turns true. On stop it lets
/// what is in flight finish (the broker may refuse it: then it is redelivered
/// later) and commits what was stored.
pub(crate) async fn run(
    node: Arc<Node>,
    cfg: Arc<KafkaBridgeConfig>,
    consumer: Arc<StreamConsumer<ConsumeContext>>,
    metrics: KafkaMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let label = BridgeLabel {
        bridge: cfg.name.clone(),
    };
    let in_flight_gauge = metrics.in_flight.get_or_create(&label).clone();
    let principal = Principal {
        id: format!("bridge:{}", cfg.name),
        claims: Arc::from("{}"),
    };
    let mut offsets = Offsets::default();
    let mut busy: HashSet<String> = HashSet::new();
    let mut flying = FuturesUnordered::new();
    // A record whose channel has one in flight waits here (not read further:
    // the per-key order holds).
    let mut waiting: Option<Job> = None;
    let mut warned_at: Option<tokio::time::Instant> = None;
    loop {
        if let Some(job) = waiting.take() {
            if channel_of(&job).is_some_and(|c| busy.contains(c)) {
                waiting = Some(job);
            } else {
                offsets.start(&job.topic, job.partition, job.offset);
                if let Some(c) = channel_of(&job) {
                    busy.insert(c.to_owned());
                }
                flying.push(deliver(
                    &node,
                    &cfg,
                    &principal,
                    job,
                    &metrics,
                    stop.clone(),
                ));
            }
        }
        in_flight_gauge.set(i64::try_from(flying.len()).unwrap_or(i64::MAX));
        let room = waiting.is_none() && flying.len() < cfg.max_in_flight;
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some((job, outcome)) = flying.next(), if !flying.is_empty() => {
                settle(&consumer, &cfg, &metrics, &mut offsets, &mut busy, &job, outcome);
            }
            msg = consumer.recv(), if room => match msg {
                Ok(m) => waiting = Some(job_of(&cfg, &node, &m.detach())),
                Err(e) => {
                    // Broker down, unknown topic…: librdkafka retries by itself.
                    let now = tokio::time::Instant::now();
                    if warned_at.is_none_or(|w| now.duration_since(w) > Duration::from_secs(10)) {
                        tracing::warn!(bridge = %cfg.name, error = %e, "kafka consumer (repeats are not logged for 10 s)");
                        warned_at = Some(now);
                    }
                }
            },
        }
    }
    // Stopping: what is in flight ends (its retries give up on stop).
    while let Some((job, outcome)) = flying.next().await {
        settle(
            &consumer,
            &cfg,
            &metrics,
            &mut offsets,
            &mut busy,
            &job,
            outcome,
        );
    }
    in_flight_gauge.set(0);
    let committed = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    if let Err(e) = committed
        && e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
    {
        tracing::warn!(bridge = %cfg.name, error = %e, "kafka: final commit failed");
    }
}

fn channel_of(job: &Job) -> Option<&str> {
    job.publication.as_ref().ok().map(|p| p.channel.as_str())
}

fn job_of(cfg: &KafkaBridgeConfig, node: &Node, m: &OwnedMessage) -> Job {
    let template = cfg
        .consume
        .iter()
        .find(|c| c.topic == m.topic())
        .map_or("", |c| c.channel.as_str());
    let r = RecordRef {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
        value: m.payload(),
    };
    let headers = m
        .headers()
        .into_iter()
        .flat_map(|h| h.iter())
        .map(|h| (h.key, h.value));
    Job {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        publication: record::publication(r, template, headers, node.limits().max_message_bytes),
    }
}

/// Counts the outcome, frees the channel and stores what may be committed.
fn settle(
    consumer: &StreamConsumer<ConsumeContext>,
    cfg: &KafkaBridgeConfig,
    metrics: &KafkaMetrics,
    offsets: &mut Offsets,
    busy: &mut HashSet<String>,
    job: &Job,
    outcome: Outcome,
) {
    if let Some(c) = channel_of(job) {
        busy.remove(c);
    }
    metrics
        .consumed
        .get_or_create(&OutcomeLabels {
            bridge: cfg.name.clone(),
            topic: job.topic.clone(),
            outcome: outcome.label(),
        })
        .inc();
    if outcome == Outcome::Stopped {
        return; // not accepted: its offset stays uncommitted
    }
    if let Some(next) = offsets.done(&job.topic, job.partition, job.offset) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&job.topic, job.partition, Offset::Offset(next))
            .is_ok()
            && let Err(e) = consumer.store_offsets(&tpl)
        {
            // Revoked meanwhile: the new owner redelivers from the last commit.
            tracing::debug!(bridge = %cfg.name, topic = %job.topic, partition = job.partition, error = %e, "kafka: offset not stored");
        }
    }
}

/// Publishes one record, retrying while the broker is unavailable or the
/// channel over its limit; gives up only on stop.
async fn deliver(
    node: &Arc<Node>,
    cfg: &KafkaBridgeConfig,
    principal: &Principal,
    job: Job,
    metrics: &KafkaMetrics,
    mut stop: watch::Receiver<bool>,
) -> (Job, Outcome) {
    let p = match &job.publication {
        Ok(p) => p,
        Err(u) => {
            let u = *u;
            return (job, Outcome::Unpublishable(u));
        }
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(tenant) = node.tenants.get(&cfg.tenant) else {
            return (job, Outcome::Refused);
        };
        let r = publish::publish(
            node,
            &tenant,
            principal,
            "",
            &p.channel,
            p.data.clone(),
            Some(&p.msg_id),
            Publisher::Bridge,
        )
        .await;
        let wait = match r {
            Ok(acc) if acc.is_empty() => return (job, Outcome::RoutedAway),
            Ok(acc) if acc.iter().all(|a| a.duplicate) => return (job, Outcome::Duplicate),
            Ok(_) => return (job, Outcome::Published),
            Err(PublishError::Broker(BrokerError::Unavailable(_) | BrokerError::Internal(_))) => {
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
            Err(PublishError::ChannelLimited(ms)) => Duration::from_millis(ms.max(1)),
            Err(e) => {
                tracing::debug!(bridge = %cfg.name, channel = %p.channel, error = %e, "kafka record refused");
                return (job, Outcome::Refused);
            }
        };
        metrics
            .retries
            .get_or_create(&BridgeLabel {
                bridge: cfg.name.clone(),
            })
            .inc();
        tokio::select! {
            _ = stop.changed() => return (job, Outcome::Stopped),
            () = tokio::time::sleep(wait) => {}
        }
    }
}
