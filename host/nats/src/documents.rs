//! Document channels across nodes: the [`DocumentLog`] kept in JetStream.
//!
//! Per tenant, the stream `SY_DOC_<tenant>` holds each document's log on the
//! subject `sy.doc.<tenant>.<channel>`: an epoch marker (version 0), then one
//! message per accepted change (an encoded `StatePatch`), each naming its
//! predecessor's stream sequence (`Sy-Prev`). An append is a compare-and-
//! append on the subject (`Nats-Expected-Last-Subject-Sequence`), so writers
//! on several nodes get one gapless version sequence; the loser is told what
//! it missed (`Behind`). The stream republishes every stored entry to
//! `sy.doclive.<tenant>.<channel>`, which nodes holding a replica subscribe to.
//! Compacted snapshots live in the KV bucket `SY_DOCSNAP` (headers `Sy-Epoch`,
//! `Sy-Version`, `Sy-Lamport`; value = the snapshot); after a snapshot the log
//! keeps the entries after it plus `document_log_size` older ones. A lost
//! store shows up as a subject without messages: a new epoch, re-seeded from
//! a live replica by a seed message (version V, the snapshot as payload).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchyard_core::broker::{BrokerError, ChannelLimit};
use switchyard_core::channel::ChannelKey;
use switchyard_core::document::Documents;
use switchyard_core::document::log::{Appended, DocumentLog, Entry, LogOptions, Stored, new_epoch};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::channels::{Channels, H_EPOCH, H_EXPECT, H_MSG_ID, H_PREV};
use crate::js::{JsError, StoredMsg, code, header_map, kv_config, nanos};
use crate::names::{self, SNAPSHOT_BUCKET};

/// Header: the document version a log message brings it to.
const H_VERSION: &str = "Sy-Version";
/// Header: `entry`, `marker` (a new epoch, version 0) or `seed` (a re-seeded
/// state at `Sy-Version`, the snapshot as payload).
const H_KIND: &str = "Sy-Kind";
/// Header: Lamport clock of a seed or snapshot.
const H_LAMPORT: &str = "Sy-Lamport";
/// Compare-and-append attempts.
const ATTEMPTS: usize = 32;

/// One decoded log message.
#[derive(Debug, Clone)]
struct LogMsg {
    stream_seq: u64,
    version: u64,
    epoch: Arc<str>,
    prev: u64,
    kind: String,
    lamport: u64,
    payload: Bytes,
}

impl LogMsg {
    fn of(m: &StoredMsg) -> Option<LogMsg> {
        Self::decode(m.seq, &m.headers, &m.payload)
    }

    fn decode(seq: u64, h: &HashMap<String, String>, payload: &Bytes) -> Option<LogMsg> {
        let num = |k: &str| h.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        Some(LogMsg {
            stream_seq: seq,
            version: num(H_VERSION)?,
            epoch: Arc::from(h.get(H_EPOCH).filter(|e| !e.is_empty())?.as_str()),
            prev: num(H_PREV).unwrap_or(0),
            kind: h.get(H_KIND).cloned().unwrap_or_default(),
            lamport: num(H_LAMPORT).unwrap_or(0),
            payload: payload.clone(),
        })
    }

    fn entry(&self) -> Option<Entry> {
        (self.kind == "entry")
            .then(|| Entry::decode(&self.payload).map(|(_, e)| e))
            .flatten()
    }
}

/// What a walk back from the head found.
struct Chain {
    /// Entries after `down_to`, oldest first.
    entries: Vec<Entry>,
    /// The chain reached `down_to` (or, with `stop_at_seed`, a seed/marker).
    complete: bool,
    /// The seed or marker the walk stopped at.
    base: Option<LogMsg>,
}

/// A document event for the engine: an entry (epoch, entry), or `None` = resync.
type DocEvent = (ChannelKey, Option<(String, Entry)>);

/// The JetStream document log.
pub struct NatsDocumentLog {
    chans: Arc<Channels>,
    replicas: usize,
    events: Mutex<Option<mpsc::Receiver<DocEvent>>>,
    events_tx: mpsc::Sender<DocEvent>,
    subs: Mutex<HashMap<ChannelKey, (usize, JoinHandle<()>)>>,
    generation: watch::Receiver<u64>,
}

impl std::fmt::Debug for NatsDocumentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsDocumentLog").finish_non_exhaustive()
    }
}

fn broker(e: JsError) -> BrokerError {
    e.into()
}

fn stream_config(tenant: &str, replicas: usize) -> Value {
    json!({
        "name": names::doc_stream(tenant),
        "subjects": [format!("sy.doc.{tenant}.*")],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": -1,
        "max_age": 0,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_msg_size": -1,
        "max_consumers": -1,
        "discard": "old",
        "duplicate_window": nanos(Duration::from_secs(120)),
        "republish": { "src": format!("sy.doc.{tenant}.*"), "dest": format!("sy.doclive.{tenant}.{{{{wildcard(1)}}}}") },
    })
}

