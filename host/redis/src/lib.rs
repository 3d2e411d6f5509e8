//! switchyard-redis: the Redis broker for multi-node deployments.
//!
//! - **Fan-out**: a publish runs one Lua script on the channel's shard (dedupe,
//!   seq, stream history, expiry, PUBLISH), so every node delivers the same seq
//!   in the same order. Each node subscribes once per channel with local
//!   subscribers, batching SUBSCRIBE/UNSUBSCRIBE ([`subscriptions`]).
//! - **History and recovery**: Redis Streams with entry id `<seq>-0`; the epoch
//!   lives in Redis and is recreated when the channel's keys are gone.
//! - **Directed delivery**: a client directory plus one inbox stream per node,
//!   consumed through a consumer group and acknowledged after the write ([`inbox`]).
//! - **Presence**: per-node hashes with TTL ([`presence`]).
//! - **Documents**: snapshots, a compare-and-append log and live entries for
//!   document channels ([`documents`]).
//! - **Sharding**: jump consistent hash over `broker.redis_urls` ([`sharding`]).

pub mod codec;
pub mod directory;
pub mod documents;
pub mod inbox;
pub mod keys;
pub mod presence;
pub mod replies;
pub mod scripts;
pub mod shard;
pub mod sharding;
pub mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::value::RawValue;
use switchyard_core::Config;
use switchyard_core::broker::events::BrokerEvents;
use switchyard_core::broker::memory::new_epoch;
use switchyard_core::broker::{
    Broker, BrokerError, BrokerHealth, ChannelOptions, PublishMeta, Published,
};
use switchyard_core::channel::ChannelKey;
use switchyard_core::history::{Message, Recovery};
use switchyard_core::protocol::StreamPosition;
use switchyard_core::protocol::encode::PresenceEntry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::instant_of;
use crate::directory::Directory;
use crate::documents::RedisDocumentLog;
use crate::inbox::{Inbox, InboxMetrics};
use crate::keys::ChannelKeys;
use crate::presence::Presence;
use crate::shard::Shard;
use crate::sharding::channel_shard;

/// Errors raised while setting up the broker.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `broker.redis_urls` is empty.
    #[error("broker.redis_urls names no server")]
    NoServers,
    /// A URL could not be parsed.
    #[error("broker.redis_urls[{index}]: {source}")]
    Url {
        /// Position in the list.
        index: usize,
        /// Why.
        source: redis::RedisError,
    },
}

/// How long the channel's epoch and seq outlive its last publish at least.
const META_TTL_MIN: Duration = Duration::from_secs(24 * 3600);

/// How long a directed message waits at least for its client on the target node.
const DIRECT_RETENTION_MIN: Duration = Duration::from_secs(30);

