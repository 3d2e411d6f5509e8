//! Embedded single-node broker: sequencing, history and dedupe in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{Broker, BrokerError, ChannelOptions, PublishMeta, Published};
use crate::backpressure::TokenBucket;
use crate::broker::events::BrokerEvents;
use crate::channel::ChannelKey;
use crate::dedupe::DedupeWindow;
use crate::history::{History, Message, Recovery};
use crate::hub::SessionId;
use crate::protocol::StreamPosition;
use crate::protocol::encode::PresenceEntry;

#[derive(Debug)]
struct ChannelState {
    epoch: Arc<str>,
    seq: u64,
    history: History,
    dedupe: DedupeWindow,
    last_publish: Instant,
    /// The channel's shared budget, when it has a `channel_limits` entry.
    bucket: Option<(crate::config::ChannelLimitKey, TokenBucket)>,
}

impl ChannelState {
    fn new(opts: &ChannelOptions, now: Instant) -> Self {
        Self {
            epoch: new_epoch(),
            seq: 0,
            history: History::new(opts.history_size, opts.history_ttl),
            dedupe: DedupeWindow::new(opts.dedupe_window),
            last_publish: now,
            bucket: None,
        }
    }
}

/// A fresh random epoch id.
pub fn new_epoch() -> Arc<str> {
    let v: u64 = rand::random();
    Arc::from(format!("{v:016x}").as_str())
}

/// In-process broker for a single node.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<dyn BrokerEvents>,
    channels: DashMap<ChannelKey, Arc<Mutex<ChannelState>>>,
}

impl MemoryBroker {
    /// A broker delivering into `hub`.
    pub fn new(hub: Arc<dyn BrokerEvents>) -> Arc<Self> {
        Arc::new(Self {
            hub,
            channels: DashMap::new(),
        })
    }

    fn state(&self, key: &ChannelKey, opts: &ChannelOptions) -> Arc<Mutex<ChannelState>> {
        if let Some(s) = self.channels.get(key) {
            return s.clone();
        }
        self.channels
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(ChannelState::new(opts, Instant::now()))))
            .clone()
    }

    /// Forgets channels with no subscribers whose history has expired, so memory
    /// stays bounded by live channels. Their next publish starts a new epoch.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.channels.retain(|key, st| {
            let mut st = st.lock();
            st.history.expire(now);
            let idle_long = now.saturating_duration_since(st.last_publish) > idle;
            !(st.history.is_empty() && idle_long && !self.hub.has_subscribers(key))
        });
    }

    fn publish_at(
        &self,
        key: &ChannelKey,
        data: Arc<RawValue>,
        msg_id: Option<&str>,
        opts: &ChannelOptions,
        trace: Option<crate::telemetry::TraceParent>,
        skip: Option<SessionId>,
    ) -> Result<Published, BrokerError> {
        let state = self.state(key, opts);
        let mut st = state.lock();
        if let Some(id) = msg_id
            && let Some(seq) = st.dedupe.get(id)
        {
            return Ok(Published {
                seq,
                epoch: st.epoch.clone(),
                duplicate: true,
                limited: None,
            });
        }
        let now = Instant::now();
        if let Some(limit) = opts.limit {
            let key = (limit.rate, limit.burst);
            if st.bucket.as_ref().is_none_or(|(k, _)| *k != key) {
                st.bucket = Some((key, TokenBucket::new(limit.rate, limit.burst, now)));
            }
            if let Some((_, b)) = st.bucket.as_mut()
                && !b.try_take(now, 1)
            {
                return Ok(Published {
                    seq: st.seq,
                    epoch: st.epoch.clone(),
                    duplicate: false,
                    limited: Some(limit.retry_after_ms()),
                });
            }
        } else {
            st.bucket = None;
        }
        st.seq += 1;
        st.last_publish = now;
        let msg = Message {
            seq: st.seq,
            epoch: st.epoch.clone(),
            data,
            published_at: now,
        };
        if let Some(id) = msg_id {
            let seq = st.seq;
            st.dedupe.insert(id, seq);
        }
        st.history.set_limits(opts.history_size, opts.history_ttl);
        st.history.push(now, msg.clone());
        // Delivered under the channel lock so every subscriber sees seq order.
        self.hub.on_publication(key, &msg, trace, skip);
        Ok(Published {
            seq: msg.seq,
            epoch: msg.epoch,
            duplicate: false,
            limited: None,
        })
    }

    /// Channels currently tracked.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Runs [`MemoryBroker::sweep`] periodically until the broker is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration, idle: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(b) => b.sweep(idle),
                    None => return,
                }
            }
        });
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        key: &ChannelKey,
        data: Arc<RawValue>,
        opts: &ChannelOptions,
        meta: PublishMeta<'_>,
    ) -> Result<Published, BrokerError> {
        self.publish_at(key, data, meta.msg_id, opts, meta.trace, meta.skip)
    }

    async fn recover(
        &self,
        key: &ChannelKey,
        since: Option<&StreamPosition>,
        opts: &ChannelOptions,
    ) -> Result<Recovery, BrokerError> {
        let state = self.state(key, opts);
        let mut st = state.lock();
        let latest = st.seq;
        let epoch = st.epoch.clone();
        let (recovered, messages) = match since {
            None => (false, Vec::new()),
            Some(pos) if *pos.epoch != *epoch => (false, Vec::new()),
            Some(pos) => match st.history.since(Instant::now(), pos.seq, latest) {
                Some(msgs) => (true, msgs),
                None => (false, Vec::new()),
            },
        };
        Ok(Recovery {
            epoch,
            seq: latest,
            recovered,
            messages,
        })
    }

    async fn watch(&self, _key: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unwatch(&self, _key: &ChannelKey) {}

    async fn send_direct(
        &self,
        tenant: &str,
        client: &str,
        data: Arc<RawValue>,
    ) -> Result<(), BrokerError> {
        if self.hub.on_direct(tenant, client, &data, None) > 0 {
            Ok(())
        } else {
            Err(BrokerError::NotFound)
        }
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<PresenceEntry>, BrokerError> {
        Ok(self.hub.local_presence(key))
    }
}
