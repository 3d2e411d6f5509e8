//! Transport-agnostic session: protocol v1 command handling for one client.
//!
//! A transport (WebSocket, SSE, long-poll) feeds inbound frames to a [`Handler`]
//! and writes whatever the session's [`Outbox`] yields. The session never
//! touches a socket, so its logic is tested without one.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::backpressure::{Outbox, Outgoing, Strikes, TokenBucket};
use crate::broker::BrokerError;
use crate::channel::{self, ChannelKey};
use crate::document::DocPosition;
use crate::document::frame::{self, StatePatch};
use crate::hub::{Connection, SessionId, SubscriberInfo};
use crate::node::Node;
use crate::policy::{Denial, Principal, RateDecision, RateKey};
use crate::protocol::{
    self, CloseCode, Command, CommandId, ErrorCode, Frame, ParseError, StreamPosition, encode,
};
use crate::publish::{self, PublishError};
use crate::refusal::Refusal;
use crate::tenant::Tenant;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message as _;
use serde_json::value::RawValue;

/// A transport's own wire format on top of protocol v1 (e.g. y-websocket):
/// rewrites the frames a session queues into what the peer understands. Runs
/// on the connection's writer, once per frame.
pub trait WireFormat: Send + Sync {
    /// The `transport` label of this connection's delivery metrics
    /// (`switchyard_publish_to_deliver_seconds{transport}`), e.g. `"yjs"`.
    fn transport(&self) -> &'static str;
    /// The frame to send for `frame` (`None` = nothing is sent).
    fn outgoing(&self, frame: Frame) -> Option<Frame>;
    /// A data frame sent at every heartbeat, for peers whose timers need data
    /// frames rather than pings to stay connected.
    fn keepalive(&self) -> Option<Frame> {
        None
    }
}

/// What a transport calls for each inbound data frame. `Err` closes the
/// connection with that code.
pub trait Handler: Send {
    /// A text frame.
    fn on_text(&mut self, text: Bytes) -> impl Future<Output = Result<(), CloseCode>> + Send;
    /// A binary frame.
    fn on_binary(&mut self, data: Bytes) -> impl Future<Output = Result<(), CloseCode>> + Send;
    /// The queue the transport writes from.
    fn outbox(&self) -> &Arc<Outbox>;
    /// The wire format frames are rewritten into; `None` (the default) =
    /// protocol v1 frames as queued.
    fn wire(&self) -> Option<Arc<dyn WireFormat>> {
        None
    }
    /// The tenant label of this connection's per-tenant metric series
    /// (`telemetry.tenant_labels`); `None` (the default): none.
    fn tenant_label(&self) -> Option<Arc<String>> {
        None
    }
}

/// One client's protocol state.
pub struct Session {
    node: Arc<Node>,
    tenant: Arc<Tenant>,
    id: SessionId,
    name: String,
    client: Arc<str>,
    principal: Principal,
    principal_id: Arc<str>,
    outbox: Arc<Outbox>,
    subs: HashSet<Arc<str>>,
    bucket: TokenBucket,
    rate_strikes: Strikes,
    protocol_strikes: Strikes,
    /// Whether the transport carries binary frames (document channels need them).
    binary: bool,
    /// The connection's trace (its span); empty while tracing is off.
    trace: crate::telemetry::Trace,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Opens a session: registers it on the node and queues `welcome`.
    pub fn open(
        node: Arc<Node>,
        tenant: Arc<Tenant>,
        client: Arc<str>,
        principal: Principal,
    ) -> Self {
        Self::open_with(node, tenant, client, principal, None)
    }

