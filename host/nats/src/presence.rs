//! Presence across nodes, in the JetStream KV bucket `SY_PRESENCE`.
//!
//! Per channel, each node owns one key `<tenant>.<channel>.<node>` holding
//! `{"exp": <ms>, "c": {client: principal}}`. `watch`/`unwatch` mark a channel
//! dirty; a task rewrites dirty channels (debounced) and refreshes every key
//! every `presence_ttl / 3`. Readers ignore entries past `exp`, so a node that
//! dies disappears within the TTL; the bucket's `max_age` (the TTL) removes
//! its keys for good.
//!
//! Presence events: once a channel's key is written, the node publishes the
//! [`Delta`] (who joined, who left here) as a core NATS message with header
//! `Sy-Presence` on the channel's live subject, which every node watching the
//! channel reads; nothing for a channel with more than `presence_events_max`
//! local members or a larger delta (reconciliation reads find those, see
//! [`switchyard_core::presence`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use switchyard_core::channel::ChannelKey;
use switchyard_core::presence::Delta;
use switchyard_core::protocol::encode::PresenceEntry;
use tokio::sync::{Notify, watch};

use crate::channels::{H_PRESENCE, now_ms};
use crate::js::{Ensured, Js, kv_config};
use crate::names::{self, PRESENCE_BUCKET};

/// Changes arriving within this window are written together.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Writes in flight at once.
const PARALLEL: usize = 256;

type Members = HashMap<String, String>;