impl NatsDocumentLog {
    /// A log over the broker's JetStream; `generation` changes after reconnects.
    pub fn new(
        chans: Arc<Channels>,
        replicas: usize,
        generation: watch::Receiver<u64>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(65_536);
        Arc::new(Self {
            chans,
            replicas,
            events: Mutex::new(Some(rx)),
            events_tx: tx,
            subs: Mutex::new(HashMap::new()),
            generation,
        })
    }

    async fn ensure(&self, tenant: &str) -> Result<(), BrokerError> {
        let js = &self.chans.js;
        js.ensure_once(&self.chans.ensured, &stream_config(tenant, self.replicas))
            .await
            .map_err(broker)?;
        js.ensure_once(
            &self.chans.ensured,
            &kv_config(SNAPSHOT_BUCKET, Duration::ZERO, false, self.replicas),
        )
        .await
        .map_err(broker)
    }

    async fn head(&self, key: &ChannelKey) -> Result<Option<LogMsg>, BrokerError> {
        let m = self
            .chans
            .js
            .last(&names::doc_stream(&key.tenant), &names::doc_subject(key))
            .await
            .map_err(broker)?;
        Ok(m.as_ref().and_then(LogMsg::of))
    }

    async fn at(&self, key: &ChannelKey, seq: u64) -> Result<Option<LogMsg>, BrokerError> {
        let m = self
            .chans
            .js
            .at(&names::doc_stream(&key.tenant), seq)
            .await
            .map_err(broker)?;
        Ok(m.as_ref()
            .filter(|m| m.subject == names::doc_subject(key))
            .and_then(LogMsg::of))
    }

    /// Entries after `down_to`, walking back from `head`; stops at a seed or
    /// marker at or above `down_to`.
    async fn walk(
        &self,
        key: &ChannelKey,
        head: &LogMsg,
        down_to: u64,
    ) -> Result<Chain, BrokerError> {
        let mut entries = Vec::new();
        let mut cur = head.clone();
        let (complete, base) = loop {
            if cur.version <= down_to {
                break (true, None);
            }
            if cur.kind != "entry" || *cur.epoch != *head.epoch {
                break (false, Some(cur));
            }
            match cur.entry() {
                Some(e) => entries.push(e),
                None => break (false, None),
            }
            if cur.version - 1 == down_to {
                break (true, None);
            }
            match self.at(key, cur.prev).await? {
                Some(p) if p.version + 1 == cur.version => cur = p,
                _ => break (false, None),
            }
        };
        entries.reverse();
        Ok(Chain {
            entries,
            complete,
            base,
        })
    }

    async fn publish(
        &self,
        key: &ChannelKey,
        h: HeaderMap,
        payload: Bytes,
    ) -> Result<Result<crate::js::PubAck, u64>, BrokerError> {
        match self
            .chans
            .js
            .publish(names::doc_subject(key), h, payload)
            .await
        {
            Ok(ack) => Ok(Ok(ack)),
            Err(e) if e.code() == Some(code::WRONG_LAST_SEQUENCE) => Ok(Err(0)),
            Err(e) if e.code() == Some(code::STREAM_NOT_FOUND) => {
                self.chans.ensured.forget(&names::doc_stream(&key.tenant));
                self.ensure(&key.tenant).await?;
                Ok(Err(0))
            }
            Err(e) => Err(broker(e)),
        }
    }

    async fn head_or_marker(&self, key: &ChannelKey) -> Result<LogMsg, BrokerError> {
        for _ in 0..ATTEMPTS {
            if let Some(h) = self.head(key).await? {
                return Ok(h);
            }
            let mut h = HeaderMap::new();
            let epoch = new_epoch();
            h.insert(H_EPOCH, &*epoch);
            h.insert(H_VERSION, "0");
            h.insert(H_KIND, "marker");
            h.insert(H_PREV, "0");
            h.insert(H_EXPECT, "0");
            self.publish(key, h, Bytes::new()).await?.ok();
        }
        Err(BrokerError::Unavailable(format!(
            "nats: document {key} too contended"
        )))
    }

    fn snap_subject(key: &ChannelKey) -> String {
        names::kv_subject(
            SNAPSHOT_BUCKET,
            &format!("{}.{}", key.tenant, names::enc(&key.channel)),
        )
    }

    async fn snapshot(&self, key: &ChannelKey) -> Result<Option<StoredMsg>, BrokerError> {
        self.chans
            .js
            .last(&names::kv_stream(SNAPSHOT_BUCKET), &Self::snap_subject(key))
            .await
            .map_err(broker)
    }
}

