//! The typed event stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::document::DocumentChange;
use crate::error::Error;

/// Why the client waits before the next connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    /// Exponential backoff with jitter after a lost connection or a failed attempt.
    Backoff,
    /// The node announced a drain (`SERVER_SHUTDOWN {reconnectIn}`, close 1001).
    ServerShutdown,
}

/// Why a channel was (re)subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeCause {
    /// The first subscribe.
    New,
    /// Resubscribed on a new connection.
    Reconnect,
    /// Resubscribed because a live stream skipped a seq (or a document a version).
    Gap,
}

/// A presence change (`subscribe` with presence events on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    /// A client subscribed.
    Join,
    /// A client left.
    Leave,
}

/// Everything the gateway and the connection tell the app, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connection is open (`welcome` received); subscriptions and documents
    /// are being resumed, unacknowledged publishes resent.
    Connected {
        /// Session id of this connection.
        session: String,
        /// The client id (given, or assigned by the first `welcome`).
        client: String,
        /// Node that serves it.
        node: String,
        /// Not the first connection of this client.
        reconnected: bool,
    },
    /// The connection ended (close code and reason; 1006 when it broke).
    Disconnected {
        /// WebSocket close code (1006: no close frame; heartbeat timeout).
        code: u16,
        /// Close reason.
        reason: String,
        /// Whether the client will reconnect.
        will_reconnect: bool,
    },
    /// The next connect attempt is planned after `delay`.
    Reconnecting {
        /// Failed attempts so far (0 after a drain).
        attempt: u32,
        /// How long the client waits.
        delay: Duration,
        /// Backoff or a drain.
        reason: ReconnectReason,
    },
    /// A `subscribed` reply for a channel or document.
    Subscribed {
        /// The channel.
        channel: String,
        /// Its epoch.
        epoch: String,
        /// Latest seq (message channel) or version (document) at subscribe time.
        seq: u64,
        /// The missed messages or patches follow (`since` was honoured).
        recovered: bool,
        /// There was a position to resume from. `resumed && !recovered`: what
        /// happened meanwhile is lost, reload the channel's state.
        resumed: bool,
        /// A document channel.
        document: bool,
        /// Why it was subscribed.
        cause: SubscribeCause,
    },
    /// A channel message, delivered in seq order with no duplicate.
    Message {
        /// The channel.
        channel: String,
        /// Its seq (rises by one per channel).
        seq: u64,
        /// Its epoch.
        epoch: String,
        /// The published JSON.
        data: Value,
    },
    /// The channel's history was lost while subscribed (a new epoch): the
    /// `Message` that follows starts the new epoch.
    EpochChanged {
        /// The channel.
        channel: String,
        /// The new epoch.
        epoch: String,
    },
    /// A message to this client alone (`POST /api/send`).
    Direct {
        /// The sent JSON.
        data: Value,
    },
    /// A client joined or left a channel (presence events).
    Presence {
        /// The channel.
        channel: String,
        /// Join or leave.
        change: PresenceChange,
        /// The client id.
        client: String,
        /// Its principal (empty for anonymous clients).
        principal: String,
        /// Its node.
        node: String,
    },
    /// A document snapshot or patch (apply it with [`LwwMap`](crate::LwwMap)).
    Document(DocumentChange),
    /// Something failed that no call waits for: a connect attempt, a refused
    /// subscribe (`channel` set), an unsolicited error frame, a bad frame.
    Error {
        /// The channel it concerns, if any.
        channel: Option<String>,
        /// What happened.
        error: Error,
    },
    /// The client stopped for good (after [`Client::close`](crate::Client::close),
    /// a refusal, or when it gave up); no event follows.
    Closed {
        /// Why, unless closed by the app.
        error: Option<Error>,
    },
}

/// The receiving end of a client's events (unbounded: read it).
///
/// Also a [`futures_util::Stream`] of [`Event`].
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the client stopped and all were read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event that `f` maps to `Some`, skipping the others; `None`
    /// when the stream ended first.
    pub async fn wait_for<T>(&mut self, mut f: impl FnMut(&Event) -> Option<T>) -> Option<T> {
        while let Some(e) = self.rx.recv().await {
            if let Some(t) = f(&e) {
                return Some(t);
            }
        }
        None
    }

    /// An event already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
