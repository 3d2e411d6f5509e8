//! Binary frames of document channels: `document::frame::decode_client`,
//! `document::log::Entry::decode` and `StatePatch::decode` on random bytes,
//! protobuf-shaped garbage (every wire type, overlong varints, lengths past
//! the end, unbalanced and deep groups, unknown tags, invalid UTF-8 in string
//! fields) and mutated encodings; encode→decode round trips of generated
//! `StatePatch`es and log entries.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use switchyard_core::document::frame::{self, Kind, StatePatch};
use switchyard_core::document::log::Entry;
use switchyard_core::protocol::MAX_MSG_ID_LEN;

use crate::inputs;
use crate::{Rng, Target};

/// One input.
#[derive(Debug, Clone)]
pub enum Input {
    /// Bytes from the wire.
    Bytes(Vec<u8>),
    /// A patch to encode and decode back.
    RoundTrip(StatePatch),
    /// A log entry to encode and decode back.
    Entry(String, Entry),
}

/// The target.
#[derive(Debug, Default)]
pub struct Patches;

fn text(rng: &mut Rng, max: usize) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => {
            let n = MAX_MSG_ID_LEN + rng.below(2);
            inputs::string_of_bytes(rng, n)
        }
        2 => {
            let n = MAX_MSG_ID_LEN - rng.below(2);
            inputs::string_of_bytes(rng, n)
        }
        3 | 4 => inputs::word(rng, max),
        _ => inputs::string(rng, max),
    }
}

fn interesting_i64(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => *rng.pick(&[0, 1, -1, i64::MIN, i64::MAX, i64::MIN + 1]),
        1 => -(rng.below(1000) as i64),
        _ => rng.interesting_u64() as i64,
    }
}

