//! Binary frames of document channels: `switchyard.v1.StatePatch`
//! (`proto/switchyard/v1/state.proto`), written out with `prost` derives so the
//! build needs no `protoc`. Decoding is bounded by the frame (the transport
//! already capped it at `limits.max_message_bytes`) and never panics.

use bytes::Bytes;
use prost::Message as _;

use crate::protocol::Frame;

/// Kind of a [`StatePatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    /// An update: to apply (client → server) or applied at `version` (server → client).
    Patch = 0,
    /// The whole document at `version`.
    Snapshot = 1,
    /// What a client with the given state vector is missing, up to `version`.
    Diff = 2,
}

/// One binary frame. Field numbers are the contract (see the `.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatePatch {
    /// Server → client: the version this frame brings the client to;
    /// client → server: the version the patch was made on (0 = unknown).
    #[prost(int64, tag = "1")]
    pub version: i64,
    /// Merge-policy bytes (an update, a snapshot or a diff).
    #[prost(bytes = "bytes", tag = "2")]
    pub delta: Bytes,
    /// Client id of the connection that made the change (set by the server).
    #[prost(string, tag = "3")]
    pub client_id: String,
    /// Document channel.
    #[prost(string, tag = "4")]
    pub channel: String,
    /// [`Kind`] as its wire number.
    #[prost(enumeration = "Kind", tag = "5")]
    pub kind: i32,
    /// Lamport timestamp assigned by the gateway.
    #[prost(uint64, tag = "6")]
    pub lamport: u64,
    /// Client-generated id for dedupe.
    #[prost(string, tag = "7")]
    pub msg_id: String,
    /// Client → server: command id, echoed by the JSON ack.
    #[prost(uint64, tag = "8")]
    pub id: u64,
    /// Server → client: the document's epoch.
    #[prost(string, tag = "9")]
    pub epoch: String,
}

/// Why a binary frame is not a usable client patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a `StatePatch` at all.
    #[error("binary frame is not a StatePatch: {0}")]
    Malformed(String),
    /// Decoded, but not something a client may send.
    #[error("{0}")]
    Invalid(String),
}

/// A patch as a client sent it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPatch {
    /// Command id (0 = none given).
    pub id: u64,
    /// Document channel.
    pub channel: String,
    /// The update bytes for the merge policy.
    pub delta: Bytes,
    /// Dedupe id, if any.
    pub msg_id: Option<String>,
    /// Version the patch was made on (0 = unknown).
    pub base_version: u64,
}

/// Decodes and checks a client → server frame: `kind` must be `PATCH`, the
/// channel present, `msg_id` at most [`crate::protocol::MAX_MSG_ID_LEN`] bytes.
pub fn decode_client(bytes: &[u8]) -> Result<ClientPatch, FrameError> {
    let p = StatePatch::decode(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if p.kind != Kind::Patch as i32 {
        return Err(FrameError::Invalid(
            "clients send kind PATCH only".to_owned(),
        ));
    }
    if p.channel.is_empty() {
        return Err(FrameError::Invalid("missing channel".to_owned()));
    }
    if p.msg_id.len() > crate::protocol::MAX_MSG_ID_LEN {
        return Err(FrameError::Invalid(format!(
            "msg_id must be at most {} bytes",
            crate::protocol::MAX_MSG_ID_LEN
        )));
    }
    Ok(ClientPatch {
        id: p.id,
        channel: p.channel,
        delta: p.delta,
        msg_id: (!p.msg_id.is_empty()).then_some(p.msg_id),
        base_version: u64::try_from(p.version).unwrap_or(0),
    })
}

/// Encodes a server → client frame once; the bytes are shared by every subscriber.
pub fn encode(p: &StatePatch) -> Frame {
    Frame::binary(Bytes::from(p.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_numbers_match_the_proto_file() {
        let proto = include_str!("../../../../proto/switchyard/v1/state.proto");
        for (field, tag) in [
            ("int64 version", 1),
            ("bytes delta", 2),
            ("string client_id", 3),
            ("string channel", 4),
            ("Kind kind", 5),
            ("uint64 lamport", 6),
            ("string msg_id", 7),
            ("uint64 id", 8),
            ("string epoch", 9),
        ] {
            assert!(
                proto.contains(&format!("{field} = {tag};")),
                "{field} = {tag} in state.proto"
            );
        }
        // And the derive really uses those numbers: field 1 is a varint with tag 1.
        let bytes = StatePatch {
            version: 7,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x08, 7]);
        let bytes = StatePatch {
            epoch: "e".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x4a, 1, b'e']);
    }

    #[test]
    fn round_trip_of_a_client_patch() {
        let p = StatePatch {
            version: 3,
            delta: Bytes::from_static(b"{\"a\":1}"),
            channel: "doc:1".into(),
            kind: Kind::Patch as i32,
            msg_id: "m1".into(),
            id: 9,
            ..Default::default()
        };
        let c = decode_client(&p.encode_to_vec()).expect("valid");
        assert_eq!(c.id, 9);
        assert_eq!(c.channel, "doc:1");
        assert_eq!(&c.delta[..], b"{\"a\":1}");
        assert_eq!(c.msg_id.as_deref(), Some("m1"));
        assert_eq!(c.base_version, 3);
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        for bad in [
            &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
            b"\x12\xff\xff\xff\xff\x0f",
            b"\x22\x05ab",
            b"garbage that is not protobuf",
        ] {
            assert!(decode_client(bad).is_err(), "{bad:?}");
        }
        let snapshot = StatePatch {
            channel: "doc:1".into(),
            kind: Kind::Snapshot as i32,
            ..Default::default()
        };
        assert!(matches!(
            decode_client(&snapshot.encode_to_vec()),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(decode_client(&[]), Err(FrameError::Invalid(_)),));
    }
}
