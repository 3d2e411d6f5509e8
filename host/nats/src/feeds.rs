//! Live delivery: one core NATS subscription per channel with local
//! subscribers, on the subject the history stream republishes to.
//!
//! Each watched channel has a task that owns its subscription and the last
//! position it handed to the hub. Messages come in stream order; a gap in
//! seq (a message lost to a slow subscription, or published while the
//! connection was down) is filled from the stream before the next message, a
//! new epoch past seq 1 is replayed from its start, and after a reconnect
//! every feed replays what it missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use switchyard_core::channel::ChannelKey;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::channels::{Channels, H_PRESENCE, H_STREAM_SEQ, Rec};
use crate::js::header_map;
use crate::names;

/// How long `watch` waits for the server to confirm a subscription.
const WATCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Feeds catching up at once after a reconnect.
const CATCH_UP_PARALLEL: usize = 32;

/// Last position handed to the hub.
#[derive(Debug, Default)]
struct Track {
    epoch: Arc<str>,
    last: u64,
}

struct Feed {
    refs: usize,
    ready: watch::Receiver<Option<bool>>,
    track: Arc<Mutex<Track>>,
    task: JoinHandle<()>,
}

/// The live feeds of this node.
pub struct Feeds {
    chans: Arc<Channels>,
    hub: Arc<dyn BrokerEvents>,
    table: Mutex<HashMap<ChannelKey, Feed>>,
    /// Bumped after every reconnect.
    generation: watch::Receiver<u64>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").finish_non_exhaustive()
    }
}

impl Feeds {
    /// Feeds delivering into `hub`; `generation` changes after each reconnect.
    pub fn new(
        chans: Arc<Channels>,
        hub: Arc<dyn BrokerEvents>,
        generation: watch::Receiver<u64>,
    ) -> Self {
        Self {
            chans,
            hub,
            table: Mutex::new(HashMap::new()),
            generation,
            permits: Arc::new(Semaphore::new(CATCH_UP_PARALLEL)),
        }
    }

    /// One more local subscription; returns once the server has the
    /// subscription (live messages reach the hub from then on).
    pub async fn watch(&self, key: &ChannelKey) -> Result<(), BrokerError> {
        if !self.chans.js.connected() {
            return Err(BrokerError::Unavailable("nats: disconnected".into()));
        }
        let mut ready = {
            let mut t = self.table.lock();
            match t.get_mut(key) {
                Some(f) => {
                    f.refs += 1;
                    f.ready.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    let track = Arc::new(Mutex::new(Track::default()));
                    let task = tokio::spawn(run(
                        key.clone(),
                        self.chans.clone(),
                        self.hub.clone(),
                        track.clone(),
                        tx,
                        self.generation.clone(),
                        self.permits.clone(),
                    ));
                    t.insert(
                        key.clone(),
                        Feed {
                            refs: 1,
                            ready: rx.clone(),
                            track,
                            task,
                        },
                    );
                    rx
                }
            }
        };
        let ok = tokio::time::timeout(WATCH_TIMEOUT, ready.wait_for(|r| r.is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().map(|v| *v == Some(true)))
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            self.unwatch(key);
            Err(BrokerError::Unavailable(
                "nats did not confirm the subscription".into(),
            ))
        }
    }

    /// One local subscription ended.
    pub fn unwatch(&self, key: &ChannelKey) {
        let mut t = self.table.lock();
        if let Some(f) = t.get_mut(key) {
            f.refs = f.refs.saturating_sub(1);
            if f.refs == 0
                && let Some(f) = t.remove(key)
            {
                f.task.abort();
            }
        }
    }

    /// Records the position recovery handed a local subscriber, so a
    /// catch-up after a reconnect starts there when no live message came yet.
    pub fn note_position(&self, key: &ChannelKey, epoch: &Arc<str>, seq: u64) {
        if let Some(f) = self.table.lock().get(key) {
            let mut tr = f.track.lock();
            if tr.epoch.is_empty() {
                tr.epoch = epoch.clone();
                tr.last = seq;
            }
        }
    }

    /// Channels watched here.
    pub fn count(&self) -> usize {
        self.table.lock().len()
    }

    /// Stops every feed.
    pub fn stop(&self) {
        for (_, f) in self.table.lock().drain() {
            f.task.abort();
        }
    }
}

async fn run(
    key: ChannelKey,
    chans: Arc<Channels>,
    hub: Arc<dyn BrokerEvents>,
    track: Arc<Mutex<Track>>,
    ready: watch::Sender<Option<bool>>,
    mut generation: watch::Receiver<u64>,
    permits: Arc<Semaphore>,
) {
    let client = chans.js.client.clone();
    let mut sub = match client.subscribe(names::live_subject(&key)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(channel = %key, error = %e, "nats subscribe failed");
            let _ = ready.send(Some(false));
            return;
        }
    };
    if !matches!(
        tokio::time::timeout(WATCH_TIMEOUT, client.flush()).await,
        Ok(Ok(()))
    ) {
        let _ = ready.send(Some(false));
        return;
    }
    generation.borrow_and_update();
    let _ = ready.send(Some(true));
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { return };
                let h = header_map(msg.headers.as_ref());
                if h.contains_key(H_PRESENCE) {
                    if let Some(d) = switchyard_core::presence::Delta::decode(&msg.payload) {
                        hub.on_presence(&key, &d);
                    }
                    continue;
                }
                let stream_seq = h.get(H_STREAM_SEQ).and_then(|s| s.parse().ok()).unwrap_or(0);
                match Rec::decode(stream_seq, &h, &msg.payload) {
                    Some(rec) => live(&key, &chans, &*hub, &track, rec).await,
                    None => tracing::warn!(channel = %key, "dropping a malformed live message"),
                }
            }
            changed = generation.changed() => {
                if changed.is_err() { return }
                let _permit = permits.acquire().await;
                catch_up(&key, &chans, &*hub, &track, &mut generation).await;
            }
        }
    }
}

