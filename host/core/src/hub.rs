//! Node-local fan-out and connection registry.
//!
//! The hub maps each channel to the local sessions subscribed to it. A message
//! is encoded once per node and the same bytes are queued on every subscriber's
//! [`Outbox`]. A subscriber that is still recovering history holds live messages
//! in a small pending buffer until [`Hub::activate`] splices them after the
//! replayed ones, so recovery has no gap and no duplicate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::backpressure::{Outbox, Outgoing, PushError, WrittenHook};
use crate::broker::events::{BrokerEvents, ClientChanges};
use crate::channel::ChannelKey;
use crate::history::Message;
use crate::metrics::Metrics;
use crate::presence::Delta;
use crate::protocol::encode::{self, PresenceEntry};
use crate::protocol::{CloseCode, Frame};

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
    /// Set by [`Hub::activate`]: the epoch and last seq of the recovery head.
    /// A broker may hand over a live message after the history read that
    /// already returned it (they travel on different connections): such a
    /// message, of this epoch at or below this seq, is dropped. The first
    /// one above it, or of another epoch, clears it.
    floor: Option<(Arc<str>, u64)>,
    /// Subscribed with `"presence":true`: gets `join` / `leave` frames.
    presence: bool,
}

#[derive(Debug, Default)]
struct ChannelSubs {
    subs: Vec<Subscriber>,
    /// Subscribers with `presence` set.
    watchers: usize,
    /// Other nodes' members, kept while `watchers > 0`.
    remote: Option<Box<Remote>>,
}

/// (node, client) of a member on another node.
type MemberKey = (String, String);

/// What this node knows of a watched channel's members on other nodes.
#[derive(Debug, Default)]
struct Remote {
    /// Present members: principal and when last confirmed (delta or read).
    members: HashMap<MemberKey, (String, Instant)>,
    /// Members a delta said left, and when: a presence read started before
    /// that must not bring them back.
    gone: HashMap<MemberKey, Instant>,
    /// A first presence read was applied.
    seeded: bool,
    /// The channel is over `presence_events_max`: no events, no members kept.
    over: bool,
}

impl Remote {
    fn overflow(&mut self) {
        self.members = HashMap::new();
        self.gone = HashMap::new();
        self.seeded = false;
        self.over = true;
    }
}

/// Default of `limits.presence_events_max`.
pub const PRESENCE_EVENTS_MAX: usize = 1000;

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