    /// Like [`Session::open`]; `welcome` also carries a fallback session's CSRF token.
    pub fn open_with(
        node: Arc<Node>,
        tenant: Arc<Tenant>,
        client: Arc<str>,
        principal: Principal,
        csrf: Option<&str>,
    ) -> Self {
        let limits = node.limits().clone();
        let now = Instant::now();
        let outbox = Arc::new(Outbox::with_bytes(
            limits.send_queue_messages,
            limits.send_queue_bytes,
        ));
        let id = node.next_session_id();
        let principal_id: Arc<str> = Arc::from(principal.id.as_str());
        node.hub.register(
            &tenant.id,
            &client,
            Connection {
                session: id,
                outbox: outbox.clone(),
                principal: principal_id.clone(),
            },
        );
        node.metrics.connections_active.inc();
        let tenant_metrics = node.metrics.for_tenant(&tenant.metric_label());
        tenant_metrics.connections.inc();
        outbox.count_for(tenant_metrics);
        let name = uuid::Uuid::new_v4().to_string();
        let heartbeat_ms = u64::try_from(limits.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        let _ = outbox.push_frame(encode::welcome_with(
            &name,
            &client,
            &node.id,
            heartbeat_ms,
            csrf,
        ));
        Self {
            tenant,
            id,
            name,
            client,
            principal,
            principal_id,
            outbox,
            subs: HashSet::new(),
            bucket: TokenBucket::new(limits.publish_rate, limits.publish_burst, now),
            rate_strikes: Strikes::new(limits.rate_limit_strikes, limits.abuse_window, now),
            protocol_strikes: Strikes::new(limits.protocol_strikes, limits.abuse_window, now),
            binary: true,
            trace: crate::telemetry::Trace::NONE,
            node,
        }
    }

    /// Sets the connection's trace ([`crate::telemetry::connection`]):
    /// the parent of its publishes' spans; it ends with the session.
    pub fn traced(mut self, trace: crate::telemetry::Trace) -> Self {
        self.trace = trace;
        self
    }

    /// Marks the session's transport as text-only (SSE, long-poll): document
    /// channels answer `unsupported` instead of queuing binary frames.
    pub fn text_only(mut self) -> Self {
        self.binary = false;
        self
    }

    /// Session id on this node.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Session name sent in `welcome`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Client id.
    pub fn client(&self) -> &Arc<str> {
        &self.client
    }

    /// Principal id (empty = anonymous).
    pub fn principal_id(&self) -> &Arc<str> {
        &self.principal_id
    }

    /// Channels currently subscribed.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Whether `channel` is subscribed.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subs.contains(channel)
    }

