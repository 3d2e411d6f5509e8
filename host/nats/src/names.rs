//! Subject, stream and key names.
//!
//! Every name part that comes from users (channel, client, node) is escaped
//! with [`enc`]: bytes outside `[A-Za-z0-9_-]` become `=XX` (hex), so a part is
//! one subject token, a valid KV key token and a valid consumer name alike.

use switchyard_core::channel::ChannelKey;

/// Escapes `s` into one token: `[A-Za-z0-9_-]` kept, every other byte `=XX`.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Reverses [`enc`]; `None` for a malformed token.
pub fn dec(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// History stream of a tenant's channels.
pub fn channel_stream(tenant: &str) -> String {
    format!("SY_CH_{tenant}")
}

/// Stored subject of a channel (in [`channel_stream`]).
pub fn channel_subject(key: &ChannelKey) -> String {
    format!("sy.ch.{}.{}", key.tenant, enc(&key.channel))
}

/// Core subject the stream republishes a channel's stored messages to.
pub fn live_subject(key: &ChannelKey) -> String {
    format!("sy.live.{}.{}", key.tenant, enc(&key.channel))
}

/// Document log stream of a tenant.
pub fn doc_stream(tenant: &str) -> String {
    format!("SY_DOC_{tenant}")
}

/// Stored subject of a document's log.
pub fn doc_subject(key: &ChannelKey) -> String {
    format!("sy.doc.{}.{}", key.tenant, enc(&key.channel))
}

/// Core subject a document's appended entries are republished to.
pub fn doc_live_subject(key: &ChannelKey) -> String {
    format!("sy.doclive.{}.{}", key.tenant, enc(&key.channel))
}

/// The inbox stream (directed messages, one subject per node).
pub const INBOX_STREAM: &str = "SY_INBOX";

/// Inbox subject of a node.
pub fn inbox_subject(node: &str) -> String {
    format!("sy.inbox.{}", enc(node))
}

/// Durable consumer of a node's inbox.
pub fn inbox_consumer(node: &str) -> String {
    format!("inbox-{}", enc(node))
}

/// KV bucket of presence entries: `<tenant>.<channel>.<node>.<part>`.
pub const PRESENCE_BUCKET: &str = "SY_PRESENCE";
/// KV bucket of the client directory: `<tenant>.<client>.<node>`.
pub const DIRECTORY_BUCKET: &str = "SY_DIR";
/// KV bucket of channel budgets (`channel_limits`): `<tenant>.<channel>`.
pub const LIMITS_BUCKET: &str = "SY_LIMITS";
/// KV bucket of document snapshots: `<tenant>.<channel>`.
pub const SNAPSHOT_BUCKET: &str = "SY_DOCSNAP";

/// Subject of a KV key.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// The stream behind a KV bucket.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_one_token() {
        for s in ["room:a/b.c", "x", "a=b@c", "node.example.com", "ü"] {
            let e = enc(s);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{e}"
            );
            assert_eq!(dec(&e).as_deref(), Some(s));
        }
        assert_eq!(enc("room:1"), "room=3A1");
        assert_eq!(dec("bad=Z"), None);
        let k = ChannelKey::new("acme", "room:a.b");
        assert_eq!(channel_subject(&k), "sy.ch.acme.room=3Aa=2Eb");
        assert_eq!(live_subject(&k), "sy.live.acme.room=3Aa=2Eb");
    }
}
