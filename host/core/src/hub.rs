//! Node-local fan-out and connection registry.
//!
//! The hub maps each channel to the local sessions subscribed to it. A message
//! is encoded once per node and the same bytes are queued on every subscriber's
//! [`Outbox`]. A subscriber that is still recovering history holds live messages
//! in a small pending buffer until [`Hub::activate`] splices them after the
//! replayed ones, so recovery has no gap and no duplicate.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::backpressure::{Outbox, Outgoing, PushError, WrittenHook};
use crate::channel::ChannelKey;
use crate::history::Message;
use crate::metrics::Metrics;
use crate::protocol::CloseCode;
use crate::protocol::encode::{self, PresenceEntry};

/// Identifies a session on this node.
pub type SessionId = u64;

/// A local subscriber of a channel.
#[derive(Debug)]
struct Subscriber {
    session: SessionId,
    outbox: Arc<Outbox>,
    client: Arc<str>,
    principal: Arc<str>,
    /// `Some` while recovering: live messages wait here (seq, frame).
    pending: Option<Vec<(u64, Outgoing)>>,
}

#[derive(Debug, Default)]
struct ChannelSubs {
    subs: Vec<Subscriber>,
}

/// A connection known to this node.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Session id.
    pub session: SessionId,
    /// Outbound queue.
    pub outbox: Arc<Outbox>,
    /// Principal id.
    pub principal: Arc<str>,
}

/// Identity of a subscriber when it joins a channel.
#[derive(Debug, Clone)]
pub struct SubscriberInfo {
    /// Session id.
    pub session: SessionId,
    /// Its outbound queue.
    pub outbox: Arc<Outbox>,
    /// Client id.
    pub client: Arc<str>,
    /// Principal id.
    pub principal: Arc<str>,
}

/// Node-local fan-out and registry.
#[derive(Debug)]
pub struct Hub {
    node_id: Arc<str>,
    channels: DashMap<ChannelKey, Arc<Mutex<ChannelSubs>>>,
    clients: DashMap<(Arc<str>, Arc<str>), Vec<Connection>>,
    connections: AtomicUsize,
    pending_limit: usize,
    metrics: Arc<Metrics>,
    registry_changed: tokio::sync::Notify,
    track_touched: AtomicBool,
    touched: Mutex<Touched>,
}

/// Clients whose registration changed since the last [`Hub::take_touched`].
#[derive(Debug, Default)]
struct Touched {
    clients: HashSet<(Arc<str>, Arc<str>)>,
    overflow: bool,
}

/// Beyond this many changed clients, [`Hub::take_touched`] reports an overflow.
const TOUCHED_MAX: usize = 65_536;

impl Hub {
    /// A hub for node `node_id`. `pending_limit` bounds the live messages held
    /// for one recovering subscriber (beyond it: slow consumer).
    pub fn new(node_id: impl Into<Arc<str>>, pending_limit: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            node_id: node_id.into(),
            channels: DashMap::new(),
            clients: DashMap::new(),
            connections: AtomicUsize::new(0),
            pending_limit: pending_limit.max(1),
            metrics,
            registry_changed: tokio::sync::Notify::new(),
            track_touched: AtomicBool::new(false),
            touched: Mutex::new(Touched::default()),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    /// Metrics shared by the node.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Delivers a message to every local subscriber of `key`: encoded once, shared by all.
    pub fn deliver(&self, key: &ChannelKey, msg: &Message) {
        if !self.channels.contains_key(key) {
            return;
        }
        self.deliver_outgoing(
            key,
            msg.seq,
            Outgoing {
                frame: encode::message(&key.channel, msg.seq, &msg.epoch, &msg.data),
                published_at: Some(msg.published_at),
                on_written: None,
            },
        );
    }

    /// [`Hub::deliver`] for a message published under `trace`: with tracing
    /// on and local subscribers, records one `deliver {channel}` span
    /// (CONSUMER, child of the publish span) around the fan-out to all of
    /// them — once per message per node, not per subscriber.
    pub fn deliver_traced(
        &self,
        key: &ChannelKey,
        msg: &Message,
        trace: Option<crate::telemetry::TraceParent>,
    ) {
        let _span = match trace {
            Some(tp) if crate::telemetry::enabled() && self.channels.contains_key(key) => {
                crate::telemetry::deliver_span(tp, &key.tenant, &key.channel, msg.seq)
            }
            _ => None,
        };
        self.deliver(key, msg);
    }

    /// Like [`Hub::deliver`], for a message this node replays after it missed
    /// it (its broker connection was down): queued under reply flow control
    /// ([`Outbox::push_reply`]), since a catch-up burst can be longer than a
    /// delivery queue and must not close subscribers that read.
    pub fn deliver_catch_up(&self, key: &ChannelKey, msg: &Message) {
        self.deliver_with(
            key,
            msg.seq,
            Outgoing {
                frame: encode::message(&key.channel, msg.seq, &msg.epoch, &msg.data),
                published_at: Some(msg.published_at),
                on_written: None,
            },
            true,
        );
    }

    /// Queues an encoded frame at position `seq` (a message seq or a document
    /// version) on every local subscriber of `key`; recovering subscribers hold
    /// it for the splice in [`Hub::activate`].
    pub fn deliver_outgoing(&self, key: &ChannelKey, seq: u64, item: Outgoing) {
        self.deliver_with(key, seq, item, false);
    }

    fn deliver_with(&self, key: &ChannelKey, seq: u64, item: Outgoing, replay: bool) {
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return;
        };
        let mut ch = entry.lock();
        for sub in &mut ch.subs {
            match &mut sub.pending {
                Some(buf) if buf.len() < self.pending_limit => buf.push((seq, item.clone())),
                Some(_) => {
                    sub.outbox.close(CloseCode::SlowConsumer, false);
                    self.metrics.send_queue_overflows.inc();
                }
                None if replay => {
                    let _ = sub.outbox.push_reply(item.clone());
                }
                None => {
                    if let Err(PushError::Full) = sub.outbox.push(item.clone()) {
                        self.metrics.send_queue_overflows.inc();
                    }
                }
            }
        }
    }

