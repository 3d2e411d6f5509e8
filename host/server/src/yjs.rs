//! `GET /yjs/{tenant}/{room}`: the y-websocket protocol (y-protocols sync and
//! awareness, lib0 varUint framing) for the document channel `yjs:{room}`.
//!
//! This is a transport: it translates y-websocket messages into protocol v1
//! commands on an ordinary [`Session`] (one entry point: subscribe, binary
//! patches, publish) and the session's frames back into y-websocket messages
//! ([`YjsWire`]). So updates go through authorize-publish, the rate limits,
//! the tenant's merge policy (`plugins/yjs-merge`), the document log and every
//! node, like any v1 patch.
//!
//! | y-websocket in | becomes |
//! |---|---|
//! | sync step 1 (state vector) | first time: `subscribe` to `yjs:{room}` with the state vector (the `DIFF` goes out as step 2), then the server's own step 1; later: step 2 with the diff |
//! | sync step 2 / update | a binary `PATCH` on `yjs:{room}` |
//! | awareness update | `publish` (base64) on `yjs-awareness:{room}`, fanned out to the room on every node; the connection's awareness clients are removed (state `null`) when it closes |
//! | query awareness | the room's current awareness, as on joining (below) |
//!
//! **The room's current awareness for a joiner.** Every node keeps, per room,
//! the last accepted awareness state of each client its own y-websocket
//! connections announced ([`Room`], bounded: [`KEEP_STATE_MAX_BYTES`] per
//! state, [`KEEP_CONN_MAX_BYTES`] per connection, [`KEEP_ROOM_MAX_BYTES`] per
//! room; states not renewed for [`KEEP_FRESH`] are not replayed; a
//! connection's states leave with it). A joiner gets its own node's states
//! at once, and publishes a query `{"query":"<id>","node":"<node>"}` on
//! `yjs-awareness:{room}`; on every other node watching the room the first
//! local connection to see it answers for the whole node, once, with
//! `{"answer":"<id>","update":"<base64>"}` (in updates of about
//! [`ANSWER_CHUNK_BYTES`]), which only the asking connection writes to its
//! socket. So a join costs one publish per node of the room, not one per
//! client, and no node holds more than its own clients' states. A node
//! answers at most [`ANSWER_BURST`] queries per room at once and
//! [`ANSWER_RATE`] per second; a connection's query-awareness is served at
//! most once per [`QUERY_INTERVAL`].
//!
//! Outbound, `PATCH` frames become sync updates, `SNAPSHOT`/`DIFF` frames sync
//! step 2, awareness messages awareness updates; a refused subscribe or patch
//! (`forbidden`, `unauthorized`) becomes the auth message "permission denied"
//! and the connection closes. Every heartbeat sends an empty awareness update:
//! y-websocket clients close a socket that stayed silent for 30 s and do not
//! see pings.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use switchyard_core::backpressure::Outbox;
use switchyard_core::broker::PublishMeta;
use switchyard_core::document::frame::{self, Kind, StatePatch};
use switchyard_core::hub::SessionId;
use switchyard_core::node::Node;
use switchyard_core::protocol::{CloseCode, Frame};
use switchyard_core::refusal::Refusal;
use switchyard_core::session::{Handler, Session, WireFormat};
use switchyard_core::tenant::Tenant;

/// y-protocols message types.
const MSG_SYNC: u64 = 0;
const MSG_AWARENESS: u64 = 1;
const MSG_AUTH: u64 = 2;
const MSG_QUERY_AWARENESS: u64 = 3;
/// Sync message types.
const SYNC_STEP1: u64 = 0;
const SYNC_STEP2: u64 = 1;
const SYNC_UPDATE: u64 = 2;

/// Most awareness clients one connection may announce (bounds its removal list).
const MAX_AWARENESS_CLIENTS: usize = 64;
/// A larger awareness state is relayed but not kept for joiners.
pub const KEEP_STATE_MAX_BYTES: usize = 16 * 1024;
/// Most awareness state bytes kept per connection.
pub const KEEP_CONN_MAX_BYTES: usize = 64 * 1024;
/// Most awareness state bytes kept per room on one node.
pub const KEEP_ROOM_MAX_BYTES: usize = 1024 * 1024;
/// A kept state not renewed for this long is not replayed: y-protocols
/// clients renew theirs every 15 s and drop others' after 30 s of silence.
pub const KEEP_FRESH: Duration = Duration::from_secs(30);
/// An answer is sent as awareness updates of about this many state bytes.
pub const ANSWER_CHUNK_BYTES: usize = 32 * 1024;
/// Queries a node remembers having answered, per room (one answer per node).
const ANSWERED_QUERIES: usize = 256;
/// Queries a node answers per room: per second, and at once. Beyond them a
/// joiner learns the states from their renewals, as without answers.
pub const ANSWER_RATE: u32 = 20;
/// See [`ANSWER_RATE`].
pub const ANSWER_BURST: u32 = 100;
/// A connection's query-awareness messages are served at most this often.
pub const QUERY_INTERVAL: Duration = Duration::from_secs(1);
/// A connection's own recent queries, whose answers it writes to its socket.
const PENDING_QUERIES: usize = 4;
/// Awareness publishes of a connection waiting for their ack (then kept).
const UNACKED_PUBLISHES: usize = 16;