/// `msg` encoded once for every subscriber of `key`.
fn message_frame(key: &ChannelKey, msg: &Message) -> Outgoing {
    Outgoing {
        frame: encode::message(&key.channel, msg.seq, &msg.epoch, &msg.data),
        published_at: Some(msg.published_at),
        on_written: None,
    }
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
    client_changes: ClientChanges,
    presence_max: AtomicUsize,
    presence_wanted: tokio::sync::Notify,
}

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
            client_changes: ClientChanges::default(),
            presence_max: AtomicUsize::new(PRESENCE_EVENTS_MAX),
            presence_wanted: tokio::sync::Notify::new(),
        }
    }

    /// Sets `limits.presence_events_max`: channels with more subscribers send
    /// no presence events.
    pub fn set_presence_events_max(&self, max: usize) {
        self.presence_max.store(max, Ordering::Relaxed);
    }

    /// `limits.presence_events_max`.
    pub fn presence_events_max(&self) -> usize {
        self.presence_max.load(Ordering::Relaxed)
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
        self.deliver_skipping(key, msg, None);
    }

    /// [`Hub::deliver`] to every local subscriber but session `skip` (the
    /// publisher of a `"skipSelf":true` publish, when it is on this node).
    pub fn deliver_skipping(&self, key: &ChannelKey, msg: &Message, skip: Option<SessionId>) {
        if !self.channels.contains_key(key) {
            return;
        }
        self.deliver_with(
            key,
            Some(&msg.epoch),
            msg.seq,
            message_frame(key, msg),
            false,
            skip,
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
        self.deliver_traced_skipping(key, msg, trace, None);
    }

    /// [`Hub::deliver_traced`] that leaves out session `skip` ([`Hub::deliver_skipping`]).
    pub fn deliver_traced_skipping(
        &self,
        key: &ChannelKey,
        msg: &Message,
        trace: Option<crate::telemetry::TraceParent>,
        skip: Option<SessionId>,
    ) {
        let _span = match trace {
            Some(tp) if crate::telemetry::enabled() && self.channels.contains_key(key) => {
                crate::telemetry::deliver_span(tp, &key.tenant, &key.channel, msg.seq)
            }
            _ => None,
        };
        self.deliver_skipping(key, msg, skip);
    }

    /// Queues an encoded frame at position `seq` (a message seq or a document
    /// version) on every local subscriber of `key`; recovering subscribers hold
    /// it for the splice in [`Hub::activate`].
    pub fn deliver_outgoing(&self, key: &ChannelKey, seq: u64, item: Outgoing) {
        self.deliver_with(key, None, seq, item, false, None);
    }

    /// Queues `item` (at `seq` of `epoch`; a document version has no epoch)
    /// on every subscriber of `key` but `skip`.
    fn deliver_with(
        &self,
        key: &ChannelKey,
        epoch: Option<&Arc<str>>,
        seq: u64,
        item: Outgoing,
        replay: bool,
        skip: Option<SessionId>,
    ) {
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return;
        };
        // Session ids start at 1: 0 matches nobody, so a delivery without
        // `skipSelf` pays one integer comparison per subscriber.
        let skip = skip.unwrap_or(0);
        let mut ch = entry.lock();
        for sub in &mut ch.subs {
            if sub.session == skip {
                continue;
            }
            if let Some((floor_epoch, floor_seq)) = &sub.floor {
                if epoch.is_some_and(|e| e == floor_epoch) && seq <= *floor_seq {
                    // Already in its recovery head.
                    continue;
                }
                sub.floor = None;
            }
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
        self.add_watching(key, info, false)
    }

    /// [`Hub::add`]; with `presence` the subscriber also gets the channel's
    /// `join` / `leave` frames. The channel's watchers get a `join` when this
    /// is the client's first subscription to it on this node.
    pub fn add_watching(&self, key: &ChannelKey, info: SubscriberInfo, presence: bool) -> bool {
        let entry = self.channels.entry(key.clone()).or_default().clone();
        let mut ch = entry.lock();
        if ch.subs.iter().any(|s| s.session == info.session) {
            return false;
        }
        let max = self.presence_events_max();
        // Only a watched channel within the bound pays for the client scan.
        let announce = ch.watchers > 0
            && ch.subs.len() < max
            && !ch.subs.iter().any(|s| s.client == info.client);
        let event = announce.then(|| PresenceEntry {
            client: info.client.to_string(),
            principal: info.principal.to_string(),
            node: self.node_id.to_string(),
        });
        let session = info.session;
        ch.subs.push(Subscriber {
            session: info.session,
            outbox: info.outbox,
            client: info.client,
            principal: info.principal,
            pending: Some(Vec::new()),
            floor: None,
            presence,
        });
        if presence {
            ch.watchers += 1;
            if ch.remote.is_none() {
                ch.remote = Some(Box::default());
                self.presence_wanted.notify_one();
            }
        }
        if let Some(e) = event
            && within(&ch, max)
        {
            let frame = encode::presence_event(true, &key.channel, &e);
            self.emit(&mut ch, &frame, Some(session));
        }
        true
    }

    /// Queues a presence frame on the channel's watchers (but `except`).
    fn emit(&self, ch: &mut ChannelSubs, frame: &Frame, except: Option<SessionId>) {
        let item = Outgoing {
            frame: frame.clone(),
            published_at: None,
            on_written: None,
        };
        for sub in ch.subs.iter_mut().filter(|s| s.presence) {
            if Some(sub.session) == except {
                continue;
            }
            match &mut sub.pending {
                // After the `subscribed` reply and whatever it replays.
                Some(buf) if buf.len() < self.pending_limit => buf.push((u64::MAX, item.clone())),
                Some(_) => {
                    sub.outbox.close(CloseCode::SlowConsumer, false);
                    self.metrics.send_queue_overflows.inc();
                }
                None => {
                    if let Err(PushError::Full) = sub.outbox.push(item.clone()) {
                        self.metrics.send_queue_overflows.inc();
                    }
                }
            }
        }
    }

    /// Applies another node's [`Delta`] to channel `key` (a no-op unless the
    /// channel has local watchers) and sends the `join` / `leave` frames of the
    /// members it really changes.
    pub fn presence_remote(&self, key: &ChannelKey, delta: &Delta) {
        if *delta.node == *self.node_id {
            return;
        }
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return;
        };
        let mut ch = entry.lock();
        if ch.watchers == 0 {
            return;
        }
        let max = self.presence_events_max();
        let local = ch.subs.len();
        let Some(r) = ch.remote.as_deref_mut() else {
            return;
        };
        if r.over {
            return;
        }
        let now = Instant::now();
        let mut events = Vec::new();
        for (client, principal) in &delta.joins {
            let k = (delta.node.clone(), client.clone());
            r.gone.remove(&k);
            let prev = r.members.insert(k, (principal.clone(), now));
            if prev.is_none_or(|(p, _)| p != *principal) {
                events.push((true, client.clone(), principal.clone()));
            }
        }
        for client in &delta.leaves {
            let k = (delta.node.clone(), client.clone());
            if let Some((principal, _)) = r.members.remove(&k) {
                events.push((false, client.clone(), principal));
            }
            r.gone.insert(k, now);
        }
        if local + r.members.len() > max {
            r.overflow();
            return;
        }
        self.emit_events(&mut ch, &key.channel, &delta.node, events);
    }

    fn emit_events(
        &self,
        ch: &mut ChannelSubs,
        channel: &str,
        node: &str,
        events: Vec<(bool, String, String)>,
    ) {
        for (join, client, principal) in events {
            let e = PresenceEntry {
                client,
                principal,
                node: node.to_owned(),
            };
            self.emit(ch, &encode::presence_event(join, channel, &e), None);
        }
    }

    /// Diffs a presence read of `key` (`list`, requested at `started`) against
    /// the other nodes' members this node knows, and sends the `join` /
    /// `leave` frames of the differences: a member a delta confirmed after
    /// `started` is kept, one a delta removed after `started` is not brought
    /// back. The first read after the channel got watchers only learns (no
    /// `join`s). Over `presence_events_max` members the channel is marked
    /// over: no events and no member state until a read finds it within the
    /// bound again (learning silently, so no burst follows).
    pub fn presence_reconcile(&self, key: &ChannelKey, list: &[PresenceEntry], started: Instant) {
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return;
        };
        let mut ch = entry.lock();
        if ch.watchers == 0 {
            return;
        }
        let max = self.presence_events_max();
        let local = ch.subs.len();
        let node_id = self.node_id.clone();
        let Some(r) = ch.remote.as_deref_mut() else {
            return;
        };
        let remote: Vec<&PresenceEntry> = list.iter().filter(|e| *e.node != *node_id).collect();
        if local + remote.len() > max {
            r.overflow();
            return;
        }
        let joins_silent = !r.seeded || r.over;
        let leaves_silent = r.over;
        r.over = false;
        r.seeded = true;
        let mut events: Vec<(String, bool, String, String)> = Vec::new();
        let mut present: HashSet<MemberKey> = HashSet::with_capacity(remote.len());
        for e in remote {
            let k = (e.node.clone(), e.client.clone());
            if r.gone.get(&k).is_some_and(|t| *t >= started) || !present.insert(k.clone()) {
                continue;
            }
            match r.members.get_mut(&k) {
                Some(m) if m.1 < started => *m = (e.principal.clone(), started),
                Some(_) => {}
                None => {
                    r.members.insert(k, (e.principal.clone(), started));
                    if !joins_silent {
                        events.push((e.node.clone(), true, e.client.clone(), e.principal.clone()));
                    }
                }
            }
        }
        r.members.retain(|k, (principal, at)| {
            let keep = present.contains(k) || *at >= started;
            if !keep && !leaves_silent {
                events.push((k.0.clone(), false, k.1.clone(), principal.clone()));
            }
            keep
        });
        r.gone.retain(|_, t| *t >= started);
        for (node, join, client, principal) in events {
            let e = PresenceEntry {
                client,
                principal,
                node,
            };
            self.emit(
                &mut ch,
                &encode::presence_event(join, &key.channel, &e),
                None,
            );
        }
    }

    /// Channels with local presence watchers (`unseeded`: only those whose
    /// other nodes' members are not known yet).
    pub fn presence_watched(&self, unseeded: bool) -> Vec<ChannelKey> {
        let entries: Vec<(ChannelKey, Arc<Mutex<ChannelSubs>>)> = self
            .channels
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        entries
            .into_iter()
            .filter(|(_, e)| {
                let ch = e.lock();
                ch.watchers > 0
                    && ch
                        .remote
                        .as_ref()
                        .is_some_and(|r| !unseeded || (!r.seeded && !r.over))
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Signalled when a channel gets its first local presence watcher.
    pub fn presence_wanted(&self) -> &tokio::sync::Notify {
        &self.presence_wanted
    }

    /// Ends recovery: queues `head` (the `subscribed` reply and replayed messages),
    /// then the live messages held meanwhile whose seq is above `last_seq`.
    /// With `epoch` (a message channel's), a live message of that epoch at or
    /// below `last_seq` that arrives later still is dropped too: the broker's
    /// history read can overtake its live feed.
    pub fn activate(
        &self,
        key: &ChannelKey,
        session: SessionId,
        head: Vec<Outgoing>,
        epoch: Option<&Arc<str>>,
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
        sub.floor = epoch.map(|e| (e.clone(), last_seq));
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

    /// Removes a subscriber. Returns whether it was subscribed. The channel's
    /// watchers get a `leave` when it was the client's last subscription to
    /// the channel on this node.
    pub fn remove(&self, key: &ChannelKey, session: SessionId) -> bool {
        let Some(entry) = self.channels.get(key).map(|e| e.value().clone()) else {
            return false;
        };
        let (found, empty) = {
            let mut ch = entry.lock();
            let found = match ch.subs.iter().position(|s| s.session == session) {
                Some(i) => {
                    let before = ch.subs.len();
                    let sub = ch.subs.remove(i);
                    if sub.presence {
                        ch.watchers -= 1;
                        if ch.watchers == 0 {
                            ch.remote = None;
                        }
                    }
                    let max = self.presence_events_max();
                    // Counted with the leaver, as its join was.
                    if ch.watchers > 0
                        && before <= max
                        && within_with(&ch, max, 1)
                        && !ch.subs.iter().any(|s| s.client == sub.client)
                    {
                        let e = PresenceEntry {
                            client: sub.client.to_string(),
                            principal: sub.principal.to_string(),
                            node: self.node_id.to_string(),
                        };
                        let frame = encode::presence_event(false, &key.channel, &e);
                        self.emit(&mut ch, &frame, None);
                    }
                    true
                }
                None => false,
            };
            (found, ch.subs.is_empty())
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
        self.client_changes.note(key);
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
            self.client_changes.note(key);
        }
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
        self.on_direct(tenant, client, data, None)
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

/// What the cross-node brokers deliver to, and read from, this node.
impl BrokerEvents for Hub {
    fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn on_publication(
        &self,
        key: &ChannelKey,
        msg: &Message,
        trace: Option<crate::telemetry::TraceParent>,
        skip: Option<SessionId>,
    ) {
        self.deliver_traced_skipping(key, msg, trace, skip);
    }

    fn on_catch_up(&self, key: &ChannelKey, msg: &Message) {
        self.deliver_with(
            key,
            Some(&msg.epoch),
            msg.seq,
            message_frame(key, msg),
            true,
            None,
        );
    }

    fn on_direct(
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

    fn on_presence(&self, key: &ChannelKey, delta: &Delta) {
        self.presence_remote(key, delta);
    }

    fn has_subscribers(&self, key: &ChannelKey) -> bool {
        Hub::has_subscribers(self, key)
    }

    fn holds_client(&self, tenant: &str, client: &str) -> bool {
        Hub::holds_client(self, tenant, client)
    }

    fn local_presence(&self, key: &ChannelKey) -> Vec<PresenceEntry> {
        Hub::local_presence(self, key)
    }

    fn presence_events_max(&self) -> usize {
        Hub::presence_events_max(self)
    }

    fn client_changes(&self) -> &ClientChanges {
        &self.client_changes
    }

    fn for_each_client(&self, f: &mut dyn FnMut(&Arc<str>, &Arc<str>)) {
        Hub::for_each_client(self, f);
    }
}

/// Whether a channel's presence events are within `presence_events_max`:
/// local sessions plus the other nodes' members this node knows, and not
/// marked over.
fn within(ch: &ChannelSubs, max: usize) -> bool {
    within_with(ch, max, 0)
}

fn within_with(ch: &ChannelSubs, max: usize, extra: usize) -> bool {
    let (remote, over) = ch
        .remote
        .as_ref()
        .map_or((0, false), |r| (r.members.len(), r.over));
    !over && ch.subs.len() + remote + extra <= max
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
        h.activate(&key, 1, vec![], None, 0);
        h.activate(&key, 2, vec![], None, 0);
        h.deliver(&key, &msg(1));
        let (mut qa, mut qb) = (VecDeque::new(), VecDeque::new());
        a.take(&mut qa);
        b.take(&mut qb);
        let (fa, fb) = (&qa[0].frame, &qb[0].frame);
        assert_eq!(fa.bytes().as_ptr(), fb.bytes().as_ptr(), "same allocation");
    }

    /// A recovery head replaying message `seq` of epoch "e" on `room:1`.
    fn replayed(seq: u64) -> Vec<Outgoing> {
        vec![Outgoing {
            frame: encode::message("room:1", seq, "e", &msg(seq).data),
            published_at: None,
            on_written: None,
        }]
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        drain(o)
            .iter()
            .map(|s| {
                serde_json::from_str::<serde_json::Value>(s).expect("json")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect()
    }

    #[test]
    fn a_live_message_that_arrives_after_the_history_that_held_it_is_dropped() {
        let h = hub();
        let key = ChannelKey::new("t", "room:1");
        let o = Arc::new(Outbox::new(16));
        h.add(&key, info(1, &o));
        let head = replayed(3);
        h.activate(&key, 1, head, Some(&"e".into()), 3);
        // 2 and 3 come live only now: the history read overtook them.
        h.deliver(&key, &msg(2));
        h.deliver(&key, &msg(3));
        h.deliver(&key, &msg(4));
        h.deliver(&key, &msg(4));
        assert_eq!(
            seqs(&o),
            vec![3, 4, 4],
            "the floor is gone after the first newer one"
        );
    }

    #[test]
    fn another_epoch_after_recovery_is_delivered_from_seq_1() {
        let h = hub();
        let key = ChannelKey::new("t", "room:1");
        let o = Arc::new(Outbox::new(16));
        h.add(&key, info(1, &o));
        h.activate(&key, 1, vec![], Some(&"old".into()), 5);
        h.deliver(&key, &msg(1)); // epoch "e": a new epoch
        h.deliver(&key, &msg(2));
        assert_eq!(seqs(&o), vec![1, 2]);
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
        let head = replayed(3);
        h.activate(&key, 1, head, Some(&"e".into()), 3);
        h.deliver(&key, &msg(5));
        assert_eq!(seqs(&o), vec![3, 4, 5]);
    }

    #[test]
    fn slow_subscriber_does_not_hold_back_others() {
        let h = hub();
        let key = ChannelKey::new("t", "room:1");
        let slow = Arc::new(Outbox::new(2));
        let fast = Arc::new(Outbox::new(100));
        h.add(&key, info(1, &slow));
        h.add(&key, info(2, &fast));
        h.activate(&key, 1, vec![], None, 0);
        h.activate(&key, 2, vec![], None, 0);
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
