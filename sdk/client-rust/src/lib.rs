//! Rust client for the [Switchyard](https://example.invalid/switchyard)
//! realtime gateway, protocol v1 (`docs/protocol.md`), on tokio and
//! tokio-tungstenite.
//!
//! One [`Client`] is one logical connection that survives reconnects and node
//! drains:
//!
//! - **Resume**: each channel's last `epoch`/`seq` is kept and the channel is
//!   resubscribed with `since` on every new connection; the missed messages are
//!   replayed in order, duplicates dropped, and a gap in a live stream
//!   resubscribes. [`Event::Subscribed`] says whether the gateway could
//!   recover (`recovered: false` after a resume: reload the channel's state).
//! - **Publishes applied once**: every publish carries a `msgId` (a UUID)
//!   that is resent unchanged when the publish is retried after a reconnect;
//!   the gateway acknowledges a repeat with the original seq.
//! - **Documents** (state sync): [`Client::document`] subscribes to a
//!   document channel, [`Event::Document`] carries the snapshot and the
//!   patches in version order, [`LwwMap`] applies them for the built-in
//!   last-writer-wins map, [`Client::patch`] sends binary `StatePatch` frames;
//!   a reconnect resumes by `{epoch, version}`.
//! - **Reconnect** with the seed's exponential backoff and jitter
//!   ([`Backoff`]), on an injectable [`Clock`] and [`Random`];
//!   `SERVER_SHUTDOWN {reconnectIn}` + close 1001 reconnects after
//!   `reconnectIn` plus up to 40 % jitter; 401/403 and close 4001/4003 stop.
//! - **Heartbeat**: WebSocket pings are answered; after a quiet heartbeat an
//!   application `ping` must come back in time, or the connection is treated
//!   as dead and replaced.
//!
//! ```no_run
//! use serde_json::json;
//! use switchyard_client::{Client, Event, LwwMap, Options};
//!
//! # async fn run() -> Result<(), switchyard_client::Error> {
//! let (client, mut events) = Client::connect(
//!     Options::new("ws://127.0.0.1:8080/ws").token("secret").client_id("worker-1"),
//! )
//! .await?;
//! client.subscribe("room:1").await?;
//! client.document("doc:1").await?;
//! client.publish("room:1", json!({"text": "hello"})).await?;
//! client.patch("doc:1", &json!({"title": "Plans"})).await?;
//!
//! let mut doc = LwwMap::default();
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message { channel, seq, data, .. } => println!("{channel} #{seq} {data}"),
//!         Event::Document(change) => {
//!             doc.apply(&change)?;
//!             println!("doc v{:?}: {}", doc.version(), doc.to_value());
//!         }
//!         Event::Subscribed { channel, resumed: true, recovered: false, .. } => {
//!             println!("{channel}: messages were lost while away, reload");
//!         }
//!         Event::Direct { data } => println!("direct: {data}"),
//!         Event::Closed { .. } => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod backoff;
mod client;
mod document;
mod error;
mod event;
mod positions;

pub use backoff::{
    Backoff, Clock, FakeClock, MAX_SHUTDOWN_DELAY, Random, SequenceRandom, Sleep, ThreadRandom,
    TokioClock,
};
pub use client::{Ack, Client, Options, PresenceEntry, PublishOptions, Stats, Subscribed, Welcome};
pub use document::{DocumentChange, DocumentKind, LwwMap, apply_lww, decode_lww, encode_lww};
pub use error::{Error, Result};
pub use event::{Event, Events, PresenceChange, ReconnectReason, SubscribeCause};
pub use positions::Position;