/// The document channel of a room.
pub fn doc_channel(room: &str) -> String {
    format!("yjs:{room}")
}

/// The awareness channel of a room.
pub fn awareness_channel(room: &str) -> String {
    format!("yjs-awareness:{room}")
}

/// lib0 encoding (unsigned LEB128 varints, length-prefixed byte arrays).
mod lib0 {
    pub fn write_var(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
        write_var(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// A reader over hostile bytes: every read is checked.
    pub struct Reader<'a> {
        pub buf: &'a [u8],
        pub pos: usize,
    }

    impl<'a> Reader<'a> {
        pub fn new(buf: &'a [u8]) -> Self {
            Self { buf, pos: 0 }
        }

        pub fn var(&mut self) -> Option<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *self.buf.get(self.pos)?;
                self.pos += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b < 0x80 {
                    return Some(v);
                }
            }
            None
        }

        pub fn bytes(&mut self) -> Option<&'a [u8]> {
            let len = usize::try_from(self.var()?).ok()?;
            let end = self.pos.checked_add(len)?;
            let b = self.buf.get(self.pos..end)?;
            self.pos = end;
            Some(b)
        }
    }
}

/// One message.
fn message(kind: u64, sub: Option<u64>, payload: &[u8]) -> Frame {
    let mut out = Vec::with_capacity(payload.len() + 12);
    lib0::write_var(&mut out, kind);
    if let Some(s) = sub {
        lib0::write_var(&mut out, s);
    }
    lib0::write_bytes(&mut out, payload);
    Frame::binary(Bytes::from(out))
}

/// The auth message "permission denied" with a reason.
fn permission_denied(reason: &str) -> Frame {
    message(MSG_AUTH, Some(0), reason.as_bytes())
}

/// The entries of an awareness update: `(client id, clock, state JSON)`.
/// `None` unless every state is JSON: y-protocols `JSON.parse`s what it is
/// relayed and throws out of the socket's message handler otherwise (an
/// uncaught exception that ends a Node client).
fn awareness_entries(update: &[u8]) -> Option<Vec<(u64, u64, &[u8])>> {
    let mut r = lib0::Reader::new(update);
    let n = usize::try_from(r.var()?).ok()?;
    if n > MAX_AWARENESS_CLIENTS * 16 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.var()?;
        let clock = r.var()?;
        let state = r.bytes()?;
        serde_json::from_slice::<serde::de::IgnoredAny>(state).ok()?;
        out.push((id, clock, state));
    }
    (r.pos == update.len()).then_some(out)
}