/// Writes this node's presence and reads everyone's.
pub struct Presence {
    js: Js,
    ensured: Arc<Ensured>,
    hub: Arc<dyn BrokerEvents>,
    node: Arc<str>,
    ttl: Duration,
    replicas: usize,
    dirty: Mutex<HashSet<ChannelKey>>,
    wake: Notify,
    written: tokio::sync::Mutex<HashMap<ChannelKey, Members>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

fn key_of(key: &ChannelKey, node: &str) -> String {
    format!(
        "{}.{}.{}",
        key.tenant,
        names::enc(&key.channel),
        names::enc(node)
    )
}

impl Presence {
    /// Presence for this node.
    pub fn new(
        js: Js,
        ensured: Arc<Ensured>,
        hub: Arc<dyn BrokerEvents>,
        ttl: Duration,
        replicas: usize,
    ) -> Self {
        Self {
            js,
            ensured,
            node: hub.node_id().clone(),
            hub,
            ttl,
            replicas,
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            written: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn ensure(&self) -> Result<(), BrokerError> {
        self.js
            .ensure_once(
                &self.ensured,
                &kv_config(PRESENCE_BUCKET, self.ttl, true, self.replicas),
            )
            .await
            .map_err(Into::into)
    }

    /// How often nodes with presence watchers re-read their channels'
    /// presence: a third of the TTL, as the heartbeat.
    pub fn reconcile_interval(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// Sends the delta of `key` between `before` and `now` to the nodes
    /// watching the channel (after the write it describes).
    async fn announce(&self, key: &ChannelKey, before: Option<&Members>, now: &Members) {
        let max = self.hub.presence_events_max();
        let delta = Delta::between(&self.node, before, now);
        if delta.is_empty() || now.len() > max || delta.len() > max {
            return;
        }
        let mut h = HeaderMap::new();
        h.insert(H_PRESENCE, "1");
        let _ = self
            .js
            .client
            .publish_with_headers(names::live_subject(key), h, Bytes::from(delta.encode()))
            .await;
    }

    /// The local subscribers of `key` changed.
    pub fn mark(&self, key: &ChannelKey) {
        self.dirty.lock().insert(key.clone());
        self.wake.notify_one();
    }

    /// Clients present in `key` on every node: this node's from the hub
    /// (exact), other nodes' from the bucket (as of their last write).
    pub async fn list(&self, key: &ChannelKey) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.ensure().await?;
        let filter = names::kv_subject(
            PRESENCE_BUCKET,
            &format!("{}.{}.*", key.tenant, names::enc(&key.channel)),
        );
        let found = self
            .js
            .scan(&names::kv_stream(PRESENCE_BUCKET), &filter, 10_000)
            .await?;
        let now = now_ms();
        let mut out = Vec::new();
        for m in found {
            let Some(node) = m.subject.rsplit('.').next().and_then(names::dec) else {
                continue;
            };
            if *node == *self.node {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            if v["exp"].as_u64().unwrap_or(0) < now {
                continue;
            }
            if let Some(c) = v["c"].as_object() {
                for (client, principal) in c {
                    out.push(PresenceEntry {
                        client: client.clone(),
                        principal: principal.as_str().unwrap_or_default().to_owned(),
                        node: node.clone(),
                    });
                }
            }
        }
        let mut seen = HashSet::new();
        for e in self.hub.local_presence(key) {
            if seen.insert(e.client.clone()) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Runs until `stop`: writes dirty channels, refreshes all periodically.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.wake.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    self.flush().await;
                }
                _ = tick.tick() => {
                    self.flush().await;
                    self.refresh().await;
                }
            }
        }
    }

    async fn put(&self, key: &ChannelKey, members: &Members, exp: u64) -> bool {
        let body = json!({ "exp": exp, "c": members });
        let subject = names::kv_subject(PRESENCE_BUCKET, &key_of(key, &self.node));
        self.js
            .publish(subject, HeaderMap::new(), Bytes::from(body.to_string()))
            .await
            .is_ok()
    }

    /// Writes the dirty channels.
    pub async fn flush(&self) {
        let dirty: Vec<ChannelKey> = self.dirty.lock().drain().collect();
        if dirty.is_empty() {
            return;
        }
        if self.ensure().await.is_err() {
            self.dirty.lock().extend(dirty);
            return;
        }
        let mut written = self.written.lock().await;
        let exp = now_ms() + self.ttl.as_millis() as u64;
        for chunk in dirty.chunks(PARALLEL) {
            let work: Vec<(ChannelKey, Members)> = chunk
                .iter()
                .map(|k| {
                    let now: Members = self
                        .hub
                        .local_presence(k)
                        .into_iter()
                        .map(|e| (e.client, e.principal))
                        .collect();
                    (k.clone(), now)
                })
                .filter(|(k, now)| !now.is_empty() || written.contains_key(k))
                .collect();
            let results = join_all(
                work.iter()
                    .map(|(k, now)| self.put(k, now, if now.is_empty() { 0 } else { exp })),
            )
            .await;
            for ((k, now), ok) in work.into_iter().zip(results) {
                if ok {
                    self.announce(&k, written.get(&k), &now).await;
                }
                if !ok {
                    self.dirty.lock().insert(k);
                } else if now.is_empty() {
                    written.remove(&k);
                } else {
                    written.insert(k, now);
                }
            }
        }
    }

    /// Heartbeat: rewrites every key this node owns with a new expiry.
    pub async fn refresh(&self) {
        if self.ensure().await.is_err() {
            return;
        }
        let written = self.written.lock().await;
        let exp = now_ms() + self.ttl.as_millis() as u64;
        let all: Vec<(&ChannelKey, &Members)> = written.iter().collect();
        for chunk in all.chunks(PARALLEL) {
            let results = join_all(chunk.iter().map(|(k, m)| self.put(k, m, exp))).await;
            for ((k, _), ok) in chunk.iter().zip(results) {
                if !ok {
                    self.dirty.lock().insert((*k).clone());
                }
            }
        }
    }

    /// Withdraws everything this node wrote (graceful shutdown).
    pub async fn clear(&self) {
        let mut written = self.written.lock().await;
        let all: Vec<(ChannelKey, Members)> = written.drain().collect();
        let empty = Members::new();
        for chunk in all.chunks(PARALLEL) {
            join_all(chunk.iter().map(|(k, _)| self.put(k, &empty, 0))).await;
            // The other nodes' watchers get the leaves at once.
            join_all(
                chunk
                    .iter()
                    .map(|(k, before)| self.announce(k, Some(before), &empty)),
            )
            .await;
        }
    }
}
