//! The document log seam: where a document's state lives between replicas.
//!
//! A log holds, per document channel, an epoch, the last compacted snapshot
//! and the entries after it, and is the one place versions are assigned: an
//! [`DocumentLog::append`] succeeds only as the next version of the epoch the
//! caller saw, so concurrent writers on several nodes get one gapless version
//! sequence (the loser catches up and retries). The embedded
//! [`MemoryDocumentLog`] serves one node; `switchyard-redis` implements the same
//! trait across nodes.
//!
//! Guarantees every implementation gives:
//! - versions of an epoch are gapless and each is assigned once;
//! - a `msg_id` is appended at most once per document (within the dedupe window);
//! - after a successful `append`, `load` and `read_after` on any node see it;
//! - a lost store (e.g. Redis restarted without persistence) shows up as a new
//!   epoch, never as an old epoch with missing entries.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::backpressure::TokenBucket;
use crate::broker::{BrokerError, ChannelLimit};
use crate::channel::ChannelKey;
use crate::dedupe::DedupeWindow;
use crate::document::Documents;

/// One accepted change, as the log keeps it and replicas apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Version this change brought the document to.
    pub version: u64,
    /// The update the merge policy returned (what every replica applies).
    pub delta: Bytes,
    /// Client id of the author (`""` = server side).
    pub client_id: Arc<str>,
    /// Lamport timestamp assigned at acceptance.
    pub lamport: u64,
    /// Dedupe id, if the author gave one.
    pub msg_id: Option<Arc<str>>,
}

/// A document as the log holds it.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Epoch: changes when the log lost the document's history.
    pub epoch: Arc<str>,
    /// Version of `snapshot`.
    pub snapshot_version: u64,
    /// Lamport clock at `snapshot`.
    pub snapshot_lamport: u64,
    /// Merge-policy snapshot at `snapshot_version` (empty = new document).
    pub snapshot: Bytes,
    /// Entries after the snapshot, in version order, gapless.
    pub entries: Vec<Entry>,
    /// Recently appended `msg_id`s and their versions (for dedupe on load).
    pub msg_ids: Vec<(Arc<str>, u64)>,
}

impl Stored {
    /// Version after all entries.
    pub fn version(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_version, |e| e.version)
    }
}

/// How a document's log is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Entries kept for recovery (older ones go once a snapshot covers them).
    pub log_len: usize,
    /// `msg_id`s remembered per document.
    pub dedupe_window: usize,
}

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored as `entry.version`.
    Done,
    /// The `msg_id` was appended before, as this version; nothing stored.
    Duplicate(u64),
    /// Another writer got there first: the log is past `entry.version - 1`.
    /// These are the entries the caller is missing (after its version).
    Behind(Vec<Entry>),
    /// The document's epoch is not the caller's any more (history lost):
    /// reload it.
    EpochChanged,
}

/// Durable home of documents: snapshots, logs, version assignment.
#[async_trait]
pub trait DocumentLog: Send + Sync + 'static {
    /// The document's state, created (a new epoch, version 0) when absent.
    async fn load(&self, key: &ChannelKey, opts: &LogOptions) -> Result<Stored, BrokerError>;

    /// Takes one token from the channel's shared budget (its
    /// `channel_limits` entry), for every writer of the document together —
    /// cluster-wide when the log is shared. `Some(retry_after_ms)` when the
    /// bucket is empty (the patch must not be applied).
    async fn spend(
        &self,
        key: &ChannelKey,
        limit: ChannelLimit,
    ) -> Result<Option<u64>, BrokerError>;

    /// Appends `entry` as version `entry.version` of `epoch` if the log's head
    /// is `entry.version - 1` and its `msg_id` is new.
    async fn append(
        &self,
        key: &ChannelKey,
        epoch: &str,
        entry: &Entry,
        opts: &LogOptions,
    ) -> Result<Appended, BrokerError>;

    /// Entries of `epoch` after `version`, or `None` when the epoch changed or
    /// the log no longer reaches back that far.
    async fn read_after(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
    ) -> Result<Option<Vec<Entry>>, BrokerError>;

    /// Stores `snapshot` as the state at `version` and lets the log drop
    /// entries it covers beyond the last `opts.log_len`.
    async fn compact(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
        lamport: u64,
        snapshot: Bytes,
        opts: &LogOptions,
    ) -> Result<(), BrokerError>;

    /// This node now holds a replica of `key`: deliver other nodes' appends to
    /// it (cross-node logs); returns once delivery is live.
    async fn watch(&self, key: &ChannelKey) -> Result<(), BrokerError> {
        let _ = key;
        Ok(())
    }

    /// This node dropped its replica of `key`.
    async fn unwatch(&self, key: &ChannelKey) {
        let _ = key;
    }

    /// Hands the log the engine it delivers other nodes' appends to
    /// ([`Documents::apply_remote`]) and asks to resync after a reconnect
    /// ([`Documents::resync`]). Called once, by [`Documents::new`].
    fn attach(&self, docs: Weak<Documents>) {
        let _ = docs;
    }

    /// The store lost the document (a new, empty `epoch` after a restart
    /// without persistence) while this node still has its state: seeds the new
    /// epoch with `snapshot` at `version`, unless another writer got there
    /// first. Returns whether this call seeded it.
    async fn reseed(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
        lamport: u64,
        snapshot: Bytes,
    ) -> Result<bool, BrokerError> {
        let _ = (key, epoch, version, lamport, snapshot);
        Ok(false)
    }
}