fn awareness_update(entries: &[(u64, u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    lib0::write_var(&mut out, entries.len() as u64);
    for (id, clock, state) in entries {
        lib0::write_var(&mut out, *id);
        lib0::write_var(&mut out, *clock);
        lib0::write_bytes(&mut out, state);
    }
    out
}

/// An awareness entry owned: `(client id, clock, state JSON)`.
type Entry = (u64, u64, Vec<u8>);

/// One kept awareness state.
#[derive(Debug)]
struct Kept {
    clock: u64,
    state: Vec<u8>,
    at: Instant,
}

/// `(node id, tenant id, room)`.
type RoomKey = (Arc<str>, Arc<str>, String);

/// Every room with a y-websocket connection on this process, by node (a
/// process normally runs one node; tests may run several).
static ROOMS: LazyLock<Mutex<HashMap<RoomKey, Weak<Room>>>> = LazyLock::new(Default::default);

/// The awareness of one room's clients as announced by this node's
/// connections: what this node tells a joiner.
#[derive(Debug)]
pub struct Room {
    key: RoomKey,
    state: Mutex<RoomState>,
}

#[derive(Debug, Default)]
struct RoomState {
    /// Per connection, its clients' last accepted states.
    conns: HashMap<SessionId, HashMap<u64, Kept>>,
    /// State bytes kept, all connections together.
    bytes: usize,
    /// Queries this node answered (most recent last).
    answered: VecDeque<String>,
    /// The budget of answers ([`ANSWER_RATE`]), made at the first query.
    answers: Option<switchyard_core::backpressure::TokenBucket>,
}

impl Room {
    /// The room `room` of `tenant` on node `node`, shared by its connections there.
    pub fn get(node: &str, tenant: &str, room: &str) -> Arc<Room> {
        let key: RoomKey = (Arc::from(node), Arc::from(tenant), room.to_owned());
        let mut rooms = ROOMS.lock();
        if let Some(r) = rooms.get(&key).and_then(Weak::upgrade) {
            return r;
        }
        let r = Arc::new(Room {
            key: key.clone(),
            state: Mutex::new(RoomState::default()),
        });
        rooms.insert(key, Arc::downgrade(&r));
        r
    }

    /// Removals apply at once: forgetting a state is always safe.
    fn forget_removed(&self, conn: SessionId, entries: &[(u64, u64, &[u8])]) {
        let mut st = self.state.lock();
        let st = &mut *st;
        if let Some(kept) = st.conns.get_mut(&conn) {
            for (id, _, state) in entries {
                if *state == b"null"
                    && let Some(k) = kept.remove(id)
                {
                    st.bytes -= k.state.len();
                }
            }
        }
    }

    /// A removal relayed to the room (a client left, on any node): no
    /// connection here keeps that client's state (y-websocket clients echo
    /// the states they learn, so others' connections may hold a copy).
    fn forget_left(&self, entries: &[(u64, u64, &[u8])]) {
        let mut st = self.state.lock();
        let st = &mut *st;
        for (id, clock, state) in entries {
            if *state != b"null" {
                continue;
            }
            for kept in st.conns.values_mut() {
                if kept.get(id).is_some_and(|k| k.clock <= *clock)
                    && let Some(k) = kept.remove(id)
                {
                    st.bytes -= k.state.len();
                }
            }
        }
    }

    /// Keeps the states of an accepted awareness update of `conn`, within the bounds.
    fn keep(&self, conn: SessionId, entries: Vec<Entry>, now: Instant) {
        let mut st = self.state.lock();
        let st = &mut *st;
        let kept = st.conns.entry(conn).or_default();
        for (id, clock, state) in entries {
            if let Some(old) = kept.get(&id) {
                if old.clock > clock {
                    continue;
                }
                st.bytes -= old.state.len();
                kept.remove(&id);
            }
            if state == b"null" || state.len() > KEEP_STATE_MAX_BYTES {
                continue;
            }
            let conn_bytes: usize = kept.values().map(|k| k.state.len()).sum();
            if kept.len() >= MAX_AWARENESS_CLIENTS
                || conn_bytes + state.len() > KEEP_CONN_MAX_BYTES
                || st.bytes + state.len() > KEEP_ROOM_MAX_BYTES
            {
                continue;
            }
            st.bytes += state.len();
            kept.insert(
                id,
                Kept {
                    clock,
                    state,
                    at: now,
                },
            );
        }
    }

    /// Forgets everything `conn` announced.
    fn forget(&self, conn: SessionId) {
        let mut st = self.state.lock();
        if let Some(kept) = st.conns.remove(&conn) {
            st.bytes -= kept.values().map(|k| k.state.len()).sum::<usize>();
        }
    }

    /// The fresh states kept, newest clock per client, as awareness updates
    /// of about [`ANSWER_CHUNK_BYTES`] each (none when nothing is kept).
    fn updates(&self, now: Instant) -> Vec<Vec<u8>> {
        let st = self.state.lock();
        st.updates(now)
    }

    /// Like [`Room::updates`], once per `query` (empty when already answered).
    fn answer_once(&self, query: &str, now: Instant) -> Vec<Vec<u8>> {
        let mut st = self.state.lock();
        if st.answered.iter().any(|q| q == query) {
            return Vec::new();
        }
        let budget = st.answers.get_or_insert_with(|| {
            switchyard_core::backpressure::TokenBucket::new(ANSWER_RATE, ANSWER_BURST, now)
        });
        if !budget.try_take(now, 1) {
            return Vec::new();
        }
        if st.answered.len() >= ANSWERED_QUERIES {
            st.answered.pop_front();
        }
        st.answered.push_back(query.to_owned());
        st.updates(now)
    }
}

impl RoomState {
    fn updates(&self, now: Instant) -> Vec<Vec<u8>> {
        let mut newest: HashMap<u64, (u64, &[u8])> = HashMap::new();
        for kept in self.conns.values() {
            for (id, k) in kept {
                if now.saturating_duration_since(k.at) > KEEP_FRESH {
                    continue;
                }
                let e = newest.entry(*id).or_insert((k.clock, &k.state));
                if k.clock > e.0 {
                    *e = (k.clock, &k.state);
                }
            }
        }
        let mut out = Vec::new();
        let mut chunk: Vec<(u64, u64, &[u8])> = Vec::new();
        let mut bytes = 0;
        for (id, (clock, state)) in newest {
            chunk.push((id, clock, state));
            bytes += state.len();
            if bytes >= ANSWER_CHUNK_BYTES {
                out.push(awareness_update(&chunk));
                chunk.clear();
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            out.push(awareness_update(&chunk));
        }
        out
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let mut rooms = ROOMS.lock();
        // A new Room may already have replaced this one under the same key.
        if rooms.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            rooms.remove(&self.key);
        }
    }
}

/// A connection's place in its [`Room`]: its states leave with it.
#[derive(Debug)]
struct Member {
    room: Arc<Room>,
    conn: SessionId,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.room.forget(self.conn);
    }
}

/// Where a node's answers to other nodes' queries are published.
struct Answerer {
    node: Arc<Node>,
    tenant: Arc<Tenant>,
}

/// What a `yjs-awareness:{room}` message carries.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AwarenessData {
    /// An awareness update, base64 (y-websocket clients and v1 clients publish these).
    Update(String),
    /// A node's answer to a query: written only by the connection that asked.
    Answer { answer: String, update: String },
    /// A joiner's query: every other node answers with its clients' states.
    Query { query: String, node: String },
}

