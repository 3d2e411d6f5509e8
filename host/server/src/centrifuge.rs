//! `GET /connection/websocket` (tenant `default`, or by Host mapping) and
//! `/connection/websocket/{tenant}`: the Centrifuge client protocol, JSON
//! format, so unmodified Centrifuge SDKs (npm `centrifuge` 5.x and the other
//! SDKs speaking client protocol v2) use Switchyard's channels, history and
//! policies.
//!
//! Like [`crate::yjs`] this is a wire adapter: each Centrifuge command becomes
//! a protocol v1 command on an ordinary [`Session`], and the session's frames
//! are rewritten into Centrifuge replies and pushes ([`CentrifugeWire`]). So a
//! Centrifuge client goes through the same authorize-subscribe,
//! authorize-publish, rate limits, router, history and brokers as a v1
//! client, and both talk on one channel.
//!
//! | Centrifuge command | becomes |
//! |---|---|
//! | `connect` (first command, `token`) | the tenant's auth policy, as for `/ws` with `Authorization: Bearer <token>`; then a session; the `welcome` becomes the `connect` reply (`client`, `session`, `node`, `ping`, `pong: true`) |
//! | `subscribe` (`recover`, `offset`, `epoch`) | v1 `subscribe` with `since: {epoch, seq: offset}`; the `subscribed` reply and the replayed messages become one `subscribe` reply (`recoverable`, `positioned`, `epoch`, `offset`, `recovered`, `was_recovering`, `publications`) |
//! | `publish` | v1 `publish` → `publish: {}` |
//! | `unsubscribe` | v1 `unsubscribe` |
//! | `presence`, `presence_stats` | v1 `presence` → the client map / the counts |
//! | `history` (`limit`, `since`, `reverse`) | read from the broker's history here (authorized like a subscribe) |
//! | `{}` (pong) | nothing; the server's ping is `{}` at every heartbeat |
//!
//! Frames pushed: `message` → `{"push":{"channel","pub":{"data","offset","epoch"}}}`;
//! `direct` (`POST /api/send`) → `{"push":{"message":{"data"}}}`; the drain's
//! `SERVER_SHUTDOWN` → a `disconnect` push with 3001 (the client reconnects).
//!
//! Every mapping of an outcome to a Centrifuge error or disconnect code is in
//! [`codes`]. Commands are newline-delimited JSON, several per frame; a line
//! that is not a command closes with 3501 (bad request, the client does not
//! reconnect), as Centrifuge does.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use switchyard_core::backpressure::{Outbox, Strikes};
use switchyard_core::channel::{self, ChannelKey};
use switchyard_core::history::Message as Stored;
use switchyard_core::policy::Principal;
use switchyard_core::protocol::encode::PresenceEntry;
use switchyard_core::protocol::{CloseCode, Frame, StreamPosition};
use switchyard_core::session::{Handler, Session, WireFormat};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tracing::Instrument;

use crate::Server;
use crate::connection::{self, Open};
use crate::handshake::HandshakeError;
use crate::response::{Resp, status_of, text};
use crate::upgrade;
use switchyard_core::refusal::Refusal;

/// The Centrifuge codes, and the one place Switchyard outcomes map onto them.
///
/// Reply errors: 100 internal (temporary), 101 unauthorized, 102 unknown
/// channel, 103 permission denied, 104 method not found, 105 already
/// subscribed, 106 limit exceeded, 107 bad request, 108 not available, 111
/// too many requests (temporary), 112 unrecoverable position. A temporary
/// error makes the client retry; another one ends that subscription or call.
///
/// Disconnects (close codes): 3000–3499 and 4000–4499 make the client
/// reconnect, 3500–3999 and 4500–4999 do not.
pub mod codes {
    use switchyard_core::protocol::CloseCode;

    use crate::handshake::HandshakeError;

    /// Internal server error (temporary).
    pub const INTERNAL: u32 = 100;
    /// Unauthorized.
    pub const UNAUTHORIZED: u32 = 101;
    /// Not a valid channel name here (`namespace:name`).
    pub const UNKNOWN_CHANNEL: u32 = 102;
    /// A policy refused.
    pub const PERMISSION_DENIED: u32 = 103;
    /// Not a command this server implements.
    pub const METHOD_NOT_FOUND: u32 = 104;
    /// A second subscribe to the same channel on one connection.
    pub const ALREADY_SUBSCRIBED: u32 = 105;
    /// Over a limit (subscriptions).
    pub const LIMIT_EXCEEDED: u32 = 106;
    /// Malformed request.
    pub const BAD_REQUEST: u32 = 107;
    /// A feature this server does not offer (document channels, map subscriptions).
    pub const NOT_AVAILABLE: u32 = 108;
    /// Over a rate (temporary).
    pub const TOO_MANY_REQUESTS: u32 = 111;
    /// The history no longer holds what a `history` call's `since` asks for.
    pub const UNRECOVERABLE_POSITION: u32 = 112;

    /// 3001: the node drains; the client reconnects (elsewhere).
    pub const DISCONNECT_SHUTDOWN: u16 = 3001;
    /// 3004: a server error; the client reconnects.
    pub const DISCONNECT_SERVER_ERROR: u16 = 3004;
    /// 3013: too many requests; the client reconnects after its backoff.
    pub const DISCONNECT_TOO_MANY_REQUESTS: u16 = 3013;
    /// 3500: the auth policy refused the credentials; no reconnect.
    pub const DISCONNECT_INVALID_TOKEN: u16 = 3500;
    /// 3501: malformed commands; no reconnect.
    pub const DISCONNECT_BAD_REQUEST: u16 = 3501;
    /// 3502: no `connect` command within `limits.handshake_timeout`; no reconnect.
    pub const DISCONNECT_STALE: u16 = 3502;
    /// 3507: the auth policy refused the principal, or the Origin is not allowed; no reconnect.
    pub const DISCONNECT_PERMISSION_DENIED: u16 = 3507;
    /// 3509: too many bad commands (`limits.protocol_strikes`); no reconnect.
    pub const DISCONNECT_TOO_MANY_ERRORS: u16 = 3509;

