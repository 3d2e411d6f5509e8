//! Document channels: the binary `switchyard.v1.StatePatch` frame
//! (`proto/switchyard/v1/state.proto`, prost derives, no `protoc`), the
//! client's bookkeeping of one document (epoch and version, for resume and gap
//! checks), the changes the event stream carries, and [`LwwMap`], a replica of
//! the gateway's built-in last-writer-wins JSON map.

use bytes::Bytes;
use prost::Message as _;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// `StatePatch.Kind` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub(crate) enum WireKind {
    Patch = 0,
    Snapshot = 1,
    Diff = 2,
}

/// One binary frame; field numbers are the contract.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatePatch {
    #[prost(int64, tag = "1")]
    pub version: i64,
    #[prost(bytes = "bytes", tag = "2")]
    pub delta: Bytes,
    #[prost(string, tag = "3")]
    pub client_id: String,
    #[prost(string, tag = "4")]
    pub channel: String,
    #[prost(enumeration = "WireKind", tag = "5")]
    pub kind: i32,
    #[prost(uint64, tag = "6")]
    pub lamport: u64,
    #[prost(string, tag = "7")]
    pub msg_id: String,
    #[prost(uint64, tag = "8")]
    pub id: u64,
    #[prost(string, tag = "9")]
    pub epoch: String,
}

impl StatePatch {
    /// A client patch frame.
    pub(crate) fn client_patch(
        id: u64,
        channel: &str,
        delta: Bytes,
        msg_id: &str,
        base: u64,
    ) -> Vec<u8> {
        StatePatch {
            version: i64::try_from(base).unwrap_or(0),
            delta,
            client_id: String::new(),
            channel: channel.to_owned(),
            kind: WireKind::Patch as i32,
            lamport: 0,
            msg_id: msg_id.to_owned(),
            id,
            epoch: String::new(),
        }
        .encode_to_vec()
    }

    /// Decodes a server frame; a malformed one is [`Error::BadFrame`].
    pub(crate) fn decode_frame(bytes: &[u8]) -> Result<StatePatch> {
        StatePatch::decode(bytes)
            .map_err(|e| Error::bad_frame(format!("binary frame is not a StatePatch: {e}")))
    }
}

/// What a document frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentKind {
    /// The whole document at `version` (after a subscribe without recovery).
    Snapshot,
    /// One accepted change, bringing the document to `version`.
    Patch,
    /// What a client with a given state vector lacks (CRDT merge plugins).
    Diff,
}

/// One change to a document, as [`Event::Document`](crate::Event::Document) delivers it:
/// in version order, with no gap and no duplicate (the client resubscribes
/// when it sees one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentChange {
    /// The document channel.
    pub channel: String,
    /// Snapshot, patch or diff.
    pub kind: DocumentKind,
    /// The document's version after this change.
    pub version: u64,
    /// The document's epoch.
    pub epoch: String,
    /// The merge policy's bytes: for the LWW map a UTF-8 JSON object (a
    /// snapshot: the whole object; a patch: the keys set, `null` = deleted).
    pub delta: Bytes,
    /// Client id of the connection that made the change (empty: the HTTP API
    /// or a snapshot).
    pub client_id: String,
    /// The author's `msgId`.
    pub msg_id: String,
    /// Lamport timestamp the gateway assigned.
    pub lamport: u64,
}

/// What the bookkeeping says about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameVerdict {
    Applied(DocumentKind),
    Duplicate,
    Gap,
    Epoch,
    Ignored,
}

/// The client's position in one document.
#[derive(Debug, Default)]
pub(crate) struct Replica {
    pub epoch: Option<String>,
    /// Version of the last applied frame; `None` before the first snapshot.
    pub version: Option<u64>,
    /// A snapshot was announced (`recovered:false`) and has not arrived.
    pub awaiting_snapshot: bool,
}

impl Replica {
    /// `since` of the next subscribe.
    pub(crate) fn since(&self) -> Option<(String, u64)> {
        Some((self.epoch.clone()?, self.version?))
    }

    /// Applies a `subscribed` reply; returns `(recovered, resumed)`.
    pub(crate) fn on_subscribed(&mut self, epoch: &str, recovered: bool) -> (bool, bool) {
        let prev = self.since();
        let resumed = prev.is_some();
        let recovered = recovered && prev.is_some_and(|(e, _)| e == epoch);
        if !recovered {
            self.awaiting_snapshot = true;
            self.epoch = Some(epoch.to_owned());
        }
        (recovered, resumed)
    }

