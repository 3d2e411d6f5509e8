//! Directed delivery: the work-queue stream `SY_INBOX` holds one subject per
//! node (`sy.inbox.<node>`), each consumed by that node's durable consumer.
//!
//! A message is acknowledged only after its frame was written to the client's
//! socket (the outbox `on_written` hook), so a node that dies before writing
//! leaves it unacknowledged and gets it again (after the ack wait) when it
//! restarts. A message for a client that is not (yet) connected here is
//! negatively acknowledged with a 1 s delay and retried until it is older than
//! the retention, then dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::header::HeaderMap;
use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use serde_json::value::RawValue;
use switchyard_core::backpressure::WrittenHook;
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use tokio::sync::{mpsc, watch};

use crate::channels::{H_TIME, now_ms};
use crate::js::{Ensured, Js, JsError, code, header_map, nanos};
use crate::names::{self, INBOX_STREAM};

/// Header: the addressed client's tenant.
pub const H_TENANT: &str = "Sy-Tenant";
/// Header: the addressed client.
pub const H_CLIENT: &str = "Sy-Client";
/// How long a delivered, unacknowledged message waits before redelivery.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long one pull waits for a message.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Counters of directed delivery.
#[derive(Clone, Default)]
pub struct InboxMetrics {
    /// Directed messages written to a local client.
    pub delivered: Counter,
    /// Directed messages dropped (client gone past the retention, or malformed).
    pub dropped: Counter,
}

/// The inbox stream config.
pub fn stream_config(retention: Duration, replicas: usize) -> serde_json::Value {
    json!({
        "name": INBOX_STREAM,
        "subjects": ["sy.inbox.*"],
        "retention": "workqueue",
        "storage": "file",
        "num_replicas": replicas,
        "max_age": nanos(retention * 2),
        "max_msgs_per_subject": 100_000,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_msg_size": -1,
        "max_consumers": -1,
        "discard": "old",
        "duplicate_window": nanos(Duration::from_secs(60).min(retention * 2)),
    })
}

/// Sends a directed message to `node`'s inbox.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    js: &Js,
    ensured: &Ensured,
    replicas: usize,
    retention: Duration,
    node: &str,
    tenant: &str,
    client: &str,
    data: &RawValue,
) -> Result<(), BrokerError> {
    for _ in 0..2 {
        js.ensure_once(ensured, &stream_config(retention, replicas))
            .await?;
        let mut h = HeaderMap::new();
        h.insert(H_TENANT, tenant);
        h.insert(H_CLIENT, client);
        h.insert(H_TIME, now_ms().to_string().as_str());
        match js
            .publish(
                names::inbox_subject(node),
                h,
                Bytes::copy_from_slice(data.get().as_bytes()),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(code::STREAM_NOT_FOUND) => ensured.forget(INBOX_STREAM),
            Err(e) => return Err(e.into()),
        }
    }
    Err(BrokerError::Unavailable(
        "nats: inbox stream missing".into(),
    ))
}

enum Reply {
    Ack(String),
    Nak(String),
    Progress(String),
}

/// Marks a message in flight until its frame is written or dropped.
struct InFlightGuard {
    seq: u64,
    reply: String,
    written: AtomicBool,
    in_flight: Arc<Mutex<HashSet<u64>>>,
    replies: mpsc::UnboundedSender<Reply>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.written.load(Ordering::Relaxed) {
            self.in_flight.lock().remove(&self.seq);
            let _ = self
                .replies
                .send(Reply::Nak(std::mem::take(&mut self.reply)));
        }
    }
}

/// The consumer of this node's inbox.
pub struct Inbox {
    js: Js,
    ensured: Arc<Ensured>,
    hub: Arc<dyn BrokerEvents>,
    node: String,
    replicas: usize,
    retention: Duration,
    in_flight: Arc<Mutex<HashSet<u64>>>,
    replies: mpsc::UnboundedSender<Reply>,
    metrics: InboxMetrics,
}

impl Inbox {
    /// Starts the consumer and its acknowledger; both stop with `stop`.
    pub fn spawn(
        js: Js,
        ensured: Arc<Ensured>,
        hub: Arc<dyn BrokerEvents>,
        replicas: usize,
        retention: Duration,
        metrics: InboxMetrics,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let (replies, rx) = mpsc::unbounded_channel();
        let inbox = Arc::new(Self {
            node: hub.node_id().to_string(),
            js,
            ensured,
            hub,
            replicas,
            retention,
            in_flight: Arc::default(),
            replies,
            metrics,
        });
        vec![
            tokio::spawn(inbox.clone().answer(rx, stop.clone())),
            tokio::spawn(inbox.consume(stop)),
        ]
    }