    /// A protocol v1 error code as a Centrifuge error: `(code, temporary)`.
    pub fn error(v1: &str) -> (u32, bool) {
        match v1 {
            "forbidden" => (PERMISSION_DENIED, false),
            "unauthorized" => (UNAUTHORIZED, false),
            "bad_channel" => (UNKNOWN_CHANNEL, false),
            "rate_limited" => (TOO_MANY_REQUESTS, true),
            "too_many_subscriptions" => (LIMIT_EXCEEDED, false),
            "unsupported" => (NOT_AVAILABLE, false),
            "unavailable" | "internal" => (INTERNAL, true),
            "unknown_type" => (METHOD_NOT_FOUND, false),
            // bad_request, invalid, conflict, not_subscribed and anything newer.
            _ => (BAD_REQUEST, false),
        }
    }

    /// The close a session asked for, as the Centrifuge disconnect sent instead.
    pub fn close(code: CloseCode) -> (u16, &'static str) {
        match code {
            CloseCode::RateLimited => (DISCONNECT_TOO_MANY_REQUESTS, "too many requests"),
            CloseCode::Policy => (DISCONNECT_TOO_MANY_ERRORS, "too many errors"),
            CloseCode::InvalidPayload | CloseCode::ProtocolError => {
                (DISCONNECT_BAD_REQUEST, "bad request")
            }
            CloseCode::Internal => (DISCONNECT_SERVER_ERROR, "internal server error"),
            other => (other.code(), other.reason()),
        }
    }

    /// A refused `connect` as the disconnect the client is closed with.
    pub fn refusal(e: &HandshakeError) -> (u16, &'static str) {
        match e {
            HandshakeError::Unauthorized(_) => (DISCONNECT_INVALID_TOKEN, "invalid token"),
            HandshakeError::Forbidden(_) | HandshakeError::Origin => {
                (DISCONNECT_PERMISSION_DENIED, "permission denied")
            }
            HandshakeError::RateLimited | HandshakeError::PerIp(_) => {
                (DISCONNECT_TOO_MANY_REQUESTS, "too many requests")
            }
            HandshakeError::Overloaded | HandshakeError::Draining => {
                (DISCONNECT_SHUTDOWN, "try another node")
            }
            _ => (DISCONNECT_BAD_REQUEST, "bad request"),
        }
    }
}

/// Replies a connection may owe at once that carry context (subscribes,
/// presence stats); beyond it the oldest is forgotten (its reply then
/// carries defaults).
const PENDING_MAX: usize = 4096;

/// What a reply needs to know about its command.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// `subscribe`: whether it recovered, and from which offset.
    Subscribe { recovering: bool, since: u64 },
    /// `presence_stats` (its v1 command is `presence`).
    PresenceStats,
}

/// A `subscribe` reply held while its replayed publications arrive.
#[derive(Debug)]
struct Collecting {
    channel: String,
    /// The channel's seq at subscribe time: the last replayed message.
    until: u64,
    /// The reply up to `"publications":[`.
    head: String,
    /// The publications so far, comma-separated.
    pubs: String,
}

impl Collecting {
    fn finish(self) -> String {
        let mut s = self.head;
        s.push_str(&self.pubs);
        s.push_str("]}}");
        s
    }
}

#[derive(Debug, Default)]
struct WireState {
    pending: HashMap<u32, Pending>,
    order: std::collections::VecDeque<u32>,
    collecting: Option<Collecting>,
}

/// Outbound translation: protocol v1 frames → Centrifuge JSON replies and
/// pushes. Frames that are already Centrifuge JSON (the handler's own, e.g.
/// `history` replies) pass as they are.
#[derive(Debug)]
pub struct CentrifugeWire {
    /// The id of the `connect` command (its reply is the session's `welcome`).
    connect_id: u32,
    /// The `ping` interval announced in the connect reply, seconds.
    ping_secs: u64,
    /// Whether channels keep history (the tenant's `history_size` > 0).
    recoverable: bool,
    state: Mutex<WireState>,
}

/// The v1 frame fields the translation reads.
#[derive(Deserialize)]
struct V1<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    id: Option<u32>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    seq: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    recovered: Option<bool>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    clients: Option<Vec<PresenceEntry>>,
    #[serde(borrow)]
    session: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client: Option<Cow<'a, str>>,
    #[serde(borrow)]
    node: Option<Cow<'a, str>>,
}

fn json_str(out: &mut String, s: &str) {
    let _ = write!(out, "{}", serde_json::Value::from(s));
}

/// `{"id":N,"error":{"code":C,"message":M[,"temporary":true]}}`
fn error_reply(id: u32, code: u32, message: &str, temporary: bool) -> String {
    let mut s = String::with_capacity(64 + message.len());
    let _ = write!(s, "{{\"id\":{id},\"error\":{{\"code\":{code},\"message\":");
    json_str(&mut s, message);
    if temporary {
        s.push_str(",\"temporary\":true");
    }
    s.push_str("}}");
    s
}

/// JSON data on one line: replies are newline-delimited, and a payload kept
/// as published (a v1 client's, an API call's) may hold newlines as whitespace.
fn one_line(data: &str) -> Cow<'_, str> {
    if !data.contains('\n') {
        return Cow::Borrowed(data);
    }
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(v) => Cow::Owned(v.to_string()),
        Err(_) => Cow::Borrowed("null"),
    }
}

/// One publication object: `{"data":…,"offset":N[,"epoch":E]}`.
fn publication(out: &mut String, data: &str, offset: u64, epoch: Option<&str>) {
    out.push_str("{\"data\":");
    out.push_str(&one_line(data));
    let _ = write!(out, ",\"offset\":{offset}");
    if let Some(e) = epoch {
        out.push_str(",\"epoch\":");
        json_str(out, e);
    }
    out.push('}');
}

impl CentrifugeWire {
    fn new(connect_id: u32, ping_secs: u64, recoverable: bool) -> Self {
        Self {
            connect_id,
            ping_secs,
            recoverable,
            state: Mutex::new(WireState::default()),
        }
    }

