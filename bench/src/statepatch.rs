//! The binary frames of document channels: `switchyard.v1.StatePatch`
//! (`proto/switchyard/v1/state.proto`), encoded and decoded by hand so the
//! load tool needs neither `prost` nor the gateway's crates. Only what the
//! bench sends and reads: a client `PATCH`, and any server frame.

use anyhow::{Result, bail};

/// `Kind.PATCH`: an update.
pub const PATCH: i32 = 0;
/// `Kind.SNAPSHOT`: the whole document.
pub const SNAPSHOT: i32 = 1;
/// `Kind.DIFF`: what a client is missing.
pub const DIFF: i32 = 2;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// A decoded frame, borrowing from the frame's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatePatch<'a> {
    /// 1: the version the frame brings the client to.
    pub version: i64,
    /// 2: merge-policy bytes.
    pub delta: &'a [u8],
    /// 3: client id of the connection that made the change.
    pub client_id: &'a [u8],
    /// 4: document channel.
    pub channel: &'a [u8],
    /// 5: `PATCH`, `SNAPSHOT` or `DIFF`.
    pub kind: i32,
    /// 6: Lamport timestamp.
    pub lamport: u64,
    /// 7: dedupe id.
    pub msg_id: &'a [u8],
    /// 8: command id.
    pub id: u64,
    /// 9: the document's epoch.
    pub epoch: &'a [u8],
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, (field << 3) | wire);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes a client `PATCH` for `channel` into `out` (cleared first), with
/// proto3 defaults (0, empty) left out as `prost` does.
pub fn encode_patch(out: &mut Vec<u8>, channel: &str, delta: &[u8], id: u64, msg_id: Option<&str>) {
    out.clear();
    put_bytes(out, 2, delta);
    put_bytes(out, 4, channel.as_bytes());
    if let Some(m) = msg_id.filter(|m| !m.is_empty()) {
        put_bytes(out, 7, m.as_bytes());
    }
    if id != 0 {
        put_key(out, 8, VARINT);
        put_varint(out, id);
    }
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            bail!("truncated varint");
        };
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    bail!("varint longer than 10 bytes")
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8]> {
    let end = pos.checked_add(n).filter(|&e| e <= buf.len());
    let Some(end) = end else {
        bail!("field runs past the end of the frame");
    };
    let s = &buf[*pos..end];
    *pos = end;
    Ok(s)
}

/// Decodes a frame; unknown fields are skipped.
pub fn decode(buf: &[u8]) -> Result<StatePatch<'_>> {
    let mut p = StatePatch::default();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            VARINT => {
                let v = varint(buf, &mut pos)?;
                match field {
                    1 => p.version = v as i64,
                    5 => p.kind = v as i32,
                    6 => p.lamport = v,
                    8 => p.id = v,
                    _ => {}
                }
            }
            LEN => {
                let n = usize::try_from(varint(buf, &mut pos)?)?;
                let s = take(buf, &mut pos, n)?;
                match field {
                    2 => p.delta = s,
                    3 => p.client_id = s,
                    4 => p.channel = s,
                    7 => p.msg_id = s,
                    9 => p.epoch = s,
                    _ => {}
                }
            }
            FIXED64 => {
                take(buf, &mut pos, 8)?;
            }
            FIXED32 => {
                take(buf, &mut pos, 4)?;
            }
            w => bail!("unsupported wire type {w} (field {field})"),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_patch_bytes_match_the_proto_encoding() {
        let mut out = Vec::new();
        encode_patch(&mut out, "doc:1", br#"{"a":1}"#, 300, Some("m"));
        // delta (2, LEN 7), channel (4, LEN 5), msg_id (7, LEN 1), id (8, varint 300 = ac 02)
        let mut want = vec![0x12, 7];
        want.extend_from_slice(br#"{"a":1}"#);
        want.extend_from_slice(&[0x22, 5]);
        want.extend_from_slice(b"doc:1");
        want.extend_from_slice(&[0x3a, 1, b'm', 0x40, 0xac, 0x02]);
        assert_eq!(out, want);
        let p = decode(&out).expect("decode");
        assert_eq!(
            (p.channel, p.delta, p.msg_id, p.id, p.kind),
            (&b"doc:1"[..], &br#"{"a":1}"#[..], &b"m"[..], 300, PATCH)
        );
    }

    #[test]
    fn server_frames_decode_every_field() {
        let mut f = Vec::new();
        put_key(&mut f, 1, VARINT);
        put_varint(&mut f, 1_000_000);
        put_bytes(&mut f, 2, b"{}");
        put_bytes(&mut f, 3, b"client");
        put_bytes(&mut f, 4, b"doc:x");
        put_key(&mut f, 5, VARINT);
        put_varint(&mut f, SNAPSHOT as u64);
        put_key(&mut f, 6, VARINT);
        put_varint(&mut f, u64::MAX);
        put_key(&mut f, 10, FIXED32); // unknown field: skipped
        f.extend_from_slice(&[1, 2, 3, 4]);
        put_bytes(&mut f, 9, b"ep");
        let p = decode(&f).expect("decode");
        assert_eq!(p.version, 1_000_000);
        assert_eq!(p.kind, SNAPSHOT);
        assert_eq!(p.lamport, u64::MAX);
        assert_eq!(
            (p.delta, p.client_id, p.channel, p.epoch),
            (&b"{}"[..], &b"client"[..], &b"doc:x"[..], &b"ep"[..])
        );
        assert!(decode(&f[..f.len() - 1]).is_err(), "truncated frame");
        assert!(decode(&[0x0b]).is_err(), "wire type 3");
    }
}
