//! Redis key names. Every key of a channel shares the hash tag `{tenant:channel}`
//! so the channel lives on one shard (and one Redis Cluster slot).

use switchyard_core::channel::ChannelKey;

/// Key prefix of everything Switchyard writes.
pub const PREFIX: &str = "sy";

/// Consumer group every node uses on its own inbox stream.
pub const INBOX_GROUP: &str = "sy";

/// The keys of one channel.
#[derive(Debug, Clone)]
pub struct ChannelKeys {
    /// Hash: `epoch`, `seq`.
    pub meta: String,
    /// Stream of the history; entry id `<seq>-0`, fields `d` (data) and `t` (publish ms).
    pub stream: String,
    /// Sorted set msgId → seq (the dedupe window).
    pub dedupe: String,
    /// Hash node → 1: nodes with presence entries in this channel.
    pub presence_index: String,
    /// Prefix of the per-node presence hashes (`<prefix><node>`: client → principal).
    pub presence_node_prefix: String,
    /// Pub/sub channel of live messages.
    pub live: String,
    /// Hash `tokens`, `ts`: the channel's shared publish bucket (`channel_limits`).
    pub limit: String,
}

impl ChannelKeys {
    /// Keys of `key`.
    pub fn new(key: &ChannelKey) -> Self {
        let tag = format!("{PREFIX}:{{{}:{}}}", key.tenant, key.channel);
        Self {
            meta: format!("{tag}:meta"),
            stream: format!("{tag}:stream"),
            dedupe: format!("{tag}:dedupe"),
            presence_index: format!("{tag}:presence"),
            presence_node_prefix: format!("{tag}:presence:"),
            live: live_channel(key),
            limit: format!("{tag}:limit"),
        }
    }
}

/// The keys of one document channel (same hash tag as its channel keys).
#[derive(Debug, Clone)]
pub struct DocKeys {
    /// Hash: `epoch`, `version`, `snap_version`, `snap_lamport`, `snapshot`.
    pub state: String,
    /// List of encoded entries, oldest first.
    pub log: String,
    /// Sorted set msg_id → version.
    pub ids: String,
    /// Pub/sub channel of appended entries.
    pub live: String,
    /// The channel's shared budget (`channel_limits`): the same bucket as its
    /// publishes ([`ChannelKeys::limit`]).
    pub limit: String,
}

impl DocKeys {
    /// Keys of document `key`.
    pub fn new(key: &ChannelKey) -> Self {
        let tag = format!("{PREFIX}:{{{}:{}}}", key.tenant, key.channel);
        Self {
            state: format!("{tag}:doc"),
            log: format!("{tag}:doclog"),
            ids: format!("{tag}:docids"),
            live: format!("{tag}:doclive"),
            limit: format!("{tag}:limit"),
        }
    }
}

/// Parses a document pub/sub channel name back into its channel key.
pub fn parse_doc_live(name: &str) -> Option<ChannelKey> {
    parse_tagged(name, "}:doclive")
}

/// `sy:{tenant:channel}<suffix>` → the channel key, when both parts are valid.
fn parse_tagged(name: &str, suffix: &str) -> Option<ChannelKey> {
    let inner = name.strip_prefix("sy:{")?.strip_suffix(suffix)?;
    let (tenant, channel) = inner.split_once(':')?;
    if !switchyard_core::channel::valid_tenant(tenant)
        || switchyard_core::channel::validate(channel).is_err()
    {
        return None;
    }
    Some(ChannelKey::new(tenant, channel))
}

/// Pub/sub channel name of `key`.
pub fn live_channel(key: &ChannelKey) -> String {
    format!("{PREFIX}:{{{}:{}}}:live", key.tenant, key.channel)
}

/// Parses a pub/sub channel name back into its channel key.
pub fn parse_live_channel(name: &str) -> Option<ChannelKey> {
    parse_tagged(name, "}:live")
}

/// Directory hash of a client: node → expiry (ms since the epoch, Redis clock).
pub fn directory(tenant: &str, client: &str) -> String {
    format!("{PREFIX}:dir:{{{tenant}:{client}}}")
}

/// Inbox stream of a node (directed messages).
pub fn inbox(node: &str) -> String {
    format!("{PREFIX}:node:{{{node}}}:inbox")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_live_channel_round_trips() {
        let k = ChannelKey::new("acme", "doc:a");
        assert_eq!(parse_doc_live(&DocKeys::new(&k).live), Some(k.clone()));
        assert_eq!(parse_doc_live(&live_channel(&k)), None);
        assert_eq!(parse_live_channel(&DocKeys::new(&k).live), None);
    }

    #[test]
    fn live_channel_round_trips() {
        let k = ChannelKey::new("acme", "room:a/b");
        let name = live_channel(&k);
        assert_eq!(name, "sy:{acme:room:a/b}:live");
        assert_eq!(parse_live_channel(&name), Some(k));
        assert_eq!(parse_live_channel("sy:{acme:nocolon}:live"), None);
        assert_eq!(parse_live_channel("other"), None);
        let keys = ChannelKeys::new(&ChannelKey::new("t", "ns:x"));
        assert!(keys.meta.starts_with("sy:{t:ns:x}"));
    }
}
