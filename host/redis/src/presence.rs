//! Presence across nodes.
//!
//! Per channel, each node owns one hash `sy:{tenant:channel}:presence:<node>`
//! (client → principal) with a TTL of `presence_ttl`, and registers itself in the
//! index hash `sy:{tenant:channel}:presence`. `watch`/`unwatch` mark a channel
//! dirty; a task diffs the hub's local subscribers against what it last wrote
//! and sends only the changes (debounced), and refreshes every TTL by
//! `presence_ttl / 3`. A node that dies stops refreshing, so its hash expires
//! within the TTL and readers drop it from the index.
//!
//! Presence events: after the writes of a channel, the same pipeline
//! PUBLISHes the [`Delta`] (who joined, who left on this node) on the
//! channel's live pub/sub channel (`p\n` + JSON), so every node watching the
//! channel hands it to its hub; nothing is published for a channel with more
//! than `presence_events_max` local members or a larger delta (the other
//! nodes' reconciliation reads find those changes, see
//! [`switchyard_core::presence`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use switchyard_core::channel::ChannelKey;
use switchyard_core::presence::Delta;
use switchyard_core::protocol::encode::PresenceEntry;
use tokio::sync::{Notify, watch};

use crate::codec::PRESENCE_PREFIX;
use crate::keys::{self, ChannelKeys};
use crate::replies;
use crate::scripts::{self, PRESENCE_GET, PRESENCE_TOUCH};
use crate::shard::Shard;
use crate::sharding::channel_shard;

/// Changes arriving within this window are written together.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Commands per pipeline.
const PIPELINE: usize = 1000;

/// Client → principal of one node in one channel.
type Members = HashMap<String, String>;

/// Writes this node's presence and reads everyone's.
pub struct Presence {
    shards: Arc<[Arc<Shard>]>,
    hub: Arc<dyn BrokerEvents>,
    node: Arc<str>,
    ttl: Duration,
    dirty: Mutex<HashSet<ChannelKey>>,
    wake: Notify,
    /// What Redis holds for this node: channel → client → principal.
    written: tokio::sync::Mutex<HashMap<ChannelKey, HashMap<String, String>>>,
}