/// Outbound translation (runs on the connection's writer).
pub struct YjsWire {
    awareness_channel: String,
    /// This node: its own queries were answered locally.
    node_id: Arc<str>,
    room: Arc<Room>,
    conn: SessionId,
    /// `None` in unit tests: queries are not answered.
    answerer: Option<Answerer>,
    /// This connection's recent queries.
    pending: Mutex<VecDeque<String>>,
    /// This connection's awareness publishes by command id, kept once acked.
    unacked: Mutex<VecDeque<(u64, Vec<Entry>)>>,
}

impl YjsWire {
    fn new(
        awareness_channel: String,
        node_id: Arc<str>,
        room: Arc<Room>,
        conn: SessionId,
        answerer: Option<Answerer>,
    ) -> Self {
        Self {
            awareness_channel,
            node_id,
            room,
            conn,
            answerer,
            pending: Mutex::new(VecDeque::new()),
            unacked: Mutex::new(VecDeque::new()),
        }
    }

    /// Answers to `query` will be written to this connection's socket.
    fn expect_answers(&self, query: String) {
        let mut p = self.pending.lock();
        if p.len() >= PENDING_QUERIES {
            p.pop_front();
        }
        p.push_back(query);
    }

    /// The states of awareness publish `id` are kept once it is acked.
    fn keep_when_acked(&self, id: u64, entries: Vec<Entry>) {
        let mut u = self.unacked.lock();
        if u.len() >= UNACKED_PUBLISHES {
            u.pop_front();
        }
        u.push_back((id, entries));
    }

    /// The reply to command `id`: an acked awareness publish is kept.
    fn replied(&self, id: u64, accepted: bool) {
        let entries = {
            let mut u = self.unacked.lock();
            let Some(i) = u.iter().position(|(c, _)| *c == id) else {
                return;
            };
            u.remove(i).map(|(_, e)| e)
        };
        if accepted && let Some(entries) = entries {
            self.room.keep(self.conn, entries, Instant::now());
        }
    }

    /// Another node's joiner asked: answer for this node, once per query.
    fn answer(&self, query: String) {
        let Some(a) = &self.answerer else { return };
        let updates = self.room.answer_once(&query, Instant::now());
        if updates.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (node, tenant) = (a.node.clone(), a.tenant.clone());
        let channel = self.awareness_channel.clone();
        rt.spawn(async move {
            let key =
                switchyard_core::channel::ChannelKey::new(tenant.id.clone(), channel.as_str());
            let opts = tenant.publish_options(&channel);
            for update in updates {
                let data = serde_json::json!({"answer": query, "update": BASE64.encode(&update)});
                let Ok(raw) = serde_json::value::RawValue::from_string(data.to_string()) else {
                    return;
                };
                if let Err(e) = node
                    .broker
                    .publish(&key, Arc::from(raw), &opts, PublishMeta::default())
                    .await
                {
                    tracing::debug!(error = %e, "awareness answer not published");
                    return;
                }
            }
        });
    }

    fn awareness_message(&self, data: &serde_json::value::RawValue) -> Option<Frame> {
        match serde_json::from_str::<AwarenessData>(data.get()).ok()? {
            AwarenessData::Update(b64) => {
                let update = BASE64.decode(b64.as_bytes()).ok()?;
                // Published by anyone who may publish to the channel (a v1
                // client too): only well-formed updates reach y-websocket clients.
                let entries = awareness_entries(&update)?;
                if entries.iter().any(|(_, _, s)| *s == b"null") {
                    // Before any later query on the channel is answered.
                    self.room.forget_left(&entries);
                }
                Some(message(MSG_AWARENESS, None, &update))
            }
            AwarenessData::Answer { answer, update } => {
                if !self.pending.lock().contains(&answer) {
                    return None;
                }
                let update = BASE64.decode(update.as_bytes()).ok()?;
                awareness_entries(&update)?;
                Some(message(MSG_AWARENESS, None, &update))
            }
            AwarenessData::Query { query, node } => {
                if *node != *self.node_id {
                    self.answer(query);
                }
                None
            }
        }
    }
}

