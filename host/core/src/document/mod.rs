//! State sync: document channels (DESIGN §2b, `docs/protocol.md`).
//!
//! A document channel holds one shared state. Each node that serves it keeps a
//! live replica (the tenant's merge policy's [`MergeDocument`]) beside the
//! entries it applied; the [`DocumentLog`] assigns versions and keeps the
//! durable snapshot and log. A patch runs: dedupe → merge on the replica →
//! append to the log as the next version → broadcast of the returned update to
//! every local subscriber (encoded once). Another node's append reaches this
//! node's replica through [`Documents::apply_remote`], in version order.
//!
//! Calls on one document are serialized by its slot's lock, which is also held
//! while a subscriber's head (snapshot or missed patches) is computed and
//! spliced into the hub, so a subscriber sees every version exactly once.

mod compaction;
pub mod frame;
pub mod log;
pub mod lww;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::{DashMap, DashSet};
use serde_json::value::RawValue;

use crate::backpressure::Outgoing;
use crate::broker::BrokerError;
use crate::channel::ChannelKey;
use crate::dedupe::DedupeWindow;
use crate::hub::{Hub, SessionId};
use crate::metrics::Metrics;
use crate::policy::{MergeDocument, MergeError, MergePolicy, Stamp};
use crate::protocol::{ErrorCode, Frame, encode};
use crate::refusal::Refusal;
use crate::tenant::Tenant;
use frame::{Kind, StatePatch};
use log::{Appended, DocumentLog, Entry, LogOptions, Stored};

/// Most times a patch is retried after losing the race for a version to
/// another node before it is refused with `conflict`. From the second retry on
/// the writer backs off a random 0..n ms, so two busy nodes do not keep
/// colliding in lockstep.
const MAX_APPEND_RETRIES: usize = 32;

/// Bounds on documents (from `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// Largest state of one document (`limits.document_max_bytes`).
    pub max_bytes: usize,
    /// Entries kept per document for recovery (`limits.document_log_size`).
    pub log_len: usize,
    /// Replicas held in memory at once (`limits.documents_max_open`).
    pub max_open: usize,
    /// A replica with no local subscriber leaves memory after this long.
    pub idle: Duration,
    /// `msg_id`s remembered per document.
    pub dedupe_window: usize,
}

/// Why a document operation failed; each maps to a protocol code and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// Malformed or refused update, over a size limit, or a failed merge call.
    #[error("{0}")]
    Invalid(String),
    /// The merge policy refused the update as conflicting.
    #[error("{0}")]
    Conflict(String),
    /// The log cannot be reached, or too many documents are open.
    #[error("{0}")]
    Unavailable(String),
    /// Over the channel's shared budget (`channel_limits`), spent by every
    /// writer of the document together.
    #[error("document patch rate exceeded: retry after {0} ms")]
    Limited(u64),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl DocError {
    /// Which refusal this is ([`crate::refusal`] maps it to the outside).
    pub fn refusal(&self) -> Refusal {
        match self {
            DocError::Invalid(_) => Refusal::Invalid,
            DocError::Conflict(_) => Refusal::Conflict,
            DocError::Unavailable(_) => Refusal::Unavailable,
            DocError::Limited(_) => Refusal::RateLimited,
            DocError::Internal(_) => Refusal::Internal,
        }
    }

    /// Protocol `error` code.
    pub fn code(&self) -> ErrorCode {
        self.refusal().error_code()
    }

    /// HTTP status for the HTTP API.
    pub fn http_status(&self) -> u16 {
        self.refusal().http_status()
    }
}

impl From<BrokerError> for DocError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(m) => DocError::Unavailable(format!("unavailable: {m}")),
            other => DocError::Internal(other.to_string()),
        }
    }
}

fn merge_error(e: MergeError) -> DocError {
    match e {
        MergeError::Conflict(m) => DocError::Conflict(m),
        MergeError::Invalid(m) => DocError::Invalid(m),
        MergeError::Failed(m) | MergeError::Lost(m) => {
            DocError::Invalid(format!("merge policy failed: {m}"))
        }
    }
}

/// Outcome of an accepted patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patched {
    /// The version to acknowledge.
    pub version: u64,
    /// Whether this call changed the document (false: no change or a repeat).
    pub applied: bool,
}

