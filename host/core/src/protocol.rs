//! Wire protocol v1: client commands (parsed) and server messages (encoded once).
//!
//! See `docs/protocol.md`. Unknown fields are ignored; an unknown `type` is an
//! [`ParseError::UnknownType`] that the session answers with an `error` reply.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// WebSocket subprotocol of this version.
pub const SUBPROTOCOL: &str = "switchyard.v1";
/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A command id as sent by the client (number or string), echoed verbatim.
pub type CommandId = Box<RawValue>;

/// Position in a channel stream: the last seq a client saw in an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Channel epoch the seq belongs to.
    pub epoch: String,
    /// Last seq seen (on a document channel: the last version, sent as `version`).
    #[serde(alias = "version")]
    pub seq: u64,
}

/// A parsed client command.
#[derive(Debug)]
pub enum Command {
    /// Subscribe to a channel, optionally recovering from a position.
    Subscribe {
        /// Command id.
        id: Option<CommandId>,
        /// Channel name.
        channel: String,
        /// Recovery position.
        since: Option<StreamPosition>,
        /// Document channels: base64 state vector asking for a `DIFF`.
        state_vector: Option<String>,
        /// `"presence":true`: also send `join`/`leave` frames for the channel.
        presence: bool,
    },
    /// Leave a channel.
    Unsubscribe {
        /// Command id.
        id: Option<CommandId>,
        /// Channel name.
        channel: String,
    },
    /// Publish JSON data on a channel.
    Publish {
        /// Command id.
        id: Option<CommandId>,
        /// Channel name.
        channel: String,
        /// Raw JSON payload (kept as sent, never re-encoded).
        data: Box<RawValue>,
        /// Client message id for dedupe.
        msg_id: Option<String>,
        /// A valid W3C `"traceparent"` field: the parent of the publish span.
        /// Read only while tracing is on (else always `None`); an invalid one
        /// is ignored.
        traceparent: Option<crate::telemetry::TraceParent>,
        /// `"skipSelf":true`: not delivered back to the publishing connection.
        skip_self: bool,
    },
    /// Application-level ping.
    Ping {
        /// Command id.
        id: Option<CommandId>,
    },
    /// Ask who is in a channel.
    Presence {
        /// Command id.
        id: Option<CommandId>,
        /// Channel name.
        channel: String,
    },
}

impl Command {
    /// The command id, if any.
    pub fn id(&self) -> Option<&RawValue> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Ping { id }
            | Command::Presence { id, .. } => id.as_deref(),
        }
    }
}

/// Why a frame is not a valid command.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON or not an object.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// `type` missing or not a string.
    #[error("missing \"type\"")]
    MissingType,
    /// `type` not known to this version.
    #[error("unknown type {0:?}")]
    UnknownType(String),
    /// A field is missing or has the wrong shape.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    id: Option<Box<RawValue>>,
    channel: Option<String>,
    since: Option<StreamPosition>,
    data: Option<Box<RawValue>>,
    #[serde(rename = "msgId")]
    msg_id: Option<String>,
    #[serde(rename = "stateVector")]
    state_vector: Option<String>,
    #[serde(borrow)]
    traceparent: Option<std::borrow::Cow<'a, str>>,
    /// Only `true` turns it on; any other value (or none) is off.
    #[serde(default, deserialize_with = "lenient_true")]
    presence: bool,
    #[serde(rename = "skipSelf", default, deserialize_with = "lenient_true")]
    skip_self: bool,
}

/// `true` when the field is the JSON `true`; anything else (false, null, a
/// string, …) is off, so an odd value never turns a command into an error.
fn lenient_true<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Box::<RawValue>::deserialize(d)?;
    Ok(v.get().trim() == "true")
}

/// Longest accepted `msgId`.
pub const MAX_MSG_ID_LEN: usize = 128;