    pub(crate) fn on_frame(&mut self, f: &StatePatch) -> FrameVerdict {
        let version = u64::try_from(f.version).unwrap_or(0);
        let kind = match WireKind::try_from(f.kind) {
            Ok(WireKind::Snapshot) => {
                self.version = Some(version);
                if !f.epoch.is_empty() {
                    self.epoch = Some(f.epoch.clone());
                }
                self.awaiting_snapshot = false;
                return FrameVerdict::Applied(DocumentKind::Snapshot);
            }
            Ok(WireKind::Patch) => DocumentKind::Patch,
            Ok(WireKind::Diff) => DocumentKind::Diff,
            Err(_) => return FrameVerdict::Ignored,
        };
        let Some(current) = self.version else {
            return FrameVerdict::Ignored;
        };
        if self.awaiting_snapshot {
            return FrameVerdict::Ignored;
        }
        if !f.epoch.is_empty() && self.epoch.as_deref().is_some_and(|e| e != f.epoch) {
            return FrameVerdict::Epoch;
        }
        if version <= current {
            return FrameVerdict::Duplicate;
        }
        if version > current + 1 && kind == DocumentKind::Patch {
            return FrameVerdict::Gap;
        }
        self.version = Some(version);
        FrameVerdict::Applied(kind)
    }

    /// Forgets the position: the next subscribe asks for a snapshot.
    pub(crate) fn reset(&mut self) {
        self.version = None;
        self.awaiting_snapshot = false;
    }
}

/// A replica of a document under the gateway's built-in last-writer-wins JSON
/// map (and `plugins/lww-merge`): feed it every [`DocumentChange`] of the
/// channel and it holds the gateway's state at [`version`](LwwMap::version).
///
/// ```
/// use bytes::Bytes;
/// use serde_json::json;
/// use switchyard_client::{DocumentChange, DocumentKind, LwwMap};
///
/// let change = |kind, version, delta: serde_json::Value| DocumentChange {
///     channel: "doc:1".into(),
///     kind,
///     version,
///     epoch: "e1".into(),
///     delta: Bytes::from(delta.to_string()),
///     client_id: String::new(),
///     msg_id: String::new(),
///     lamport: version,
/// };
/// let mut map = LwwMap::default();
/// map.apply(&change(DocumentKind::Snapshot, 7, json!({"title": "Notes", "n": 1})))?;
/// map.apply(&change(DocumentKind::Patch, 8, json!({"n": 2, "title": null})))?;
/// assert_eq!(map.version(), Some(8));
/// assert_eq!(map.state(), json!({"n": 2}).as_object().unwrap());
/// // a patch at a version already applied changes nothing
/// map.apply(&change(DocumentKind::Patch, 8, json!({"n": 99})))?;
/// assert_eq!(map.get("n"), Some(&json!(2)));
/// # Ok::<(), switchyard_client::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LwwMap {
    state: Map<String, Value>,
    version: Option<u64>,
}

impl LwwMap {
    /// Applies a snapshot (replaces the state) or a patch (sets keys, `null`
    /// deletes). A change at or below the current version is skipped. A delta
    /// that is not a UTF-8 JSON object is [`Error::BadFrame`] and changes nothing.
    pub fn apply(&mut self, change: &DocumentChange) -> Result<()> {
        let delta = decode_lww(&change.delta)?;
        match change.kind {
            DocumentKind::Snapshot => {
                self.state = delta;
            }
            DocumentKind::Patch | DocumentKind::Diff => {
                if self.version.is_some_and(|v| change.version <= v) {
                    return Ok(());
                }
                apply_lww(&mut self.state, delta);
            }
        }
        self.version = Some(change.version);
        Ok(())
    }

    /// The state: a JSON object.
    pub fn state(&self) -> &Map<String, Value> {
        &self.state
    }

    /// One key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.state.get(key)
    }

    /// Version of the state (`None` before the first snapshot).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The state as a JSON value.
    pub fn to_value(&self) -> Value {
        Value::Object(self.state.clone())
    }
}

/// Sets each key of `delta` in `state`; `null` deletes the key.
pub fn apply_lww(state: &mut Map<String, Value>, delta: Map<String, Value>) {
    for (k, v) in delta {
        if v.is_null() {
            state.remove(&k);
        } else {
            state.insert(k, v);
        }
    }
}

/// Decodes an LWW delta (a UTF-8 JSON object; empty bytes are `{}`).
pub fn decode_lww(bytes: &[u8]) -> Result<Map<String, Value>> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::bad_frame("LWW delta is not a JSON object")),
        Err(e) => Err(Error::bad_frame(format!("LWW delta is not JSON: {e}"))),
    }
}