impl WireFormat for YjsWire {
    fn transport(&self) -> &'static str {
        "yjs"
    }

    fn outgoing(&self, frame: Frame) -> Option<Frame> {
        if frame.is_binary() {
            let b = frame.bytes();
            // Already a y-websocket message (queued by the handler): its first
            // byte is a message type 0-3, never a protobuf tag (>= 0x08).
            if b.first().is_some_and(|t| *t <= 3) {
                return Some(frame);
            }
            let p = StatePatch::decode(&b[..]).ok()?;
            let sub = if p.kind == Kind::Patch as i32 {
                SYNC_UPDATE
            } else {
                SYNC_STEP2
            };
            return Some(message(MSG_SYNC, Some(sub), &p.delta));
        }
        #[derive(serde::Deserialize)]
        struct V1<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            id: Option<u64>,
            channel: Option<String>,
            #[serde(borrow)]
            data: Option<&'a serde_json::value::RawValue>,
            code: Option<String>,
            message: Option<String>,
        }
        let v: V1<'_> = serde_json::from_str(frame.as_str()).ok()?;
        if let Some(id) = v.id {
            self.replied(id, v.kind == "ack");
        }
        match v.kind {
            "message" if v.channel.as_deref() == Some(self.awareness_channel.as_str()) => {
                self.awareness_message(v.data?)
            }
            "error" => match v.code.as_deref() {
                Some("forbidden" | "unauthorized") => Some(permission_denied(
                    v.message.as_deref().unwrap_or("permission denied"),
                )),
                _ => {
                    tracing::debug!(code = ?v.code, message = ?v.message, "y-websocket command refused");
                    None
                }
            },
            _ => None,
        }
    }

    fn keepalive(&self) -> Option<Frame> {
        // An awareness update with no clients: a data frame that changes nothing.
        Some(message(MSG_AWARENESS, None, &[0]))
    }
}

/// Tells a refused client "permission denied", then closes with 4001 and
/// reads until the client's close reply (at most 3 s): dropping the socket
/// with the client's messages unread (its sync step 1, sent on open) makes
/// the kernel reset the connection, and the client may then never see the
/// auth message or the close frame (it reports 1006).
pub async fn refuse<S>(ws: &mut S, reason: &str)
where
    S: futures_util::Sink<tokio_tungstenite::tungstenite::Message>
        + futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let denied = permission_denied(reason);
    let close = Message::Close(Some(CloseFrame {
        code: 4001.into(),
        reason: "unauthorized".into(),
    }));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        if ws.send(Message::Binary(denied.into_bytes())).await.is_err()
            || ws.send(close).await.is_err()
        {
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

/// A y-websocket connection: the v1 session it drives and the room's state.
pub struct YjsSession {
    session: Session,
    wire: Arc<YjsWire>,
    doc: String,
    awareness: String,
    /// Awareness clients this connection announced, with their last clock.
    clients: HashMap<u64, u64>,
    /// Its states kept in the room (for joiners).
    member: Member,
    /// When its last query-awareness was served.
    last_query: Option<Instant>,
    synced: bool,
    next_id: u64,
}

impl std::fmt::Debug for YjsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YjsSession")
            .field("doc", &self.doc)
            .finish_non_exhaustive()
    }
}

impl YjsSession {
    /// Wraps an open session for `room`.
    pub fn new(session: Session, room: &str) -> Self {
        let awareness = awareness_channel(room);
        let node = session.node().clone();
        let shared = Room::get(&node.id, &session.tenant().id, room);
        let conn = session.id();
        let wire = YjsWire::new(
            awareness.clone(),
            node.id.clone(),
            shared.clone(),
            conn,
            Some(Answerer {
                node,
                tenant: session.tenant().clone(),
            }),
        );
        Self {
            session,
            wire: Arc::new(wire),
            doc: doc_channel(room),
            awareness,
            clients: HashMap::new(),
            member: Member { room: shared, conn },
            last_query: None,
            synced: false,
            next_id: 1,
        }
    }