impl ParseError {
    /// The id to echo in the error reply, recovered best-effort from the text.
    pub fn recover_id(text: &str) -> Option<CommandId> {
        #[derive(Deserialize)]
        struct OnlyId {
            id: Option<Box<RawValue>>,
        }
        serde_json::from_str::<OnlyId>(text).ok().and_then(|o| o.id)
    }
}

/// Parses one text frame into a command.
pub fn parse_command(text: &str) -> Result<Command, ParseError> {
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| ParseError::Malformed(e.to_string()))?;
    let kind = env.kind.ok_or(ParseError::MissingType)?;
    if let Some(id) = &env.id {
        let first = id.get().as_bytes().first().copied();
        if !matches!(first, Some(b'0'..=b'9' | b'-' | b'"')) {
            return Err(ParseError::Invalid(
                "id must be a number or a string".into(),
            ));
        }
    }
    let channel =
        |c: Option<String>| c.ok_or_else(|| ParseError::Invalid("missing \"channel\"".into()));
    match kind.as_ref() {
        "subscribe" => Ok(Command::Subscribe {
            id: env.id,
            channel: channel(env.channel)?,
            since: env.since,
            state_vector: env.state_vector,
            presence: env.presence,
        }),
        "unsubscribe" => Ok(Command::Unsubscribe {
            id: env.id,
            channel: channel(env.channel)?,
        }),
        "publish" => {
            let data = env
                .data
                .ok_or_else(|| ParseError::Invalid("missing \"data\"".into()))?;
            if let Some(m) = &env.msg_id
                && (m.is_empty() || m.len() > MAX_MSG_ID_LEN)
            {
                return Err(ParseError::Invalid(format!(
                    "msgId must be 1-{MAX_MSG_ID_LEN} characters"
                )));
            }
            Ok(Command::Publish {
                id: env.id,
                channel: channel(env.channel)?,
                data,
                msg_id: env.msg_id,
                traceparent: env
                    .traceparent
                    .filter(|_| crate::telemetry::enabled())
                    .and_then(|t| crate::telemetry::TraceParent::parse(&t)),
                skip_self: env.skip_self,
            })
        }
        "ping" => Ok(Command::Ping { id: env.id }),
        "presence" => Ok(Command::Presence {
            id: env.id,
            channel: channel(env.channel)?,
        }),
        other => Err(ParseError::UnknownType(truncate(other, 64).to_owned())),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An encoded outbound frame, shared by reference count.
///
/// Built once per message and cloned (a pointer copy) for every subscriber. Text
/// frames are valid UTF-8 by construction (from `String`, `&'static str`, or
/// checked bytes), so transports may send them without re-validating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    binary: bool,
}

impl Frame {
    /// A text frame from an encoded JSON string.
    pub fn from_string(s: String) -> Self {
        Self {
            bytes: Bytes::from(s),
            binary: false,
        }
    }

    /// A text frame from static text.
    pub const fn from_static(s: &'static str) -> Self {
        Self {
            bytes: Bytes::from_static(s.as_bytes()),
            binary: false,
        }
    }

    /// A text frame from bytes, checked to be UTF-8.
    pub fn text(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self {
            bytes,
            binary: false,
        })
    }

    /// A binary frame.
    pub fn binary(bytes: Bytes) -> Self {
        Self {
            bytes,
            binary: true,
        }
    }

    /// Whether this is a binary frame.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The payload bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The text (empty for binary frames).
    pub fn as_str(&self) -> &str {
        if self.binary {
            return "";
        }
        std::str::from_utf8(&self.bytes).unwrap_or("")
    }

    /// Consumes into the payload bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Protocol error codes sent in `error` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not valid JSON / not a command.
    BadRequest,
    /// Unknown `type`.
    UnknownType,
    /// Bad channel name.
    BadChannel,
    /// Policy refused.
    Forbidden,
    /// Over the publish rate.
    RateLimited,
    /// Not subscribed to the channel.
    NotSubscribed,
    /// Too many subscriptions.
    TooManySubscriptions,
    /// The broker cannot be reached.
    Unavailable,
    /// Binary frames are not supported yet.
    Unsupported,
    /// Anything else on the server side.
    Internal,
    /// A malformed or refused document patch, or a JSON publish to a document channel.
    Invalid,
    /// The merge policy refused a patch as conflicting.
    Conflict,
}

