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
//! | query awareness | the awareness states this connection has seen |
//!
//! Outbound, `PATCH` frames become sync updates, `SNAPSHOT`/`DIFF` frames sync
//! step 2, awareness messages awareness updates; a refused subscribe or patch
//! (`forbidden`, `unauthorized`) becomes the auth message "permission denied"
//! and the connection closes. Every heartbeat sends an empty awareness update:
//! y-websocket clients close a socket that stayed silent for 30 s and do not
//! see pings.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use switchyard_core::backpressure::Outbox;
use switchyard_core::document::frame::{self, Kind, StatePatch};
use switchyard_core::protocol::{CloseCode, Frame};
use switchyard_core::session::{Handler, Session, WireFormat};

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

/// Outbound translation (runs on the connection's writer).
pub struct YjsWire {
    awareness_channel: String,
    /// Latest awareness entry per client seen on this connection (for query-awareness).
    seen: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
}

impl YjsWire {
    fn remember(&self, update: &[u8]) {
        if let Some(entries) = awareness_entries(update) {
            let mut seen = self.seen.lock();
            for (id, clock, state) in entries {
                if state == b"null" {
                    seen.remove(&id);
                } else if seen.len() < MAX_AWARENESS_CLIENTS * 16 || seen.contains_key(&id) {
                    seen.insert(id, (clock, state.to_vec()));
                }
            }
        }
    }

    fn known_awareness(&self) -> Vec<u8> {
        let seen = self.seen.lock();
        let entries: Vec<(u64, u64, &[u8])> = seen
            .iter()
            .map(|(id, (clock, state))| (*id, *clock, state.as_slice()))
            .collect();
        awareness_update(&entries)
    }
}

impl WireFormat for YjsWire {
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
            channel: Option<String>,
            data: Option<String>,
            code: Option<String>,
            message: Option<String>,
        }
        let v: V1<'_> = serde_json::from_str(frame.as_str()).ok()?;
        match v.kind {
            "message" if v.channel.as_deref() == Some(self.awareness_channel.as_str()) => {
                let update = BASE64.decode(v.data?.as_bytes()).ok()?;
                // Published by anyone who may publish to the channel (a v1
                // client too): only well-formed updates reach y-websocket clients.
                awareness_entries(&update)?;
                self.remember(&update);
                Some(message(MSG_AWARENESS, None, &update))
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
        Self {
            session,
            wire: Arc::new(YjsWire {
                awareness_channel: awareness.clone(),
                seen: Mutex::new(HashMap::new()),
            }),
            doc: doc_channel(room),
            awareness,
            clients: HashMap::new(),
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
            return Err(CloseCode::Forbidden);
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
        Ok(())
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
        if !self.synced {
            self.join(None).await?;
        }
        let id = self.id();
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
            Some(MSG_QUERY_AWARENESS) => {
                self.push(message(MSG_AWARENESS, None, &self.wire.known_awareness()));
                Ok(())
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
        let wire = YjsWire {
            awareness_channel: "yjs-awareness:r".into(),
            seen: Mutex::new(HashMap::new()),
        };
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
        assert_eq!(wire.known_awareness(), aw, "remembered for query-awareness");
        let not_json = awareness_update(&[(6, 1, b"not json{")]);
        let msg = Frame::from_string(format!(
            r#"{{"type":"message","channel":"yjs-awareness:r","seq":2,"epoch":"e","data":"{}"}}"#,
            BASE64.encode(&not_json)
        ));
        assert!(
            wire.outgoing(msg).is_none(),
            "a state that is not JSON is not relayed"
        );
        assert_eq!(wire.known_awareness(), aw, "nor remembered");
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
}