    fn expect(&self, id: u32, p: Pending) {
        let mut st = self.state.lock();
        if st.pending.insert(id, p).is_none() {
            st.order.push_back(id);
        }
        while st.order.len() > PENDING_MAX {
            if let Some(old) = st.order.pop_front() {
                st.pending.remove(&old);
            }
        }
    }

    fn take(st: &mut WireState, id: u32) -> Option<Pending> {
        let p = st.pending.remove(&id)?;
        if let Some(i) = st.order.iter().position(|x| *x == id) {
            st.order.remove(i);
        }
        Some(p)
    }

    /// The Centrifuge text for one v1 frame (`None` = nothing to send).
    fn translate(&self, st: &mut WireState, v: V1<'_>) -> Option<String> {
        let id = v.id.unwrap_or(0);
        match v.kind.as_ref() {
            "message" => {
                let (channel, seq, data) = (v.channel?, v.seq?, v.data?);
                let mut s = String::with_capacity(64 + channel.len() + data.get().len());
                s.push_str("{\"push\":{\"channel\":");
                json_str(&mut s, &channel);
                s.push_str(",\"pub\":");
                publication(&mut s, data.get(), seq, v.epoch.as_deref());
                s.push_str("}}");
                Some(s)
            }
            "welcome" => {
                let mut s = String::with_capacity(160);
                let _ = write!(s, "{{\"id\":{},\"connect\":{{\"client\":", self.connect_id);
                json_str(&mut s, v.client.as_deref().unwrap_or(""));
                s.push_str(",\"version\":");
                json_str(&mut s, concat!("switchyard ", env!("CARGO_PKG_VERSION")));
                s.push_str(",\"session\":");
                json_str(&mut s, v.session.as_deref().unwrap_or(""));
                s.push_str(",\"node\":");
                json_str(&mut s, v.node.as_deref().unwrap_or(""));
                let _ = write!(s, ",\"ping\":{},\"pong\":true}}}}", self.ping_secs);
                Some(s)
            }
            "subscribed" => {
                let (recovering, since) = match Self::take(st, id) {
                    Some(Pending::Subscribe { recovering, since }) => (recovering, since),
                    _ => (false, 0),
                };
                let seq = v.seq.unwrap_or(0);
                let recovered = recovering && v.recovered == Some(true);
                let mut head = String::with_capacity(160);
                let _ = write!(
                    head,
                    "{{\"id\":{id},\"subscribe\":{{\"recoverable\":{r},\"positioned\":{r},\"epoch\":",
                    r = self.recoverable
                );
                json_str(&mut head, v.epoch.as_deref().unwrap_or(""));
                let _ = write!(
                    head,
                    ",\"offset\":{seq},\"recovered\":{recovered},\"was_recovering\":{recovering},\"publications\":["
                );
                let c = Collecting {
                    channel: v.channel.map(Cow::into_owned).unwrap_or_default(),
                    until: seq,
                    head,
                    pubs: String::new(),
                };
                if recovered && since < seq {
                    // The replayed messages follow: they join the reply.
                    st.collecting = Some(c);
                    None
                } else {
                    Some(c.finish())
                }
            }
            "unsubscribed" => Some(format!("{{\"id\":{id},\"unsubscribe\":{{}}}}")),
            "ack" => Some(format!("{{\"id\":{id},\"publish\":{{}}}}")),
            "pong" => Some(format!("{{\"id\":{id},\"ping\":{{}}}}")),
            "presence" => {
                let clients = v.clients.unwrap_or_default();
                if matches!(Self::take(st, id), Some(Pending::PresenceStats)) {
                    let mut c: Vec<&str> = clients.iter().map(|e| e.client.as_str()).collect();
                    c.sort_unstable();
                    c.dedup();
                    let mut u: Vec<&str> = clients.iter().map(|e| e.principal.as_str()).collect();
                    u.sort_unstable();
                    u.dedup();
                    return Some(format!(
                        "{{\"id\":{id},\"presence_stats\":{{\"num_clients\":{},\"num_users\":{}}}}}",
                        c.len(),
                        u.len()
                    ));
                }
                let mut map = serde_json::Map::new();
                for e in clients {
                    map.insert(
                        e.client.clone(),
                        serde_json::json!({"client": e.client, "user": e.principal}),
                    );
                }
                Some(format!(
                    "{{\"id\":{id},\"presence\":{{\"presence\":{}}}}}",
                    serde_json::Value::Object(map)
                ))
            }
            "error" => {
                if id == 0 {
                    tracing::debug!(code = ?v.code, message = ?v.message, "centrifuge: error without a command");
                    return None;
                }
                Self::take(st, id);
                let (code, temporary) = codes::error(v.code.as_deref().unwrap_or(""));
                Some(error_reply(
                    id,
                    code,
                    v.message.as_deref().unwrap_or(""),
                    temporary,
                ))
            }
            "direct" => {
                let data = v.data?;
                Some(format!(
                    "{{\"push\":{{\"message\":{{\"data\":{}}}}}}}",
                    one_line(data.get())
                ))
            }
            "SERVER_SHUTDOWN" => Some(format!(
                "{{\"push\":{{\"disconnect\":{{\"code\":{},\"reason\":\"shutdown\",\"reconnect\":true}}}}}}",
                codes::DISCONNECT_SHUTDOWN
            )),
            // Frames the Centrifuge protocol has no place for.
            _ => None,
        }
    }
}

