//! How a broker reaches the node it serves: [`BrokerEvents`], implemented by
//! the [`Hub`](crate::hub::Hub) (as centrifuge's `BrokerEventHandler`).
//!
//! Every broker (memory, Redis, NATS) is handed an `Arc<dyn BrokerEvents>`
//! when it is created and needs nothing else from the node: it calls the
//! `on_*` hooks with what it delivers (from the other nodes, or — the memory
//! broker — from this one), and reads the node-local state it mirrors into
//! the broker (who is subscribed, which clients are connected here).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::backpressure::WrittenHook;
use crate::channel::ChannelKey;
use crate::history::Message;
use crate::hub::SessionId;
use crate::metrics::Metrics;
use crate::presence::Delta;
use crate::protocol::encode::PresenceEntry;
use crate::telemetry::TraceParent;

/// A client as the directory knows it: (tenant, client id).
pub type ClientKey = (Arc<str>, Arc<str>);

/// What a broker tells the node, and what it asks about it. Every hook is
/// synchronous and cheap (it queues frames, it never waits on a socket), so a
/// broker may call it from its reader task for every message.
pub trait BrokerEvents: Send + Sync + std::fmt::Debug + 'static {
    /// This node's id: how the broker names it to the other nodes (skip
    /// lists, presence entries, the client directory, inboxes).
    fn node_id(&self) -> &Arc<str>;

    /// The node's metrics, for the broker's own series.
    fn metrics(&self) -> &Arc<Metrics>;

    /// A live message of `key`, as every node watching it receives it. Runs
    /// when the broker's reader gets it, in channel order. Queued once for
    /// every local subscriber but session `skip` (the publisher of a
    /// `"skipSelf":true` publish, when it is on this node); with `trace` and
    /// tracing on, inside one `deliver` span per message and node.
    fn on_publication(
        &self,
        key: &ChannelKey,
        msg: &Message,
        trace: Option<TraceParent>,
        skip: Option<SessionId>,
    );

    /// A message this node missed while its broker connection was down,
    /// replayed after it came back, in order. Queued under reply flow control
    /// (a catch-up burst can be longer than a delivery queue, and must not
    /// close subscribers that read).
    fn on_catch_up(&self, key: &ChannelKey, msg: &Message);

    /// A directed message for `client` of `tenant` (`/api/send`). Returns how
    /// many of its connections here queued it: 0 means none (the broker then
    /// routes it to the node the directory names, or keeps it). `on_written`
    /// runs once a connection flushed it (where a broker acknowledges it).
    fn on_direct(
        &self,
        tenant: &str,
        client: &str,
        data: &RawValue,
        on_written: Option<WrittenHook>,
    ) -> usize;

    /// Another node's presence change for `key`: the `join`/`leave` frames of
    /// the members it really changes go to local presence watchers. A delta
    /// from this node itself is ignored.
    fn on_presence(&self, key: &ChannelKey, delta: &Delta);

    /// Whether `key` has a local subscriber (a broker may stop listening to a
    /// channel nobody here wants).
    fn has_subscribers(&self, key: &ChannelKey) -> bool;

    /// Whether `client` of `tenant` has a connection here.
    fn holds_client(&self, tenant: &str, client: &str) -> bool;

    /// Who is subscribed to `key` on this node, as presence entries.
    fn local_presence(&self, key: &ChannelKey) -> Vec<PresenceEntry>;

    /// `limits.presence_events_max`: beyond this many members a channel sends
    /// no presence events (a broker need not publish its deltas either).
    fn presence_events_max(&self) -> usize;

    /// The feed of client (un)registrations, for a broker that keeps a client
    /// directory (which node holds which client).
    fn client_changes(&self) -> &ClientChanges;

    /// Calls `f(tenant, client)` for every client with a connection here (a
    /// directory's full resync).
    fn for_each_client(&self, f: &mut dyn FnMut(&Arc<str>, &Arc<str>));
}

/// Clients that registered or unregistered, collected for a client directory
/// between two of its syncs. Off (nothing kept) until [`ClientChanges::track`];
/// bounded by [`ClientChanges::MAX`] (beyond it: "too many, rescan").
#[derive(Debug, Default)]
pub struct ClientChanges {
    tracking: AtomicBool,
    touched: Mutex<Touched>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Touched {
    clients: HashSet<ClientKey>,
    overflow: bool,
}

impl ClientChanges {
    /// Beyond this many changed clients, [`ClientChanges::take`] reports an overflow.
    pub const MAX: usize = 65_536;

    /// Starts keeping the changed clients (a broker with a directory calls it once).
    pub fn track(&self) {
        self.tracking.store(true, Ordering::Relaxed);
    }

    /// Clients that (un)registered since the last call; `None` when more than
    /// [`ClientChanges::MAX`] did (scan them all instead).
    pub fn take(&self) -> Option<Vec<ClientKey>> {
        let mut t = self.touched.lock();
        if std::mem::take(&mut t.overflow) {
            t.clients.clear();
            return None;
        }
        Some(t.clients.drain().collect())
    }

    /// Signalled (one stored permit) on every change, so a directory syncs
    /// without polling.
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// `client` registered or unregistered (called by the hub).
    pub fn note(&self, client: ClientKey) {
        if self.tracking.load(Ordering::Relaxed) {
            let mut t = self.touched.lock();
            if t.clients.len() >= Self::MAX {
                t.overflow = true;
                t.clients = HashSet::new();
            } else if !t.overflow {
                t.clients.insert(client);
            }
        }
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> ClientKey {
        (Arc::from("t"), Arc::from(c))
    }

    #[test]
    fn nothing_is_kept_until_tracking_starts() {
        let c = ClientChanges::default();
        c.note(key("a"));
        assert_eq!(c.take(), Some(vec![]));
        c.track();
        c.note(key("b"));
        c.note(key("b"));
        assert_eq!(c.take(), Some(vec![key("b")]));
        assert_eq!(c.take(), Some(vec![]), "taken once");
    }

    #[test]
    fn too_many_changes_ask_for_a_rescan_once() {
        let c = ClientChanges::default();
        c.track();
        for i in 0..=ClientChanges::MAX {
            c.note(key(&i.to_string()));
        }
        assert_eq!(c.take(), None, "overflow: rescan");
        c.note(key("x"));
        assert_eq!(c.take(), Some(vec![key("x")]), "back to a list");
    }

    #[tokio::test]
    async fn a_change_wakes_the_directory_even_before_it_waits() {
        let c = ClientChanges::default();
        c.note(key("a"));
        // The permit is stored: this returns at once (the bound only keeps a
        // broken build from hanging the suite).
        tokio::time::timeout(std::time::Duration::from_secs(10), c.changed().notified())
            .await
            .expect("the change before the wait was kept");
    }
}
