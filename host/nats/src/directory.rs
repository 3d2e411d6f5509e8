//! Client directory: which node holds which client, in the JetStream KV
//! bucket `SY_DIR`.
//!
//! Each node writes, per local client, the key `<tenant>.<client>.<node>` =
//! its expiry (ms since the Unix epoch) as soon as the hub's registry changes
//! (debounced), withdraws departed ones (expiry 0), and rewrites all of them
//! every `presence_ttl / 3`. A node that dies stops refreshing; its entries
//! count as gone once their expiry passes, and the bucket's `max_age` removes
//! them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use tokio::sync::watch;

use crate::channels::now_ms;
use crate::js::{Ensured, Js, kv_config};
use crate::names::{self, DIRECTORY_BUCKET};

/// Registry changes arriving within this window are written together.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Writes in flight at once.
const PARALLEL: usize = 256;

type ClientId = (Arc<str>, Arc<str>);

/// This node's view of the directory.
pub struct Directory {
    js: Js,
    ensured: Arc<Ensured>,
    hub: Arc<dyn BrokerEvents>,
    node: Arc<str>,
    ttl: Duration,
    replicas: usize,
    known: Mutex<HashSet<ClientId>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// A directory writer for this node.
    pub fn new(
        js: Js,
        ensured: Arc<Ensured>,
        hub: Arc<dyn BrokerEvents>,
        ttl: Duration,
        replicas: usize,
    ) -> Self {
        hub.client_changes().track();
        Self {
            js,
            ensured,
            node: hub.node_id().clone(),
            hub,
            ttl,
            replicas,
            known: Mutex::new(HashSet::new()),
        }
    }

    async fn ensure(&self) -> Result<(), BrokerError> {
        self.js
            .ensure_once(
                &self.ensured,
                &kv_config(DIRECTORY_BUCKET, self.ttl, true, self.replicas),
            )
            .await
            .map_err(Into::into)
    }

    fn subject(&self, tenant: &str, client: &str) -> String {
        names::kv_subject(
            DIRECTORY_BUCKET,
            &format!("{tenant}.{}.{}", names::enc(client), names::enc(&self.node)),
        )
    }

    /// Nodes currently holding `client` (entries not expired).
    pub async fn lookup(&self, tenant: &str, client: &str) -> Result<Vec<String>, BrokerError> {
        self.ensure().await?;
        let filter = names::kv_subject(
            DIRECTORY_BUCKET,
            &format!("{tenant}.{}.*", names::enc(client)),
        );
        let found = self
            .js
            .scan(&names::kv_stream(DIRECTORY_BUCKET), &filter, 1000)
            .await?;
        let now = now_ms();
        Ok(found
            .into_iter()
            .filter(|m| {
                std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|exp| exp >= now)
            })
            .filter_map(|m| m.subject.rsplit('.').next().and_then(names::dec))
            .collect())
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

    /// Writes added clients, withdraws departed ones; `refresh_all` rewrites
    /// every local client (heartbeat).
    pub async fn sync(&self, refresh_all: bool) {
        let touched = self.hub.client_changes().take();
        let (added, removed): (Vec<ClientId>, Vec<ClientId>) = match touched {
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
            _ => {
                let mut current: HashSet<ClientId> = HashSet::new();
                self.hub.for_each_client(&mut |t, c| {
                    current.insert((t.clone(), c.clone()));
                });
                let known = self.known.lock();
                let added = if refresh_all {
                    current.iter().cloned().collect()
                } else {
                    current.difference(&known).cloned().collect()
                };
                let removed = known.difference(&current).cloned().collect();
                (added, removed)
            }
        };
        if added.is_empty() && removed.is_empty() {
            return;
        }
        if self.ensure().await.is_err() {
            tracing::debug!("client directory unavailable; retrying on the next heartbeat");
            return;
        }
        let exp = now_ms() + self.ttl.as_millis() as u64;
        let ops: Vec<(ClientId, bool)> = added
            .into_iter()
            .map(|id| (id, true))
            .chain(removed.into_iter().map(|id| (id, false)))
            .collect();
        for chunk in ops.chunks(PARALLEL) {
            let results = join_all(chunk.iter().map(|((t, c), add)| {
                let body = if *add {
                    exp.to_string()
                } else {
                    "0".to_owned()
                };
                self.js
                    .publish(self.subject(t, c), HeaderMap::new(), Bytes::from(body))
            }))
            .await;
            let mut known = self.known.lock();
            for ((id, add), r) in chunk.iter().zip(results) {
                match (r.is_ok(), add) {
                    (true, true) => {
                        known.insert(id.clone());
                    }
                    (true, false) => {
                        known.remove(id);
                    }
                    _ => tracing::debug!("client directory write failed; retrying later"),
                }
            }
        }
    }

    /// Withdraws every entry this node wrote (graceful shutdown).
    pub async fn clear(&self) {
        let known: Vec<ClientId> = self.known.lock().drain().collect();
        for chunk in known.chunks(PARALLEL) {
            join_all(chunk.iter().map(|(t, c)| {
                self.js.publish(
                    self.subject(t, c),
                    HeaderMap::new(),
                    Bytes::from_static(b"0"),
                )
            }))
            .await;
        }
    }
}