impl Presence {
    /// Presence for this node.
    pub fn new(shards: Arc<[Arc<Shard>]>, hub: Arc<dyn BrokerEvents>, ttl: Duration) -> Self {
        let node = hub.node_id().clone();
        Self {
            shards,
            hub,
            node,
            ttl,
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            written: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, key: &ChannelKey) -> &Arc<Shard> {
        &self.shards[channel_shard(&key.tenant, &key.channel, self.shards.len())]
    }

    /// How often nodes with presence watchers re-read their channels'
    /// presence: a third of the TTL, as the heartbeat.
    pub fn reconcile_interval(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// The local subscribers of `key` changed.
    pub fn mark(&self, key: &ChannelKey) {
        self.dirty.lock().insert(key.clone());
        self.wake.notify_one();
    }

    /// Clients present in `key` on every node. This node's part comes from the hub
    /// (exact); other nodes' from Redis (as of their last write, within the TTL).
    pub async fn list(&self, key: &ChannelKey) -> Result<Vec<PresenceEntry>, BrokerError> {
        let shard = self.shard(key);
        let keys = ChannelKeys::new(key);
        let mut conn = shard.conn();
        let v = shard
            .run(
                PRESENCE_GET
                    .key(&keys.presence_index)
                    .arg(&keys.presence_node_prefix)
                    .invoke_async::<redis::Value>(&mut conn),
            )
            .await?;
        let flat = replies::texts(&v)?;
        let mut out: Vec<PresenceEntry> = flat
            .chunks_exact(3)
            .filter(|t| *t[0] != *self.node)
            .map(|t| PresenceEntry {
                node: t[0].clone(),
                client: t[1].clone(),
                principal: t[2].clone(),
            })
            .collect();
        let mut seen = HashSet::new();
        for e in self.hub.local_presence(key) {
            if seen.insert(e.client.clone()) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Runs until `stop`: flushes dirty channels, refreshes all periodically.
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

    /// Writes the changes of dirty channels: one pipeline per shard and chunk.
    pub async fn flush(&self) {
        let dirty: Vec<ChannelKey> = self.dirty.lock().drain().collect();
        if dirty.is_empty() {
            return;
        }
        let mut written = self.written.lock().await;
        let mut by_shard: HashMap<usize, Vec<(ChannelKey, Members)>> = HashMap::new();
        for key in dirty {
            let mut now: HashMap<String, String> = HashMap::new();
            for e in self.hub.local_presence(&key) {
                now.insert(e.client, e.principal);
            }
            by_shard
                .entry(channel_shard(&key.tenant, &key.channel, self.shards.len()))
                .or_default()
                .push((key, now));
        }
        for (idx, channels) in by_shard {
            let shard = &self.shards[idx];
            let mut conn = shard.conn();
            let mut rest = channels;
            while !rest.is_empty() {
                let chunk: Vec<_> = rest.drain(..rest.len().min(PIPELINE)).collect();
                let mut pipe = redis::pipe();
                for (key, now) in &chunk {
                    self.add_ops(&mut pipe, key, written.get(key), now);
                }
                match shard.run(pipe.exec_async(&mut conn)).await {
                    Ok(()) => {
                        for (key, now) in chunk {
                            if now.is_empty() {
                                written.remove(&key);
                            } else {
                                written.insert(key, now);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(shard = %shard.addr, error = %e, "presence write failed; retrying");
                        let mut dirty = self.dirty.lock();
                        dirty.extend(chunk.into_iter().map(|(k, _)| k));
                        dirty.extend(rest.drain(..).map(|(k, _)| k));
                    }
                }
            }
        }
    }

    /// Appends the commands turning `before` (what Redis holds for this node,
    /// `None` = unknown) into `now`.
    fn add_ops(
        &self,
        pipe: &mut redis::Pipeline,
        key: &ChannelKey,
        before: Option<&HashMap<String, String>>,
        now: &HashMap<String, String>,
    ) {
        let keys = ChannelKeys::new(key);
        let mine = format!("{}{}", keys.presence_node_prefix, self.node);
        let ttl_ms = self.ttl.as_millis().max(1) as i64;
        // After the writes below, in the same pipeline: a node that gets the
        // delta and then reads the hashes sees them written.
        let max = self.hub.presence_events_max();
        let delta = Delta::between(&self.node, before, now);
        let announce = !delta.is_empty() && now.len() <= max && delta.len() <= max;
        if now.is_empty() {
            pipe.del(&mine).ignore();
            pipe.hdel(&keys.presence_index, &*self.node).ignore();
            if announce {
                publish_delta(pipe, key, &delta);
            }
            return;
        }
        let empty = HashMap::new();
        if before.is_none() {
            // Unknown state in Redis (first write, or after a failure): start over.
            pipe.del(&mine).ignore();
        }
        let before = before.unwrap_or(&empty);
        let gone: Vec<&String> = before.keys().filter(|c| !now.contains_key(*c)).collect();
        if !gone.is_empty() {
            pipe.hdel(&mine, gone).ignore();
        }
        let changed: Vec<(&String, &String)> = now
            .iter()
            .filter(|(c, p)| before.get(*c) != Some(*p))
            .collect();
        if !changed.is_empty() {
            pipe.hset_multiple(&mine, &changed).ignore();
        }
        pipe.pexpire(&mine, ttl_ms).ignore();
        pipe.hset(&keys.presence_index, &*self.node, 1).ignore();
        pipe.pexpire(&keys.presence_index, ttl_ms).ignore();
        if announce {
            publish_delta(pipe, key, &delta);
        }
    }

    /// Heartbeat: extends the expiry of everything this node wrote (one pipeline
    /// per shard); rewrites a channel whose hash vanished (e.g. Redis restarted).
    pub async fn refresh(&self) {
        let mut written = self.written.lock().await;
        let ttl_ms = self.ttl.as_millis().max(1).to_string();
        let mut by_shard: HashMap<usize, Vec<ChannelKey>> = HashMap::new();
        for key in written.keys() {
            by_shard
                .entry(channel_shard(&key.tenant, &key.channel, self.shards.len()))
                .or_default()
                .push(key.clone());
        }
        let mut lost = Vec::new();
        for (idx, keys) in by_shard {
            let shard = &self.shards[idx];
            let mut conn = shard.conn();
            if shard
                .run(scripts::ensure_loaded(&PRESENCE_TOUCH, &mut conn))
                .await
                .is_err()
            {
                lost.extend(keys);
                continue;
            }
            for chunk in keys.chunks(PIPELINE) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    let k = ChannelKeys::new(key);
                    let mine = format!("{}{}", k.presence_node_prefix, self.node);
                    pipe.add_command(scripts::evalsha(
                        &PRESENCE_TOUCH,
                        &[&k.presence_index, &mine],
                        &[&self.node, &ttl_ms],
                    ));
                }
                match shard.run(pipe.query_async::<Vec<i64>>(&mut conn)).await {
                    Ok(results) => lost.extend(
                        chunk
                            .iter()
                            .zip(results.iter().chain(std::iter::repeat(&0)))
                            .filter(|(_, r)| **r != 1)
                            .map(|(k, _)| k.clone()),
                    ),
                    Err(_) => lost.extend(chunk.iter().cloned()),
                }
            }
        }
        for key in lost {
            written.remove(&key);
            self.dirty.lock().insert(key);
        }
        drop(written);
        if !self.dirty.lock().is_empty() {
            self.wake.notify_one();
        }
    }

    /// Removes everything this node wrote (graceful shutdown).
    pub async fn clear(&self) {
        let mut written = self.written.lock().await;
        for (key, before) in written.drain() {
            let shard = self.shard(&key);
            let mut pipe = redis::pipe();
            // The other nodes' watchers get the leaves at once.
            self.add_ops(&mut pipe, &key, Some(&before), &HashMap::new());
            let mut conn = shard.conn();
            let _ = shard.run(pipe.exec_async(&mut conn)).await;
        }
    }
}

/// PUBLISHes a presence delta on the channel's live pub/sub channel.
fn publish_delta(pipe: &mut redis::Pipeline, key: &ChannelKey, delta: &Delta) {
    let mut payload = PRESENCE_PREFIX.to_vec();
    payload.extend_from_slice(delta.encode().as_bytes());
    pipe.publish(keys::live_channel(key), payload).ignore();
}