impl WireFormat for CentrifugeWire {
    fn transport(&self) -> &'static str {
        "centrifuge"
    }

    fn outgoing(&self, frame: Frame) -> Option<Frame> {
        if frame.is_binary() {
            // JSON clients cannot take binary frames (no document channels here).
            return None;
        }
        let text = frame.as_str();
        let mut st = self.state.lock();
        let out = if text.starts_with("{\"type\":") {
            let v: V1<'_> = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "centrifuge: unreadable v1 frame");
                    return None;
                }
            };
            if let Some(c) = st.collecting.as_mut()
                && v.kind == "message"
                && v.channel.as_deref() == Some(c.channel.as_str())
                && let (Some(seq), Some(data)) = (v.seq, v.data)
                && seq <= c.until
            {
                if !c.pubs.is_empty() {
                    c.pubs.push(',');
                }
                publication(&mut c.pubs, data.get(), seq, None);
                if seq < c.until {
                    return None;
                }
                return st.collecting.take().map(|c| Frame::from_string(c.finish()));
            }
            // A reply still collecting goes first (its replay was cut short).
            let held = st.collecting.take().map(Collecting::finish);
            (held, self.translate(&mut st, v))
        } else {
            let held = st.collecting.take().map(Collecting::finish);
            (held, Some(text.to_owned()))
        };
        let (held, out) = out;
        match (held, out) {
            (None, None) => None,
            (Some(h), None) => Some(Frame::from_string(h)),
            (None, Some(o)) => Some(Frame::from_string(o)),
            (Some(mut h), Some(o)) => {
                h.push('\n');
                h.push_str(&o);
                Some(Frame::from_string(h))
            }
        }
    }

    fn keepalive(&self) -> Option<Frame> {
        // The Centrifuge server ping: the client answers `{}` (pong: true).
        Some(Frame::from_static("{}"))
    }
}

/// A Centrifuge command (protocol v2, JSON): an id and one request.
#[derive(Deserialize)]
struct Command {
    #[serde(default)]
    id: u32,
    connect: Option<ConnectReq>,
    subscribe: Option<SubscribeReq>,
    unsubscribe: Option<ChannelReq>,
    publish: Option<PublishReq>,
    presence: Option<ChannelReq>,
    presence_stats: Option<ChannelReq>,
    history: Option<HistoryReq>,
    ping: Option<IgnoredAny>,
    send: Option<IgnoredAny>,
    rpc: Option<IgnoredAny>,
    refresh: Option<IgnoredAny>,
    sub_refresh: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct ConnectReq {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct ChannelReq {
    channel: String,
}

#[derive(Deserialize)]
struct SubscribeReq {
    channel: String,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    offset: u64,
    /// 0 = a stream subscription; map (1) and shared-poll (4) ones are not offered.
    #[serde(default, rename = "type")]
    kind: u32,
}

#[derive(Deserialize)]
struct PublishReq {
    channel: String,
    data: Option<Box<RawValue>>,
    #[serde(default, rename = "type")]
    kind: u32,
}

#[derive(Deserialize)]
struct HistoryReq {
    channel: String,
    #[serde(default)]
    limit: i32,
    since: Option<Position>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct Position {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// A Centrifuge connection after its `connect`: the v1 session it drives.
pub struct CentrifugeSession {
    session: Session,
    principal: Principal,
    wire: Arc<CentrifugeWire>,
    strikes: Strikes,
}

impl std::fmt::Debug for CentrifugeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CentrifugeSession")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl CentrifugeSession {
    /// Wraps a session opened for a `connect` command with id `connect_id`.
    pub fn new(session: Session, principal: Principal, connect_id: u32) -> Self {
        let node = session.node().clone();
        let limits = node.limits();
        let ping_secs = limits.heartbeat_interval.as_secs_f64().ceil().max(1.0) as u64;
        let recoverable = session.tenant().channel_options().history_size > 0;
        let strikes = Strikes::new(limits.protocol_strikes, limits.abuse_window, Instant::now());
        Self {
            wire: Arc::new(CentrifugeWire::new(connect_id, ping_secs, recoverable)),
            session,
            principal,
            strikes,
        }
    }

    /// The v1 session (for teardown).
    pub fn into_session(self) -> Session {
        self.session
    }

    /// Closes (after what is queued) with a Centrifuge disconnect code and reason.
    fn disconnect(&self, code: u16, reason: &str) -> CloseCode {
        let code = CloseCode::Application(code);
        self.session.outbox().close_with_reason(code, true, reason);
        code
    }

    fn push(&self, text: String) {
        let _ = self.session.outbox().push_frame(Frame::from_string(text));
    }

    /// A refused command: an error reply, and a strike (too many close with 3509).
    fn refuse(&mut self, id: u32, code: u32, message: &str) -> Result<(), CloseCode> {
        self.session.node().metrics.failed("centrifuge_refused");
        self.push(error_reply(id, code, message, false));
        if self.strikes.hit(Instant::now()) {
            return Err(self.disconnect(codes::DISCONNECT_TOO_MANY_ERRORS, "too many errors"));
        }
        Ok(())
    }

    /// Runs one v1 command on the session; a close it asks for is mapped.
    async fn v1(&mut self, cmd: String) -> Result<(), CloseCode> {
        match self.session.handle_text(&cmd).await {
            Ok(()) => Ok(()),
            Err(code) => {
                let (c, reason) = codes::close(code);
                Err(self.disconnect(c, reason))
            }
        }
    }

    /// Handles one line: one command.
    async fn command(&mut self, line: &str) -> Result<(), CloseCode> {
        let cmd: Command = match serde_json::from_str(line) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "centrifuge: malformed command");
                self.session.node().metrics.failed("centrifuge_malformed");
                return Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"));
            }
        };
        let id = cmd.id;
        if let Some(req) = cmd.subscribe {
            return self.subscribe(id, req).await;
        }
        if let Some(req) = cmd.publish {
            return self.publish(id, req).await;
        }
        if let Some(req) = cmd.unsubscribe {
            let v1 = v1_command("unsubscribe", id, &req.channel, "");
            return self.v1(v1).await;
        }
        if let Some(req) = cmd.presence {
            let v1 = v1_command("presence", id, &req.channel, "");
            return self.v1(v1).await;
        }
        if let Some(req) = cmd.presence_stats {
            self.wire.expect(id, Pending::PresenceStats);
            let v1 = v1_command("presence", id, &req.channel, "");
            return self.v1(v1).await;
        }
        if let Some(req) = cmd.history {
            self.session.outbox().note_received();
            return self.history(id, req).await;
        }
        self.session.outbox().note_received();
        if cmd.ping.is_some() {
            self.push(format!("{{\"id\":{id},\"ping\":{{}}}}"));
            return Ok(());
        }
        if cmd.connect.is_some() {
            // One connect per connection.
            return Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"));
        }
        if cmd.send.is_some() && id == 0 {
            // An asynchronous message to the server: nothing here handles them.
            self.session.node().metrics.failed("centrifuge_send");
            return Ok(());
        }
        if id == 0 && cmd.rpc.is_none() && cmd.refresh.is_none() && cmd.sub_refresh.is_none() {
            // `{}`: the client's pong.
            return Ok(());
        }
        if id == 0 {
            return Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"));
        }
        self.refuse(id, codes::METHOD_NOT_FOUND, "method not found")
    }