/// Hands a live record to the hub in order, filling gaps from the stream.
async fn live(
    key: &ChannelKey,
    chans: &Channels,
    hub: &dyn BrokerEvents,
    track: &Mutex<Track>,
    rec: Rec,
) {
    let (epoch, last) = {
        let t = track.lock();
        (t.epoch.clone(), t.last)
    };
    if rec.seq == 0 {
        // An epoch marker: the channel (re)starts here.
        if *epoch != *rec.epoch {
            let mut t = track.lock();
            t.epoch = rec.epoch.clone();
            t.last = 0;
        }
        return;
    }
    if *epoch == *rec.epoch {
        if rec.seq <= last {
            return;
        }
        if rec.seq > last + 1 {
            fill(key, chans, hub, track, &rec, last).await;
        }
    } else if !epoch.is_empty() && rec.seq > 1 {
        tracing::info!(channel = %key, "new epoch; replaying it from its start");
        {
            let mut t = track.lock();
            t.epoch = rec.epoch.clone();
            t.last = 0;
        }
        fill(key, chans, hub, track, &rec, 0).await;
    }
    let mut t = track.lock();
    if *t.epoch == *rec.epoch && rec.seq <= t.last {
        return;
    }
    t.epoch = rec.epoch.clone();
    t.last = rec.seq;
    drop(t);
    if let Some(msg) = rec.message() {
        let skip = rec
            .skip
            .as_ref()
            .filter(|(_, node)| **node == **hub.node_id())
            .map(|(session, _)| *session);
        hub.on_publication(key, &msg, rec.trace, skip);
    }
}

/// Delivers the stored records between `last` and `rec` (exclusive).
async fn fill(
    key: &ChannelKey,
    chans: &Channels,
    hub: &dyn BrokerEvents,
    track: &Mutex<Track>,
    rec: &Rec,
    last: u64,
) {
    let before = match chans.at(key, rec.prev).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::warn!(channel = %key, "messages before seq {} are gone; subscribers see a gap", rec.seq);
            return;
        }
        Err(e) => {
            tracing::warn!(channel = %key, error = %e, "gap fill failed; subscribers see a gap");
            return;
        }
    };
    match chans.walk_back(key, before, last).await {
        Ok(w) => {
            if !w.complete {
                tracing::warn!(channel = %key, "history is incomplete; subscribers see a gap");
            }
            replay(key, hub, track, &w.recs);
        }
        Err(e) => tracing::warn!(channel = %key, error = %e, "gap fill failed"),
    }
}

fn replay(key: &ChannelKey, hub: &dyn BrokerEvents, track: &Mutex<Track>, recs: &[Rec]) {
    let mut t = track.lock();
    for r in recs {
        if *t.epoch == *r.epoch && r.seq <= t.last {
            continue;
        }
        t.epoch = r.epoch.clone();
        t.last = r.seq;
        if let Some(msg) = r.message() {
            hub.on_catch_up(key, &msg);
        }
    }
}

/// After a reconnect: replays what the channel got while this node was away.
async fn catch_up(
    key: &ChannelKey,
    chans: &Channels,
    hub: &dyn BrokerEvents,
    track: &Mutex<Track>,
    generation: &mut watch::Receiver<u64>,
) {
    for _ in 0..100 {
        if generation.has_changed().unwrap_or(true) {
            generation.borrow_and_update();
        }
        // The resubscription went out first on the new connection: after
        // this flush, anything newer than the head read below arrives live.
        let _ = tokio::time::timeout(WATCH_TIMEOUT, chans.js.client.flush()).await;
        match chans.last(key).await {
            Ok(None) => return,
            Ok(Some(head)) => {
                let (epoch, last) = {
                    let t = track.lock();
                    (t.epoch.clone(), t.last)
                };
                if epoch.is_empty() {
                    return;
                }
                let down_to = if *epoch == *head.epoch {
                    if head.seq <= last {
                        return;
                    }
                    last
                } else {
                    tracing::info!(channel = %key, "history lost while disconnected; replaying the new epoch");
                    0
                };
                match chans.walk_back(key, head, down_to).await {
                    Ok(w) => {
                        if !w.complete {
                            tracing::info!(channel = %key, "history after the last delivered message is gone; subscribers see a gap");
                        }
                        replay(key, hub, track, &w.recs);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(channel = %key, error = %e, "catch-up failed; retrying")
                    }
                }
            }
            Err(e) => tracing::debug!(channel = %key, error = %e, "catch-up failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