    /// Adds a subscriber in recovering state. Returns false if it was already there.
    pub fn add(&self, key: &ChannelKey, info: SubscriberInfo) -> bool {
        let entry = self.channels.entry(key.clone()).or_default().clone();
        let mut ch = entry.lock();
        if ch.subs.iter().any(|s| s.session == info.session) {
            return false;
        }
        ch.subs.push(Subscriber {
            session: info.session,
            outbox: info.outbox,
            client: info.client,
            principal: info.principal,
            pending: Some(Vec::new()),
        });
        true
    }

    /// Ends recovery: queues `head` (the `subscribed` reply and replayed messages),
    /// then the live messages held meanwhile whose seq is above `last_seq`.
    pub fn activate(
        &self,
        key: &ChannelKey,
        session: SessionId,
        head: Vec<Outgoing>,
        last_seq: u64,
    ) {
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return;
        };
        let mut ch = entry.lock();
        let Some(sub) = ch.subs.iter_mut().find(|s| s.session == session) else {
            return;
        };
        let pending = sub.pending.take().unwrap_or_default();
        // The head (subscribed + replay) answers the subscriber's own command:
        // replies, under the reader's flow control. Live ones held meanwhile
        // are deliveries.
        for f in head {
            let _ = sub.outbox.push_reply(f);
        }
        let overflow = pending
            .into_iter()
            .filter(|(seq, _)| *seq > last_seq)
            .map(|(_, f)| f)
            .any(|f| sub.outbox.push(f) == Err(PushError::Full));
        if overflow {
            self.metrics.send_queue_overflows.inc();
        }
    }

    /// Removes a subscriber. Returns whether it was subscribed.
    pub fn remove(&self, key: &ChannelKey, session: SessionId) -> bool {
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return false;
        };
        let (found, empty) = {
            let mut ch = entry.lock();
            let before = ch.subs.len();
            ch.subs.retain(|s| s.session != session);
            (ch.subs.len() != before, ch.subs.is_empty())
        };
        if empty {
            self.channels.remove_if(key, |_, e| {
                Arc::ptr_eq(e, &entry) && e.lock().subs.is_empty()
            });
        }
        found
    }

    /// Whether any local session subscribes to `key`.
    pub fn has_subscribers(&self, key: &ChannelKey) -> bool {
        self.channels
            .get(key)
            .is_some_and(|e| !e.lock().subs.is_empty())
    }

    /// Local subscriber count of `key`.
    pub fn subscriber_count(&self, key: &ChannelKey) -> usize {
        self.channels.get(key).map_or(0, |e| e.lock().subs.len())
    }

    /// Channels with local subscribers.
    pub fn channel_keys(&self) -> Vec<ChannelKey> {
        self.channels.iter().map(|e| e.key().clone()).collect()
    }

    /// Calls `f(channel, session)` for every local subscription, channel by
    /// channel (each channel's lock held only while it is walked). For the
    /// admin API: never on the message path.
    pub fn for_each_subscription(&self, mut f: impl FnMut(&ChannelKey, SessionId)) {
        let entries: Vec<(ChannelKey, Arc<Mutex<ChannelSubs>>)> = self
            .channels
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (key, entry) in entries {
            for s in &entry.lock().subs {
                f(&key, s.session);
            }
        }
    }

    /// Who is subscribed to `key` on this node.
    pub fn local_presence(&self, key: &ChannelKey) -> Vec<PresenceEntry> {
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return Vec::new();
        };
        let ch = entry.lock();
        ch.subs
            .iter()
            .map(|s| PresenceEntry {
                client: s.client.to_string(),
                principal: s.principal.to_string(),
                node: self.node_id.to_string(),
            })
            .collect()
    }

    /// Registers a connection under its tenant and client id.
    pub fn register(&self, tenant: &Arc<str>, client: &Arc<str>, conn: Connection) {
        let key = (tenant.clone(), client.clone());
        self.clients.entry(key.clone()).or_default().push(conn);
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.note_change(key);
    }

    /// Removes a connection from the registry.
    pub fn unregister(&self, tenant: &Arc<str>, client: &Arc<str>, session: SessionId) {
        let key = (tenant.clone(), client.clone());
        let mut removed = false;
        if let Some(mut list) = self.clients.get_mut(&key) {
            let before = list.len();
            list.retain(|c| c.session != session);
            removed = list.len() != before;
        }
        self.clients.remove_if(&key, |_, l| l.is_empty());
        if removed {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            self.note_change(key);
        }
    }

    fn note_change(&self, key: (Arc<str>, Arc<str>)) {
        if self.track_touched.load(Ordering::Relaxed) {
            let mut t = self.touched.lock();
            if t.clients.len() >= TOUCHED_MAX {
                t.overflow = true;
                t.clients = HashSet::new();
            } else if !t.overflow {
                t.clients.insert(key);
            }
        }
        self.registry_changed.notify_one();
    }

    /// Starts recording which clients (un)register, for [`Hub::take_touched`].
    pub fn track_registry_changes(&self) {
        self.track_touched.store(true, Ordering::Relaxed);
    }

    /// Clients (tenant, client) that registered or unregistered since the last
    /// call; `None` when too many changed to list (scan the registry instead).
    pub fn take_touched(&self) -> Option<Vec<(Arc<str>, Arc<str>)>> {
        let mut t = self.touched.lock();
        if std::mem::take(&mut t.overflow) {
            t.clients.clear();
            return None;
        }
        Some(t.clients.drain().collect())
    }

    /// Signalled (one stored permit) whenever a connection registers or unregisters,
    /// so a client directory (Redis broker) can sync without polling.
    pub fn registry_changed(&self) -> &tokio::sync::Notify {
        &self.registry_changed
    }

    /// Calls `f(tenant, client)` for every client with a connection here.
    pub fn for_each_client(&self, mut f: impl FnMut(&Arc<str>, &Arc<str>)) {
        for entry in &self.clients {
            if !entry.value().is_empty() {
                f(&entry.key().0, &entry.key().1);
            }
        }
    }

    /// Whether `client` of `tenant` has a connection here.
    pub fn holds_client(&self, tenant: &str, client: &str) -> bool {
        self.clients
            .get(&(Arc::from(tenant), Arc::from(client)))
            .is_some_and(|l| !l.is_empty())
    }

    /// Queues a `direct` message to every connection of a client. Returns how many got it.
    pub fn deliver_direct(&self, tenant: &str, client: &str, data: &RawValue) -> usize {
        self.deliver_direct_with(tenant, client, data, None)
    }

    /// Like [`Hub::deliver_direct`], running `on_written` after a connection flushed
    /// the frame (the Redis broker XACKs there).
    pub fn deliver_direct_with(
        &self,
        tenant: &str,
        client: &str,
        data: &RawValue,
        on_written: Option<WrittenHook>,
    ) -> usize {
        let key = (Arc::from(tenant), Arc::from(client));
        let Some(list) = self.clients.get(&key).map(|l| l.clone()) else {
            return 0;
        };
        let item = Outgoing {
            frame: encode::direct(data),
            published_at: None,
            on_written,
        };
        list.iter()
            .filter(|c| c.outbox.push(item.clone()).is_ok())
            .count()
    }

    /// Live connections on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Calls `f` for every connection, shard by shard (no global lock).
    pub fn for_each_connection(&self, mut f: impl FnMut(&Connection)) {
        for entry in &self.clients {
            for c in entry.value() {
                f(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Instant;

    fn hub() -> Hub {
        Hub::new("n1", 4, Arc::new(Metrics::new()))
    }

    fn msg(seq: u64) -> Message {
        Message {
            seq,
            epoch: "e".into(),
            data: Arc::from(RawValue::from_string(format!("{{\"n\":{seq}}}")).expect("raw")),
            published_at: Instant::now(),
        }
    }

    fn info(session: SessionId, outbox: &Arc<Outbox>) -> SubscriberInfo {
        SubscriberInfo {
            session,
            outbox: outbox.clone(),
            client: "c".into(),
            principal: "".into(),
        }
    }

    fn drain(o: &Outbox) -> Vec<String> {
        let mut buf = VecDeque::new();
        o.take(&mut buf);
        buf.into_iter()
            .map(|f| f.frame.as_str().to_owned())
            .collect()
    }

    #[test]
    fn encodes_once_and_shares_bytes() {
        let h = hub();
        let key = ChannelKey::new("t", "room:1");
        let (a, b) = (Arc::new(Outbox::new(8)), Arc::new(Outbox::new(8)));
        h.add(&key, info(1, &a));
        h.add(&key, info(2, &b));
        h.activate(&key, 1, vec![], 0);
        h.activate(&key, 2, vec![], 0);
        h.deliver(&key, &msg(1));
        let (mut qa, mut qb) = (VecDeque::new(), VecDeque::new());
        a.take(&mut qa);
        b.take(&mut qb);
        let (fa, fb) = (&qa[0].frame, &qb[0].frame);
        assert_eq!(fa.bytes().as_ptr(), fb.bytes().as_ptr(), "same allocation");
    }

    #[test]
    fn recovery_splices_without_gap_or_duplicate() {
        let h = hub();
        let key = ChannelKey::new("t", "room:1");
        let o = Arc::new(Outbox::new(16));
        h.add(&key, info(1, &o));
        // live messages 3 and 4 arrive while history (up to 3) is being read
        h.deliver(&key, &msg(3));
        h.deliver(&key, &msg(4));
        let head = vec![Outgoing {
            frame: encode::message("room:1", 3, "e", &msg(3).data),
            published_at: None,
            on_written: None,
        }];
        h.activate(&key, 1, head, 3);
        h.deliver(&key, &msg(5));
        let got: Vec<u64> = drain(&o)
            .iter()
            .map(|s| {
                serde_json::from_str::<serde_json::Value>(s).expect("json")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect();
        assert_eq!(got, vec![3, 4, 5]);
    }

    #[test]
    fn slow_subscriber_does_not_hold_back_others() {
        let h = hub();
        let key = ChannelKey::new("t", "room:1");
        let slow = Arc::new(Outbox::new(2));
        let fast = Arc::new(Outbox::new(100));
        h.add(&key, info(1, &slow));
        h.add(&key, info(2, &fast));
        h.activate(&key, 1, vec![], 0);
        h.activate(&key, 2, vec![], 0);
        for s in 1..=10 {
            h.deliver(&key, &msg(s));
        }
        assert!(slow.is_closing());
        assert_eq!(drain(&fast).len(), 10);
        assert_eq!(h.metrics().send_queue_overflows.get(), 1);
    }

    #[test]
    fn remove_and_registry() {
        let h = hub();
        let key = ChannelKey::new("t", "room:1");
        let o = Arc::new(Outbox::new(4));
        assert!(h.add(&key, info(1, &o)));
        assert!(!h.add(&key, info(1, &o)));
        assert!(h.remove(&key, 1));
        assert!(!h.has_subscribers(&key));
        assert!(h.channel_keys().is_empty());
        let (t, c): (Arc<str>, Arc<str>) = ("t".into(), "c".into());
        h.register(
            &t,
            &c,
            Connection {
                session: 7,
                outbox: o.clone(),
                principal: "".into(),
            },
        );
        assert_eq!(h.connection_count(), 1);
        let data = RawValue::from_string("\"hi\"".into()).expect("raw");
        assert_eq!(h.deliver_direct("t", "c", &data), 1);
        assert_eq!(h.deliver_direct("t", "x", &data), 0);
        h.unregister(&t, &c, 7);
        assert_eq!(h.connection_count(), 0);
        assert!(!h.holds_client("t", "c"));
    }
}