    async fn subscribe(&mut self, id: u32, req: SubscribeReq) -> Result<(), CloseCode> {
        if id == 0 {
            return Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"));
        }
        if req.kind != 0 {
            return self.refuse(
                id,
                codes::NOT_AVAILABLE,
                "only stream subscriptions are offered (no map or shared-poll subscriptions)",
            );
        }
        if self.session.tenant().is_document(&req.channel) {
            return self.refuse(
                id,
                codes::NOT_AVAILABLE,
                "document channels need protocol v1 (binary frames)",
            );
        }
        if self.session.is_subscribed(&req.channel) {
            return self.refuse(id, codes::ALREADY_SUBSCRIBED, "already subscribed");
        }
        let since = if req.recover {
            let mut s = String::from(",\"since\":{\"epoch\":");
            json_str(&mut s, &req.epoch);
            let _ = write!(s, ",\"seq\":{}}}", req.offset);
            s
        } else {
            String::new()
        };
        self.wire.expect(
            id,
            Pending::Subscribe {
                recovering: req.recover,
                since: req.offset,
            },
        );
        let v1 = v1_command("subscribe", id, &req.channel, &since);
        self.v1(v1).await
    }

    async fn publish(&mut self, id: u32, req: PublishReq) -> Result<(), CloseCode> {
        if id == 0 {
            return Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"));
        }
        if req.kind != 0 {
            return self.refuse(id, codes::NOT_AVAILABLE, "map publications are not offered");
        }
        let Some(data) = req.data else {
            return self.refuse(id, codes::BAD_REQUEST, "publish needs data");
        };
        let mut extra = String::from(",\"data\":");
        extra.push_str(data.get());
        let v1 = v1_command("publish", id, &req.channel, &extra);
        self.v1(v1).await
    }

    /// `history`: the channel's kept messages, authorized like a subscribe.
    async fn history(&mut self, id: u32, req: HistoryReq) -> Result<(), CloseCode> {
        if id == 0 {
            return Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"));
        }
        if let Err(e) = channel::validate(&req.channel) {
            return self.refuse(id, codes::UNKNOWN_CHANNEL, &e.to_string());
        }
        let tenant = self.session.tenant().clone();
        if tenant.is_document(&req.channel) {
            return self.refuse(
                id,
                codes::NOT_AVAILABLE,
                "document channels have no history",
            );
        }
        if let Err(d) = tenant
            .policies()
            .auth
            .authorize_subscribe(&self.principal, &req.channel)
        {
            let code = match d {
                switchyard_core::policy::Denial::RateLimited { .. } => codes::TOO_MANY_REQUESTS,
                _ => codes::PERMISSION_DENIED,
            };
            self.push(error_reply(
                id,
                code,
                &d.to_string(),
                code == codes::TOO_MANY_REQUESTS,
            ));
            return Ok(());
        }
        let node = self.session.node().clone();
        let key = ChannelKey::new(tenant.id.clone(), req.channel.as_str());
        let opts = tenant.channel_options();
        let reply = match history(&*node.broker, &key, &opts, &req).await {
            Ok(Ok(r)) => r,
            Ok(Err(code)) => {
                return self.refuse(id, code, "unrecoverable position");
            }
            Err(e) => {
                self.push(error_reply(id, codes::INTERNAL, &e.to_string(), true));
                return Ok(());
            }
        };
        let mut s = String::with_capacity(
            64 + reply
                .pubs
                .iter()
                .map(|m| m.data.get().len() + 24)
                .sum::<usize>(),
        );
        let _ = write!(s, "{{\"id\":{id},\"history\":{{\"publications\":[");
        for (i, m) in reply.pubs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            publication(&mut s, m.data.get(), m.seq, None);
        }
        s.push_str("],\"epoch\":");
        json_str(&mut s, &reply.epoch);
        let _ = write!(s, ",\"offset\":{}}}}}", reply.top);
        self.push(s);
        Ok(())
    }
}

/// A v1 command's text: `{"type":T,"id":N,"channel":C<extra>}`.
fn v1_command(kind: &str, id: u32, channel: &str, extra: &str) -> String {
    let mut s = String::with_capacity(48 + channel.len() + extra.len());
    let _ = write!(s, "{{\"type\":\"{kind}\",\"id\":{id},\"channel\":");
    json_str(&mut s, channel);
    s.push_str(extra);
    s.push('}');
    s
}

/// What a `history` call answers.
#[derive(Debug)]
struct HistoryReply {
    pubs: Vec<Stored>,
    epoch: String,
    top: u64,
}