impl ErrorCode {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Conflict => "conflict",
        }
    }
}

/// WebSocket close codes used by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000
    Normal = 1000,
    /// 1001: shutdown, drain.
    GoingAway = 1001,
    /// 1002
    ProtocolError = 1002,
    /// 1007: invalid UTF-8 in a text frame.
    InvalidPayload = 1007,
    /// 1008: origin, auth or abuse.
    Policy = 1008,
    /// 1009
    TooBig = 1009,
    /// 1011
    Internal = 1011,
    /// 1013: overload.
    TryLater = 1013,
    /// 4001
    Unauthorized = 4001,
    /// 4003
    Forbidden = 4003,
    /// 4008: slow consumer.
    SlowConsumer = 4008,
    /// 4029: rate limited.
    RateLimited = 4029,
    /// Any other application code (4000–4999), e.g. an operator's close
    /// through `POST /admin/connections/{session}/close`.
    Application(u16) = 4999,
}

impl CloseCode {
    /// Numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TryLater => 1013,
            CloseCode::Unauthorized => 4001,
            CloseCode::Forbidden => 4003,
            CloseCode::SlowConsumer => 4008,
            CloseCode::RateLimited => 4029,
            CloseCode::Application(c) => c,
        }
    }

    /// A short reason sent in the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "server going away",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid payload",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::TryLater => "try again later",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Forbidden => "forbidden",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::RateLimited => "rate limited",
            CloseCode::Application(_) => "closed by the server",
        }
    }

    /// From a numeric code, when it is one of ours or an application code (4000–4999).
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::ProtocolError,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::Policy,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::Internal,
            1013 => CloseCode::TryLater,
            4001 => CloseCode::Unauthorized,
            4003 => CloseCode::Forbidden,
            4008 => CloseCode::SlowConsumer,
            4029 => CloseCode::RateLimited,
            4000..=4999 => CloseCode::Application(code),
            _ => return None,
        })
    }
}

/// Server → client message encoders. Each returns a ready [`Frame`].
pub mod encode {
    use super::*;
    use std::fmt::Write;

    fn json_str(out: &mut String, s: &str) {
        // serde_json string escaping; writing into a String cannot fail.
        let _ = write!(out, "{}", serde_json::Value::from(s));
    }

    fn id_field(out: &mut String, id: Option<&RawValue>) {
        if let Some(id) = id {
            out.push_str(",\"id\":");
            out.push_str(id.get());
        }
    }

    /// `welcome`
    pub fn welcome(session: &str, client: &str, node: &str, heartbeat_ms: u64) -> Frame {
        welcome_with(session, client, node, heartbeat_ms, None)
    }

    /// `welcome` with the fallback session's CSRF token (SSE).
    pub fn welcome_with(
        session: &str,
        client: &str,
        node: &str,
        heartbeat_ms: u64,
        csrf: Option<&str>,
    ) -> Frame {
        let mut s = String::with_capacity(200);
        s.push_str("{\"type\":\"welcome\",\"session\":");
        json_str(&mut s, session);
        if let Some(t) = csrf {
            s.push_str(",\"csrf\":");
            json_str(&mut s, t);
        }
        s.push_str(",\"client\":");
        json_str(&mut s, client);
        s.push_str(",\"node\":");
        json_str(&mut s, node);
        let _ = write!(
            s,
            ",\"protocol\":{PROTOCOL_VERSION},\"heartbeatMs\":{heartbeat_ms}}}"
        );
        Frame::from_string(s)
    }