    /// The v1 session (for teardown).
    pub fn into_session(self) -> Session {
        self.session
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn push(&self, frame: Frame) {
        let _ = self.session.outbox().push_frame(frame);
    }

    async fn command(&mut self, cmd: serde_json::Value) -> Result<(), CloseCode> {
        self.session.handle_text(&cmd.to_string()).await
    }

    /// Subscribes to the room (with the client's state vector when it sent
    /// one) and sends the server's sync step 1. A refusal closes.
    async fn join(&mut self, state_vector: Option<&[u8]>) -> Result<(), CloseCode> {
        self.synced = true;
        let id = self.id();
        let mut cmd = serde_json::json!({"type":"subscribe","id":id,"channel":self.doc});
        if let Some(sv) = state_vector {
            cmd["stateVector"] = BASE64.encode(sv).into();
        }
        self.command(cmd).await?;
        let aw = self.id();
        self.command(serde_json::json!({"type":"subscribe","id":aw,"channel":self.awareness}))
            .await?;
        if !self.session.is_subscribed(&self.doc) || !self.session.is_subscribed(&self.awareness) {
            // The `error` reply became "permission denied"; then close.
            return Err(Refusal::Forbidden.close_code());
        }
        let key = switchyard_core::channel::ChannelKey::new(
            self.session.tenant().id.clone(),
            self.doc.as_str(),
        );
        let node = self.session.node().clone();
        let sv = node
            .documents
            .state_vector(self.session.tenant(), &key)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0]);
        self.push(message(MSG_SYNC, Some(SYNC_STEP1), &sv));
        self.room_awareness().await
    }

    /// Sends the room's current awareness: this node's kept states at once,
    /// and a query the other nodes answer (see the module docs).
    async fn room_awareness(&mut self) -> Result<(), CloseCode> {
        for update in self.member.room.updates(Instant::now()) {
            self.push(message(MSG_AWARENESS, None, &update));
        }
        let node = self.session.node().clone();
        if node.broker.kind() == "memory" {
            // One node: nobody else to ask.
            return Ok(());
        }
        let n = self.id();
        let query = format!("{}.{n}", self.session.name());
        self.wire.expect_answers(query.clone());
        let id = self.id();
        self.command(serde_json::json!({
            "type": "publish", "id": id, "channel": self.awareness,
            "data": {"query": query, "node": &*node.id},
        }))
        .await
    }

    async fn sync(&mut self, r: &mut lib0::Reader<'_>) -> Result<(), CloseCode> {
        let (Some(kind), Some(payload)) = (r.var(), r.bytes()) else {
            return self.bad("truncated sync message");
        };
        match kind {
            SYNC_STEP1 if !self.synced => self.join(Some(payload)).await,
            SYNC_STEP1 => {
                let key = switchyard_core::channel::ChannelKey::new(
                    self.session.tenant().id.clone(),
                    self.doc.as_str(),
                );
                let node = self.session.node().clone();
                match node
                    .documents
                    .diff(self.session.tenant(), &key, payload)
                    .await
                {
                    Ok(Some(d)) => self.push(message(MSG_SYNC, Some(SYNC_STEP2), &d)),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "y-websocket diff failed"),
                }
                Ok(())
            }
            SYNC_STEP2 | SYNC_UPDATE => {
                if !self.synced {
                    self.join(None).await?;
                }
                // y-protocols' "empty" update (no structs, no deletes) changes nothing.
                if payload == [0, 0] {
                    return Ok(());
                }
                let id = self.id();
                let frame = StatePatch {
                    id,
                    channel: self.doc.clone(),
                    delta: Bytes::copy_from_slice(payload),
                    kind: Kind::Patch as i32,
                    ..Default::default()
                };
                let bytes = frame::encode(&frame);
                self.session.handle_binary(bytes.bytes()).await
            }
            _ => self.bad("unknown sync message"),
        }
    }

    async fn awareness_in(&mut self, r: &mut lib0::Reader<'_>) -> Result<(), CloseCode> {
        let Some(update) = r.bytes() else {
            return self.bad("truncated awareness message");
        };
        let Some(entries) = awareness_entries(update) else {
            return self.bad("malformed awareness update");
        };
        for (id, clock, state) in &entries {
            if state == b"null" {
                self.clients.remove(id);
            } else if self.clients.len() < MAX_AWARENESS_CLIENTS || self.clients.contains_key(id) {
                self.clients.insert(*id, *clock);
            }
        }
        self.member.room.forget_removed(self.member.conn, &entries);
        let owned: Vec<Entry> = entries
            .iter()
            .map(|(id, clock, state)| (*id, *clock, state.to_vec()))
            .collect();
        if !self.synced {
            self.join(None).await?;
        }
        let id = self.id();
        // Kept for joiners only once the publish is accepted (authorized, in rate).
        self.wire.keep_when_acked(id, owned);
        self.command(serde_json::json!({
            "type": "publish", "id": id, "channel": self.awareness, "data": BASE64.encode(update),
        }))
        .await
    }

    fn bad(&self, what: &str) -> Result<(), CloseCode> {
        tracing::debug!(what, "bad y-websocket message");
        self.session.node().metrics.failed("yjs_malformed");
        Ok(())
    }

    /// Announces that this connection's awareness clients left.
    pub async fn leave(&mut self) {
        self.member.room.forget(self.member.conn);
        if self.clients.is_empty() || !self.session.is_subscribed(&self.awareness) {
            return;
        }
        let gone: Vec<(u64, u64, &[u8])> = self
            .clients
            .iter()
            .map(|(id, clock)| (*id, clock + 1, &b"null"[..]))
            .collect();
        let update = awareness_update(&gone);
        let id = self.id();
        let _ = self
            .command(serde_json::json!({
                "type": "publish", "id": id, "channel": self.awareness, "data": BASE64.encode(update),
            }))
            .await;
        self.clients.clear();
    }
}

impl Handler for YjsSession {
    async fn on_text(&mut self, _text: Bytes) -> Result<(), CloseCode> {
        // y-websocket speaks binary only.
        self.session.node().metrics.failed("yjs_text");
        Ok(())
    }