    /// The node this session lives on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The session's tenant.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    fn reply(&self, frame: Frame) {
        // A full queue requests close 4008 inside push; nothing else to do here.
        let _ = self.outbox.push_frame(frame);
    }

    fn error(&self, id: Option<&RawValue>, code: ErrorCode, message: &str) {
        self.reply(encode::error(id, code, message));
    }

    fn protocol_strike(&mut self) -> Result<(), CloseCode> {
        if self.protocol_strikes.hit(Instant::now()) {
            Err(CloseCode::Policy)
        } else {
            Ok(())
        }
    }

    /// Handles one text frame.
    pub async fn handle_text(&mut self, text: &str) -> Result<(), CloseCode> {
        self.outbox.note_received();
        let cmd = match protocol::parse_command(text) {
            Ok(c) => c,
            Err(e) => {
                let (code, reason) = match e {
                    ParseError::UnknownType(_) => (ErrorCode::UnknownType, "unknown_type"),
                    _ => (ErrorCode::BadRequest, "malformed"),
                };
                self.node.metrics.failed(reason);
                let id = ParseError::recover_id(text);
                self.error(id.as_deref(), code, &e.to_string());
                return self.protocol_strike();
            }
        };
        self.run(cmd).await
    }

    /// Runs a command that did not come as a text frame: a transport's own
    /// (the `channels=` of an SSE or long-poll open), already typed. Replies
    /// and errors are queued exactly as for [`Session::handle_text`].
    pub async fn command(&mut self, cmd: Command) -> Result<(), CloseCode> {
        self.outbox.note_received();
        self.run(cmd).await
    }

    async fn run(&mut self, cmd: Command) -> Result<(), CloseCode> {
        match cmd {
            Command::Ping { id } => {
                self.reply(encode::pong(id.as_deref()));
                Ok(())
            }
            Command::Subscribe {
                id,
                channel,
                since,
                state_vector,
                presence,
            } => {
                if self.tenant.is_document(&channel) {
                    self.subscribe_document(id, channel, since, state_vector)
                        .await;
                } else {
                    self.subscribe(id, channel, since, presence).await;
                }
                Ok(())
            }
            Command::Unsubscribe { id, channel } => {
                self.unsubscribe(&channel).await;
                self.reply(encode::unsubscribed(id.as_deref(), &channel));
                Ok(())
            }
            Command::Publish {
                id,
                channel,
                data,
                msg_id,
                traceparent,
                skip_self,
            } => {
                self.publish(id, channel, data, msg_id, traceparent, skip_self)
                    .await
            }
            Command::Presence { id, channel } => {
                self.presence(id, channel).await;
                Ok(())
            }
        }
    }

    /// Handles one binary frame: a `StatePatch` for a document channel.
    pub async fn handle_binary(&mut self, data: &[u8]) -> Result<(), CloseCode> {
        self.outbox.note_received();
        let patch = match frame::decode_client(data) {
            Ok(p) => p,
            Err(e) => {
                self.node.metrics.failed("bad_patch");
                // Best effort: echo the id when the frame decodes that far.
                let id = StatePatch::decode(data).ok().map(|p| p.id);
                let id = id.and_then(patch_id);
                self.error(id.as_deref(), ErrorCode::Invalid, &e.to_string());
                return self.protocol_strike();
            }
        };
        let id = patch_id(patch.id);
        let id = id.as_deref();
        if channel::validate(&patch.channel).is_err() || !self.tenant.is_document(&patch.channel) {
            self.node.metrics.failed("bad_patch");
            self.error(
                id,
                ErrorCode::Invalid,
                &format!("{:?} is not a document channel", patch.channel),
            );
            return self.protocol_strike();
        }
        let now = Instant::now();
        if !self.bucket.try_take(now, 1) {
            self.node.metrics.failed("rate_limited");
            if self.rate_strikes.hit(now) {
                return Err(Refusal::RateLimited.close_code());
            }
            self.error(id, ErrorCode::RateLimited, "publish rate exceeded");
            return Ok(());
        }
        if let Err(d) = self.authorize_patch(&patch.channel, &patch.delta) {
            if matches!(d, Denial::RateLimited { .. }) && self.rate_strikes.hit(now) {
                return Err(Refusal::RateLimited.close_code());
            }
            self.error(id, denial_code(&d), &d.to_string());
            return Ok(());
        }
        let key = ChannelKey::new(self.tenant.id.clone(), patch.channel.as_str());
        let r = self
            .node
            .documents
            .patch(
                &self.tenant,
                &key,
                &patch.delta,
                patch.msg_id.as_deref(),
                &self.client,
            )
            .await;
        match r {
            Ok(p) => self.reply(encode::ack_version(id, p.version)),
            Err(e) => {
                self.node.metrics.failed(e.code().as_str());
                self.error(id, e.code(), &e.to_string());
            }
        }
        Ok(())
    }

    /// authorize-publish, then the rate-limit policy, as for a publish. The
    /// policy sees the delta as its JSON when it is JSON (LWW), else `null`.
    fn authorize_patch(&self, channel: &str, delta: &[u8]) -> Result<(), Denial> {
        let _cx = self.trace.attach(); // plugin spans join the connection's trace
        let policies = self.tenant.policies();
        let as_json = std::str::from_utf8(delta)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
        let null = RawValue::NULL;
        policies
            .auth
            .authorize_publish(&self.principal, channel, as_json.unwrap_or(null))?;
        let key = RateKey {
            principal: &self.principal.id,
            client: &self.client,
            channel,
        };
        match policies.rate_limit.check(&key, 1) {
            RateDecision::Reject { retry_after_ms } => Err(Denial::RateLimited { retry_after_ms }),
            // A delay is not worth holding a document's patch stream for.
            RateDecision::Allow | RateDecision::Delay { .. } => Ok(()),
        }
    }

    async fn subscribe_document(
        &mut self,
        id: Option<CommandId>,
        channel: String,
        since: Option<StreamPosition>,
        state_vector: Option<String>,
    ) {
        let id = id.as_deref();
        if !self.binary {
            return self.error(
                id,
                ErrorCode::Unsupported,
                "document channels need a WebSocket (binary frames)",
            );
        }
        if let Err(e) = channel::validate(&channel) {
            return self.error(id, ErrorCode::BadChannel, &e.to_string());
        }
        let state_vector = match state_vector.map(|s| BASE64.decode(s.as_bytes())) {
            None => None,
            Some(Ok(sv)) => Some(sv),
            Some(Err(e)) => {
                return self.error(id, ErrorCode::Invalid, &format!("stateVector: {e}"));
            }
        };
        let Some((name, key)) = self.join(id, &channel, false).await else {
            return;
        };
        let since = since.map(|p| DocPosition {
            epoch: p.epoch,
            version: p.seq,
        });
        let r = self
            .node
            .documents
            .subscribe(
                &self.tenant,
                &key,
                self.id,
                id,
                since.as_ref(),
                state_vector.as_deref(),
            )
            .await;
        match r {
            Ok(()) => {
                self.subs.insert(name);
            }
            Err(e) => {
                self.node.hub.remove(&key, self.id);
                self.error(id, e.code(), &e.to_string());
            }
        }
    }

    /// The steps every subscribe shares: subscription limit, authorize-subscribe,
    /// leaving a previous subscription to the channel, joining the hub as a
    /// recovering subscriber (a presence watcher with `presence`). `None` =
    /// refused (the `error` reply is queued).
    async fn join(
        &mut self,
        id: Option<&RawValue>,
        channel: &str,
        presence: bool,
    ) -> Option<(Arc<str>, ChannelKey)> {
        let name: Arc<str> = Arc::from(channel);
        let resubscribe = self.subs.contains(&name);
        if !resubscribe && self.subs.len() >= self.node.limits().max_subscriptions {
            self.error(
                id,
                ErrorCode::TooManySubscriptions,
                "subscription limit reached",
            );
            return None;
        }
        let verdict = {
            let _cx = self.trace.attach(); // plugin spans join the connection's trace
            self.tenant
                .policies()
                .auth
                .authorize_subscribe(&self.principal, channel)
        };
        if let Err(d) = verdict {
            self.error(id, denial_code(&d), &d.to_string());
            return None;
        }
        let key = ChannelKey::new(self.tenant.id.clone(), name.clone());
        if resubscribe {
            self.unsubscribe(channel).await;
        }
        self.node.hub.add_watching(
            &key,
            SubscriberInfo {
                session: self.id,
                outbox: self.outbox.clone(),
                client: self.client.clone(),
                principal: self.principal_id.clone(),
            },
            presence,
        );
        Some((name, key))
    }

    async fn subscribe(
        &mut self,
        id: Option<CommandId>,
        channel: String,
        since: Option<StreamPosition>,
        presence: bool,
    ) {
        let id = id.as_deref();
        if let Err(e) = channel::validate(&channel) {
            return self.error(id, ErrorCode::BadChannel, &e.to_string());
        }
        let Some((name, key)) = self.join(id, &channel, presence).await else {
            return;
        };
        if let Err(e) = self.node.broker.watch(&key).await {
            self.node.hub.remove(&key, self.id);
            return self.error(id, broker_code(&e), &e.to_string());
        }
        let opts = self.tenant.channel_options();
        let rec = match self.node.broker.recover(&key, since.as_ref(), &opts).await {
            Ok(r) => r,
            Err(e) => {
                self.node.hub.remove(&key, self.id);
                self.node.broker.unwatch(&key).await;
                return self.error(id, broker_code(&e), &e.to_string());
            }
        };
        self.subs.insert(name);
        let mut head = Vec::with_capacity(1 + rec.messages.len());
        head.push(Outgoing {
            frame: encode::subscribed(id, &channel, &rec.epoch, rec.seq, rec.recovered),
            published_at: None,
            on_written: None,
        });
        let mut last = rec.seq;
        for m in &rec.messages {
            last = last.max(m.seq);
            head.push(Outgoing {
                frame: encode::message(&channel, m.seq, &m.epoch, &m.data),
                published_at: None,
                on_written: None,
            });
        }
        self.node
            .hub
            .activate(&key, self.id, head, Some(&rec.epoch), last);
    }

    async fn unsubscribe(&mut self, channel: &str) {
        if let Some(name) = self.subs.take(channel) {
            let key = ChannelKey::new(self.tenant.id.clone(), name);
            if self.node.hub.remove(&key, self.id) {
                self.node.broker.unwatch(&key).await;
            }
        }
    }

    async fn publish(
        &mut self,
        id: Option<CommandId>,
        channel: String,
        data: Box<RawValue>,
        msg_id: Option<String>,
        traceparent: Option<crate::telemetry::TraceParent>,
        skip_self: bool,
    ) -> Result<(), CloseCode> {
        let id = id.as_deref();
        let now = Instant::now();
        if !self.bucket.try_take(now, 1) {
            self.node.metrics.failed("rate_limited");
            if self.rate_strikes.hit(now) {
                return Err(Refusal::RateLimited.close_code());
            }
            self.error(id, ErrorCode::RateLimited, "publish rate exceeded");
            return Ok(());
        }
        let remote;
        let trace = match traceparent {
            Some(tp) => {
                remote = crate::telemetry::Trace::remote(tp);
                &remote
            }
            None => &self.trace,
        };
        let result = publish::publish_from(
            &self.node,
            &self.tenant,
            &self.principal,
            &self.client,
            &channel,
            data,
            msg_id.as_deref(),
            publish::Publisher::Client,
            trace,
            skip_self.then_some(self.id),
        )
        .await;
        match result {
            Ok(accepted) => {
                let seqs: Vec<(String, u64)> =
                    accepted.into_iter().map(|a| (a.channel, a.seq)).collect();
                let frame = match seqs.as_slice() {
                    [(ch, seq)] if *ch == channel => encode::ack(id, *seq),
                    _ => encode::ack_routed(id, &channel, &seqs),
                };
                self.reply(frame);
                Ok(())
            }
            Err(e) => {
                if matches!(e, PublishError::Denied(Denial::RateLimited { .. }))
                    && self.rate_strikes.hit(now)
                {
                    return Err(Refusal::RateLimited.close_code());
                }
                self.error(id, e.code(), &e.to_string());
                Ok(())
            }
        }
    }

    async fn presence(&mut self, id: Option<CommandId>, channel: String) {
        let id = id.as_deref();
        if let Err(e) = channel::validate(&channel) {
            return self.error(id, ErrorCode::BadChannel, &e.to_string());
        }
        let verdict = {
            let _cx = self.trace.attach(); // plugin spans join the connection's trace
            self.tenant
                .policies()
                .auth
                .authorize_subscribe(&self.principal, &channel)
        };
        if let Err(d) = verdict {
            return self.error(id, denial_code(&d), &d.to_string());
        }
        let key = ChannelKey::new(self.tenant.id.clone(), channel.as_str());
        match self.node.broker.presence(&key).await {
            Ok(list) => self.reply(encode::presence(id, &channel, &list)),
            Err(e) => self.error(id, broker_code(&e), &e.to_string()),
        }
    }

    /// Leaves every channel and the registry. Called on every exit path (also by `Drop`).
    pub async fn close(mut self) {
        let subs: Vec<Arc<str>> = self.subs.drain().collect();
        for name in subs {
            let key = ChannelKey::new(self.tenant.id.clone(), name);
            if self.node.hub.remove(&key, self.id) {
                self.node.broker.unwatch(&key).await;
            }
        }
        // Drop finishes the teardown (registry, gauge).
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for name in self.subs.drain() {
            let key = ChannelKey::new(self.tenant.id.clone(), name);
            if self.node.hub.remove(&key, self.id) {
                let node = self.node.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { node.broker.unwatch(&key).await });
                }
            }
        }
        self.node
            .hub
            .unregister(&self.tenant.id, &self.client, self.id);
        self.node.metrics.connections_active.dec();
        if let Some(t) = self.outbox.tenant_metrics() {
            t.connections.dec();
        }
    }
}

