//! Document channels from the client side: an independent `StatePatch`
//! protobuf codec (written from `proto/switchyard/v1/state.proto`, not the
//! gateway's), and a client that reads both JSON and binary frames.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::Client;

/// `StatePatch.Kind`.
pub const PATCH: u64 = 0;
/// `StatePatch.Kind`.
pub const SNAPSHOT: u64 = 1;
/// `StatePatch.Kind`.
pub const DIFF: u64 = 2;

/// A decoded `switchyard.v1.StatePatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    pub version: i64,
    pub delta: Vec<u8>,
    pub client_id: String,
    pub channel: String,
    pub kind: u64,
    pub lamport: u64,
    pub msg_id: String,
    pub id: u64,
    pub epoch: String,
}

impl Patch {
    /// The delta as JSON (LWW documents).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.delta)
            .unwrap_or_else(|e| panic!("delta is not JSON ({e}): {self:?}"))
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, tag: u64, v: u64) {
    if v != 0 {
        varint(out, tag << 3);
        varint(out, v);
    }
}

fn field_bytes(out: &mut Vec<u8>, tag: u64, b: &[u8]) {
    if !b.is_empty() {
        varint(out, (tag << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

/// Encodes a patch as the protobuf wire format.
pub fn encode(p: &Patch) -> Vec<u8> {
    let mut out = Vec::new();
    field_varint(&mut out, 1, p.version as u64);
    field_bytes(&mut out, 2, &p.delta);
    field_bytes(&mut out, 3, p.client_id.as_bytes());
    field_bytes(&mut out, 4, p.channel.as_bytes());
    field_varint(&mut out, 5, p.kind);
    field_varint(&mut out, 6, p.lamport);
    field_bytes(&mut out, 7, p.msg_id.as_bytes());
    field_varint(&mut out, 8, p.id);
    field_bytes(&mut out, 9, p.epoch.as_bytes());
    out
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Decodes the protobuf wire format (unknown fields skipped).
pub fn decode(b: &[u8]) -> Option<Patch> {
    let mut p = Patch::default();
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        let (tag, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = read_varint(b, &mut i)?;
                match tag {
                    1 => p.version = v as i64,
                    5 => p.kind = v,
                    6 => p.lamport = v,
                    8 => p.id = v,
                    _ => {}
                }
            }
            2 => {
                let len = usize::try_from(read_varint(b, &mut i)?).ok()?;
                let bytes = b.get(i..i.checked_add(len)?)?;
                i += len;
                let text = || String::from_utf8(bytes.to_vec()).ok();
                match tag {
                    2 => p.delta = bytes.to_vec(),
                    3 => p.client_id = text()?,
                    4 => p.channel = text()?,
                    7 => p.msg_id = text()?,
                    9 => p.epoch = text()?,
                    _ => {}
                }
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    Some(p)
}

/// A frame as a document client sees it.
#[derive(Debug, Clone)]
pub enum Got {
    /// A JSON text frame.
    Json(Value),
    /// A binary `StatePatch`.
    Patch(Patch),
}

impl Client {
    /// Sends a binary LWW patch on `channel`.
    pub async fn send_patch(&mut self, id: u64, channel: &str, delta: &Value, msg_id: &str) {
        self.send_patch_bytes(id, channel, delta.to_string().into_bytes(), msg_id)
            .await;
    }

    /// Sends a binary patch with raw delta bytes.
    pub async fn send_patch_bytes(&mut self, id: u64, channel: &str, delta: Vec<u8>, msg_id: &str) {
        let frame = encode(&Patch {
            id,
            channel: channel.into(),
            delta,
            msg_id: msg_id.into(),
            kind: PATCH,
            ..Patch::default()
        });
        self.send(Message::Binary(frame.into()))
            .await
            .expect("send patch");
    }

    /// The next JSON or binary frame (pings skipped); panics on close or timeout.
    pub async fn recv_got(&mut self) -> Got {
        loop {
            match self.recv_within(Duration::from_secs(20)).await {
                Some(Message::Text(t)) => {
                    return Got::Json(serde_json::from_str(&t).expect("json frame"));
                }
                Some(Message::Binary(b)) => {
                    return Got::Patch(decode(&b).expect("a StatePatch"));
                }
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("connection ended or timed out: {other:?}"),
            }
        }
    }

    /// The next binary frame; panics on a JSON frame.
    pub async fn recv_patch(&mut self) -> Patch {
        match self.recv_got().await {
            Got::Patch(p) => p,
            Got::Json(v) => panic!("expected a binary frame, got {v}"),
        }
    }

    /// Subscribes to a document channel: returns `subscribed` and the frame after it.
    pub async fn subscribe_doc(
        &mut self,
        id: u64,
        channel: &str,
        since: Option<(&str, u64)>,
    ) -> (Value, Option<Patch>) {
        let mut cmd = json!({"type":"subscribe","id":id,"channel":channel});
        if let Some((epoch, version)) = since {
            cmd["since"] = json!({"epoch": epoch, "version": version});
        }
        self.send_json(cmd).await;
        let sub = match self.recv_got().await {
            Got::Json(v) => v,
            Got::Patch(p) => panic!("expected subscribed, got {p:?}"),
        };
        assert_eq!(sub["type"], "subscribed", "{sub}");
        if sub["recovered"] == true {
            return (sub, None);
        }
        let snap = self.recv_patch().await;
        (sub, Some(snap))
    }

    /// Sends a patch and reads until its ack (JSON `ack`/`error` with `id`),
    /// returning the reply and the binary frames read meanwhile.
    pub async fn patch_acked(
        &mut self,
        id: u64,
        channel: &str,
        delta: &Value,
        msg_id: &str,
    ) -> (Value, Vec<Patch>) {
        self.send_patch(id, channel, delta, msg_id).await;
        let mut seen = Vec::new();
        loop {
            match self.recv_got().await {
                Got::Json(v) if v["id"] == id => return (v, seen),
                Got::Json(v) => panic!("unexpected frame {v}"),
                Got::Patch(p) => seen.push(p),
            }
        }
    }
}

/// Applies an LWW frame to a client-side copy of the document.
pub fn apply_lww(state: &mut serde_json::Map<String, Value>, p: &Patch) {
    let Value::Object(delta) = p.json() else {
        panic!("LWW delta must be an object: {p:?}");
    };
    if p.kind == SNAPSHOT {
        *state = delta;
        return;
    }
    for (k, v) in delta {
        if v.is_null() {
            state.remove(&k);
        } else {
            state.insert(k, v);
        }
    }
}