    /// `subscribed`
    pub fn subscribed(
        id: Option<&RawValue>,
        channel: &str,
        epoch: &str,
        seq: u64,
        recovered: bool,
    ) -> Frame {
        let mut s = String::with_capacity(96 + channel.len());
        s.push_str("{\"type\":\"subscribed\"");
        id_field(&mut s, id);
        s.push_str(",\"channel\":");
        json_str(&mut s, channel);
        s.push_str(",\"epoch\":");
        json_str(&mut s, epoch);
        let _ = write!(s, ",\"seq\":{seq},\"recovered\":{recovered}}}");
        Frame::from_string(s)
    }

    /// `subscribed` to a document channel (`version` instead of `seq`).
    pub fn subscribed_document(
        id: Option<&RawValue>,
        channel: &str,
        epoch: &str,
        version: u64,
        recovered: bool,
    ) -> Frame {
        let mut s = String::with_capacity(112 + channel.len());
        s.push_str("{\"type\":\"subscribed\"");
        id_field(&mut s, id);
        s.push_str(",\"channel\":");
        json_str(&mut s, channel);
        s.push_str(",\"document\":true,\"epoch\":");
        json_str(&mut s, epoch);
        let _ = write!(s, ",\"version\":{version},\"recovered\":{recovered}}}");
        Frame::from_string(s)
    }

    /// `ack` of a document patch.
    pub fn ack_version(id: Option<&RawValue>, version: u64) -> Frame {
        let mut s = String::with_capacity(48);
        s.push_str("{\"type\":\"ack\"");
        id_field(&mut s, id);
        let _ = write!(s, ",\"version\":{version}}}");
        Frame::from_string(s)
    }

    /// `unsubscribed`
    pub fn unsubscribed(id: Option<&RawValue>, channel: &str) -> Frame {
        let mut s = String::with_capacity(64 + channel.len());
        s.push_str("{\"type\":\"unsubscribed\"");
        id_field(&mut s, id);
        s.push_str(",\"channel\":");
        json_str(&mut s, channel);
        s.push('}');
        Frame::from_string(s)
    }

    /// `ack`
    pub fn ack(id: Option<&RawValue>, seq: u64) -> Frame {
        let mut s = String::with_capacity(48);
        s.push_str("{\"type\":\"ack\"");
        id_field(&mut s, id);
        let _ = write!(s, ",\"seq\":{seq}}}");
        Frame::from_string(s)
    }