impl<H: Handler> Handler for &mut H {
    fn on_text(&mut self, text: Bytes) -> impl Future<Output = Result<(), CloseCode>> + Send {
        (**self).on_text(text)
    }

    fn on_binary(&mut self, data: Bytes) -> impl Future<Output = Result<(), CloseCode>> + Send {
        (**self).on_binary(data)
    }

    fn outbox(&self) -> &Arc<Outbox> {
        (**self).outbox()
    }

    fn wire(&self) -> Option<Arc<dyn WireFormat>> {
        (**self).wire()
    }

    fn tenant_label(&self) -> Option<Arc<String>> {
        (**self).tenant_label()
    }
}

impl Handler for Session {
    async fn on_text(&mut self, text: Bytes) -> Result<(), CloseCode> {
        match std::str::from_utf8(&text) {
            Ok(s) => self.handle_text(s).await,
            Err(_) => Err(CloseCode::InvalidPayload),
        }
    }

    async fn on_binary(&mut self, data: Bytes) -> Result<(), CloseCode> {
        self.handle_binary(&data).await
    }

    fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    fn tenant_label(&self) -> Option<Arc<String>> {
        Some(self.tenant.metric_label())
    }
}

/// A binary patch's command id as the JSON id echoed in its reply (0 = none).
fn patch_id(id: u64) -> Option<CommandId> {
    (id != 0).then(|| RawValue::from_string(id.to_string()).ok())?
}