/// Reads a channel's history for a `history` call: the kept messages (the
/// oldest kept is found from the broker's recovery, which any broker offers),
/// then `since`, `reverse` and `limit` (0 = none, only the position; < 0 =
/// all) applied. `Ok(Err(112))` when `since` is older than what is kept or of
/// another epoch.
async fn history(
    broker: &dyn switchyard_core::broker::Broker,
    key: &ChannelKey,
    opts: &switchyard_core::broker::ChannelOptions,
    req: &HistoryReq,
) -> Result<Result<HistoryReply, u32>, switchyard_core::broker::BrokerError> {
    let head = broker.recover(key, None, opts).await?;
    let epoch = head.epoch.to_string();
    let mut top = head.seq;
    if let Some(p) = &req.since
        && !p.epoch.is_empty()
        && p.epoch != epoch
    {
        return Ok(Err(codes::UNRECOVERABLE_POSITION));
    }
    if req.limit == 0 {
        return Ok(Ok(HistoryReply {
            pubs: Vec::new(),
            epoch,
            top,
        }));
    }
    let pos = |seq| StreamPosition {
        epoch: epoch.clone(),
        seq,
    };
    // The smallest position every later message is kept after: first the
    // full window, then (expired entries) a binary search.
    let mut lo = top.saturating_sub(opts.history_size as u64);
    let first = broker.recover(key, Some(&pos(lo)), opts).await?;
    let (oldest_after, mut kept) = if first.recovered {
        (lo, first.messages)
    } else {
        let (mut hi, mut best) = (top, Vec::new());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let r = broker.recover(key, Some(&pos(mid)), opts).await?;
            if r.recovered {
                hi = mid;
                best = r.messages;
            } else {
                lo = mid;
            }
        }
        (hi, best)
    };
    if let Some(m) = kept.last() {
        top = top.max(m.seq);
    }
    if let Some(p) = &req.since {
        if req.reverse {
            kept.retain(|m| m.seq < p.offset);
        } else {
            if p.offset < oldest_after && p.offset < top {
                return Ok(Err(codes::UNRECOVERABLE_POSITION));
            }
            kept.retain(|m| m.seq > p.offset);
        }
    }
    if req.reverse {
        kept.reverse();
    }
    if let Ok(limit) = usize::try_from(req.limit) {
        kept.truncate(limit);
    }
    Ok(Ok(HistoryReply {
        pubs: kept,
        epoch,
        top,
    }))
}

impl Handler for CentrifugeSession {
    async fn on_text(&mut self, text: Bytes) -> Result<(), CloseCode> {
        let Ok(s) = std::str::from_utf8(&text) else {
            return Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"));
        };
        for line in s.split('\n') {
            if line.trim().is_empty() {
                continue;
            }
            self.command(line).await?;
        }
        Ok(())
    }

    async fn on_binary(&mut self, _data: Bytes) -> Result<(), CloseCode> {
        // The JSON protocol is text only.
        self.session.node().metrics.failed("centrifuge_binary");
        Err(self.disconnect(codes::DISCONNECT_BAD_REQUEST, "bad request"))
    }

    fn outbox(&self) -> &Arc<Outbox> {
        self.session.outbox()
    }

    fn wire(&self) -> Option<Arc<dyn WireFormat>> {
        Some(self.wire.clone())
    }

    fn tenant_label(&self) -> Option<Arc<String>> {
        self.session.tenant_label()
    }
}

/// Sends a close with `code` and reads until the client's close reply or EOF
/// (at most 3 s): dropped with input unread, the socket may be reset and the
/// client never see the code.
async fn close_raw<S>(ws: &mut S, code: u16, reason: &str)
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code: WsCloseCode::from(code),
        reason: reason.to_owned().into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        if ws.send(frame).await.is_err() {
            return;
        }
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
}

/// The first command of a connection: `connect`, alone or with more commands
/// in its frame (returned as the rest).
enum First {
    Connect {
        id: u32,
        token: String,
        rest: String,
    },
    /// Not a connect: close with this code.
    Refuse(u16, &'static str),
    /// The client went away.
    Gone,
}

async fn first_command<S>(ws: &mut S, within: Duration) -> First
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return First::Refuse(codes::DISCONNECT_STALE, "stale"),
            Ok(None | Some(Err(_))) => return First::Gone,
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return First::Gone,
            Message::Binary(_) => {
                return First::Refuse(codes::DISCONNECT_BAD_REQUEST, "bad request");
            }
            _ => continue,
        };
        let text = text.as_str();
        let (line, rest) = match text.trim_start().split_once('\n') {
            Some((l, r)) => (l, r),
            None => (text.trim_start(), ""),
        };
        return match serde_json::from_str::<Command>(line) {
            Ok(Command {
                id,
                connect: Some(c),
                ..
            }) if id > 0 => First::Connect {
                id,
                token: c.token,
                rest: rest.to_owned(),
            },
            _ => First::Refuse(codes::DISCONNECT_BAD_REQUEST, "bad request"),
        };
    }
}

