//! Document channels across nodes: the [`DocumentLog`] kept in Redis.
//!
//! Per document, on the document's shard (keys share its hash tag):
//! - `…:doc` hash: `epoch`, `version` (the head), `snap_version`,
//!   `snap_lamport`, `snapshot` (the last compacted state);
//! - `…:doclog` list: the entries (encoded `StatePatch`es), oldest first,
//!   always covering `(snap_version, version]` plus up to `log_len` older ones;
//! - `…:docids` sorted set: `msg_id` → version (the dedupe window);
//! - `…:doclive` pub/sub channel: every appended entry.
//!
//! **Versions.** An append is a Lua compare-and-append: it succeeds only as
//! `head + 1` of the epoch the writer saw, so two nodes patching at once get
//! one gapless sequence; the loser is told what it missed (`Behind`), catches
//! its replica up and merges again on top. Every replica applies the same
//! entries in the same order, so after version V every node has the same state.
//!
//! **Redis lost its data** (restart without persistence): the hash is gone, so
//! the next load creates a new epoch. A node that still holds a replica notices
//! when its pub/sub connection comes back (or its next append is refused) and
//! re-seeds the new epoch from its replica at its version, if no write reached
//! the new epoch first; its subscribers get a `SNAPSHOT` with the new epoch.
//!
//! Documents carry no TTL: they live until deleted (bounded per document by
//! `limits.document_max_bytes` and `limits.document_log_size`).

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::Value;
use switchyard_core::broker::{BrokerError, ChannelLimit};
use switchyard_core::channel::ChannelKey;
use switchyard_core::document::Documents;
use switchyard_core::document::log::{Appended, DocumentLog, Entry, LogOptions, Stored, new_epoch};
use tokio::sync::mpsc;

use crate::keys::DocKeys;
use crate::replies::{text, uint};
use crate::scripts;
use crate::shard::Shard;
use crate::sharding::channel_shard;

/// Pub/sub events for documents, from the shards' subscription loops to the engine.
#[derive(Debug)]
pub enum DocEvent {
    /// An entry another node (or this one) appended: the encoded `StatePatch`.
    Entry(ChannelKey, Vec<u8>),
    /// The pub/sub connection came back: the replica may have missed entries.
    Resync(ChannelKey),
}

/// Events waiting for the engine at most; beyond, an entry is dropped and the
/// replica fills the gap from the log on the next entry.
pub const EVENT_QUEUE: usize = 65_536;

/// The Redis document log.
pub struct RedisDocumentLog {
    shards: Arc<[Arc<Shard>]>,
    events: Mutex<Option<mpsc::Receiver<DocEvent>>>,
}

impl std::fmt::Debug for RedisDocumentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDocumentLog").finish_non_exhaustive()
    }
}

fn bad(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected redis reply: {what}"))
}

fn entries(v: &Value) -> Result<Vec<Entry>, BrokerError> {
    let Value::Array(items) = v else {
        return Err(bad("document log"));
    };
    items
        .iter()
        .map(|i| match i {
            Value::BulkString(b) => Entry::decode(b)
                .map(|(_, e)| e)
                .ok_or_else(|| bad("document log entry")),
            _ => Err(bad("document log entry")),
        })
        .collect()
}

fn bytes(v: &Value) -> Bytes {
    match v {
        Value::BulkString(b) => Bytes::copy_from_slice(b),
        _ => Bytes::new(),
    }
}

impl RedisDocumentLog {
    /// A log over `shards`; the subscription loops send to the returned sender.
    pub fn new(shards: Arc<[Arc<Shard>]>) -> (Arc<Self>, mpsc::Sender<DocEvent>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        (
            Arc::new(Self {
                shards,
                events: Mutex::new(Some(rx)),
            }),
            tx,
        )
    }

    fn shard(&self, key: &ChannelKey) -> &Arc<Shard> {
        &self.shards[channel_shard(&key.tenant, &key.channel, self.shards.len())]
    }

    /// Runs one document script (built from the document's keys) on its shard.
    async fn run(
        &self,
        key: &ChannelKey,
        script: &redis::Script,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>, &DocKeys),
    ) -> Result<Value, BrokerError> {
        let shard = self.shard(key);
        let mut invocation = script.prepare_invoke();
        args(&mut invocation, &DocKeys::new(key));
        let mut conn = shard.conn();
        shard.run(invocation.invoke_async::<Value>(&mut conn)).await
    }
}