    async fn answer(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Reply>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let r = tokio::select! {
                _ = stop.changed() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            let (subject, body) = match r {
                Reply::Ack(s) => (s, Bytes::from_static(b"+ACK")),
                Reply::Nak(s) => (
                    s,
                    Bytes::from(format!(
                        "-NAK {{\"delay\":{}}}",
                        nanos(Duration::from_secs(1))
                    )),
                ),
                Reply::Progress(s) => (s, Bytes::from_static(b"+WPI")),
            };
            if subject.is_empty() {
                continue;
            }
            // Not acknowledged: redelivered after the ack wait (at-least-once).
            if let Err(e) = self.js.client.publish(subject, body).await {
                tracing::debug!(error = %e, "inbox acknowledgement not sent");
            }
        }
    }

    async fn ensure(&self) -> Result<(), JsError> {
        self.js
            .ensure_once(&self.ensured, &stream_config(self.retention, self.replicas))
            .await?;
        let name = names::inbox_consumer(&self.node);
        let config = json!({
            "stream_name": INBOX_STREAM,
            "config": {
                "durable_name": name,
                "filter_subject": names::inbox_subject(&self.node),
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": nanos(ACK_WAIT),
                "max_ack_pending": 4096,
                "max_deliver": -1,
                "replay_policy": "instant",
                "num_replicas": 0,
            }
        });
        self.js
            .api(
                &format!("CONSUMER.DURABLE.CREATE.{INBOX_STREAM}.{name}"),
                &config,
            )
            .await
            .map(|_| ())
    }

    async fn consume(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ready = false;
        let next = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{INBOX_STREAM}.{}",
            names::inbox_consumer(&self.node)
        );
        let pull = Bytes::from(json!({ "batch": 1, "expires": nanos(PULL_EXPIRES) }).to_string());
        // Pulled messages keep their own subject: they arrive on a dedicated
        // subscription of the pull's reply subject, not as request replies.
        let reply_to = self.js.client.new_inbox();
        let mut replies = loop {
            match self.js.client.subscribe(reply_to.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "inbox subscription failed; retrying");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        };
        loop {
            if *stop.borrow() {
                return;
            }
            if !ready || !self.js.connected() {
                ready = false;
                match self.ensure().await {
                    Ok(()) => ready = true,
                    Err(e) => {
                        tracing::debug!(error = ?e, "inbox consumer not ready");
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        }
                        continue;
                    }
                }
            }
            if self
                .js
                .client
                .publish_with_reply(next.clone(), reply_to.clone(), pull.clone())
                .await
                .is_err()
            {
                ready = false;
                continue;
            }
            // One answer per pull: a message, or a status (404/408: nothing now).
            let deadline = tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_secs(1);
            let m = tokio::select! {
                _ = stop.changed() => return,
                m = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut replies)) => m,
            };
            match m {
                Ok(Some(m))
                    if m.status.is_none() || m.status == Some(async_nats::StatusCode::OK) =>
                {
                    self.handle(m)
                }
                Ok(Some(m)) if matches!(m.status.map(|s| s.as_u16()), Some(404 | 408)) => {}
                other => {
                    tracing::debug!(reply = ?other.map(|m| m.map(|m| (m.status, m.description))), "inbox pull failed; re-creating the consumer");
                    ready = false;
                }
            }
        }
    }

    /// Delivers one message or leaves it for a retry.
    fn handle(&self, m: async_nats::Message) {
        let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
            return;
        };
        // $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
        let seq: u64 = reply
            .split('.')
            .nth(5)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if self.in_flight.lock().contains(&seq) {
            let _ = self.replies.send(Reply::Progress(reply));
            return;
        }
        let h = header_map(m.headers.as_ref());
        let parsed = match (h.get(H_TENANT), h.get(H_CLIENT)) {
            (Some(t), Some(c)) => std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|d| RawValue::from_string(d.to_owned()).ok())
                .map(|d| (t.clone(), c.clone(), d)),
            _ => None,
        };
        let Some((tenant, client, data)) = parsed else {
            self.metrics.dropped.inc();
            let _ = self.replies.send(Reply::Ack(reply));
            return;
        };
        if self.hub.holds_client(&tenant, &client) {
            self.in_flight.lock().insert(seq);
            let guard = Arc::new(InFlightGuard {
                seq,
                reply: reply.clone(),
                written: AtomicBool::new(false),
                in_flight: self.in_flight.clone(),
                replies: self.replies.clone(),
            });
            let delivered = self.metrics.delivered.clone();
            let hook: WrittenHook = Arc::new(move || {
                if !guard.written.swap(true, Ordering::Relaxed) {
                    delivered.inc();
                    guard.in_flight.lock().remove(&guard.seq);
                    let _ = guard.replies.send(Reply::Ack(guard.reply.clone()));
                }
            });
            if self.hub.on_direct(&tenant, &client, &data, Some(hook)) > 0 {
                return;
            }
            // The hook and guard were dropped with the refused frames (a NAK went out).
            return;
        }
        let sent = h
            .get(H_TIME)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        if Duration::from_millis(now_ms().saturating_sub(sent)) > self.retention {
            self.metrics.dropped.inc();
            let _ = self.replies.send(Reply::Ack(reply));
        } else {
            let _ = self.replies.send(Reply::Nak(reply));
        }
    }
}