/// `/connection/websocket` and `/connection/websocket/{tenant}`.
pub async fn connection(
    server: &Arc<Server>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    path_tenant: Option<String>,
) -> Resp {
    if req.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        // The JSON protocol takes no subprotocol; centrifuge-protobuf is not offered.
        server.node().metrics.rejected("subprotocol");
        return text(
            status_of(Refusal::BadRequest),
            "this endpoint speaks the Centrifuge JSON protocol (no subprotocol); centrifuge-protobuf is not supported\n",
        );
    }
    let up = match upgrade::precheck(server, &req) {
        Ok(u) => u,
        Err(e) => return connection::refuse(server, e),
    };
    // The checks that need no credentials answer over HTTP already; the auth
    // policy runs on the `connect` command (`connection::admit`, as for `/ws`).
    let node = server.node().clone();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let Some(tenant) = node.tenants.resolve(path_tenant.as_deref(), host) else {
        return connection::refuse(server, HandshakeError::UnknownTenant);
    };
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !origin.to_str().is_ok_and(|o| tenant.origin_allowed(o))
    {
        return connection::refuse(server, HandshakeError::Origin);
    }
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = upgrade::switching(&up, server);
    let server = server.clone();
    let open = Open::new(&server);
    let config = upgrade::ws_config(&server);
    let limits = upgrade::transport_limits(&server);
    let span = tracing::info_span!("centrifuge.connection", tenant = %tenant.id, peer = %remote);
    let tenant_id = tenant.id.to_string();
    drop(tenant);
    connection::spawn(
        "centrifuge",
        async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            let metrics = node.metrics.clone();
            open.started("centrifuge");
            let (connect_id, token, rest) =
                match first_command(&mut ws, node.limits().handshake_timeout).await {
                    First::Connect { id, token, rest } => (id, token, rest),
                    First::Refuse(code, reason) => {
                        metrics.failed("centrifuge_connect");
                        close_raw(&mut ws, code, reason).await;
                        open.closed(code);
                        return;
                    }
                    First::Gone => {
                        open.closed(1006);
                        return;
                    }
                };
            // The request the auth policy sees: the upgrade's, with the
            // connect command's token as `Authorization: Bearer`.
            let mut auth_req = Request::new(());
            *auth_req.uri_mut() = uri;
            *auth_req.headers_mut() = headers;
            if !token.is_empty() {
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(v) => {
                        auth_req.headers_mut().insert(header::AUTHORIZATION, v);
                    }
                    Err(_) => {
                        metrics.rejected("unauthorized");
                        close_raw(&mut ws, codes::DISCONNECT_INVALID_TOKEN, "invalid token").await;
                        open.closed(codes::DISCONNECT_INVALID_TOKEN);
                        return;
                    }
                }
            }
            let admitted =
                match connection::admit(&server, &auth_req, remote, Some(tenant_id.as_str())) {
                    Ok(a) => a,
                    Err(e) => {
                        metrics.rejected(e.reason());
                        let (code, reason) = codes::refusal(&e);
                        tracing::debug!(error = %e, code, "centrifuge connect refused");
                        close_raw(&mut ws, code, reason).await;
                        open.closed(code);
                        return;
                    }
                };
            let _slot = admitted.slot; // this address's connection slot, held until the end
            let principal = admitted.principal.clone();
            let session = Session::open(
                node.clone(),
                admitted.tenant,
                Arc::from(admitted.client_id.as_str()),
                admitted.principal,
            )
            .traced(admitted.trace);
            let _listed = server
                .registry
                .register(&session, "centrifuge", admitted.remote);
            let mut handler = CentrifugeSession::new(session, principal, connect_id);
            if !rest.trim().is_empty()
                && let Err(code) = handler.on_text(Bytes::from(rest)).await
            {
                handler.outbox().close(code, true);
            }
            let ended = crate::websocket::drive(&mut ws, &mut handler, limits, &metrics).await;
            handler.into_session().close().await;
            open.closed(ended.code());
        }
        .instrument(span),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn wire() -> CentrifugeWire {
        CentrifugeWire::new(1, 25, true)
    }

    fn out(w: &CentrifugeWire, v1: &str) -> Option<Vec<Value>> {
        w.outgoing(Frame::from_string(v1.to_owned())).map(|f| {
            f.as_str()
                .split('\n')
                .map(|l| serde_json::from_str(l).expect("json"))
                .collect()
        })
    }

    #[test]
    fn welcome_becomes_the_connect_reply() {
        let w = wire();
        let r = out(
            &w,
            r#"{"type":"welcome","session":"s1","client":"c1","node":"n1","protocol":1,"heartbeatMs":25000}"#,
        )
        .expect("sent");
        assert_eq!(r[0]["id"], 1);
        assert_eq!(r[0]["connect"]["client"], "c1");
        assert_eq!(r[0]["connect"]["session"], "s1");
        assert_eq!(r[0]["connect"]["node"], "n1");
        assert_eq!(r[0]["connect"]["ping"], 25);
        assert_eq!(r[0]["connect"]["pong"], true);
        assert_eq!(w.keepalive().expect("ping").as_str(), "{}");
    }

    #[test]
    fn a_recovering_subscribe_carries_its_replayed_publications() {
        let w = wire();
        w.expect(
            2,
            Pending::Subscribe {
                recovering: true,
                since: 3,
            },
        );
        assert!(
            out(
                &w,
                r#"{"type":"subscribed","id":2,"channel":"room:1","epoch":"e","seq":5,"recovered":true}"#
            )
            .is_none()
        );
        assert!(
            out(
                &w,
                r#"{"type":"message","channel":"room:1","seq":4,"epoch":"e","data":{"n":4}}"#
            )
            .is_none()
        );
        let r = out(
            &w,
            r#"{"type":"message","channel":"room:1","seq":5,"epoch":"e","data":{"n":5}}"#,
        )
        .expect("reply");
        let s = &r[0]["subscribe"];
        assert_eq!(r[0]["id"], 2);
        assert_eq!(s["recovered"], true);
        assert_eq!(s["was_recovering"], true);
        assert_eq!(s["offset"], 5);
        assert_eq!(s["epoch"], "e");
        assert_eq!(s["publications"][0]["offset"], 4);
        assert_eq!(s["publications"][1]["data"]["n"], 5);
        // Live ones are pushes.
        let p = out(
            &w,
            r#"{"type":"message","channel":"room:1","seq":6,"epoch":"e","data":7}"#,
        )
        .expect("push");
        assert_eq!(p[0]["push"]["channel"], "room:1");
        assert_eq!(p[0]["push"]["pub"]["offset"], 6);
        assert_eq!(p[0]["push"]["pub"]["data"], 7);
    }

    #[test]
    fn a_reply_cut_short_goes_out_before_the_next_frame() {
        let w = wire();
        w.expect(
            2,
            Pending::Subscribe {
                recovering: true,
                since: 0,
            },
        );
        assert!(
            out(
                &w,
                r#"{"type":"subscribed","id":2,"channel":"room:1","epoch":"e","seq":2,"recovered":true}"#
            )
            .is_none()
        );
        let r = out(
            &w,
            r#"{"type":"message","channel":"room:2","seq":9,"epoch":"f","data":1}"#,
        )
        .expect("both");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["id"], 2);
        assert_eq!(r[0]["subscribe"]["publications"], serde_json::json!([]));
        assert_eq!(r[1]["push"]["channel"], "room:2");
        // Not recovering: the reply at once.
        w.expect(
            3,
            Pending::Subscribe {
                recovering: false,
                since: 0,
            },
        );
        let r = out(
            &w,
            r#"{"type":"subscribed","id":3,"channel":"room:3","epoch":"e","seq":7,"recovered":false}"#,
        )
        .expect("reply");
        assert_eq!(r[0]["subscribe"]["recovered"], false);
        assert_eq!(r[0]["subscribe"]["was_recovering"], false);
        assert_eq!(r[0]["subscribe"]["offset"], 7);
    }

    #[test]
    fn replies_errors_presence_and_pushes() {
        let w = wire();
        let r = out(&w, r#"{"type":"ack","id":4,"seq":1}"#).expect("ack");
        assert_eq!(r[0], serde_json::json!({"id":4,"publish":{}}));
        let r = out(
            &w,
            r#"{"type":"error","id":5,"code":"forbidden","message":"no"}"#,
        )
        .expect("error");
        assert_eq!(
            r[0],
            serde_json::json!({"id":5,"error":{"code":103,"message":"no"}})
        );
        let r = out(
            &w,
            r#"{"type":"error","id":6,"code":"rate_limited","message":"slow"}"#,
        )
        .expect("error");
        assert_eq!(r[0]["error"]["code"], 111);
        assert_eq!(r[0]["error"]["temporary"], true);
        let clients = r#"[{"client":"a","principal":"u1","node":"n"},{"client":"b","principal":"u1","node":"n"}]"#;
        let r = out(
            &w,
            &format!(r#"{{"type":"presence","id":7,"channel":"room:1","clients":{clients}}}"#),
        )
        .expect("presence");
        assert_eq!(r[0]["presence"]["presence"]["a"]["user"], "u1");
        assert_eq!(r[0]["presence"]["presence"]["b"]["client"], "b");
        w.expect(8, Pending::PresenceStats);
        let r = out(
            &w,
            &format!(r#"{{"type":"presence","id":8,"channel":"room:1","clients":{clients}}}"#),
        )
        .expect("stats");
        assert_eq!(
            r[0]["presence_stats"],
            serde_json::json!({"num_clients":2,"num_users":1})
        );
        let r = out(
            &w,
            "{\"type\":\"message\",\"channel\":\"room:1\",\"seq\":3,\"epoch\":\"e\",\"data\":{\"a\":\n[1,\n2]}}",
        )
        .expect("push");
        assert_eq!(r.len(), 1, "one line, whatever whitespace the data kept");
        assert_eq!(r[0]["push"]["pub"]["data"]["a"][1], 2);
        let r = out(&w, "{\"type\":\"direct\",\"data\":{\"x\":\n1}}").expect("direct");
        assert_eq!(r[0]["push"]["message"]["data"]["x"], 1);
        let r = out(&w, r#"{"type":"SERVER_SHUTDOWN","reconnectIn":2000}"#).expect("drain");
        assert_eq!(r[0]["push"]["disconnect"]["code"], 3001);
        assert!(out(&w, r#"{"type":"join","channel":"room:1"}"#).is_none());
        // The handler's own frames pass as they are.
        let r = out(&w, r#"{"id":9,"history":{"publications":[]}}"#).expect("own");
        assert_eq!(r[0]["id"], 9);
        assert!(
            w.outgoing(Frame::binary(Bytes::from_static(&[1])))
                .is_none()
        );
    }

    fn req(limit: i32, since: Option<(u64, &str)>, reverse: bool) -> HistoryReq {
        HistoryReq {
            channel: "room:h".into(),
            limit,
            since: since.map(|(offset, epoch)| Position {
                offset,
                epoch: epoch.into(),
            }),
            reverse,
        }
    }

    #[tokio::test]
    async fn history_windows_of_the_kept_messages() {
        let cfg = switchyard_core::config::Config::from_toml("").expect("cfg");
        let node = switchyard_core::Node::with_memory_broker(Arc::new(cfg));
        let key = ChannelKey::new("default", "room:h");
        let mut opts = node
            .tenants
            .get("default")
            .expect("tenant")
            .channel_options();
        opts.history_size = 3;
        for n in 1..=5 {
            let data = Arc::from(RawValue::from_string(n.to_string()).expect("raw"));
            node.broker
                .publish(
                    &key,
                    data,
                    &opts,
                    switchyard_core::broker::PublishMeta::default(),
                )
                .await
                .expect("publish");
        }
        let b = &*node.broker;
        let seqs = |r: &HistoryReply| r.pubs.iter().map(|m| m.seq).collect::<Vec<_>>();
        let all = history(b, &key, &opts, &req(-1, None, false))
            .await
            .expect("broker")
            .expect("ok");
        assert_eq!(seqs(&all), [3, 4, 5], "messages 1 and 2 were evicted");
        assert_eq!(all.top, 5);
        let epoch = all.epoch.clone();
        let pos = history(b, &key, &opts, &req(0, None, false))
            .await
            .expect("broker")
            .expect("ok");
        assert!(pos.pubs.is_empty());
        assert_eq!(pos.top, 5);
        let r = history(b, &key, &opts, &req(2, None, true))
            .await
            .expect("broker")
            .expect("ok");
        assert_eq!(seqs(&r), [5, 4]);
        let r = history(b, &key, &opts, &req(10, Some((3, &epoch)), false))
            .await
            .expect("broker")
            .expect("ok");
        assert_eq!(seqs(&r), [4, 5]);
        let r = history(b, &key, &opts, &req(10, Some((5, &epoch)), true))
            .await
            .expect("broker")
            .expect("ok");
        assert_eq!(seqs(&r), [4, 3]);
        for (since, what) in [((1, epoch.as_str()), "evicted"), ((4, "other"), "epoch")] {
            let r = history(b, &key, &opts, &req(10, Some(since), false))
                .await
                .expect("broker");
            assert_eq!(r.err(), Some(codes::UNRECOVERABLE_POSITION), "{what}");
        }
        // A window larger than what is kept (e.g. expired entries): found by search.
        let mut wide = opts;
        wide.history_size = 100;
        let r = history(b, &key, &wide, &req(-1, None, false))
            .await
            .expect("broker")
            .expect("ok");
        assert_eq!(seqs(&r), [3, 4, 5]);
    }

    #[test]
    fn close_codes_keep_the_reconnect_semantics() {
        assert_eq!(codes::close(CloseCode::RateLimited).0, 3013);
        assert_eq!(codes::close(CloseCode::Policy).0, 3509);
        assert_eq!(codes::close(CloseCode::SlowConsumer).0, 4008);
        assert_eq!(
            codes::refusal(&HandshakeError::Unauthorized("x".into())).0,
            3500
        );
        assert_eq!(
            codes::refusal(&HandshakeError::Forbidden("x".into())).0,
            3507
        );
        assert_eq!(codes::error("bad_channel").0, 102);
    }
}