    /// `ack` for a publish that a router sent elsewhere: `seq` of the first route, the
    /// full `routes` list when it differs from the requested channel, `dropped` when none.
    pub fn ack_routed(id: Option<&RawValue>, requested: &str, seqs: &[(String, u64)]) -> Frame {
        let mut s = String::with_capacity(64);
        s.push_str("{\"type\":\"ack\"");
        id_field(&mut s, id);
        match seqs.first() {
            Some((_, seq)) => {
                let _ = write!(s, ",\"seq\":{seq}");
            }
            None => s.push_str(",\"seq\":null,\"dropped\":true"),
        }
        let plain = seqs.len() == 1 && seqs[0].0 == requested;
        if !plain && !seqs.is_empty() {
            s.push_str(",\"routes\":[");
            for (i, (ch, seq)) in seqs.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"channel\":");
                json_str(&mut s, ch);
                let _ = write!(s, ",\"seq\":{seq}}}");
            }
            s.push(']');
        }
        s.push('}');
        Frame::from_string(s)
    }

    /// `pong`
    pub fn pong(id: Option<&RawValue>) -> Frame {
        let mut s = String::with_capacity(32);
        s.push_str("{\"type\":\"pong\"");
        id_field(&mut s, id);
        s.push('}');
        Frame::from_string(s)
    }

    /// `error`
    pub fn error(id: Option<&RawValue>, code: ErrorCode, message: &str) -> Frame {
        let mut s = String::with_capacity(64 + message.len());
        s.push_str("{\"type\":\"error\"");
        id_field(&mut s, id);
        s.push_str(",\"code\":\"");
        s.push_str(code.as_str());
        s.push_str("\",\"message\":");
        json_str(&mut s, message);
        s.push('}');
        Frame::from_string(s)
    }

    /// `message`: the one encoding shared by every subscriber.
    pub fn message(channel: &str, seq: u64, epoch: &str, data: &RawValue) -> Frame {
        let data = data.get();
        let mut s = String::with_capacity(64 + channel.len() + epoch.len() + data.len());
        s.push_str("{\"type\":\"message\",\"channel\":");
        json_str(&mut s, channel);
        let _ = write!(s, ",\"seq\":{seq},\"epoch\":");
        json_str(&mut s, epoch);
        s.push_str(",\"data\":");
        s.push_str(data);
        s.push('}');
        Frame::from_string(s)
    }

    /// `direct`
    pub fn direct(data: &RawValue) -> Frame {
        let data = data.get();
        let mut s = String::with_capacity(32 + data.len());
        s.push_str("{\"type\":\"direct\",\"data\":");
        s.push_str(data);
        s.push('}');
        Frame::from_string(s)
    }

    /// One entry of a presence list.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct PresenceEntry {
        /// Client id.
        pub client: String,
        /// Principal id (empty when anonymous).
        pub principal: String,
        /// Node holding the connection.
        pub node: String,
    }

    /// `presence`
    pub fn presence(id: Option<&RawValue>, channel: &str, clients: &[PresenceEntry]) -> Frame {
        let mut s = String::with_capacity(64 + clients.len() * 64);
        s.push_str("{\"type\":\"presence\"");
        id_field(&mut s, id);
        s.push_str(",\"channel\":");
        json_str(&mut s, channel);
        s.push_str(",\"clients\":");
        s.push_str(&serde_json::to_string(clients).unwrap_or_else(|_| "[]".into()));
        s.push('}');
        Frame::from_string(s)
    }

    /// `join` / `leave`: a client came into or left a channel (presence events).
    pub fn presence_event(join: bool, channel: &str, e: &PresenceEntry) -> Frame {
        let mut s = String::with_capacity(
            64 + channel.len() + e.client.len() + e.principal.len() + e.node.len(),
        );
        s.push_str(if join {
            "{\"type\":\"join\""
        } else {
            "{\"type\":\"leave\""
        });
        s.push_str(",\"channel\":");
        json_str(&mut s, channel);
        s.push_str(",\"client\":");
        json_str(&mut s, &e.client);
        s.push_str(",\"principal\":");
        json_str(&mut s, &e.principal);
        s.push_str(",\"node\":");
        json_str(&mut s, &e.node);
        s.push('}');
        Frame::from_string(s)
    }

    /// `SERVER_SHUTDOWN`
    pub fn shutdown(reconnect_in_ms: u64) -> Frame {
        Frame::from_string(format!(
            "{{\"type\":\"SERVER_SHUTDOWN\",\"reconnectIn\":{reconnect_in_ms}}}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        let c = parse_command(
            r#"{"type":"subscribe","id":1,"channel":"room:1","since":{"epoch":"e1","seq":41},"extra":true}"#,
        )
        .expect("ok");
        match c {
            Command::Subscribe {
                id, channel, since, ..
            } => {
                assert_eq!(id.expect("id").get(), "1");
                assert_eq!(channel, "room:1");
                assert_eq!(since.expect("since").seq, 41);
            }
            other => panic!("{other:?}"),
        }
        let c = parse_command(
            r#"{"type":"publish","id":"a","channel":"room:1","data":{"x":[1,2]},"msgId":"m1"}"#,
        )
        .expect("ok");
        match c {
            Command::Publish { data, msg_id, .. } => {
                assert_eq!(data.get(), r#"{"x":[1,2]}"#);
                assert_eq!(msg_id.as_deref(), Some("m1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_presence_and_skip_self() {
        let c = parse_command(r#"{"type":"subscribe","channel":"room:1","presence":true}"#)
            .expect("ok");
        assert!(matches!(c, Command::Subscribe { presence: true, .. }));
        for odd in ["false", "null", "\"true\"", "1", "{\"a\":1}"] {
            let c = parse_command(&format!(
                r#"{{"type":"subscribe","channel":"room:1","presence":{odd}}}"#
            ))
            .expect("ok");
            assert!(
                matches!(
                    c,
                    Command::Subscribe {
                        presence: false,
                        ..
                    }
                ),
                "{odd}"
            );
        }
        let c = parse_command(r#"{"type":"subscribe","channel":"room:1"}"#).expect("ok");
        assert!(matches!(
            c,
            Command::Subscribe {
                presence: false,
                ..
            }
        ));
        let c = parse_command(r#"{"type":"publish","channel":"room:1","data":1,"skipSelf":true}"#)
            .expect("ok");
        assert!(matches!(
            c,
            Command::Publish {
                skip_self: true,
                ..
            }
        ));
        let c = parse_command(r#"{"type":"publish","channel":"room:1","data":1,"skipSelf":0}"#)
            .expect("ok");
        assert!(matches!(
            c,
            Command::Publish {
                skip_self: false,
                ..
            }
        ));
        let e = encode::presence_event(
            false,
            "room:\"1",
            &encode::PresenceEntry {
                client: "c".into(),
                principal: "".into(),
                node: "n".into(),
            },
        );
        let v: serde_json::Value = serde_json::from_str(e.as_str()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"leave","channel":"room:\"1","client":"c","principal":"","node":"n"})
        );
    }

    #[test]
    fn rejects_bad_commands() {
        assert!(matches!(parse_command("{"), Err(ParseError::Malformed(_))));
        assert!(matches!(
            parse_command("[1]"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(parse_command("{}"), Err(ParseError::MissingType)));
        assert!(matches!(
            parse_command(r#"{"type":"dance","id":3}"#),
            Err(ParseError::UnknownType(t)) if t == "dance"
        ));
        assert!(matches!(
            parse_command(r#"{"type":"publish","channel":"a:b"}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse_command(r#"{"type":"ping","id":{"x":1}}"#),
            Err(ParseError::Invalid(_))
        ));
        assert_eq!(
            ParseError::recover_id(r#"{"type":"dance","id":3}"#)
                .expect("id")
                .get(),
            "3"
        );
    }

    #[test]
    fn encodes_messages() {
        let data = RawValue::from_string("{\"a\":\"\\u00e9\"}".into()).expect("raw");
        let f = encode::message("room:1", 42, "e1", &data);
        let v: serde_json::Value = serde_json::from_str(f.as_str()).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["epoch"], "e1");
        assert_eq!(v["data"]["a"], "é");
        let id = RawValue::from_string("\"x\\\"y\"".into()).expect("raw");
        let e = encode::error(Some(&id), ErrorCode::RateLimited, "slow \"down\"");
        let v: serde_json::Value = serde_json::from_str(e.as_str()).expect("json");
        assert_eq!(v["id"], "x\"y");
        assert_eq!(v["code"], "rate_limited");
        let w = encode::welcome("s", "c", "n", 30000);
        let v: serde_json::Value = serde_json::from_str(w.as_str()).expect("json");
        assert_eq!(v["protocol"], 1);
        assert_eq!(v["heartbeatMs"], 30000);
        let s = encode::subscribed(None, "room:1", "e1", 4, false);
        let v: serde_json::Value = serde_json::from_str(s.as_str()).expect("json");
        assert_eq!(v["recovered"], false);
        assert!(v.get("id").is_none());
    }
}