fn snap_fields(m: &StoredMsg) -> (String, u64, u64) {
    (
        m.header(H_EPOCH).unwrap_or_default().to_owned(),
        m.header_u64(H_VERSION).unwrap_or(0),
        m.header_u64(H_LAMPORT).unwrap_or(0),
    )
}

#[async_trait]
impl DocumentLog for NatsDocumentLog {
    async fn load(&self, key: &ChannelKey, opts: &LogOptions) -> Result<Stored, BrokerError> {
        let _ = opts;
        self.ensure(&key.tenant).await?;
        let head = self.head_or_marker(key).await?;
        let (mut snap_version, mut snap_lamport, mut snapshot) = (0, 0, Bytes::new());
        if let Some(s) = self.snapshot(key).await? {
            let (epoch, v, l) = snap_fields(&s);
            if *epoch == *head.epoch && v <= head.version {
                (snap_version, snap_lamport, snapshot) = (v, l, s.payload.clone());
            }
        }
        let chain = self.walk(key, &head, snap_version).await?;
        if !chain.complete {
            match chain.base {
                Some(b) if b.kind == "seed" || b.kind == "marker" => {
                    snap_version = b.version;
                    snap_lamport = b.lamport;
                    snapshot = b.payload.clone();
                }
                _ => {
                    return Err(BrokerError::Internal(format!(
                        "document {key}: log does not reach its head version {}",
                        head.version
                    )));
                }
            }
        }
        let msg_ids = chain
            .entries
            .iter()
            .filter_map(|e| e.msg_id.clone().map(|id| (id, e.version)))
            .collect();
        Ok(Stored {
            epoch: head.epoch.clone(),
            snapshot_version: snap_version,
            snapshot_lamport: snap_lamport,
            snapshot,
            entries: chain.entries,
            msg_ids,
        })
    }

    async fn spend(
        &self,
        key: &ChannelKey,
        limit: ChannelLimit,
    ) -> Result<Option<u64>, BrokerError> {
        self.chans.take_token(key, limit).await
    }

    async fn append(
        &self,
        key: &ChannelKey,
        epoch: &str,
        entry: &Entry,
        opts: &LogOptions,
    ) -> Result<Appended, BrokerError> {
        let _ = opts;
        self.ensure(&key.tenant).await?;
        for _ in 0..ATTEMPTS {
            let Some(head) = self.head(key).await? else {
                return Ok(Appended::EpochChanged);
            };
            if *head.epoch != *epoch {
                return Ok(Appended::EpochChanged);
            }
            let want = entry.version;
            if head.version + 1 != want {
                if head.version + 1 < want {
                    return Ok(Appended::EpochChanged);
                }
                let chain = self.walk(key, &head, want - 1).await?;
                if !chain.complete {
                    return Ok(Appended::EpochChanged);
                }
                if let Some(id) = &entry.msg_id
                    && let Some(e) = chain.entries.iter().find(|e| e.msg_id.as_ref() == Some(id))
                {
                    return Ok(Appended::Duplicate(e.version));
                }
                return Ok(Appended::Behind(chain.entries));
            }
            let mut h = HeaderMap::new();
            h.insert(H_EPOCH, epoch);
            h.insert(H_VERSION, want.to_string().as_str());
            h.insert(H_KIND, "entry");
            h.insert(H_PREV, head.stream_seq.to_string().as_str());
            h.insert(H_EXPECT, head.stream_seq.to_string().as_str());
            if let Some(id) = &entry.msg_id {
                let id = format!("{}:{}", names::enc(&key.channel), names::enc(id));
                h.insert(H_MSG_ID, id.as_str());
            }
            match self
                .publish(key, h, Bytes::from(entry.encode(epoch)))
                .await?
            {
                Ok(ack) if ack.duplicate => {
                    let first = self.at(key, ack.seq).await?;
                    return Ok(Appended::Duplicate(
                        first.map_or(head.version, |m| m.version),
                    ));
                }
                Ok(_) => return Ok(Appended::Done),
                Err(_) => continue,
            }
        }
        Err(BrokerError::Unavailable(format!(
            "nats: document {key} too contended"
        )))
    }

