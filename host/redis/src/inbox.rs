//! Directed delivery: each node consumes its own stream `sy:node:{node}:inbox`
//! through the consumer group `sy`.
//!
//! An entry is XACKed only after the frame was written to the client's socket
//! (the outbox `on_written` hook), so a node that dies before writing leaves it
//! pending and claims it again (XAUTOCLAIM) when it restarts. An entry for a
//! client that is not (yet) connected here stays pending and is retried every
//! second until it is older than `presence_ttl`, then dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use redis::Value;
use redis::aio::ConnectionManager;
use serde_json::value::RawValue;
use switchyard_core::backpressure::WrittenHook;
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use tokio::sync::{mpsc, watch};

use crate::keys::{self, INBOX_GROUP};
use crate::replies::text;
use crate::shard::{Backoff, Shard, manager_config};
use crate::sharding::node_shard;

/// Entries kept per inbox stream (approximate trimming).
pub const INBOX_MAXLEN: usize = 100_000;
/// Entries read per round.
const BATCH: usize = 128;
/// XREADGROUP BLOCK time (also the retry period of pending entries).
const BLOCK: Duration = Duration::from_millis(1000);
/// A pending entry idle this long is claimed again.
const RECLAIM_IDLE: Duration = Duration::from_millis(1000);

/// Counters of directed delivery.
#[derive(Clone, Default)]
pub struct InboxMetrics {
    /// Directed messages written to a local client.
    pub delivered: Counter,
    /// Directed messages dropped (client gone past the TTL, or malformed).
    pub dropped: Counter,
}

/// Entries handed to a connection and not yet acknowledged.
type InFlight = Arc<Mutex<HashSet<String>>>;

/// Removes an entry from the in-flight set when its frame is dropped unwritten,
/// so the next reclaim retries it.
struct InFlightGuard {
    id: String,
    written: AtomicBool,
    in_flight: InFlight,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.written.load(Ordering::Relaxed) {
            self.in_flight.lock().remove(&self.id);
        }
    }
}

/// How long an inbox outlives its last use: twice the retention, so the inbox
/// of a node that is gone for good disappears.
pub fn inbox_ttl(retention: Duration) -> u64 {
    (retention * 2).as_millis().max(1) as u64
}

/// Sends a directed message to a node's inbox (`retention`: see [`Inbox::spawn`]).
pub async fn enqueue(
    shards: &[Arc<Shard>],
    node: &str,
    tenant: &str,
    client: &str,
    data: &RawValue,
    retention: Duration,
) -> Result<(), BrokerError> {
    let shard = &shards[node_shard(node, shards.len())];
    let mut conn = shard.conn();
    let key = keys::inbox(node);
    let mut pipe = redis::pipe();
    pipe.atomic();
    let cmd = pipe.cmd("XADD");
    cmd.arg(&key)
        .arg("MAXLEN")
        .arg("~")
        .arg(INBOX_MAXLEN)
        .arg("*")
        .arg("t")
        .arg(tenant)
        .arg("c")
        .arg(client)
        .arg("d")
        .arg(data.get())
        .ignore();
    pipe.pexpire(&key, inbox_ttl(retention) as i64).ignore();
    shard.run(pipe.exec_async(&mut conn)).await
}

/// The consumer of this node's inbox.
pub struct Inbox {
    shard: Arc<Shard>,
    hub: Arc<dyn BrokerEvents>,
    key: String,
    consumer: String,
    max_age: Duration,
    in_flight: InFlight,
    acks: mpsc::Sender<String>,
    metrics: InboxMetrics,
}

impl Inbox {
    /// Starts the consumer and its acknowledger; both stop with `stop`.
    pub fn spawn(
        shards: &[Arc<Shard>],
        hub: Arc<dyn BrokerEvents>,
        max_age: Duration,
        metrics: InboxMetrics,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let node = hub.node_id().to_string();
        let shard = shards[node_shard(&node, shards.len())].clone();
        let (acks, ack_rx) = mpsc::channel(4096);
        let inbox = Arc::new(Self {
            shard,
            hub,
            key: keys::inbox(&node),
            consumer: node,
            max_age,
            in_flight: Arc::default(),
            acks,
            metrics,
        });
        vec![
            tokio::spawn(inbox.clone().acknowledge(ack_rx, stop.clone())),
            tokio::spawn(inbox.consume(stop)),
        ]
    }