fn denial_code(d: &Denial) -> ErrorCode {
    Refusal::from(d).error_code()
}

fn broker_code(e: &BrokerError) -> ErrorCode {
    Refusal::from(e).error_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::Value;
    use std::collections::VecDeque;

    fn node(extra: &str) -> Arc<Node> {
        let cfg = Config::from_toml(extra).expect("cfg");
        Node::with_memory_broker(Arc::new(cfg))
    }

    fn open(node: &Arc<Node>, client: &str) -> Session {
        let t = node.tenants.get("default").expect("tenant");
        Session::open(node.clone(), t, Arc::from(client), Principal::anonymous())
    }

    fn frames(s: &Session) -> Vec<Value> {
        let mut buf = VecDeque::new();
        s.outbox.take(&mut buf);
        buf.iter()
            .map(|f| serde_json::from_str(f.frame.as_str()).expect("json"))
            .collect()
    }

    #[tokio::test]
    async fn welcome_subscribe_publish_ack() {
        let n = node("");
        let mut a = open(&n, "a");
        let mut b = open(&n, "b");
        let w = frames(&a);
        assert_eq!(w[0]["type"], "welcome");
        assert_eq!(w[0]["client"], "a");
        frames(&b);
        a.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
            .await
            .expect("ok");
        let sub = frames(&a);
        assert_eq!(sub[0]["type"], "subscribed");
        assert_eq!(sub[0]["id"], 1);
        assert_eq!(sub[0]["seq"], 0);
        b.handle_text(
            r#"{"type":"publish","id":7,"channel":"room:1","data":{"t":"hi"},"msgId":"m1"}"#,
        )
        .await
        .expect("ok");
        let ack = frames(&b);
        assert_eq!(ack[0], serde_json::json!({"type":"ack","id":7,"seq":1}));
        let got = frames(&a);
        assert_eq!(got[0]["type"], "message");
        assert_eq!(got[0]["seq"], 1);
        assert_eq!(got[0]["data"]["t"], "hi");
        // a repeated msgId is acked with the same seq and not delivered again
        b.handle_text(
            r#"{"type":"publish","id":8,"channel":"room:1","data":{"t":"hi"},"msgId":"m1"}"#,
        )
        .await
        .expect("ok");
        assert_eq!(frames(&b)[0]["seq"], 1);
        assert!(frames(&a).is_empty());
    }

    #[tokio::test]
    async fn recovery_and_epochs() {
        let n = node("[tenants.default]\nhistory_size = 3\n");
        let mut p = open(&n, "p");
        for i in 0..5 {
            p.handle_text(&format!(
                r#"{{"type":"publish","channel":"room:1","data":{i}}}"#
            ))
            .await
            .expect("ok");
        }
        let mut s = open(&n, "s");
        frames(&s);
        s.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
            .await
            .expect("ok");
        let epoch = frames(&s)[0]["epoch"].as_str().expect("epoch").to_owned();
        s.handle_text(&format!(
            r#"{{"type":"subscribe","id":2,"channel":"room:1","since":{{"epoch":"{epoch}","seq":3}}}}"#
        ))
        .await
        .expect("ok");
        let f = frames(&s);
        assert_eq!(f[0]["recovered"], true);
        assert_eq!(f[0]["seq"], 5);
        let seqs: Vec<u64> = f[1..]
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, vec![4, 5]);
        // older than history
        s.handle_text(&format!(
            r#"{{"type":"subscribe","id":3,"channel":"room:1","since":{{"epoch":"{epoch}","seq":1}}}}"#
        ))
        .await
        .expect("ok");
        let f = frames(&s);
        assert_eq!(f[0]["recovered"], false);
        assert_eq!(f.len(), 1);
        // stale epoch
        s.handle_text(
            r#"{"type":"subscribe","id":4,"channel":"room:1","since":{"epoch":"old","seq":5}}"#,
        )
        .await
        .expect("ok");
        assert_eq!(frames(&s)[0]["recovered"], false);
    }

    #[tokio::test]
    async fn malformed_input_gets_errors_then_abuse_closes() {
        let n = node("[limits]\nprotocol_strikes = 3\n");
        let mut s = open(&n, "s");
        frames(&s);
        s.handle_text("{nope").await.expect("kept");
        let f = frames(&s);
        assert_eq!(f[0]["type"], "error");
        assert_eq!(f[0]["code"], "bad_request");
        s.handle_text(r#"{"type":"dance","id":9}"#)
            .await
            .expect("kept");
        let f = frames(&s);
        assert_eq!(f[0]["code"], "unknown_type");
        assert_eq!(f[0]["id"], 9);
        assert_eq!(s.handle_text("[]").await, Err(CloseCode::Policy));
    }

    #[tokio::test]
    async fn rate_limit_errors_then_closes() {
        let n = node("[limits]\npublish_rate = 1\npublish_burst = 2\nrate_limit_strikes = 3\n");
        let mut s = open(&n, "s");
        frames(&s);
        let cmd = r#"{"type":"publish","id":1,"channel":"room:1","data":1}"#;
        s.handle_text(cmd).await.expect("1");
        s.handle_text(cmd).await.expect("2");
        s.handle_text(cmd).await.expect("limited");
        let f = frames(&s);
        assert_eq!(f[2]["code"], "rate_limited");
        assert_eq!(f[2]["id"], 1);
        s.handle_text(cmd).await.expect("limited");
        assert_eq!(s.handle_text(cmd).await, Err(CloseCode::RateLimited));
    }

    #[tokio::test]
    async fn bad_channel_and_binary() {
        let n = node("");
        let mut s = open(&n, "s");
        frames(&s);
        s.handle_text(r#"{"type":"subscribe","id":1,"channel":"nocolon"}"#)
            .await
            .expect("ok");
        assert_eq!(frames(&s)[0]["code"], "bad_channel");
        s.handle_binary(&[1, 2, 3]).await.expect("kept");
        assert_eq!(frames(&s)[0]["code"], "invalid");
        s.handle_text(r#"{"type":"ping","id":"x"}"#)
            .await
            .expect("ok");
        assert_eq!(frames(&s)[0], serde_json::json!({"type":"pong","id":"x"}));
    }

    #[tokio::test]
    async fn skip_self_leaves_out_only_the_publisher() {
        let n = node("");
        let mut a = open(&n, "a");
        let mut b = open(&n, "b");
        for s in [&mut a, &mut b] {
            s.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
                .await
                .expect("ok");
            frames(s);
        }
        a.handle_text(r#"{"type":"publish","id":2,"channel":"room:1","data":1,"skipSelf":true}"#)
            .await
            .expect("ok");
        let fa = frames(&a);
        assert_eq!(fa.len(), 1, "only the ack: {fa:?}");
        assert_eq!(fa[0]["type"], "ack");
        assert_eq!(frames(&b)[0]["seq"], 1);
        // without it, the publisher gets its own message as before
        a.handle_text(r#"{"type":"publish","id":3,"channel":"room:1","data":2}"#)
            .await
            .expect("ok");
        let fa = frames(&a);
        assert_eq!(fa.len(), 2, "{fa:?}");
        assert_eq!(frames(&b).len(), 1);
    }

    fn kinds(f: &[Value]) -> Vec<String> {
        f.iter()
            .map(|v| {
                format!(
                    "{}:{}",
                    v["type"].as_str().unwrap_or(""),
                    v["client"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn presence_events_join_and_leave() {
        let n = node("");
        let mut w = open(&n, "watcher");
        frames(&w);
        w.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1","presence":true}"#)
            .await
            .expect("ok");
        assert_eq!(
            kinds(&frames(&w)),
            vec!["subscribed:"],
            "no join of its own"
        );
        let mut c1 = open(&n, "c1");
        c1.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
            .await
            .expect("ok");
        let f = frames(&w);
        assert_eq!(
            f[0],
            serde_json::json!({"type":"join","channel":"room:1","client":"c1","principal":"","node":n.id.as_ref()})
        );
        // a second connection of the same client: no second join
        let mut c1b = open(&n, "c1");
        c1b.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
            .await
            .expect("ok");
        assert!(frames(&w).is_empty());
        c1.handle_text(r#"{"type":"unsubscribe","id":2,"channel":"room:1"}"#)
            .await
            .expect("ok");
        assert!(
            frames(&w).is_empty(),
            "c1 still has a connection in the channel"
        );
        // disconnect (drop) of the last one: leave
        drop(c1b);
        assert_eq!(kinds(&frames(&w)), vec!["leave:c1"]);
        // a plain subscriber gets no presence frames
        let mut plain = open(&n, "plain");
        plain
            .handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
            .await
            .expect("ok");
        frames(&plain);
        assert_eq!(kinds(&frames(&w)), vec!["join:plain"]);
        let mut c2 = open(&n, "c2");
        c2.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
            .await
            .expect("ok");
        assert!(frames(&plain).is_empty());
        assert_eq!(kinds(&frames(&w)), vec!["join:c2"]);
        c2.close().await;
        assert_eq!(kinds(&frames(&w)), vec!["leave:c2"]);
    }

    #[tokio::test]
    async fn presence_events_stop_over_the_limit() {
        let n = node("[limits]\npresence_events_max = 3\n");
        let mut w = open(&n, "w");
        w.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1","presence":true}"#)
            .await
            .expect("ok");
        frames(&w);
        let mut others = Vec::new();
        for i in 0..4 {
            let mut s = open(&n, &format!("c{i}"));
            s.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
                .await
                .expect("ok");
            others.push(s);
        }
        // w + c0 + c1 = 3: joins sent; c2, c3 would make 4 and 5: none
        assert_eq!(kinds(&frames(&w)), vec!["join:c0", "join:c1"]);
        others.pop().expect("c3").close().await;
        others.pop().expect("c2").close().await;
        assert!(
            frames(&w).is_empty(),
            "their joins were not sent, nor their leaves"
        );
        others.pop().expect("c1").close().await;
        assert_eq!(kinds(&frames(&w)), vec!["leave:c1"]);
    }

    #[tokio::test]
    async fn remote_deltas_and_reconciliation() {
        use crate::presence::Delta;
        let n = node("");
        let key = ChannelKey::new("default", "room:1");
        let mut w = open(&n, "w");
        w.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1","presence":true}"#)
            .await
            .expect("ok");
        frames(&w);
        let entry = |c: &str, node: &str| encode::PresenceEntry {
            client: c.into(),
            principal: format!("p-{c}"),
            node: node.into(),
        };
        // first read: learns silently
        let t0 = Instant::now();
        n.hub.presence_reconcile(&key, &[entry("x", "other")], t0);
        assert!(frames(&w).is_empty());
        let d = Delta {
            node: "other".into(),
            joins: vec![("y".into(), "p-y".into()), ("x".into(), "p-x".into())],
            leaves: vec![],
        };
        n.hub.presence_remote(&key, &d);
        assert_eq!(kinds(&frames(&w)), vec!["join:y"], "x was known");
        // a read started before y's join does not remove it
        n.hub.presence_reconcile(&key, &[entry("x", "other")], t0);
        assert!(frames(&w).is_empty());
        n.hub.presence_remote(
            &key,
            &Delta {
                node: "other".into(),
                joins: vec![],
                leaves: vec!["y".into()],
            },
        );
        let f = frames(&w);
        assert_eq!(kinds(&f), vec!["leave:y"]);
        assert_eq!(f[0]["principal"], "p-y");
        assert_eq!(f[0]["node"], "other");
        // a stale read (before the leave) does not bring y back
        n.hub
            .presence_reconcile(&key, &[entry("x", "other"), entry("y", "other")], t0);
        assert!(frames(&w).is_empty());
        // the node died: its entries expired, a fresh read has none
        n.hub.presence_reconcile(&key, &[], Instant::now());
        assert_eq!(kinds(&frames(&w)), vec!["leave:x"]);
        // own node's entries in a read and own deltas are ignored
        n.hub
            .presence_reconcile(&key, &[entry("w", &n.id)], Instant::now());
        n.hub.presence_remote(
            &key,
            &Delta {
                node: n.id.to_string(),
                joins: vec![("z".into(), "".into())],
                leaves: vec![],
            },
        );
        assert!(frames(&w).is_empty());
        // a reconcile finding a new member sends its join
        n.hub
            .presence_reconcile(&key, &[entry("q", "third")], Instant::now());
        assert_eq!(kinds(&frames(&w)), vec!["join:q"]);
    }

    #[tokio::test]
    async fn remote_overflow_and_back() {
        use crate::presence::Delta;
        let n = node("[limits]\npresence_events_max = 2\n");
        let key = ChannelKey::new("default", "room:1");
        let mut w = open(&n, "w");
        w.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1","presence":true}"#)
            .await
            .expect("ok");
        frames(&w);
        n.hub.presence_reconcile(&key, &[], Instant::now());
        let d = |j: &[&str], l: &[&str]| Delta {
            node: "b".into(),
            joins: j.iter().map(|c| ((*c).to_owned(), String::new())).collect(),
            leaves: l.iter().map(|c| (*c).to_owned()).collect(),
        };
        n.hub.presence_remote(&key, &d(&["c1"], &[]));
        assert_eq!(kinds(&frames(&w)), vec!["join:c1"]);
        n.hub.presence_remote(&key, &d(&["c2"], &[]));
        n.hub.presence_remote(&key, &d(&[], &["c2", "c1"]));
        assert!(frames(&w).is_empty(), "over: nothing");
        let e = encode::PresenceEntry {
            client: "c4".into(),
            principal: String::new(),
            node: "b".into(),
        };
        n.hub.presence_reconcile(&key, &[e], Instant::now());
        assert!(frames(&w).is_empty(), "learns silently");
        n.hub.presence_remote(&key, &d(&[], &["c4"]));
        assert_eq!(kinds(&frames(&w)), vec!["leave:c4"]);
        n.hub.presence_remote(&key, &d(&["c4"], &[]));
        assert_eq!(kinds(&frames(&w)), vec!["join:c4"]);
    }

    #[tokio::test]
    async fn teardown_leaves_channels_and_registry() {
        let n = node("");
        let mut s = open(&n, "s");
        s.handle_text(r#"{"type":"subscribe","id":1,"channel":"room:1"}"#)
            .await
            .expect("ok");
        let key = ChannelKey::new("default", "room:1");
        assert!(n.hub.has_subscribers(&key));
        assert_eq!(n.hub.connection_count(), 1);
        s.close().await;
        assert!(!n.hub.has_subscribers(&key));
        assert_eq!(n.hub.connection_count(), 0);
        let s2 = open(&n, "s2");
        drop(s2);
        assert_eq!(n.hub.connection_count(), 0);
    }
}