impl Entry {
    /// The entry as bytes for a store or a pub/sub payload: a `StatePatch`
    /// (kind PATCH) carrying the epoch.
    pub fn encode(&self, epoch: &str) -> Vec<u8> {
        use prost::Message as _;
        super::frame::StatePatch {
            version: i64::try_from(self.version).unwrap_or(i64::MAX),
            delta: self.delta.clone(),
            client_id: self.client_id.to_string(),
            lamport: self.lamport,
            msg_id: self.msg_id.as_deref().unwrap_or_default().to_owned(),
            epoch: epoch.to_owned(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Decodes [`Entry::encode`]'s bytes: `(epoch, entry)`.
    pub fn decode(bytes: &[u8]) -> Option<(String, Entry)> {
        use prost::Message as _;
        let p = super::frame::StatePatch::decode(bytes).ok()?;
        let version = u64::try_from(p.version).ok().filter(|v| *v > 0)?;
        Some((
            p.epoch,
            Entry {
                version,
                delta: p.delta,
                client_id: Arc::from(p.client_id),
                lamport: p.lamport,
                msg_id: (!p.msg_id.is_empty()).then(|| Arc::from(p.msg_id)),
            },
        ))
    }
}

/// A new random epoch.
pub fn new_epoch() -> Arc<str> {
    Arc::from(&uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[derive(Debug)]
struct MemDoc {
    epoch: Arc<str>,
    snapshot_version: u64,
    snapshot_lamport: u64,
    snapshot: Bytes,
    entries: VecDeque<Entry>,
    dedupe: DedupeWindow,
    recent_ids: VecDeque<(Arc<str>, u64)>,
}

/// The embedded log: documents live in this process (as long as it runs).
#[derive(Debug, Default)]
pub struct MemoryDocumentLog {
    docs: Mutex<HashMap<ChannelKey, MemDoc>>,
    /// Shared budgets of limited document channels (full ones are forgotten
    /// once there are many).
    buckets: Mutex<HashMap<ChannelKey, (ChannelLimit, TokenBucket)>>,
}

/// Limited channels whose buckets are kept before full ones are swept.
const MAX_IDLE_BUCKETS: usize = 4096;

impl MemoryDocumentLog {
    /// An empty log.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

fn mem_doc(opts: &LogOptions) -> MemDoc {
    MemDoc {
        epoch: new_epoch(),
        snapshot_version: 0,
        snapshot_lamport: 0,
        snapshot: Bytes::new(),
        entries: VecDeque::new(),
        dedupe: DedupeWindow::new(opts.dedupe_window),
        recent_ids: VecDeque::new(),
    }
}

#[async_trait]
impl DocumentLog for MemoryDocumentLog {
    async fn load(&self, key: &ChannelKey, opts: &LogOptions) -> Result<Stored, BrokerError> {
        let mut docs = self.docs.lock();
        let d = docs.entry(key.clone()).or_insert_with(|| mem_doc(opts));
        Ok(Stored {
            epoch: d.epoch.clone(),
            snapshot_version: d.snapshot_version,
            snapshot_lamport: d.snapshot_lamport,
            snapshot: d.snapshot.clone(),
            entries: d
                .entries
                .iter()
                .filter(|e| e.version > d.snapshot_version)
                .cloned()
                .collect(),
            msg_ids: d.recent_ids.iter().cloned().collect(),
        })
    }

    async fn spend(
        &self,
        key: &ChannelKey,
        limit: ChannelLimit,
    ) -> Result<Option<u64>, BrokerError> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_IDLE_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, (_, b)| !b.is_full(now));
        }
        let (l, b) = buckets
            .entry(key.clone())
            .or_insert_with(|| (limit, TokenBucket::new(limit.rate, limit.burst, now)));
        if *l != limit {
            *l = limit;
            *b = TokenBucket::new(limit.rate, limit.burst, now);
        }
        Ok((!b.try_take(now, 1)).then(|| limit.retry_after_ms()))
    }

    async fn append(
        &self,
        key: &ChannelKey,
        epoch: &str,
        entry: &Entry,
        opts: &LogOptions,
    ) -> Result<Appended, BrokerError> {
        let mut docs = self.docs.lock();
        let Some(d) = docs.get_mut(key) else {
            return Ok(Appended::EpochChanged);
        };
        if &*d.epoch != epoch {
            return Ok(Appended::EpochChanged);
        }
        if let Some(id) = &entry.msg_id
            && let Some(v) = d.dedupe.get(id)
        {
            return Ok(Appended::Duplicate(v));
        }
        let head = d.entries.back().map_or(d.snapshot_version, |e| e.version);
        if entry.version != head + 1 {
            let missing = d
                .entries
                .iter()
                .filter(|e| e.version + 1 >= entry.version)
                .cloned()
                .collect();
            return Ok(Appended::Behind(missing));
        }
        if let Some(id) = &entry.msg_id {
            d.dedupe.insert(id, entry.version);
            d.recent_ids.push_back((id.clone(), entry.version));
            while d.recent_ids.len() > opts.dedupe_window {
                d.recent_ids.pop_front();
            }
        }
        d.entries.push_back(entry.clone());
        // Never more than twice the log length, even if nobody compacts.
        while d.entries.len() > opts.log_len.max(1) * 2
            && d.entries
                .front()
                .is_some_and(|e| e.version <= d.snapshot_version)
        {
            d.entries.pop_front();
        }
        Ok(Appended::Done)
    }

    async fn read_after(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
    ) -> Result<Option<Vec<Entry>>, BrokerError> {
        let docs = self.docs.lock();
        let Some(d) = docs.get(key).filter(|d| &*d.epoch == epoch) else {
            return Ok(None);
        };
        let first = d
            .entries
            .front()
            .map_or(d.snapshot_version + 1, |e| e.version);
        if version + 1 < first {
            return Ok(None);
        }
        Ok(Some(
            d.entries
                .iter()
                .filter(|e| e.version > version)
                .cloned()
                .collect(),
        ))
    }

    async fn compact(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
        lamport: u64,
        snapshot: Bytes,
        opts: &LogOptions,
    ) -> Result<(), BrokerError> {
        let mut docs = self.docs.lock();
        let Some(d) = docs.get_mut(key).filter(|d| &*d.epoch == epoch) else {
            return Ok(());
        };
        let head = d.entries.back().map_or(d.snapshot_version, |e| e.version);
        if version <= d.snapshot_version || version > head {
            return Ok(());
        }
        d.snapshot_version = version;
        d.snapshot_lamport = lamport;
        d.snapshot = snapshot;
        while d.entries.len() > opts.log_len
            && d.entries.front().is_some_and(|e| e.version <= version)
        {
            d.entries.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: LogOptions = LogOptions {
        log_len: 4,
        dedupe_window: 8,
    };

    fn entry(version: u64, msg_id: Option<&str>) -> Entry {
        Entry {
            version,
            delta: Bytes::from_static(b"{}"),
            client_id: Arc::from("c"),
            lamport: version,
            msg_id: msg_id.map(Arc::from),
        }
    }

    #[test]
    fn entries_round_trip_through_bytes() {
        let e = entry(7, Some("m"));
        assert_eq!(Entry::decode(&e.encode("ep")), Some(("ep".to_owned(), e)));
        let anon = entry(1, None);
        assert_eq!(Entry::decode(&anon.encode("")).map(|(_, e)| e), Some(anon));
        assert_eq!(Entry::decode(b"\xff\xff"), None);
        assert_eq!(Entry::decode(&[]), None, "version 0 is no entry");
    }

    #[tokio::test]
    async fn versions_are_gapless_and_msg_ids_append_once() {
        let log = MemoryDocumentLog::new();
        let key = ChannelKey::new("t", "doc:1");
        let s = log.load(&key, &OPTS).await.expect("load");
        assert_eq!(s.version(), 0);
        let e = &s.epoch;
        assert_eq!(
            log.append(&key, e, &entry(1, Some("m")), &OPTS).await,
            Ok(Appended::Done)
        );
        assert_eq!(
            log.append(&key, e, &entry(2, Some("m")), &OPTS).await,
            Ok(Appended::Duplicate(1))
        );
        assert_eq!(
            log.append(&key, e, &entry(1, None), &OPTS).await,
            Ok(Appended::Behind(vec![entry(1, Some("m"))]))
        );
        assert_eq!(
            log.append(&key, "other", &entry(2, None), &OPTS).await,
            Ok(Appended::EpochChanged)
        );
        assert_eq!(
            log.append(&key, e, &entry(2, None), &OPTS).await,
            Ok(Appended::Done)
        );
        assert_eq!(log.load(&key, &OPTS).await.expect("load").version(), 2);
    }

    #[tokio::test]
    async fn compaction_keeps_recovery_within_the_log_length() {
        let log = MemoryDocumentLog::new();
        let key = ChannelKey::new("t", "doc:1");
        let epoch = log.load(&key, &OPTS).await.expect("load").epoch;
        for v in 1..=10 {
            log.append(&key, &epoch, &entry(v, None), &OPTS)
                .await
                .expect("append");
        }
        log.compact(
            &key,
            &epoch,
            10,
            10,
            Bytes::from_static(b"{\"s\":1}"),
            &OPTS,
        )
        .await
        .expect("compact");
        let s = log.load(&key, &OPTS).await.expect("load");
        assert_eq!((s.snapshot_version, s.entries.len()), (10, 0));
        let after = log.read_after(&key, &epoch, 7).await.expect("read");
        assert_eq!(after.map(|v| v.len()), Some(3), "6 entries back: kept");
        assert_eq!(log.read_after(&key, &epoch, 2).await.expect("read"), None);
        assert_eq!(log.read_after(&key, "old", 9).await.expect("read"), None);
    }
}
