//! Client directory: which node holds which client.
//!
//! Each node keeps, per local client, a field `node → expiry` in the hash
//! `sy:dir:{tenant:client}` on the client's shard. It writes new clients as soon
//! as the hub's registry changes (debounced), removes departed ones, and
//! refreshes all of them every `presence_ttl / 3`. A node that dies stops
//! refreshing; its fields count as gone once their expiry passes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use tokio::sync::watch;

use crate::keys;
use crate::replies;
use crate::scripts::{self, DIRECTORY_GET, DIRECTORY_SET};
use crate::shard::Shard;
use crate::sharding::client_shard;

/// Registry changes arriving within this window are written together.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Commands per pipeline.
const PIPELINE: usize = 1000;

type ClientId = (Arc<str>, Arc<str>);

/// This node's view of the directory.
pub struct Directory {
    shards: Arc<[Arc<Shard>]>,
    hub: Arc<dyn BrokerEvents>,
    node: Arc<str>,
    ttl: Duration,
    /// Clients written to Redis.
    known: Mutex<HashSet<ClientId>>,
}

impl Directory {
    /// A directory writer for this node.
    pub fn new(shards: Arc<[Arc<Shard>]>, hub: Arc<dyn BrokerEvents>, ttl: Duration) -> Self {
        let node = hub.node_id().clone();
        hub.client_changes().track();
        Self {
            shards,
            hub,
            node,
            ttl,
            known: Mutex::new(HashSet::new()),
        }
    }

    fn shard(&self, tenant: &str, client: &str) -> &Arc<Shard> {
        &self.shards[client_shard(tenant, client, self.shards.len())]
    }

    /// Nodes currently holding `client` (entries not expired).
    pub async fn lookup(&self, tenant: &str, client: &str) -> Result<Vec<String>, BrokerError> {
        let shard = self.shard(tenant, client);
        let mut conn = shard.conn();
        let key = keys::directory(tenant, client);
        let v = shard
            .run(
                DIRECTORY_GET
                    .key(&key)
                    .invoke_async::<redis::Value>(&mut conn),
            )
            .await?;
        replies::texts(&v)
    }

    /// Runs until `stop`: syncs on registry changes and refreshes periodically.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let refresh = tokio::select! {
                _ = stop.changed() => return,
                _ = self.hub.client_changes().changed().notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    false
                }
                _ = tick.tick() => true,
            };
            self.sync(refresh).await;
        }
    }

    /// Writes added clients, removes departed ones; `refresh_all` rewrites every
    /// local client (heartbeat).
    pub async fn sync(&self, refresh_all: bool) {
        let touched = self.hub.client_changes().take();
        let (added, removed) = match touched {
            // Only the clients that changed: O(churn).
            Some(touched) if !refresh_all => {
                let known = self.known.lock();
                let (mut added, mut removed) = (Vec::new(), Vec::new());
                for id in touched {
                    match (self.hub.holds_client(&id.0, &id.1), known.contains(&id)) {
                        (true, false) => added.push(id),
                        (false, true) => removed.push(id),
                        _ => {}
                    }
                }
                (added, removed)
            }
            // Heartbeat, or too many changes to list: compare the whole registry.
            _ => {
                let mut current: HashSet<ClientId> = HashSet::new();
                self.hub.for_each_client(&mut |t, c| {
                    current.insert((t.clone(), c.clone()));
                });
                let known = self.known.lock();
                let added: Vec<ClientId> = if refresh_all {
                    current.iter().cloned().collect()
                } else {
                    current.difference(&known).cloned().collect()
                };
                let removed: Vec<ClientId> = known.difference(&current).cloned().collect();
                (added, removed)
            }
        };
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let ttl_ms = self.ttl.as_millis().max(1).to_string();
        let mut by_shard: HashMap<usize, Vec<(ClientId, bool)>> = HashMap::new();
        for id in added {
            by_shard
                .entry(client_shard(&id.0, &id.1, self.shards.len()))
                .or_default()
                .push((id, true));
        }
        for id in removed {
            by_shard
                .entry(client_shard(&id.0, &id.1, self.shards.len()))
                .or_default()
                .push((id, false));
        }
        for (idx, ops) in by_shard {
            let shard = &self.shards[idx];
            let mut conn = shard.conn();
            if shard
                .run(scripts::ensure_loaded(&DIRECTORY_SET, &mut conn))
                .await
                .is_err()
            {
                continue;
            }
            for chunk in ops.chunks(PIPELINE) {
                let mut pipe = redis::pipe();
                for ((tenant, client), add) in chunk {
                    let key = keys::directory(tenant, client);
                    if *add {
                        pipe.add_command(scripts::evalsha(
                            &DIRECTORY_SET,
                            &[&key],
                            &[&self.node, &ttl_ms],
                        ))
                        .ignore();
                    } else {
                        pipe.hdel(&key, &*self.node).ignore();
                    }
                }
                if shard.run(pipe.exec_async(&mut conn)).await.is_ok() {
                    let mut known = self.known.lock();
                    for (id, add) in chunk {
                        if *add {
                            known.insert(id.clone());
                        } else {
                            known.remove(id);
                        }
                    }
                } else {
                    tracing::warn!(shard = %shard.addr, "client directory update failed; retrying later");
                }
            }
        }
    }

    /// Removes every entry this node wrote (graceful shutdown).
    pub async fn clear(&self) {
        let known: Vec<ClientId> = self.known.lock().drain().collect();
        for (tenant, client) in known {
            let shard = self.shard(&tenant, &client);
            let mut conn = shard.conn();
            let key = keys::directory(&tenant, &client);
            let _ = shard
                .run(
                    redis::cmd("HDEL")
                        .arg(&key)
                        .arg(&*self.node)
                        .exec_async(&mut conn),
                )
                .await;
        }
    }
}