/// The Redis broker.
pub struct RedisBroker {
    hub: Arc<dyn BrokerEvents>,
    shards: Arc<[Arc<Shard>]>,
    directory: Arc<Directory>,
    presence: Arc<Presence>,
    documents: Arc<RedisDocumentLog>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// How long a directed message waits on its node for the client.
    retention: Duration,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// Connects to the configured Redis servers and returns a broker delivering into `hub`.
///
/// Connections are opened in the background: the gateway starts while Redis is
/// unreachable and reports [`BrokerHealth::Down`] until a shard answers.
pub async fn connect(
    config: &Config,
    hub: Arc<dyn BrokerEvents>,
) -> anyhow::Result<Arc<dyn Broker>> {
    let broker: Arc<dyn Broker> =
        RedisBroker::start(&config.broker.redis_urls, config.broker.presence_ttl, hub)?;
    Ok(broker)
}

impl RedisBroker {
    /// Starts the broker over `urls` (one shard each).
    pub fn start(
        urls: &[String],
        presence_ttl: Duration,
        hub: Arc<dyn BrokerEvents>,
    ) -> Result<Arc<Self>, ConnectError> {
        if urls.is_empty() {
            return Err(ConnectError::NoServers);
        }
        let shards_up = Gauge::default();
        let shards: Arc<[Arc<Shard>]> = urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                Shard::new(index, url, shards_up.clone())
                    .map_err(|source| ConnectError::Url { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let presence_ttl = presence_ttl.max(Duration::from_millis(300));
        let metrics = hub.metrics().clone();
        let reconnects = Counter::default();
        metrics.register(
            "switchyard_broker_reconnects",
            "Redis pub/sub reconnections",
            reconnects.clone(),
        );
        metrics.register(
            "switchyard_broker_shards_up",
            "Redis shards with a live pub/sub connection",
            shards_up.clone(),
        );
        let inbox_metrics = InboxMetrics::default();
        metrics.register(
            "switchyard_direct_delivered",
            "Directed messages written to a local client",
            inbox_metrics.delivered.clone(),
        );
        metrics.register(
            "switchyard_direct_dropped",
            "Directed messages dropped (client gone beyond the presence TTL, or malformed)",
            inbox_metrics.dropped.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let directory = Arc::new(Directory::new(shards.clone(), hub.clone(), presence_ttl));
        let presence = Arc::new(Presence::new(shards.clone(), hub.clone(), presence_ttl));
        let (documents, doc_events) = RedisDocumentLog::new(shards.clone());
        let mut tasks = Vec::new();
        for shard in shards.iter() {
            tasks.push(tokio::spawn(subscriptions::run(
                shard.clone(),
                hub.clone(),
                doc_events.clone(),
                reconnects.clone(),
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(directory.clone().run(stop_rx.clone())));
        tasks.push(tokio::spawn(presence.clone().run(stop_rx.clone())));
        // A directed message waits on its node for the client to (re)connect.
        let retention = (presence_ttl * 4).max(DIRECT_RETENTION_MIN);
        tasks.extend(Inbox::spawn(
            &shards,
            hub.clone(),
            retention,
            inbox_metrics,
            stop_rx,
        ));
        Ok(Arc::new(Self {
            hub,
            shards,
            directory,
            presence,
            documents,
            stop,
            tasks: Mutex::new(tasks),
            retention,
        }))
    }

    fn shard(&self, key: &ChannelKey) -> &Arc<Shard> {
        &self.shards[channel_shard(&key.tenant, &key.channel, self.shards.len())]
    }

    /// The shards, in `redis_urls` order.
    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }

    /// Writes the client directory now (tests; normally driven by registry changes).
    pub async fn sync_directory(&self) {
        self.directory.sync(false).await;
    }

    /// Writes pending presence changes now (tests; normally debounced).
    pub async fn flush_presence(&self) {
        self.presence.flush().await;
    }

    /// Runs one presence heartbeat now (tests; normally every `presence_ttl / 3`).
    pub async fn refresh_presence(&self) {
        self.presence.refresh().await;
        self.presence.flush().await;
    }
}

impl RedisBroker {
    /// A publish whose live payload carries `header` lines before the data.
    async fn publish_with(
        &self,
        key: &ChannelKey,
        data: Arc<RawValue>,
        msg_id: Option<&str>,
        opts: &ChannelOptions,
        header: String,
    ) -> Result<Published, BrokerError> {
        let shard = self.shard(key);
        let keys = ChannelKeys::new(key);
        let mut conn = shard.conn();
        let epoch = new_epoch();
        let v = shard
            .run(
                scripts::PUBLISH
                    .key(&keys.meta)
                    .key(&keys.stream)
                    .key(&keys.dedupe)
                    .key(&keys.limit)
                    .arg(&*epoch)
                    .arg(data.get())
                    .arg(msg_id.unwrap_or(""))
                    .arg(opts.history_size)
                    .arg(ms(opts.history_ttl))
                    .arg(ms(opts.history_ttl.max(META_TTL_MIN)))
                    .arg(opts.dedupe_window.max(1))
                    .arg(&keys.live)
                    .arg(opts.limit.map_or(0, |l| l.rate))
                    .arg(opts.limit.map_or(0, |l| l.burst))
                    .arg(header)
                    .invoke_async::<redis::Value>(&mut conn),
            )
            .await?;
        let r = replies::publish(&v)?;
        Ok(Published {
            seq: r.seq,
            epoch: Arc::from(r.epoch),
            duplicate: r.duplicate,
            limited: r.limited,
        })
    }

    async fn recover_at(
        &self,
        key: &ChannelKey,
        since: Option<&StreamPosition>,
        opts: &ChannelOptions,
    ) -> Result<Recovery, BrokerError> {
        let shard = self.shard(key);
        let keys = ChannelKeys::new(key);
        let mut conn = shard.conn();
        let epoch = new_epoch();
        let (since_epoch, since_seq) = since.map_or(("", 0), |p| (p.epoch.as_str(), p.seq));
        let v = shard
            .run(
                scripts::RECOVER
                    .key(&keys.meta)
                    .key(&keys.stream)
                    .arg(&*epoch)
                    .arg(since_epoch)
                    .arg(since_seq)
                    .arg(ms(opts.history_ttl))
                    .arg(ms(opts.history_ttl.max(META_TTL_MIN)))
                    .invoke_async::<redis::Value>(&mut conn),
            )
            .await?;
        let r = replies::recover(&v)?;
        let epoch: Arc<str> = Arc::from(r.epoch);
        shard.subs.note_position(&keys.live, &epoch, r.seq);
        let messages = r
            .entries
            .into_iter()
            .map(|e| Message {
                seq: e.seq,
                epoch: epoch.clone(),
                data: e.data,
                published_at: instant_of(e.published_ms),
            })
            .collect();
        Ok(Recovery {
            epoch,
            seq: r.seq,
            recovered: r.recovered,
            messages,
        })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX / 4)) as u64
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(
        &self,
        key: &ChannelKey,
        data: Arc<RawValue>,
        opts: &ChannelOptions,
        meta: PublishMeta<'_>,
    ) -> Result<Published, BrokerError> {
        let mut header = codec::trace_header(meta.trace);
        if let Some(skip) = meta.skip {
            header.push_str(&codec::skip_header(skip, self.hub.node_id()));
        }
        self.publish_with(key, data, meta.msg_id, opts, header)
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
        self.recover_at(key, since, opts).await
    }

    async fn watch(&self, key: &ChannelKey) -> Result<(), BrokerError> {
        self.shard(key).subs.watch(keys::live_channel(key)).await?;
        self.presence.mark(key);
        Ok(())
    }

    async fn unwatch(&self, key: &ChannelKey) {
        self.shard(key).subs.unwatch(&keys::live_channel(key));
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
            match inbox::enqueue(&self.shards, node, tenant, client, &data, self.retention).await {
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
        if !self.shards.iter().any(|s| s.is_up()) {
            BrokerHealth::Down
        } else {
            BrokerHealth::Up
        }
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let cleanup = async {
            self.presence.clear().await;
            self.directory.clear().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), cleanup).await;
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}