    async fn on_binary(&mut self, data: Bytes) -> Result<(), CloseCode> {
        let mut r = lib0::Reader::new(&data);
        match r.var() {
            Some(MSG_SYNC) => self.sync(&mut r).await,
            Some(MSG_AWARENESS) => self.awareness_in(&mut r).await,
            // Joining sends the room's awareness anyway.
            Some(MSG_QUERY_AWARENESS) if !self.synced => self.join(None).await,
            Some(MSG_QUERY_AWARENESS) => {
                let now = Instant::now();
                if self
                    .last_query
                    .is_some_and(|t| now.duration_since(t) < QUERY_INTERVAL)
                {
                    self.session.node().metrics.failed("yjs_query_ignored");
                    return Ok(());
                }
                self.last_query = Some(now);
                self.room_awareness().await
            }
            Some(MSG_AUTH) => Ok(()),
            _ => self.bad("unknown message type"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awareness_updates_round_trip_and_hostile_ones_are_refused() {
        let u = awareness_update(&[(7, 3, b"{\"user\":1}"), (300, 1, b"null")]);
        assert_eq!(
            awareness_entries(&u),
            Some(vec![(7, 3, &b"{\"user\":1}"[..]), (300, 1, &b"null"[..])])
        );
        let not_json = awareness_update(&[(7, 3, b"{\"user\":1}"), (8, 1, b"not json{")]);
        for bad in [
            &b""[..],
            &[1],
            &[1, 7, 3, 9, b'x'],
            &[0xff; 12],
            &[0, 0],
            &not_json[..],
        ] {
            assert_eq!(awareness_entries(bad), None, "{bad:?}");
        }
        assert_eq!(awareness_entries(&[0]), Some(vec![]));
    }

    #[test]
    fn frames_become_y_websocket_messages() {
        let room = Room::get("frames-node", "t", "r");
        let wire = YjsWire::new(
            "yjs-awareness:r".into(),
            Arc::from("frames-node"),
            room.clone(),
            1,
            None,
        );
        let patch = frame::encode(&StatePatch {
            version: 3,
            delta: Bytes::from_static(&[1, 2, 3]),
            kind: Kind::Patch as i32,
            ..Default::default()
        });
        let out = wire.outgoing(patch).expect("sent");
        assert_eq!(
            &out.bytes()[..],
            [MSG_SYNC as u8, SYNC_UPDATE as u8, 3, 1, 2, 3]
        );
        let snap = frame::encode(&StatePatch {
            delta: Bytes::from_static(&[9]),
            kind: Kind::Snapshot as i32,
            ..Default::default()
        });
        assert_eq!(
            &wire.outgoing(snap).expect("sent").bytes()[..],
            [MSG_SYNC as u8, SYNC_STEP2 as u8, 1, 9]
        );
        let aw = awareness_update(&[(5, 1, b"{}")]);
        let msg = Frame::from_string(format!(
            r#"{{"type":"message","channel":"yjs-awareness:r","seq":1,"epoch":"e","data":"{}"}}"#,
            BASE64.encode(&aw)
        ));
        let out = wire.outgoing(msg).expect("sent");
        assert_eq!(out.bytes()[0], MSG_AWARENESS as u8);
        assert!(room.updates(Instant::now()).is_empty(), "relayed, not kept");
        let not_json = awareness_update(&[(6, 1, b"not json{")]);
        let msg = Frame::from_string(format!(
            r#"{{"type":"message","channel":"yjs-awareness:r","seq":2,"epoch":"e","data":"{}"}}"#,
            BASE64.encode(&not_json)
        ));
        assert!(
            wire.outgoing(msg).is_none(),
            "a state that is not JSON is not relayed"
        );
        // This connection's own publish is kept once acked, not when refused.
        wire.keep_when_acked(7, vec![(5, 1, b"{}".to_vec())]);
        wire.keep_when_acked(8, vec![(9, 1, b"{}".to_vec())]);
        let ack = Frame::from_string(r#"{"type":"ack","id":7,"seq":3}"#.into());
        assert!(wire.outgoing(ack).is_none());
        let refused = Frame::from_string(
            r#"{"type":"error","id":8,"code":"rate_limited","message":"x"}"#.into(),
        );
        assert!(wire.outgoing(refused).is_none());
        assert_eq!(room.updates(Instant::now()), vec![aw.clone()]);
        // Answers reach only the connection that asked.
        let answer = Frame::from_string(format!(
            r#"{{"type":"message","channel":"yjs-awareness:r","seq":3,"epoch":"e","data":{{"answer":"q1","update":"{}"}}}}"#,
            BASE64.encode(&aw)
        ));
        assert!(wire.outgoing(answer.clone()).is_none(), "not asked");
        wire.expect_answers("q1".into());
        let out = wire.outgoing(answer).expect("asked");
        assert_eq!(
            &out.bytes()[..],
            &message(MSG_AWARENESS, None, &aw).bytes()[..]
        );
        // A query is answered by the other nodes, never written to a socket.
        let query = Frame::from_string(
            r#"{"type":"message","channel":"yjs-awareness:r","seq":4,"epoch":"e","data":{"query":"q2","node":"elsewhere"}}"#.into(),
        );
        assert!(wire.outgoing(query).is_none());
        let denied = Frame::from_string(
            r#"{"type":"error","id":2,"code":"forbidden","message":"no"}"#.into(),
        );
        assert_eq!(wire.outgoing(denied).expect("sent").bytes()[..2], [2, 0]);
        for dropped in [
            r#"{"type":"welcome","session":"s"}"#,
            r#"{"type":"ack","id":3,"version":4}"#,
            r#"{"type":"error","id":3,"code":"invalid","message":"x"}"#,
        ] {
            assert!(wire.outgoing(Frame::from_string(dropped.into())).is_none());
        }
        let passthrough = message(MSG_SYNC, Some(SYNC_STEP1), &[0]);
        assert_eq!(wire.outgoing(passthrough.clone()), Some(passthrough));
    }

    #[test]
    fn a_room_keeps_bounded_fresh_states_per_connection() {
        let room = Room::get("bounds-node", "t", "r");
        let t0 = Instant::now();
        let states = |room: &Room, now| -> Vec<(u64, u64, Vec<u8>)> {
            let mut all: Vec<_> = room
                .updates(now)
                .iter()
                .flat_map(|u| {
                    awareness_entries(u)
                        .expect("well-formed")
                        .into_iter()
                        .map(|(i, c, s)| (i, c, s.to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect();
            all.sort();
            all
        };
        room.keep(1, vec![(10, 2, b"{\"a\":1}".to_vec())], t0);
        // An older clock does not replace a newer state; the newest across connections wins.
        room.keep(1, vec![(10, 1, b"{\"a\":0}".to_vec())], t0);
        room.keep(2, vec![(10, 3, b"{\"a\":3}".to_vec())], t0);
        room.keep(2, vec![(11, 1, vec![b'1'; KEEP_STATE_MAX_BYTES + 1])], t0);
        assert_eq!(states(&room, t0), vec![(10, 3, b"{\"a\":3}".to_vec())]);
        // A removal forgets; a connection's states leave with it.
        room.forget_removed(2, &[(10, 4, &b"null"[..])]);
        assert_eq!(states(&room, t0), vec![(10, 2, b"{\"a\":1}".to_vec())]);
        room.keep(2, vec![(10, 3, b"{\"a\":3}".to_vec())], t0);
        room.forget_left(&[(10, 2, &b"null"[..])]);
        assert_eq!(
            states(&room, t0).len(),
            1,
            "a removal older than the state is not applied"
        );
        room.forget_left(&[(10, 3, &b"null"[..])]);
        assert!(
            states(&room, t0).is_empty(),
            "every connection's copy is gone"
        );
        room.forget(1);
        room.forget(2);
        assert!(states(&room, t0).is_empty());
        assert_eq!(room.state.lock().bytes, 0);
        // Per connection: at most MAX_AWARENESS_CLIENTS clients and KEEP_CONN_MAX_BYTES.
        let many = (0..200u64).map(|i| (i, 1, b"{}".to_vec())).collect();
        room.keep(3, many, t0);
        assert_eq!(states(&room, t0).len(), MAX_AWARENESS_CLIENTS);
        room.forget(3);
        let big = vec![b'1'; KEEP_STATE_MAX_BYTES];
        room.keep(4, (0..10u64).map(|i| (i, 1, big.clone())).collect(), t0);
        assert_eq!(states(&room, t0).len(), KEEP_CONN_MAX_BYTES / big.len());
        // Per room: at most KEEP_ROOM_MAX_BYTES over all connections.
        for conn in 5..100 {
            room.keep(
                conn,
                (0..4u64).map(|i| (conn * 10 + i, 1, big.clone())).collect(),
                t0,
            );
        }
        let st = room.state.lock().bytes;
        assert!(st <= KEEP_ROOM_MAX_BYTES, "{st}");
        assert!(st + big.len() > KEEP_ROOM_MAX_BYTES, "filled: {st}");
        // Answers come in chunks of about ANSWER_CHUNK_BYTES; stale states are not replayed.
        let updates = room.updates(t0);
        assert!(
            updates.len() >= KEEP_ROOM_MAX_BYTES / ANSWER_CHUNK_BYTES,
            "{}",
            updates.len()
        );
        assert!(
            updates
                .iter()
                .all(|u| u.len() <= ANSWER_CHUNK_BYTES + big.len() + 64)
        );
        assert!(
            room.updates(t0 + KEEP_FRESH + Duration::from_secs(1))
                .is_empty()
        );
        // A node answers a query once, whichever of its connections sees it first.
        assert!(!room.answer_once("q", t0).is_empty());
        assert!(room.answer_once("q", t0).is_empty());
        // At most ANSWER_BURST answers at once, then ANSWER_RATE per second.
        let answered = (0..2 * ANSWER_BURST)
            .filter(|i| !room.answer_once(&format!("burst-{i}"), t0).is_empty())
            .count();
        assert_eq!(answered, ANSWER_BURST as usize - 1);
        assert!(
            !room
                .answer_once("later", t0 + Duration::from_secs(1))
                .is_empty()
        );
        // The registry holds a room while a connection does.
        let again = Room::get("bounds-node", "t", "r");
        assert!(Arc::ptr_eq(&room, &again));
        drop((room, again));
        assert!(!ROOMS.lock().keys().any(|k| &*k.0 == "bounds-node"));
    }
}
