//! switchyard-nats: the NATS broker for multi-node deployments (JetStream on).
//!
//! - **Fan-out and sequencing** ([`channels`], [`feeds`]): a publish is a
//!   JetStream compare-and-append on the channel's subject of its tenant's
//!   history stream, so every channel has one gapless seq cluster-wide; the
//!   stream republishes every stored message, in order, to a core subject
//!   each node subscribes to while it has local subscribers.
//! - **History, recovery, epochs, dedupe**: in the same stream (bounded by
//!   `history_size` per channel, kept max(`history_ttl`, 24 h); recovery only
//!   serves messages younger than `history_ttl`); `msgId` → `Nats-Msg-Id`.
//! - **Presence and client directory** ([`presence`], [`directory`]): JetStream
//!   KV buckets with `max_age` = `presence_ttl`, refreshed by heartbeats.
//! - **Directed delivery** ([`inbox`]): a work-queue stream, one durable
//!   consumer per node, acknowledged after the write.
//! - **Documents** ([`documents`]): a log stream per tenant (compare-and-append
//!   versions, republished to the replicas) plus a snapshot KV bucket.
//! - **Outages**: while the connection is down every call fails at once with
//!   `unavailable` and `/readyz` answers 503; after a reconnect each feed
//!   replays from the stream what it missed.

pub mod channels;
pub mod directory;
pub mod documents;
pub mod feeds;
pub mod inbox;
pub mod js;
pub mod names;
pub mod presence;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng as _;
use serde_json::value::RawValue;
use switchyard_core::Config;
use switchyard_core::broker::events::BrokerEvents;
use switchyard_core::broker::{
    Broker, BrokerError, BrokerHealth, ChannelOptions, PublishMeta, Published,
};
use switchyard_core::channel::ChannelKey;
use switchyard_core::history::Recovery;
use switchyard_core::protocol::StreamPosition;
use switchyard_core::protocol::encode::PresenceEntry;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::channels::Channels;
use crate::directory::Directory;
use crate::documents::NatsDocumentLog;
use crate::feeds::Feeds;
use crate::inbox::{Inbox, InboxMetrics};
use crate::js::{Ensured, Js};
use crate::presence::Presence;

/// How long a directed message waits at least for its client on the target node.
const DIRECT_RETENTION_MIN: Duration = Duration::from_secs(30);
/// JetStream liveness probe period.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Connection state shared with the event callback.
#[derive(Debug, Default)]
struct Link {
    connected: AtomicBool,
    jetstream: AtomicBool,
    connected_before: AtomicBool,
    probe: Notify,
}

/// The NATS broker.
pub struct NatsBroker {
    hub: Arc<dyn BrokerEvents>,
    js: Js,
    ensured: Arc<Ensured>,
    link: Arc<Link>,
    chans: Arc<Channels>,
    feeds: Arc<Feeds>,
    presence: Arc<Presence>,
    directory: Arc<Directory>,
    documents: Arc<NatsDocumentLog>,
    replicas: usize,
    retention: Duration,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker").finish_non_exhaustive()
    }
}

/// Connects to `broker.nats_urls` and returns a broker delivering into `hub`.
///
/// The connection is opened in the background: the gateway starts while NATS
/// is unreachable and reports [`BrokerHealth::Down`] until JetStream answers.
pub async fn connect(
    config: &Config,
    hub: Arc<dyn BrokerEvents>,
) -> anyhow::Result<Arc<dyn Broker>> {
    let b = &config.broker;
    let broker: Arc<dyn Broker> =
        NatsBroker::start(&b.nats_urls, b.presence_ttl, b.nats_replicas, hub).await?;
    Ok(broker)
}

fn reconnect_delay(attempts: usize) -> Duration {
    let base = 50u64.saturating_mul(1 << attempts.min(6)).min(2_000);
    let half = base / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=half))
}