/// Encodes an LWW patch: `delta` must be a JSON object (keys to set, `null` deletes).
pub fn encode_lww(delta: &Value) -> Result<Bytes> {
    if !delta.is_object() {
        return Err(Error::Invalid(
            "an LWW patch is a JSON object of keys to set (null deletes)".into(),
        ));
    }
    Ok(Bytes::from(delta.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(kind: WireKind, version: i64, epoch: &str) -> StatePatch {
        StatePatch {
            version,
            kind: kind as i32,
            epoch: epoch.into(),
            channel: "doc:1".into(),
            ..StatePatch::default()
        }
    }

    #[test]
    fn wire_format_matches_the_proto() {
        // field 1 varint 5, field 4 "d", field 7 "m", field 8 varint 3
        let b = StatePatch::client_patch(3, "d", Bytes::new(), "m", 5);
        assert_eq!(b, vec![0x08, 5, 0x22, 1, b'd', 0x3a, 1, b'm', 0x40, 3]);
        let back = StatePatch::decode_frame(&b).expect("decodes");
        assert_eq!((back.id, back.version, back.channel.as_str()), (3, 5, "d"));
        assert!(matches!(
            StatePatch::decode_frame(&[0xff, 0xff, 0xff]),
            Err(Error::BadFrame(_))
        ));
        assert!(
            StatePatch::decode_frame(&[0x22, 9, b'x']).is_err(),
            "truncated"
        );
    }

    #[test]
    fn replica_orders_frames() {
        let mut r = Replica::default();
        assert_eq!(r.on_subscribed("e1", false), (false, false));
        assert_eq!(
            r.on_frame(&frame(WireKind::Patch, 8, "e1")),
            FrameVerdict::Ignored
        );
        assert_eq!(
            r.on_frame(&frame(WireKind::Snapshot, 7, "e1")),
            FrameVerdict::Applied(DocumentKind::Snapshot)
        );
        assert_eq!(
            r.on_frame(&frame(WireKind::Patch, 8, "e1")),
            FrameVerdict::Applied(DocumentKind::Patch)
        );
        assert_eq!(
            r.on_frame(&frame(WireKind::Patch, 8, "e1")),
            FrameVerdict::Duplicate
        );
        assert_eq!(
            r.on_frame(&frame(WireKind::Patch, 10, "e1")),
            FrameVerdict::Gap
        );
        assert_eq!(
            r.on_frame(&frame(WireKind::Patch, 9, "e2")),
            FrameVerdict::Epoch
        );
        let unknown = StatePatch {
            kind: 42,
            ..frame(WireKind::Patch, 9, "e1")
        };
        assert_eq!(r.on_frame(&unknown), FrameVerdict::Ignored);
        assert_eq!(r.since(), Some(("e1".into(), 8)));
        // resume under the same epoch
        assert_eq!(r.on_subscribed("e1", true), (true, true));
        assert!(!r.awaiting_snapshot);
        // another epoch: a snapshot follows
        assert_eq!(r.on_subscribed("e2", true), (false, true));
        assert!(r.awaiting_snapshot);
        r.reset();
        assert_eq!(r.since(), None);
    }

    #[test]
    fn lww_map_sets_deletes_and_refuses_garbage() {
        let ch = |kind, version, delta: &[u8]| DocumentChange {
            channel: "doc:1".into(),
            kind,
            version,
            epoch: "e".into(),
            delta: Bytes::copy_from_slice(delta),
            client_id: String::new(),
            msg_id: String::new(),
            lamport: 0,
        };
        let mut m = LwwMap::default();
        m.apply(&ch(DocumentKind::Snapshot, 1, br#"{"a":1,"b":2}"#))
            .expect("snapshot");
        m.apply(&ch(DocumentKind::Patch, 2, br#"{"a":null,"c":[1]}"#))
            .expect("patch");
        assert_eq!(m.to_value(), json!({"b":2,"c":[1]}));
        assert!(m.apply(&ch(DocumentKind::Patch, 3, b"[1]")).is_err());
        assert!(m.apply(&ch(DocumentKind::Patch, 3, b"\xff")).is_err());
        assert_eq!(m.version(), Some(2), "a refused delta changes nothing");
        m.apply(&ch(DocumentKind::Snapshot, 9, b""))
            .expect("empty snapshot");
        assert!(m.state().is_empty());
        assert!(encode_lww(&json!([1])).is_err());
        assert_eq!(
            encode_lww(&json!({"k":null})).expect("object"),
            Bytes::from_static(br#"{"k":null}"#)
        );
    }
}