#[async_trait]
impl DocumentLog for RedisDocumentLog {
    async fn load(&self, key: &ChannelKey, opts: &LogOptions) -> Result<Stored, BrokerError> {
        let _ = opts;
        let v = self
            .run(key, &scripts::DOC_LOAD, |inv, k| {
                inv.key(&k.state).key(&k.log).key(&k.ids).arg(&*new_epoch());
            })
            .await?;
        let Value::Array(items) = &v else {
            return Err(bad("document load"));
        };
        let [
            epoch,
            version,
            snap_version,
            snap_lamport,
            snapshot,
            log,
            ids,
        ] = items.as_slice()
        else {
            return Err(bad("document load arity"));
        };
        let version = uint(version).ok_or_else(|| bad("document version"))?;
        let snapshot_version = uint(snap_version).ok_or_else(|| bad("snapshot version"))?;
        let entries: Vec<Entry> = entries(log)?
            .into_iter()
            .filter(|e| e.version > snapshot_version)
            .collect();
        if entries.last().map_or(snapshot_version, |e| e.version) != version {
            return Err(BrokerError::Internal(format!(
                "document {key}: log does not reach its head version {version}"
            )));
        }
        let mut msg_ids = Vec::new();
        if let Value::Array(pairs) = ids {
            for pair in pairs.chunks(2) {
                if let [id, v] = pair
                    && let (Some(id), Some(v)) = (text(id), uint(v))
                {
                    msg_ids.push((Arc::from(id), v));
                }
            }
        }
        Ok(Stored {
            epoch: Arc::from(text(epoch).ok_or_else(|| bad("document epoch"))?),
            snapshot_version,
            snapshot_lamport: uint(snap_lamport).unwrap_or(0),
            snapshot: bytes(snapshot),
            entries,
            msg_ids,
        })
    }

    async fn spend(
        &self,
        key: &ChannelKey,
        limit: ChannelLimit,
    ) -> Result<Option<u64>, BrokerError> {
        let v = self
            .run(key, &scripts::TAKE_TOKEN, |inv, k| {
                inv.key(&k.limit).arg(limit.rate).arg(limit.burst);
            })
            .await?;
        match uint(&v) {
            Some(0) => Ok(None),
            Some(ms) => Ok(Some(ms)),
            None => Err(bad("token reply")),
        }
    }

    async fn append(
        &self,
        key: &ChannelKey,
        epoch: &str,
        entry: &Entry,
        opts: &LogOptions,
    ) -> Result<Appended, BrokerError> {
        let v = self
            .run(key, &scripts::DOC_APPEND, |inv, k| {
                inv.key(&k.state)
                    .key(&k.log)
                    .key(&k.ids)
                    .arg(epoch)
                    .arg(entry.version)
                    .arg(entry.encode(epoch))
                    .arg(entry.msg_id.as_deref().unwrap_or(""))
                    .arg(opts.log_len.max(1))
                    .arg(opts.dedupe_window.max(1))
                    .arg(&k.live);
            })
            .await?;
        let Value::Array(items) = &v else {
            return Err(bad("document append"));
        };
        match items.as_slice() {
            [s] if text(s) == Some("ok") => Ok(Appended::Done),
            [s] if text(s) == Some("epoch") || text(s) == Some("far") => Ok(Appended::EpochChanged),
            [s, v] if text(s) == Some("dup") => Ok(Appended::Duplicate(
                uint(v).ok_or_else(|| bad("duplicate version"))?,
            )),
            [s, log] if text(s) == Some("behind") => Ok(Appended::Behind(entries(log)?)),
            _ => Err(bad("document append reply")),
        }
    }

    async fn read_after(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
    ) -> Result<Option<Vec<Entry>>, BrokerError> {
        let v = self
            .run(key, &scripts::DOC_READ_AFTER, |inv, k| {
                inv.key(&k.state).key(&k.log).arg(epoch).arg(version);
            })
            .await?;
        let Value::Array(items) = &v else {
            return Err(bad("document read"));
        };
        match items.as_slice() {
            [ok, log] if uint(ok) == Some(1) => Ok(Some(entries(log)?)),
            [ok] if uint(ok) == Some(0) => Ok(None),
            _ => Err(bad("document read reply")),
        }
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
        let _ = opts;
        self.run(key, &scripts::DOC_COMPACT, |inv, k| {
            inv.key(&k.state)
                .arg(epoch)
                .arg(version)
                .arg(lamport)
                .arg(&snapshot[..]);
        })
        .await?;
        Ok(())
    }

    async fn watch(&self, key: &ChannelKey) -> Result<(), BrokerError> {
        self.shard(key).subs.watch(DocKeys::new(key).live).await
    }

    async fn unwatch(&self, key: &ChannelKey) {
        self.shard(key).subs.unwatch(&DocKeys::new(key).live);
    }

    fn attach(&self, docs: Weak<Documents>) {
        let Some(mut rx) = self.events.lock().take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("documents attached outside a runtime: cross-node delivery is off");
            return;
        };
        // One consumer: entries of a document are applied in the order Redis published them.
        rt.spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Some(docs) = docs.upgrade() else { return };
                match ev {
                    DocEvent::Entry(key, payload) => match Entry::decode(&payload) {
                        Some((epoch, entry)) => docs.apply_remote(&key, &epoch, entry).await,
                        None => {
                            tracing::warn!(channel = %key, "dropping a malformed document entry")
                        }
                    },
                    DocEvent::Resync(key) => docs.resync(&key).await,
                }
            }
        });
    }

    async fn reseed(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
        lamport: u64,
        snapshot: Bytes,
    ) -> Result<bool, BrokerError> {
        let v = self
            .run(key, &scripts::DOC_RESEED, |inv, k| {
                inv.key(&k.state)
                    .key(&k.log)
                    .arg(epoch)
                    .arg(version)
                    .arg(lamport)
                    .arg(&snapshot[..]);
            })
            .await?;
        Ok(uint(&v) == Some(1))
    }
}