    async fn acknowledge(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<String>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
            }
            let mut conn = self.shard.conn();
            // Acknowledged entries are deleted too: the inbox holds only what is
            // still to be delivered.
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("XACK")
                .arg(&self.key)
                .arg(INBOX_GROUP)
                .arg(&batch)
                .ignore();
            pipe.cmd("XDEL").arg(&self.key).arg(&batch).ignore();
            if let Err(e) = self.shard.run(pipe.exec_async(&mut conn)).await {
                // Left pending: the reclaim delivers again (at-least-once).
                tracing::warn!(error = %e, "XACK failed");
            }
            let mut in_flight = self.in_flight.lock();
            for id in batch.drain(..) {
                in_flight.remove(&id);
            }
        }
    }

    async fn consume(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return;
            }
            // A dedicated connection: XREADGROUP BLOCK holds it.
            let conn = ConnectionManager::new_with_config(
                self.shard.client.clone(),
                manager_config(BLOCK + Duration::from_secs(2)),
            );
            let conn = match tokio::time::timeout(Duration::from_secs(2), conn).await {
                Ok(Ok(c)) => c,
                _ => {
                    if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            match self.serve(conn, &mut stop, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "inbox consumer failed; reconnecting");
                    if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                        return;
                    }
                }
            }
        }
    }

    async fn serve(
        &self,
        mut conn: ConnectionManager,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<(), redis::RedisError> {
        self.create_group(&mut conn).await?;
        backoff.reset();
        let mut last_reclaim = tokio::time::Instant::now();
        // After a (re)start every pending entry is ours to retry, however recent.
        self.reclaim(&mut conn, Duration::ZERO).await?;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            if last_reclaim.elapsed() >= RECLAIM_IDLE {
                self.reclaim(&mut conn, RECLAIM_IDLE).await?;
                last_reclaim = tokio::time::Instant::now();
                // Keep our own inbox alive while we run.
                redis::cmd("PEXPIRE")
                    .arg(&self.key)
                    .arg(inbox_ttl(self.max_age))
                    .exec_async(&mut conn)
                    .await?;
            }
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(INBOX_GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(">");
            let reply = tokio::select! {
                _ = stop.changed() => return Ok(()),
                r = cmd.query_async::<Value>(&mut conn) => r,
            };
            let reply = match reply {
                Ok(v) => v,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // Redis lost the stream (restart without persistence).
                    self.create_group(&mut conn).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // [[key, [[id, fields], …]]]
            if let Value::Array(streams) = reply {
                for s in streams {
                    if let Value::Array(pair) = s
                        && let [_, Value::Array(entries)] = pair.as_slice()
                    {
                        for e in entries {
                            self.handle(e);
                        }
                    }
                }
            }
        }
    }

    async fn create_group(&self, conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
        let r = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(INBOX_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<Value>(conn)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Claims pending entries idle for `min_idle` and retries them.
    async fn reclaim(
        &self,
        conn: &mut ConnectionManager,
        min_idle: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut cursor = "0-0".to_owned();
        for _ in 0..64 {
            let reply = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(INBOX_GROUP)
                .arg(&self.consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async::<Value>(conn)
                .await;
            let reply = match reply {
                Ok(v) => v,
                Err(e) if e.code() == Some("NOGROUP") => return self.create_group(conn).await,
                Err(e) => return Err(e),
            };
            let Value::Array(parts) = reply else {
                return Ok(());
            };
            let (next, entries) = match parts.as_slice() {
                [next, Value::Array(entries), ..] => {
                    (text(next).unwrap_or("0-0").to_owned(), entries)
                }
                _ => return Ok(()),
            };
            for e in entries {
                self.handle(e);
            }
            if next == "0-0" {
                return Ok(());
            }
            cursor = next;
        }
        Ok(())
    }

    /// Delivers one entry `[id, [field, value, …]]` or leaves it pending.
    fn handle(&self, entry: &Value) {
        let Value::Array(pair) = entry else { return };
        let [id, Value::Array(fields)] = pair.as_slice() else {
            return; // deleted entry (trimmed): nothing to deliver
        };
        let Some(id) = text(id) else { return };
        if self.in_flight.lock().contains(id) {
            return;
        }
        let (mut tenant, mut client, mut data) = (None, None, None);
        for kv in fields.chunks(2) {
            if let [k, v] = kv {
                match text(k) {
                    Some("t") => tenant = text(v),
                    Some("c") => client = text(v),
                    Some("d") => data = text(v),
                    _ => {}
                }
            }
        }
        let parsed = match (tenant, client, data) {
            (Some(t), Some(c), Some(d)) => {
                RawValue::from_string(d.to_owned()).ok().map(|d| (t, c, d))
            }
            _ => None,
        };
        let Some((tenant, client, data)) = parsed else {
            self.metrics.dropped.inc();
            let _ = self.acks.try_send(id.to_owned());
            return;
        };
        if self.hub.holds_client(tenant, client) {
            self.in_flight.lock().insert(id.to_owned());
            let guard = Arc::new(InFlightGuard {
                id: id.to_owned(),
                written: AtomicBool::new(false),
                in_flight: self.in_flight.clone(),
            });
            let acks = self.acks.clone();
            let delivered = self.metrics.delivered.clone();
            let hook: WrittenHook = Arc::new(move || {
                if !guard.written.swap(true, Ordering::Relaxed) {
                    delivered.inc();
                    if acks.try_send(guard.id.clone()).is_err() {
                        // Not acknowledged: retried later (at-least-once).
                        guard.in_flight.lock().remove(&guard.id);
                    }
                }
            });
            if self.hub.on_direct(tenant, client, &data, Some(hook)) > 0 {
                return;
            }
            // The hook (and guard) were dropped with the refused frames.
        }
        if age(id) > self.max_age {
            self.metrics.dropped.inc();
            let _ = self.acks.try_send(id.to_owned());
        }
    }
}

/// Age of a stream entry from its id (`<ms>-<n>`).
fn age(id: &str) -> Duration {
    let ms: u64 = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(now.saturating_sub(ms))
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
