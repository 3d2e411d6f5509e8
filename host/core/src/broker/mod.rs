//! The broker seam: sequencing, history, recovery and cross-node delivery.
//!
//! A broker assigns each channel's `seq`, keeps history for recovery and hands
//! every published message to every node that watches the channel, through
//! that node's [`events::BrokerEvents`] (the hub). The embedded
//! [`memory::MemoryBroker`] serves one node; `switchyard-redis` and
//! `switchyard-nats` implement the same trait across nodes.

pub mod events;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::channel::ChannelKey;
use crate::history::Recovery;
use crate::protocol::StreamPosition;
use crate::protocol::encode::PresenceEntry;

/// Per-tenant channel settings the broker needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Messages kept per channel.
    pub history_size: usize,
    /// How long they are kept.
    pub history_ttl: Duration,
    /// `msgId` dedupe window (entries per channel).
    pub dedupe_window: usize,
    /// The channel's `channel_limits` entry: one token bucket for all its
    /// publishers together, kept by the broker (cluster-wide with Redis).
    pub limit: Option<ChannelLimit>,
}

/// A channel's shared publish budget: `rate` per second, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimit {
    /// Messages per second.
    pub rate: u32,
    /// Bucket capacity.
    pub burst: u32,
}

impl ChannelLimit {
    /// The wait suggested to a writer refused by an empty bucket: one token's
    /// refill time.
    pub fn retry_after_ms(&self) -> u64 {
        1000 / u64::from(self.rate.max(1)) + 1
    }
}

/// Outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Seq assigned (for a duplicate: the seq first assigned).
    pub seq: u64,
    /// Channel epoch.
    pub epoch: Arc<str>,
    /// The `msgId` was seen before; nothing was delivered.
    pub duplicate: bool,
    /// Over the channel's limit (`ChannelOptions::limit`): nothing was
    /// published; retry after this many ms.
    pub limited: Option<u64>,
}

/// Broker failures. Each maps to a protocol `error` code or HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached (`unavailable`, HTTP 503). For a
    /// write the outcome may be unknown (the call was sent, the answer was
    /// lost): callers retry with the same message id.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// No node holds the addressed client (HTTP 404).
    #[error("client not connected")]
    NotFound,
    /// Anything else.
    #[error("broker error: {0}")]
    Internal(String),
}

/// Broker health as shown by `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerHealth {
    /// Serving.
    Up,
    /// Not serving (reconnecting).
    Down,
}

/// What travels with a publish besides its channel, data and options.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishMeta<'a> {
    /// Dedupe id (`msgId`): a repeat within the window is acked with the
    /// first one's seq and not delivered again.
    pub msg_id: Option<&'a str>,
    /// The publish span's context, carried with the message.
    pub trace: Option<crate::telemetry::TraceParent>,
    /// A session of this node that is not to get the message (`skipSelf`).
    pub skip: Option<crate::hub::SessionId>,
}

impl<'a> PublishMeta<'a> {
    /// Just a dedupe id.
    pub fn msg_id(msg_id: Option<&'a str>) -> Self {
        Self {
            msg_id,
            ..Self::default()
        }
    }
}

/// Sequencing, history and fan-out across nodes.
///
/// `watch`/`unwatch` are called once per local subscription (the broker keeps
/// the count); `watch` returns once live messages for the channel reach this
/// node's hub, so a subscriber that then asks for [`Broker::recover`] misses nothing.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Short name for logs and metrics (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Publishes on a channel: dedupes by `meta.msg_id`, takes a token from
    /// the channel's limit (`opts.limit`; when empty: `Published::limited`,
    /// nothing published), assigns the next seq, records history and delivers
    /// to every watching node — with `meta.trace` carried along (so the
    /// delivering nodes' `deliver` spans join the publish's trace) and, when
    /// `meta.skip` names a session of this node (`"skipSelf":true`), to
    /// everyone but that session (history and recovery keep the message for
    /// all). A broker that cannot carry a trace or a skip publishes without.
    async fn publish(
        &self,
        key: &ChannelKey,
        data: Arc<RawValue>,
        opts: &ChannelOptions,
        meta: PublishMeta<'_>,
    ) -> Result<Published, BrokerError>;

    /// How often a node with presence watchers re-reads the presence of their
    /// channels to find what deltas missed — above all the `leave`s of a node
    /// that died, whose entries expire after `presence_ttl`
    /// ([`crate::presence`]). `None` (the default): this broker serves one
    /// node, the hub sees every change itself.
    fn presence_reconcile_interval(&self) -> Option<Duration> {
        None
    }

    /// Current epoch and seq, plus missed messages after `since` when still in history.
    async fn recover(
        &self,
        key: &ChannelKey,
        since: Option<&StreamPosition>,
        opts: &ChannelOptions,
    ) -> Result<Recovery, BrokerError>;

    /// A local subscription to `key` begins.
    async fn watch(&self, key: &ChannelKey) -> Result<(), BrokerError>;

    /// A local subscription to `key` ended.
    async fn unwatch(&self, key: &ChannelKey);

    /// Delivers `data` to client `client` of `tenant` on whichever node holds it.
    async fn send_direct(
        &self,
        tenant: &str,
        client: &str,
        data: Arc<RawValue>,
    ) -> Result<(), BrokerError>;

    /// Clients present in a channel across nodes.
    async fn presence(&self, key: &ChannelKey) -> Result<Vec<PresenceEntry>, BrokerError>;

    /// Where document channels keep their state when this broker is used;
    /// `None` = the embedded [`MemoryDocumentLog`](crate::document::log::MemoryDocumentLog).
    fn document_log(&self) -> Option<Arc<dyn crate::document::log::DocumentLog>> {
        None
    }

    /// Health for readiness.
    fn health(&self) -> BrokerHealth {
        BrokerHealth::Up
    }

    /// Stops background work (drain).
    async fn shutdown(&self) {}
}