fn patch(rng: &mut Rng) -> StatePatch {
    let delta_len = if rng.chance(2) {
        rng.range(1 << 10, 1 << 16)
    } else {
        rng.len(64)
    };
    StatePatch {
        version: interesting_i64(rng),
        delta: Bytes::from(rng.bytes(delta_len)),
        client_id: text(rng, 24),
        channel: text(rng, 32),
        kind: match rng.below(6) {
            0..=2 => Kind::Patch as i32,
            3 => Kind::Snapshot as i32,
            4 => Kind::Diff as i32,
            _ => rng.next_u64() as i32,
        },
        lamport: rng.interesting_u64(),
        msg_id: text(rng, 40),
        id: rng.interesting_u64(),
        epoch: text(rng, 16),
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(rng: &mut Rng, out: &mut Vec<u8>, wire: u64) {
    let tag = match rng.below(5) {
        0..=2 => rng.range(1, 9) as u64,
        3 => *rng.pick(&[
            0,
            10,
            15,
            16,
            2047,
            2048,
            (1 << 29) - 1,
            1 << 29,
            u64::MAX >> 3,
        ]),
        _ => rng.next_u64() >> rng.below(64),
    };
    varint(out, (tag << 3) | wire);
}

/// Protobuf-shaped bytes: a run of fields of every wire type, some broken.
fn raw_fields(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.range(1, 12) {
        match rng.below(9) {
            0 => {
                key(rng, &mut out, 0);
                let v = rng.interesting_u64();
                varint(&mut out, v);
            }
            1 => {
                // Overlong or unterminated varint.
                key(rng, &mut out, 0);
                let n = rng.range(1, 12);
                out.extend(std::iter::repeat_n(0xff, n));
                if rng.chance(50) {
                    out.push(rng.byte() & 0x7f);
                }
            }
            2 => {
                // Length-delimited with a length that may run past the end.
                key(rng, &mut out, 2);
                let n = rng.len(40);
                let len = if rng.chance(70) {
                    n as u64
                } else {
                    rng.interesting_u64()
                };
                varint(&mut out, len);
                let body = if rng.chance(50) {
                    rng.bytes(n)
                } else {
                    inputs::string(rng, n).into_bytes()
                };
                out.extend(body);
            }
            3 => {
                key(rng, &mut out, 1);
                let n = rng.range(0, 8);
                out.extend(rng.bytes(n));
            }
            4 => {
                key(rng, &mut out, 5);
                let n = rng.range(0, 4);
                out.extend(rng.bytes(n));
            }
            5 => {
                // Groups: balanced, unbalanced, or nested past the recursion limit.
                let depth = if rng.chance(20) {
                    rng.range(90, 5000)
                } else {
                    rng.range(1, 5)
                };
                let tag = rng.range(10, 20) as u64;
                for _ in 0..depth {
                    varint(&mut out, (tag << 3) | 3);
                }
                let ends = match rng.below(3) {
                    0 => depth,
                    1 => rng.below(depth + 1),
                    _ => depth + 1,
                };
                for _ in 0..ends {
                    let t = if rng.chance(90) {
                        tag
                    } else {
                        rng.range(1, 30) as u64
                    };
                    varint(&mut out, (t << 3) | 4);
                }
            }
            6 => {
                // Invalid wire types 6 and 7.
                let w = rng.range(6, 7) as u64;
                key(rng, &mut out, w);
                let n = rng.len(8);
                out.extend(rng.bytes(n));
            }
            7 => {
                // A string field holding invalid UTF-8.
                let tag = *rng.pick(&[3u64, 4, 7, 9]);
                varint(&mut out, (tag << 3) | 2);
                let body: &[u8] = rng.pick::<&[u8]>(&[
                    &b"\xff"[..],
                    b"\xc3",
                    b"\xed\xa0\x80",
                    b"a\xf0\x9f\x98",
                    b"\xc0\xaf",
                    b"\xf4\x90\x80\x80",
                ]);
                varint(&mut out, body.len() as u64);
                out.extend_from_slice(body);
            }
            _ => {
                // A well-formed patch in the middle (fields merge, last wins).
                out.extend(patch(rng).encode_to_vec());
            }
        }
    }
    out
}

const DICT: &[&[u8]] = &[
    b"\x08",
    b"\x12",
    b"\x1a",
    b"\x22",
    b"\x28",
    b"\x30",
    b"\x3a",
    b"\x40",
    b"\x4a",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80",
    b"\x0b",
    b"\x0c",
    b"\x00",
];

fn check_bytes(b: &[u8]) -> Result<(), String> {
    let full = StatePatch::decode(b);
    let client = frame::decode_client(b);
    let entry = Entry::decode(b);
    match &client {
        Ok(c) => {
            if c.channel.is_empty()
                || c.msg_id
                    .as_ref()
                    .is_some_and(|m| m.len() > MAX_MSG_ID_LEN || m.is_empty())
            {
                return Err(format!("decode_client accepted {c:?}"));
            }
            if full.is_err() {
                return Err("decode_client accepted what StatePatch::decode refuses".into());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if entry.is_some() && full.is_err() {
        return Err("Entry::decode accepted what StatePatch::decode refuses".into());
    }
    if let Some((_, e)) = &entry
        && e.version == 0
    {
        return Err("Entry::decode gave version 0".into());
    }
    if let Ok(p) = full {
        // Canonical re-encoding decodes to the same patch.
        let again = StatePatch::decode(&p.encode_to_vec()[..])
            .map_err(|e| format!("re-encoded patch does not decode: {e}"))?;
        if again != p {
            return Err(format!("re-encode round trip differs: {p:?} vs {again:?}"));
        }
    }
    Ok(())
}

fn check_round_trip(p: &StatePatch) -> Result<(), String> {
    let bytes = p.encode_to_vec();
    if frame::encode(p).bytes()[..] != bytes[..] {
        return Err("frame::encode differs from encode_to_vec".into());
    }
    let back = StatePatch::decode(&bytes[..]).map_err(|e| format!("decode: {e}"))?;
    if &back != p {
        return Err(format!("round trip differs: {back:?}"));
    }
    let client_ok =
        p.kind == Kind::Patch as i32 && !p.channel.is_empty() && p.msg_id.len() <= MAX_MSG_ID_LEN;
    match frame::decode_client(&bytes) {
        Ok(c) => {
            if !client_ok {
                return Err(format!("decode_client accepted {p:?}"));
            }
            let want_base = u64::try_from(p.version).unwrap_or(0);
            if c.id != p.id
                || c.channel != p.channel
                || c.delta != p.delta
                || c.msg_id.as_deref().unwrap_or("") != p.msg_id
                || c.base_version != want_base
            {
                return Err(format!("decode_client gave {c:?}"));
            }
        }
        Err(e) if client_ok => return Err(format!("decode_client refused a valid patch: {e}")),
        Err(_) => {}
    }
    match Entry::decode(&bytes) {
        Some((epoch, e)) => {
            if p.version <= 0 {
                return Err(format!("Entry::decode accepted version {}", p.version));
            }
            if epoch != p.epoch
                || e.version != p.version as u64
                || e.delta != p.delta
                || *e.client_id != *p.client_id
                || e.lamport != p.lamport
                || e.msg_id.as_deref().unwrap_or("") != p.msg_id
            {
                return Err(format!("Entry::decode gave {e:?} in {epoch:?}"));
            }
        }
        None if p.version > 0 => return Err("Entry::decode refused a patch with a version".into()),
        None => {}
    }
    check_bytes(&bytes)
}

impl Target for Patches {
    type Input = Input;

    fn name(&self) -> &'static str {
        "statepatch"
    }

    fn about(&self) -> &'static str {
        "frame::decode_client + log::Entry::decode + StatePatch::decode, encode/decode round trips"
    }

    fn full_iters(&self) -> u64 {
        3_000_000
    }

    fn short_iters(&self) -> u64 {
        60_000
    }

    fn generate(&self, rng: &mut Rng) -> Input {
        match rng.below(10) {
            0 => {
                let n = rng.len(64);
                Input::Bytes(rng.bytes(n))
            }
            1 | 2 => Input::Bytes(raw_fields(rng)),
            3..=5 => {
                let mut b = if rng.chance(70) {
                    patch(rng).encode_to_vec()
                } else {
                    raw_fields(rng)
                };
                inputs::mutate_n(rng, &mut b, DICT, 5);
                Input::Bytes(b)
            }
            6..=8 => Input::RoundTrip(patch(rng)),
            _ => {
                let version = (rng.interesting_u64() & (i64::MAX as u64)).max(1);
                let msg = text(rng, 20);
                Input::Entry(
                    text(rng, 16),
                    Entry {
                        version,
                        delta: Bytes::from({
                            let n = rng.len(64);
                            rng.bytes(n)
                        }),
                        client_id: Arc::from(text(rng, 20)),
                        lamport: rng.interesting_u64(),
                        msg_id: (!msg.is_empty()).then(|| Arc::from(msg)),
                    },
                )
            }
        }
    }

    fn bytes(&self, input: &Input) -> Vec<u8> {
        match input {
            Input::Bytes(b) => b.clone(),
            Input::RoundTrip(p) => p.encode_to_vec(),
            Input::Entry(epoch, e) => e.encode(epoch),
        }
    }

    fn check(&self, input: &Input) -> Result<(), String> {
        match input {
            Input::Bytes(b) => check_bytes(b),
            Input::RoundTrip(p) => check_round_trip(p),
            Input::Entry(epoch, e) => {
                let bytes = e.encode(epoch);
                match Entry::decode(&bytes) {
                    Some((ep, back)) if ep == *epoch && back == *e => check_bytes(&bytes),
                    other => Err(format!("entry round trip gave {other:?}")),
                }
            }
        }
    }
}