    async fn read_after(
        &self,
        key: &ChannelKey,
        epoch: &str,
        version: u64,
    ) -> Result<Option<Vec<Entry>>, BrokerError> {
        self.ensure(&key.tenant).await?;
        let Some(head) = self.head(key).await? else {
            return Ok(None);
        };
        if *head.epoch != *epoch || version > head.version {
            return Ok(None);
        }
        let chain = self.walk(key, &head, version).await?;
        Ok(chain.complete.then_some(chain.entries))
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
        self.ensure(&key.tenant).await?;
        let Some(head) = self.head(key).await? else {
            return Ok(());
        };
        if *head.epoch != *epoch || version > head.version {
            return Ok(());
        }
        let current = self.snapshot(key).await?;
        if let Some(s) = &current {
            let (e, v, _) = snap_fields(s);
            if *e == *epoch && v >= version {
                return Ok(());
            }
        }
        let mut h = HeaderMap::new();
        h.insert(H_EPOCH, epoch);
        h.insert(H_VERSION, version.to_string().as_str());
        h.insert(H_LAMPORT, lamport.to_string().as_str());
        h.insert(H_EXPECT, current.map_or(0, |s| s.seq).to_string().as_str());
        match self
            .chans
            .js
            .publish(Self::snap_subject(key), h, snapshot)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(code::WRONG_LAST_SEQUENCE) => return Ok(()),
            Err(e) => return Err(broker(e)),
        }
        // Keep the entries after the snapshot plus `log_len` older ones.
        let keep = head.version - version + opts.log_len.max(1) as u64 + 1;
        self.chans
            .js
            .purge_keep(
                &names::doc_stream(&key.tenant),
                &names::doc_subject(key),
                keep,
            )
            .await
            .map_err(broker)
    }

    async fn watch(&self, key: &ChannelKey) -> Result<(), BrokerError> {
        let js = &self.chans.js;
        if !js.connected() {
            return Err(BrokerError::Unavailable("nats: disconnected".into()));
        }
        if let Some((refs, _)) = self.subs.lock().get_mut(key) {
            *refs += 1;
            return Ok(());
        }
        let mut sub = js
            .client
            .subscribe(names::doc_live_subject(key))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("nats: {e}")))?;
        if !matches!(
            tokio::time::timeout(Duration::from_secs(3), js.client.flush()).await,
            Ok(Ok(()))
        ) {
            return Err(BrokerError::Unavailable(
                "nats did not confirm the subscription".into(),
            ));
        }
        let tx = self.events_tx.clone();
        let k = key.clone();
        let mut generation = self.generation.clone();
        generation.borrow_and_update();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = sub.next() => {
                        let Some(m) = m else { return };
                        let h = header_map(m.headers.as_ref());
                        let ev = match LogMsg::decode(0, &h, &m.payload) {
                            Some(l) if l.kind == "entry" => l.entry().map(|e| Some((l.epoch.to_string(), e))),
                            Some(l) if l.kind == "seed" => Some(None),
                            _ => None,
                        };
                        if let Some(ev) = ev
                            && tx.try_send((k.clone(), ev)).is_err()
                        {
                            tracing::warn!(channel = %k, "document event queue full; the replica catches up on the next entry");
                        }
                    }
                    changed = generation.changed() => {
                        if changed.is_err() { return }
                        let _ = tx.send((k.clone(), None)).await;
                    }
                }
            }
        });
        let mut subs = self.subs.lock();
        match subs.get_mut(key) {
            Some((refs, _)) => {
                *refs += 1;
                task.abort();
            }
            None => {
                subs.insert(key.clone(), (1, task));
            }
        }
        Ok(())
    }

    async fn unwatch(&self, key: &ChannelKey) {
        let mut subs = self.subs.lock();
        if let Some((refs, _)) = subs.get_mut(key) {
            *refs = refs.saturating_sub(1);
            if *refs == 0
                && let Some((_, task)) = subs.remove(key)
            {
                task.abort();
            }
        }
    }

    fn attach(&self, docs: Weak<Documents>) {
        let Some(mut rx) = self.events.lock().take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("documents attached outside a runtime: cross-node delivery is off");
            return;
        };
        // One consumer: entries of a document are applied in the order stored.
        rt.spawn(async move {
            while let Some((key, ev)) = rx.recv().await {
                let Some(docs) = docs.upgrade() else { return };
                match ev {
                    Some((epoch, entry)) => docs.apply_remote(&key, &epoch, entry).await,
                    None => docs.resync(&key).await,
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
        self.ensure(&key.tenant).await?;
        let Some(head) = self.head(key).await? else {
            return Ok(false);
        };
        if *head.epoch != *epoch || head.version != 0 || head.kind != "marker" {
            return Ok(false);
        }
        let mut h = HeaderMap::new();
        h.insert(H_EPOCH, epoch);
        h.insert(H_VERSION, version.to_string().as_str());
        h.insert(H_LAMPORT, lamport.to_string().as_str());
        h.insert(H_KIND, "seed");
        h.insert(H_PREV, head.stream_seq.to_string().as_str());
        h.insert(H_EXPECT, head.stream_seq.to_string().as_str());
        Ok(matches!(self.publish(key, h, snapshot).await?, Ok(ack) if !ack.duplicate))
    }
}