/// Where a resuming subscriber was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocPosition {
    /// Epoch the client saw.
    pub epoch: String,
    /// Last version it applied.
    pub version: u64,
}

/// A document read whole (HTTP API).
#[derive(Debug, Clone)]
pub struct DocumentView {
    /// Current version.
    pub version: u64,
    /// Epoch.
    pub epoch: Arc<str>,
    /// Merge-policy snapshot at `version`.
    pub snapshot: Vec<u8>,
}

/// A node's replica of one document.
struct Live {
    epoch: Arc<str>,
    version: u64,
    lamport: u64,
    /// The policy that opened `replica` (a swapped policy reopens it).
    policy: Arc<dyn MergePolicy>,
    replica: Box<dyn MergeDocument>,
    /// Last snapshot taken (what a rebuild starts from) and its version/lamport.
    base: Bytes,
    base_version: u64,
    base_lamport: u64,
    /// Entries applied, newest last; always covers `(base_version, version]`.
    log: VecDeque<Arc<Entry>>,
    /// The [`compaction::weight`] of the entries after `base_version`.
    since_base: usize,
    dedupe: DedupeWindow,
    /// Size estimate for policies that cannot tell theirs.
    approx_bytes: usize,
    last_used: Instant,
}

impl Live {
    fn stamp_next<'a>(&self, client_id: &'a str) -> Stamp<'a> {
        Stamp {
            lamport: self.lamport + 1,
            client_id,
        }
    }

    /// Reopens the replica from the base snapshot and replays the log: the
    /// state at `self.version`, whatever a failed or rolled-back call did.
    fn rebuild(&mut self) -> Result<(), DocError> {
        let mut replica = self.policy.open(&self.base).map_err(merge_error)?;
        for e in self.log.iter().filter(|e| e.version > self.base_version) {
            let stamp = Stamp {
                lamport: e.lamport,
                client_id: &e.client_id,
            };
            replica.apply(&e.delta, &stamp).map_err(merge_error)?;
        }
        self.replica = replica;
        Ok(())
    }

    fn size(&self) -> usize {
        self.replica.size().unwrap_or(self.approx_bytes)
    }

    /// Makes `snapshot` (the replica's state now) the base a rebuild starts from.
    fn rebase(&mut self, snapshot: Bytes) {
        self.approx_bytes = snapshot.len();
        self.base = snapshot;
        self.base_version = self.version;
        self.base_lamport = self.lamport;
        self.since_base = 0;
    }

    /// Records an entry applied to the replica (ours or another node's).
    fn commit(&mut self, entry: Arc<Entry>, log_len: usize) {
        self.version = entry.version;
        self.lamport = self.lamport.max(entry.lamport);
        if let Some(id) = &entry.msg_id {
            self.dedupe.insert(id, entry.version);
        }
        self.approx_bytes += entry.delta.len();
        self.since_base += compaction::weight(&entry);
        self.log.push_back(entry);
        while self.log.len() > log_len
            && self
                .log
                .front()
                .is_some_and(|e| e.version <= self.base_version)
        {
            self.log.pop_front();
        }
    }

    /// The frames that bring a client from `since` (exclusive) to `version`,
    /// when the log still holds all of them.
    fn entries_after(&self, since: u64) -> Option<impl Iterator<Item = &Arc<Entry>>> {
        let first = self.log.front().map_or(self.version + 1, |e| e.version);
        (since <= self.version && since + 1 >= first)
            .then(|| self.log.iter().filter(move |e| e.version > since))
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Live>>>;

/// The document channels this node serves.
pub struct Documents {
    log: Arc<dyn DocumentLog>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    limits: DocLimits,
    max_patch_bytes: usize,
    slots: DashMap<ChannelKey, Slot>,
    /// Documents this node asked the log to deliver (one `watch` each).
    watched: DashSet<ChannelKey>,
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documents")
            .field("open", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The `PATCH` frame of an entry, encoded once for every subscriber.
fn patch_frame(channel: &str, epoch: &str, e: &Entry) -> Frame {
    frame::encode(&StatePatch {
        version: i64::try_from(e.version).unwrap_or(i64::MAX),
        delta: e.delta.clone(),
        client_id: e.client_id.to_string(),
        channel: channel.to_owned(),
        kind: Kind::Patch as i32,
        lamport: e.lamport,
        msg_id: e.msg_id.as_deref().unwrap_or_default().to_owned(),
        id: 0,
        epoch: epoch.to_owned(),
    })
}

fn state_frame(channel: &str, live: &Live, kind: Kind, delta: Vec<u8>) -> Frame {
    frame::encode(&StatePatch {
        version: i64::try_from(live.version).unwrap_or(i64::MAX),
        delta: Bytes::from(delta),
        channel: channel.to_owned(),
        kind: kind as i32,
        lamport: live.lamport,
        epoch: live.epoch.to_string(),
        ..Default::default()
    })
}

fn out(frame: Frame) -> Outgoing {
    Outgoing {
        frame,
        published_at: None,
        on_written: None,
    }
}

impl Documents {
    /// Documents kept in `log`, delivered through `hub`.
    pub fn new(
        log: Arc<dyn DocumentLog>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        limits: DocLimits,
        max_patch_bytes: usize,
    ) -> Arc<Self> {
        let docs = Arc::new(Self {
            log,
            hub,
            metrics,
            limits,
            max_patch_bytes,
            slots: DashMap::new(),
            watched: DashSet::new(),
        });
        docs.log.attach(Arc::downgrade(&docs));
        docs
    }

    /// Limits in force.
    pub fn limits(&self) -> &DocLimits {
        &self.limits
    }

    /// Replicas held in memory now.
    pub fn open_count(&self) -> usize {
        self.slots.len()
    }

    fn opts(&self) -> LogOptions {
        LogOptions {
            log_len: self.limits.log_len,
            dedupe_window: self.limits.dedupe_window,
        }
    }

    fn slot(&self, key: &ChannelKey) -> Result<Slot, DocError> {
        if let Some(s) = self.slots.get(key) {
            return Ok(s.clone());
        }
        if self.slots.len() >= self.limits.max_open {
            self.evict_idle(Duration::ZERO);
            if self.slots.len() >= self.limits.max_open {
                return Err(DocError::Unavailable(format!(
                    "unavailable: {} documents open on this node (limits.documents_max_open)",
                    self.limits.max_open
                )));
            }
        }
        Ok(self.slots.entry(key.clone()).or_default().clone())
    }

    /// Loads (or reloads after an epoch change) the replica into `guard`.
    async fn ensure_loaded(
        &self,
        key: &ChannelKey,
        tenant: &Tenant,
        guard: &mut Option<Live>,
    ) -> Result<(), DocError> {
        let policy = tenant.policies().merge.clone();
        if let Some(live) = guard.as_mut() {
            live.last_used = Instant::now();
            if Arc::ptr_eq(&live.policy, &policy) {
                return Ok(());
            }
            // The tenant's merge policy was swapped: carry the state over.
            let snapshot = live.replica.snapshot().map_err(merge_error)?;
            live.replica = policy.open(&snapshot).map_err(merge_error)?;
            live.policy = policy;
            live.rebase(Bytes::from(snapshot));
            return Ok(());
        }
        // Watch first: an append made while this loads is delivered after it.
        if self.watched.insert(key.clone())
            && let Err(e) = self.log.watch(key).await
        {
            self.watched.remove(key);
            return Err(e.into());
        }
        let stored = self.log.load(key, &self.opts()).await?;
        *guard = Some(self.open_stored(stored, policy)?);
        self.metrics.documents_open.set(self.slots.len() as i64);
        Ok(())
    }

    fn open_stored(&self, s: Stored, policy: Arc<dyn MergePolicy>) -> Result<Live, DocError> {
        for (expect, e) in (s.snapshot_version + 1..).zip(s.entries.iter()) {
            if e.version != expect {
                return Err(DocError::Internal(format!(
                    "document log has a gap at version {expect}"
                )));
            }
        }
        let replica = policy.open(&s.snapshot).map_err(merge_error)?;
        let mut live = Live {
            epoch: s.epoch.clone(),
            version: s.snapshot_version,
            lamport: s.snapshot_lamport,
            policy,
            replica,
            approx_bytes: s.snapshot.len(),
            base: s.snapshot,
            base_version: s.snapshot_version,
            base_lamport: s.snapshot_lamport,
            log: VecDeque::new(),
            since_base: 0,
            dedupe: DedupeWindow::new(self.limits.dedupe_window),
            last_used: Instant::now(),
        };
        for (id, v) in &s.msg_ids {
            live.dedupe.insert(id, *v);
        }
        for e in s.entries {
            let stamp = Stamp {
                lamport: e.lamport,
                client_id: &e.client_id,
            };
            live.replica.apply(&e.delta, &stamp).map_err(merge_error)?;
            live.commit(Arc::new(e), self.limits.log_len);
        }
        Ok(live)
    }

    /// Subscribes `session` (already added to the hub, recovering) to the
    /// document: queues `subscribed`, then a `SNAPSHOT` (or the missed
    /// `PATCH`es, or a `DIFF`), then live patches. On `Err` nothing was queued.
    pub async fn subscribe(
        &self,
        tenant: &Tenant,
        key: &ChannelKey,
        session: SessionId,
        id: Option<&RawValue>,
        since: Option<&DocPosition>,
        state_vector: Option<&[u8]>,
    ) -> Result<(), DocError> {
        let slot = self.slot(key)?;
        let mut guard = slot.lock().await;
        self.ensure_loaded(key, tenant, &mut guard).await?;
        let Some(live) = guard.as_mut() else {
            return Err(DocError::Internal("document not loaded".into()));
        };
        let channel = &key.channel;
        let mut head = Vec::new();
        let resumed = since
            .filter(|p| *p.epoch == *live.epoch)
            .map(|p| p.version)
            .filter(|v| live.entries_after(*v).is_some());
        let recovered = resumed.is_some();
        head.push(out(encode::subscribed_document(
            id,
            channel,
            &live.epoch,
            live.version,
            recovered,
        )));
        if let Some(entries) = resumed.and_then(|v| live.entries_after(v)) {
            head.extend(entries.map(|e| out(patch_frame(channel, &live.epoch, e))));
        } else {
            // A policy without state vectors (or a bad one) gets a snapshot.
            let diff = match state_vector.map(|sv| live.replica.diff(sv)) {
                Some(Ok(d)) => d,
                Some(Err(MergeError::Failed(m) | MergeError::Lost(m))) => {
                    tracing::warn!(channel = %key.channel, error = %m, "diff failed; rebuilding the replica");
                    live.rebuild()?;
                    None
                }
                Some(Err(_)) | None => None,
            };
            let frame = match diff {
                Some(d) => state_frame(channel, live, Kind::Diff, d),
                None => {
                    let snap = live.replica.snapshot().map_err(|e| {
                        self.metrics.failed("document_snapshot");
                        merge_error(e)
                    })?;
                    state_frame(channel, live, Kind::Snapshot, snap)
                }
            };
            head.push(out(frame));
        }
        self.hub.activate(key, session, head, None, live.version);
        Ok(())
    }

    /// Applies a patch by `client_id` (`""` = server side). Authorization and
    /// per-connection rate limits are the caller's; this does the channel's
    /// shared budget (`channel_limits`, spent before the merge so a refused
    /// patch costs no merge), dedupe, merge, size limits, version assignment
    /// and broadcast.
    pub async fn patch(
        &self,
        tenant: &Tenant,
        key: &ChannelKey,
        delta: &[u8],
        msg_id: Option<&str>,
        client_id: &str,
    ) -> Result<Patched, DocError> {
        if delta.len() > self.max_patch_bytes {
            return Err(DocError::Invalid(format!(
                "patch larger than {} bytes (limits.max_message_bytes)",
                self.max_patch_bytes
            )));
        }
        if let Some(limit) = tenant.publish_options(&key.channel).limit
            && let Some(retry_after_ms) = self.log.spend(key, limit).await?
        {
            return Err(DocError::Limited(retry_after_ms));
        }
        let slot = self.slot(key)?;
        let mut guard = slot.lock().await;
        let mut retried_lost = false;
        for attempt in 0..MAX_APPEND_RETRIES {
            if attempt >= 2 {
                let ms = rand::random_range(0..=attempt as u64);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            self.ensure_loaded(key, tenant, &mut guard).await?;
            let Some(live) = guard.as_mut() else {
                return Err(DocError::Internal("document not loaded".into()));
            };
            if let Some(v) = msg_id.and_then(|m| live.dedupe.get(m)) {
                return Ok(Patched {
                    version: v,
                    applied: false,
                });
            }
            let stamp = live.stamp_next(client_id);
            let update = match live.replica.apply(delta, &stamp) {
                Ok(Some(u)) if !u.is_empty() => u,
                Ok(_) => {
                    if let Some(m) = msg_id {
                        live.dedupe.insert(m, live.version);
                    }
                    return Ok(Patched {
                        version: live.version,
                        applied: false,
                    });
                }
                Err(e) => {
                    if matches!(e, MergeError::Failed(_) | MergeError::Lost(_)) {
                        // The instance is gone: rebuild from the last good state.
                        self.metrics.failed("merge_failed");
                        if let Err(re) = live.rebuild() {
                            tracing::warn!(channel = %key.channel, error = %re, "document rebuild failed; dropping replica");
                            *guard = None;
                        } else if matches!(e, MergeError::Lost(_)) && !retried_lost {
                            // Not this update's failure (an earlier call lost
                            // the instance, nothing was tried): apply it on the
                            // rebuilt replica. An update that itself made the
                            // plugin fail is refused, never tried twice.
                            retried_lost = true;
                            continue;
                        }
                    }
                    return Err(merge_error(e));
                }
            };
            let over = live.size()
                + if live.replica.size().is_some() {
                    0
                } else {
                    update.len()
                };
            if over > self.limits.max_bytes && !self.fits_after_snapshot(live) {
                live.rebuild()?;
                return Err(DocError::Invalid(format!(
                    "document would exceed {} bytes (limits.document_max_bytes)",
                    self.limits.max_bytes
                )));
            }
            let entry = Entry {
                version: live.version + 1,
                delta: Bytes::from(update),
                client_id: Arc::from(client_id),
                lamport: stamp.lamport,
                msg_id: msg_id.map(Arc::from),
            };
            match self
                .log
                .append(key, &live.epoch, &entry, &self.opts())
                .await
            {
                Ok(Appended::Done) => {
                    let version = entry.version;
                    self.commit_and_broadcast(key, live, Arc::new(entry));
                    if !self.maybe_compact(key, live).await {
                        *guard = None;
                    }
                    return Ok(Patched {
                        version,
                        applied: true,
                    });
                }
                Ok(Appended::Duplicate(v)) => {
                    live.rebuild()?;
                    return Ok(Patched {
                        version: v,
                        applied: false,
                    });
                }
                Ok(Appended::Behind(missing)) => {
                    // Lost the race for this version: undo, catch up, retry.
                    live.rebuild()?;
                    self.metrics.document_append_retries.inc();
                    if !self.catch_up(key, live, missing) {
                        *guard = None;
                    }
                }
                Ok(Appended::EpochChanged) => {
                    live.rebuild()?;
                    self.recover_epoch(key, &mut guard).await?;
                }
                Err(e) => {
                    live.rebuild()?;
                    return Err(e.into());
                }
            }
        }
        Err(DocError::Conflict(
            "too many concurrent writers on this document; retry".into(),
        ))
    }

    /// Whether a replica whose estimate is over the limit really fits (takes a
    /// snapshot to measure, and makes it the new base of the estimate).
    fn fits_after_snapshot(&self, live: &mut Live) -> bool {
        if live.replica.size().is_some() {
            return false;
        }
        match live.replica.snapshot() {
            Ok(s) if s.len() <= self.limits.max_bytes => {
                live.approx_bytes = s.len();
                true
            }
            _ => false,
        }
    }

    fn commit_and_broadcast(&self, key: &ChannelKey, live: &mut Live, entry: Arc<Entry>) {
        let frame = patch_frame(&key.channel, &live.epoch, &entry);
        let version = entry.version;
        live.commit(entry, self.limits.log_len);
        self.metrics.document_patches.inc();
        self.hub.deliver_outgoing(key, version, out(frame));
    }

    /// Applies entries other writers appended (in order, skipping ones already
    /// applied). Returns false when the replica could not follow (reload it).
    fn catch_up(&self, key: &ChannelKey, live: &mut Live, entries: Vec<Entry>) -> bool {
        for e in entries {
            if e.version <= live.version {
                continue;
            }
            if e.version != live.version + 1 {
                return false;
            }
            let stamp = Stamp {
                lamport: e.lamport,
                client_id: &e.client_id,
            };
            if let Err(err) = live.replica.apply(&e.delta, &stamp) {
                tracing::warn!(channel = %key.channel, version = e.version, error = %err, "replica could not apply a logged entry");
                return false;
            }
            self.commit_and_broadcast(key, live, Arc::new(e));
        }
        true
    }

    /// Another node appended `entry` to `key` (delivered by a cross-node log).
    /// Applied in order; a gap is filled from the log first.
    pub async fn apply_remote(&self, key: &ChannelKey, epoch: &str, entry: Entry) {
        let Some(slot) = self.slots.get(key).map(|s| s.clone()) else {
            return;
        };
        let mut guard = slot.lock().await;
        let Some(live) = guard.as_mut() else {
            return;
        };
        let entries = if *live.epoch != *epoch {
            None
        } else if entry.version <= live.version {
            return;
        } else if entry.version == live.version + 1 {
            Some(vec![entry])
        } else {
            self.log
                .read_after(key, epoch, live.version)
                .await
                .ok()
                .flatten()
        };
        if let Some(entries) = entries
            && self.catch_up(key, live, entries)
        {
            if !self.maybe_compact(key, live).await {
                *guard = None;
            }
            return;
        }
        if let Err(e) = self.recover_epoch(key, &mut guard).await {
            tracing::warn!(channel = %key.channel, error = %e, "document replica dropped");
            *guard = None;
        }
    }

    /// After a reconnect to the log: applies what this node missed, or, when
    /// the log lost the document, re-seeds it from this replica.
    pub async fn resync(&self, key: &ChannelKey) {
        let Some(slot) = self.slots.get(key).map(|s| s.clone()) else {
            return;
        };
        let mut guard = slot.lock().await;
        let Some(live) = guard.as_mut() else {
            return;
        };
        match self.log.read_after(key, &live.epoch, live.version).await {
            Ok(Some(entries)) => {
                if self.catch_up(key, live, entries) {
                    if !self.maybe_compact(key, live).await {
                        *guard = None;
                    }
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(channel = %key.channel, error = %e, "document resync failed");
                return;
            }
        }
        if let Err(e) = self.recover_epoch(key, &mut guard).await {
            tracing::warn!(channel = %key.channel, error = %e, "document resync failed; dropping replica");
            *guard = None;
        }
    }

    /// The log's epoch or history is not what the replica follows: reload it,
    /// or seed the log's fresh epoch with the replica's state when the log lost
    /// the document. Local subscribers get a `SNAPSHOT` (with the new epoch).
    async fn recover_epoch(
        &self,
        key: &ChannelKey,
        guard: &mut Option<Live>,
    ) -> Result<(), DocError> {
        let Some(live) = guard.as_mut() else {
            return Ok(());
        };
        let mut stored = self.log.load(key, &self.opts()).await?;
        let lost = *stored.epoch != *live.epoch;
        if lost && stored.version() == 0 && stored.snapshot.is_empty() {
            let snapshot = Bytes::from(live.replica.snapshot().map_err(merge_error)?);
            let seeded = self
                .log
                .reseed(
                    key,
                    &stored.epoch,
                    live.version,
                    live.lamport,
                    snapshot.clone(),
                )
                .await?;
            if seeded {
                tracing::warn!(
                    channel = %key.channel, version = live.version, epoch = %stored.epoch,
                    "document store lost its history; re-seeded it from this node's replica"
                );
                live.epoch = stored.epoch.clone();
                live.rebase(snapshot.clone());
                live.log.clear();
                let frame = state_frame(&key.channel, live, Kind::Snapshot, snapshot.to_vec());
                self.hub.deliver_outgoing(key, live.version, out(frame));
                return Ok(());
            }
            stored = self.log.load(key, &self.opts()).await?;
        }
        if lost {
            tracing::warn!(channel = %key.channel, epoch = %stored.epoch, "document epoch changed; reloading");
        }
        let policy = live.policy.clone();
        *live = self.open_stored(stored, policy)?;
        let snapshot = live.replica.snapshot().map_err(merge_error)?;
        let frame = state_frame(&key.channel, live, Kind::Snapshot, snapshot);
        self.hub.deliver_outgoing(key, live.version, out(frame));
        Ok(())
    }

    /// Takes a snapshot as the new base and compacts the log when
    /// [`compaction::due`]. Every replica does, whether the entries since its
    /// base were its own writes or another node's (so a replica that only
    /// follows stays bounded too); the log keeps the newest snapshot it is
    /// given. Returns false when the replica was lost (its plugin instance
    /// failed while snapshotting and could not be rebuilt): the caller drops
    /// it and the next use reloads it from the log.
    async fn maybe_compact(&self, key: &ChannelKey, live: &mut Live) -> bool {
        if !compaction::due(
            live.version - live.base_version,
            live.since_base,
            live.base.len(),
            self.limits.log_len,
        ) {
            return true;
        }
        let snapshot = match live.replica.snapshot() {
            Ok(s) => Bytes::from(s),
            Err(e) => {
                tracing::warn!(channel = %key.channel, error = %e, "snapshot for compaction failed");
                if matches!(e, MergeError::Failed(_) | MergeError::Lost(_)) {
                    // The instance (and the state in it) is gone: rebuild now,
                    // so the next patch finds a live replica.
                    self.metrics.failed("merge_failed");
                    if let Err(re) = live.rebuild() {
                        tracing::warn!(channel = %key.channel, error = %re, "document rebuild failed; dropping replica");
                        return false;
                    }
                }
                return true;
            }
        };
        live.rebase(snapshot.clone());
        let r = self
            .log
            .compact(
                key,
                &live.epoch,
                live.version,
                live.lamport,
                snapshot,
                &self.opts(),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(channel = %key.channel, error = %e, "document compaction failed");
        }
        true
    }

    /// The whole document (HTTP API).
    pub async fn read(&self, tenant: &Tenant, key: &ChannelKey) -> Result<DocumentView, DocError> {
        let slot = self.slot(key)?;
        let mut guard = slot.lock().await;
        self.ensure_loaded(key, tenant, &mut guard).await?;
        let Some(live) = guard.as_ref() else {
            return Err(DocError::Internal("document not loaded".into()));
        };
        Ok(DocumentView {
            version: live.version,
            epoch: live.epoch.clone(),
            snapshot: live.replica.snapshot().map_err(merge_error)?,
        })
    }

    /// The document's state vector, for CRDT catch-up (`None`: the policy has none).
    pub async fn state_vector(
        &self,
        tenant: &Tenant,
        key: &ChannelKey,
    ) -> Result<Option<Vec<u8>>, DocError> {
        let slot = self.slot(key)?;
        let mut guard = slot.lock().await;
        self.ensure_loaded(key, tenant, &mut guard).await?;
        let Some(live) = guard.as_ref() else {
            return Err(DocError::Internal("document not loaded".into()));
        };
        live.replica.state_vector().map_err(merge_error)
    }

    /// What a peer with `state_vector` is missing (`None`: the policy has no
    /// state vectors).
    pub async fn diff(
        &self,
        tenant: &Tenant,
        key: &ChannelKey,
        state_vector: &[u8],
    ) -> Result<Option<Vec<u8>>, DocError> {
        let slot = self.slot(key)?;
        let mut guard = slot.lock().await;
        self.ensure_loaded(key, tenant, &mut guard).await?;
        let Some(live) = guard.as_ref() else {
            return Err(DocError::Internal("document not loaded".into()));
        };
        live.replica.diff(state_vector).map_err(merge_error)
    }

    /// Drops replicas without local subscribers unused for `idle` (and at
    /// least `limits.idle` when called by the sweeper). They reload from the
    /// log on next use.
    pub fn evict_idle(&self, idle: Duration) {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.slots.retain(|key, slot| {
            if !self.watched.contains(key) && slot.try_lock().is_ok_and(|g| g.is_none()) {
                return false;
            }
            if self.hub.has_subscribers(key) {
                return true;
            }
            let Ok(guard) = slot.try_lock() else {
                return true;
            };
            let idle_for = guard.as_ref().map_or(Duration::MAX, |l| {
                now.saturating_duration_since(l.last_used)
            });
            let keep = idle_for < idle;
            if !keep && self.watched.remove(key).is_some() {
                gone.push(key.clone());
            }
            keep
        });
        self.metrics.documents_open.set(self.slots.len() as i64);
        if gone.is_empty() {
            return;
        }
        let log = self.log.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for key in gone {
                    log.unwatch(&key).await;
                }
            });
        }
    }

    /// Evicts idle replicas every `every` until the process ends.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(docs) = weak.upgrade() else { return };
                    let idle = docs.limits.idle;
                    docs.evict_idle(idle);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests;