impl NatsBroker {
    /// Starts the broker over `urls` (servers of one NATS cluster).
    pub async fn start(
        urls: &[String],
        presence_ttl: Duration,
        replicas: usize,
        hub: Arc<dyn BrokerEvents>,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(!urls.is_empty(), "broker.nats_urls names no server");
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                u.parse()
                    .map_err(|e| anyhow::anyhow!("broker.nats_urls[{i}]: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let presence_ttl = presence_ttl.max(Duration::from_millis(300));
        let metrics = hub.metrics().clone();
        let reconnects: Counter = Counter::default();
        metrics.register(
            "switchyard_broker_reconnects",
            "NATS reconnections",
            reconnects.clone(),
        );
        let up_gauge = Gauge::default();
        metrics.register(
            "switchyard_broker_shards_up",
            "NATS connections with JetStream answering (0 or 1)",
            up_gauge.clone(),
        );
        let inbox_metrics = InboxMetrics::default();
        metrics.register(
            "switchyard_direct_delivered",
            "Directed messages written to a local client",
            inbox_metrics.delivered.clone(),
        );
        metrics.register(
            "switchyard_direct_dropped",
            "Directed messages dropped (client gone beyond the retention, or malformed)",
            inbox_metrics.dropped.clone(),
        );
        let link = Arc::new(Link::default());
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let gen_tx = Arc::new(gen_tx);
        let ensured = Arc::new(Ensured::default());
        let options = {
            let link = link.clone();
            let ensured = ensured.clone();
            let reconnects = reconnects.clone();
            let gen_tx = gen_tx.clone();
            ConnectOptions::new()
                .name(format!("switchyard {}", hub.node_id()))
                .retry_on_initial_connect()
                .max_reconnects(None)
                .connection_timeout(Duration::from_secs(1))
                .request_timeout(Some(js::CALL_TIMEOUT))
                .ping_interval(Duration::from_secs(5))
                .reconnect_delay_callback(reconnect_delay)
                .event_callback(move |event| {
                    let (link, ensured, reconnects, gen_tx) = (
                        link.clone(),
                        ensured.clone(),
                        reconnects.clone(),
                        gen_tx.clone(),
                    );
                    async move {
                        match event {
                            Event::Connected => {
                                link.connected.store(true, Ordering::SeqCst);
                                ensured.clear();
                                if link.connected_before.swap(true, Ordering::SeqCst) {
                                    reconnects.inc();
                                    tracing::info!("nats reconnected");
                                    gen_tx.send_modify(|g| *g += 1);
                                }
                                link.probe.notify_one();
                            }
                            Event::Disconnected => {
                                link.connected.store(false, Ordering::SeqCst);
                                link.jetstream.store(false, Ordering::SeqCst);
                                tracing::warn!("nats connection lost");
                            }
                            Event::SlowConsumer(sid) => {
                                tracing::warn!(sid, "nats slow consumer: live messages dropped; feeds fill the gap from the stream");
                            }
                            other => tracing::info!(event = %other, "nats"),
                        }
                    }
                })
        };
        let client = options.connect(addrs).await?;
        let js = Js { client };
        let chans = Arc::new(Channels::new(js.clone(), ensured.clone(), replicas));
        let feeds = Arc::new(Feeds::new(chans.clone(), hub.clone(), gen_rx.clone()));
        let presence = Arc::new(Presence::new(
            js.clone(),
            ensured.clone(),
            hub.clone(),
            presence_ttl,
            replicas,
        ));
        let directory = Arc::new(Directory::new(
            js.clone(),
            ensured.clone(),
            hub.clone(),
            presence_ttl,
            replicas,
        ));
        let documents = NatsDocumentLog::new(chans.clone(), replicas, gen_rx);
        let (stop, stop_rx) = watch::channel(false);
        let retention = (presence_ttl * 4).max(DIRECT_RETENTION_MIN);
        let mut tasks = vec![
            tokio::spawn(probe(js.clone(), link.clone(), up_gauge, stop_rx.clone())),
            tokio::spawn(presence.clone().run(stop_rx.clone())),
            tokio::spawn(directory.clone().run(stop_rx.clone())),
        ];
        tasks.extend(Inbox::spawn(
            js.clone(),
            ensured.clone(),
            hub.clone(),
            replicas,
            retention,
            inbox_metrics,
            stop_rx,
        ));
        Ok(Arc::new(Self {
            hub,
            js,
            ensured,
            link,
            chans,
            feeds,
            presence,
            directory,
            documents,
            replicas,
            retention,
            stop,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Writes the client directory now (tests; normally driven by registry changes).
    pub async fn sync_directory(&self) {
        self.directory.sync(false).await;
    }

    /// Writes pending presence changes now (tests; normally debounced).
    pub async fn flush_presence(&self) {
        self.presence.flush().await;
    }

    /// Channels with a live subscription on this node.
    pub fn watched_channels(&self) -> usize {
        self.feeds.count()
    }
}

/// Keeps `link.jetstream` true while JetStream answers.
async fn probe(js: Js, link: Arc<Link>, gauge: Gauge, mut stop: watch::Receiver<bool>) {
    loop {
        let ok = link.connected.load(Ordering::SeqCst)
            && js.api("INFO", &serde_json::json!({})).await.is_ok();
        let was = link.jetstream.swap(ok, Ordering::SeqCst);
        if was != ok {
            gauge.set(i64::from(ok));
            if ok {
                tracing::info!("nats jetstream available");
            } else {
                tracing::warn!("nats jetstream unavailable");
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = link.probe.notified() => {}
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(
        &self,
        key: &ChannelKey,
        data: Arc<RawValue>,
        opts: &ChannelOptions,
        meta: PublishMeta<'_>,
    ) -> Result<Published, BrokerError> {
        let node = self.hub.node_id().clone();
        let skip = meta.skip.map(|s| (s, &*node));
        self.chans
            .publish(key, data, meta.msg_id, opts, meta.trace, skip)
            .await
    }

    fn presence_reconcile_interval(&self) -> Option<Duration> {
        Some(self.presence.reconcile_interval())
    }

    async fn recover(
        &self,
        key: &ChannelKey,
        since: Option<&StreamPosition>,
        opts: &ChannelOptions,
    ) -> Result<Recovery, BrokerError> {
        let r = self.chans.recover(key, since, opts).await?;
        self.feeds.note_position(key, &r.epoch, r.seq);
        Ok(r)
    }

    async fn watch(&self, key: &ChannelKey) -> Result<(), BrokerError> {
        self.feeds.watch(key).await?;
        self.presence.mark(key);
        Ok(())
    }

    async fn unwatch(&self, key: &ChannelKey) {
        self.feeds.unwatch(key);
        self.presence.mark(key);
    }

    async fn send_direct(
        &self,
        tenant: &str,
        client: &str,
        data: Arc<RawValue>,
    ) -> Result<(), BrokerError> {
        if self.hub.on_direct(tenant, client, &data, None) > 0 {
            return Ok(());
        }
        let me = self.hub.node_id();
        let nodes: Vec<String> = self
            .directory
            .lookup(tenant, client)
            .await?
            .into_iter()
            .filter(|n| **n != **me)
            .collect();
        if nodes.is_empty() {
            return Err(BrokerError::NotFound);
        }
        let mut last_err = None;
        let mut sent = 0usize;
        for node in &nodes {
            match inbox::enqueue(
                &self.js,
                &self.ensured,
                self.replicas,
                self.retention,
                node,
                tenant,
                client,
                &data,
            )
            .await
            {
                Ok(()) => sent += 1,
                Err(e) => last_err = Some(e),
            }
        }
        match (sent, last_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.presence.list(key).await
    }

    fn document_log(&self) -> Option<Arc<dyn switchyard_core::document::log::DocumentLog>> {
        Some(self.documents.clone())
    }

    fn health(&self) -> BrokerHealth {
        if self.link.connected.load(Ordering::SeqCst) && self.link.jetstream.load(Ordering::SeqCst)
        {
            BrokerHealth::Up
        } else {
            BrokerHealth::Down
        }
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let cleanup = async {
            self.presence.clear().await;
            self.directory.clear().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), cleanup).await;
        self.feeds.stop();
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.js.client.flush()).await;
    }
}
