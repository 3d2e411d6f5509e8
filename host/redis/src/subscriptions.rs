//! Pub/sub fan-in of one shard: ref-counted, batched SUBSCRIBE/UNSUBSCRIBE on a
//! dedicated connection, and the reader that hands live messages to the hub.
//!
//! `watch`/`unwatch` only touch a table under a short lock; the shard task turns
//! the difference between wanted and subscribed channels into one SUBSCRIBE and
//! one UNSUBSCRIBE per batch window, so an unsubscribe followed quickly by a
//! subscribe cancels out. After a reconnect the task resubscribes everything and
//! replays, per channel, the history published while it was away.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use redis::aio::{PubSubSink, PubSubStream};
use switchyard_core::broker::BrokerError;
use switchyard_core::broker::events::BrokerEvents;
use switchyard_core::channel::ChannelKey;
use switchyard_core::history::Message;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::documents::DocEvent;

use crate::codec::{self, instant_of};
use crate::keys::{self, ChannelKeys};
use crate::scripts;
use crate::shard::{Backoff, Shard};

/// Churn arriving within this window is coalesced into one command.
pub const BATCH_WINDOW: Duration = Duration::from_millis(3);
/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const CHUNK: usize = 512;
/// How long `watch` waits for Redis to confirm a subscription.
const WATCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Channels per catch-up pipeline.
const CATCH_UP_PIPELINE: usize = 256;
/// Pub/sub liveness probe.
const PING_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Wanted {
    refs: usize,
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Table {
    wanted: HashMap<String, Wanted>,
    /// Latest position handed to a local subscriber by recovery, per wanted
    /// channel: where a catch-up starts when no live message arrived yet.
    noted: HashMap<String, (Arc<str>, u64)>,
    /// Confirmed on the current connection.
    live: HashSet<String>,
    /// Names whose wanted state changed since the last diff.
    changed: HashSet<String>,
    /// Compare everything (after a reconnect) instead of `changed` only.
    full: bool,
    connected: bool,
}

/// The wanted and confirmed subscriptions of one shard.
#[derive(Default)]
pub struct Subscriptions {
    table: Mutex<Table>,
    wake: Notify,
}

impl Subscriptions {
    /// One more local subscription to pub/sub channel `name`; returns once Redis
    /// confirmed the subscription (or `Unavailable`).
    pub async fn watch(&self, name: String) -> Result<(), BrokerError> {
        let rx = {
            let mut t = self.table.lock();
            if !t.connected {
                return Err(BrokerError::Unavailable(
                    "redis shard is disconnected".into(),
                ));
            }
            let live = t.live.contains(&name);
            let w = t.wanted.entry(name.clone()).or_default();
            w.refs += 1;
            if live {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            w.waiters.push(tx);
            t.changed.insert(name.clone());
            rx
        };
        self.wake.notify_one();
        match tokio::time::timeout(WATCH_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                self.unwatch(&name);
                Err(BrokerError::Unavailable(
                    "redis did not confirm the subscription".into(),
                ))
            }
        }
    }

    /// One local subscription to `name` ended.
    pub fn unwatch(&self, name: &str) {
        let mut t = self.table.lock();
        if let Some(w) = t.wanted.get_mut(name) {
            w.refs = w.refs.saturating_sub(1);
            if w.refs == 0 {
                t.wanted.remove(name);
                t.changed.insert(name.to_owned());
                t.noted.remove(name);
                drop(t);
                self.wake.notify_one();
            }
        }
    }

    /// Records the position a local subscriber was recovered to (the channel must
    /// be watched), so a catch-up after a reconnect starts there.
    pub fn note_position(&self, name: &str, epoch: &Arc<str>, seq: u64) {
        let mut t = self.table.lock();
        if !t.wanted.contains_key(name) {
            return;
        }
        match t.noted.get_mut(name) {
            Some((e, s)) if **e == **epoch => *s = (*s).max(seq),
            _ => {
                t.noted.insert(name.to_owned(), (epoch.clone(), seq));
            }
        }
    }

    fn noted(&self) -> HashMap<String, (Arc<str>, u64)> {
        self.table.lock().noted.clone()
    }

    /// Channels with local subscribers (wanted).
    /// Document channels wanted on this shard (resynced after a reconnect).
    pub fn wanted_documents(&self) -> Vec<ChannelKey> {
        self.table
            .lock()
            .wanted
            .keys()
            .filter_map(|n| keys::parse_doc_live(n))
            .collect()
    }

    pub fn wanted_count(&self) -> usize {
        self.table.lock().wanted.len()
    }

    /// Channels subscribed on the current connection.
    pub fn live_count(&self) -> usize {
        self.table.lock().live.len()
    }

    fn retain_wanted<V>(&self, tracks: &mut HashMap<String, V>) {
        let t = self.table.lock();
        tracks.retain(|n, _| t.wanted.contains_key(n));
    }

    fn set_connected(&self, connected: bool) {
        let mut t = self.table.lock();
        t.connected = connected;
        t.live.clear();
        t.full = true;
    }

    /// What to subscribe and unsubscribe now. Channels to unsubscribe leave
    /// `live` at once, so a concurrent `watch` waits for a fresh confirmation.
    /// Only names touched since the last diff are compared (O(churn), not
    /// O(channels)), except after a reconnect.
    fn diff(&self) -> (Vec<String>, Vec<String>) {
        let mut t = self.table.lock();
        let t = &mut *t;
        let (sub, unsub): (Vec<String>, Vec<String>) = if std::mem::take(&mut t.full) {
            t.changed.clear();
            (
                t.wanted
                    .keys()
                    .filter(|n| !t.live.contains(*n))
                    .cloned()
                    .collect(),
                t.live
                    .iter()
                    .filter(|n| !t.wanted.contains_key(*n))
                    .cloned()
                    .collect(),
            )
        } else {
            let (mut sub, mut unsub) = (Vec::new(), Vec::new());
            for n in t.changed.drain() {
                match (t.wanted.contains_key(&n), t.live.contains(&n)) {
                    (true, false) => sub.push(n),
                    (false, true) => unsub.push(n),
                    _ => {}
                }
            }
            (sub, unsub)
        };
        for n in &unsub {
            t.live.remove(n);
        }
        (sub, unsub)
    }

    fn confirm(&self, names: &[String]) {
        let mut t = self.table.lock();
        for n in names {
            t.live.insert(n.clone());
            if let Some(w) = t.wanted.get_mut(n) {
                for tx in w.waiters.drain(..) {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// Last delivered position of a channel on this node (dedupe and catch-up).
struct Track {
    key: ChannelKey,
    epoch: Arc<str>,
    last: u64,
}

/// The pub/sub task of one shard: connect, resubscribe, catch up, read, repeat.
pub async fn run(
    shard: Arc<Shard>,
    hub: Arc<dyn BrokerEvents>,
    docs: mpsc::Sender<DocEvent>,
    reconnects: Counter,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    let mut tracks: HashMap<String, Track> = HashMap::new();
    let mut connected_before = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let pubsub =
            tokio::time::timeout(Duration::from_secs(2), shard.client.get_async_pubsub()).await;
        let (mut sink, mut stream) = match pubsub {
            Ok(Ok(p)) => p.split(),
            Ok(Err(e)) => {
                tracing::warn!(shard = %shard.addr, error = %e, "redis pub/sub connect failed");
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::warn!(shard = %shard.addr, "redis pub/sub connect timed out");
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        shard.subs.set_connected(true);
        if connected_before {
            reconnects.inc();
            tracing::info!(shard = %shard.addr, "redis pub/sub reconnected");
        }
        let catch_up_needed = connected_before;
        connected_before = true;
        let reason = serve(
            &shard,
            &hub,
            &docs,
            &mut sink,
            &mut stream,
            &mut tracks,
            catch_up_needed,
            &mut stop,
            &mut backoff,
        )
        .await;
        shard.subs.set_connected(false);
        shard.set_up(false);
        match reason {
            Exit::Stop => return,
            Exit::Lost(why) => {
                tracing::warn!(shard = %shard.addr, reason = %why, "redis pub/sub connection lost");
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
            }
        }
    }
}

enum Exit {
    Stop,
    Lost(String),
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shard: &Arc<Shard>,
    hub: &Arc<dyn BrokerEvents>,
    docs: &mpsc::Sender<DocEvent>,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
    tracks: &mut HashMap<String, Track>,
    mut catch_up_needed: bool,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Exit {
    shard.subs.retain_wanted(tracks);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut first_sync = true;
    loop {
        if let Err(e) = sync(shard, sink, tracks).await {
            return Exit::Lost(e);
        }
        if first_sync {
            first_sync = false;
            // Ready only once commands work too: a command connection that failed
            // while Redis was away reconnects on its next use.
            if !warm_up(shard).await {
                return Exit::Lost("command connection does not answer".into());
            }
            shard.set_up(true);
            backoff.reset();
        }
        if catch_up_needed {
            catch_up_needed = false;
            catch_up(shard, &**hub, tracks).await;
            for key in shard.subs.wanted_documents() {
                let _ = docs.send(DocEvent::Resync(key)).await;
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return Exit::Stop,
            msg = stream.next() => match msg {
                Some(msg) => {
                    let name = msg.get_channel_name();
                    if let Some(key) = keys::parse_doc_live(name) {
                        let ev = DocEvent::Entry(key, msg.get_payload_bytes().to_vec());
                        if docs.try_send(ev).is_err() {
                            tracing::warn!(channel = name, "document event queue full; the replica catches up on the next entry");
                        }
                    } else if deliver(&**hub, tracks, name, msg.get_payload_bytes()) {
                        let epoch = codec::decode(msg.get_payload_bytes()).map(|m| m.epoch.to_owned());
                        if let (Some(track), Ok(epoch)) = (tracks.get_mut(name), epoch) {
                            catch_up_new_epoch(shard, &**hub, track, &epoch).await;
                        }
                        deliver(&**hub, tracks, name, msg.get_payload_bytes());
                    }
                }
                None => return Exit::Lost("stream ended".into()),
            },
            _ = shard.subs.wake.notified() => tokio::time::sleep(BATCH_WINDOW).await,
            _ = ping.tick() => {
                // Keeps the command connection checked (and reconnecting) too.
                let _ = warm_up_once(shard).await;
                match tokio::time::timeout(Duration::from_secs(3), sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Exit::Lost(e.to_string()),
                    Err(_) => return Exit::Lost("ping timed out".into()),
                }
            }
        }
    }
}

async fn sync(
    shard: &Shard,
    sink: &mut PubSubSink,
    tracks: &mut HashMap<String, Track>,
) -> Result<(), String> {
    let (sub, unsub) = shard.subs.diff();
    for chunk in sub.chunks(CHUNK) {
        match tokio::time::timeout(Duration::from_secs(5), sink.subscribe(chunk)).await {
            Ok(Ok(())) => shard.subs.confirm(chunk),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("SUBSCRIBE timed out".into()),
        }
    }
    for chunk in unsub.chunks(CHUNK) {
        for n in chunk {
            tracks.remove(n);
        }
        match tokio::time::timeout(Duration::from_secs(5), sink.unsubscribe(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("UNSUBSCRIBE timed out".into()),
        }
    }
    Ok(())
}

/// Pings over the command connection until it answers (a few tries).
async fn warm_up(shard: &Shard) -> bool {
    for _ in 0..10 {
        if warm_up_once(shard).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn warm_up_once(shard: &Shard) -> bool {
    let mut conn = shard.conn();
    shard
        .run(redis::cmd("PING").query_async::<String>(&mut conn))
        .await
        .is_ok()
}

/// Hands one live payload to the hub, skipping what this node already delivered.
/// Delivers a live message in order. Returns `true`, delivering nothing, when
/// it opens a new epoch past seq 1 on a channel this node followed: the new
/// epoch's earlier messages must be fetched first ([`catch_up_new_epoch`]).
fn deliver(
    hub: &dyn BrokerEvents,
    tracks: &mut HashMap<String, Track>,
    name: &str,
    payload: &[u8],
) -> bool {
    if let Some(delta) = payload.strip_prefix(codec::PRESENCE_PREFIX) {
        if let (Some(key), Some(d)) = (
            keys::parse_live_channel(name),
            switchyard_core::presence::Delta::decode(delta),
        ) {
            hub.on_presence(&key, &d);
        }
        return false;
    }
    let live = match codec::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(channel = name, error = %e, "dropping malformed live message");
            return false;
        }
    };
    let track = match tracks.get_mut(name) {
        Some(t) => t,
        None => {
            let Some(key) = keys::parse_live_channel(name) else {
                return false;
            };
            tracks.entry(name.to_owned()).or_insert(Track {
                key,
                epoch: Arc::from(""),
                last: 0,
            })
        }
    };
    if *track.epoch == *live.epoch {
        if live.seq <= track.last {
            return false;
        }
    } else if !track.epoch.is_empty() && live.seq > 1 {
        return true;
    } else {
        track.epoch = Arc::from(live.epoch);
    }
    track.last = live.seq;
    let trace = live.trace;
    let skip = live
        .skip
        .filter(|(_, node)| **node == **hub.node_id())
        .map(|(session, _)| session);
    let msg = live.into_message(track.epoch.clone());
    hub.on_publication(&track.key, &msg, trace, skip);
    false
}

/// A channel's history was lost and a new epoch began while this node was not
/// listening (its pub/sub connection was down, or the keys vanished): delivers
/// the new epoch's messages from its start, in order, as far as the stream
/// still holds them, then follows the epoch. Subscribers see the epoch change
/// on the first of them (clients treat it as `recovered:false`); where the
/// stream no longer starts at seq 1 the first seq they see tells them the gap.
async fn catch_up_new_epoch(shard: &Shard, hub: &dyn BrokerEvents, track: &mut Track, epoch: &str) {
    let keys = ChannelKeys::new(&track.key);
    let mut conn = shard.conn();
    let reply = shard
        .run(
            scripts::RECOVER
                .key(&keys.meta)
                .key(&keys.stream)
                .arg("")
                .arg(epoch)
                .arg(0)
                .arg(u64::MAX / 4)
                .arg(1)
                .arg(1)
                .invoke_async::<redis::Value>(&mut conn),
        )
        .await
        .and_then(|v| crate::replies::recover(&v));
    let r = match reply {
        Ok(r) if r.epoch == epoch => r,
        Ok(_) => return, // moved on again; the next live message starts over
        Err(e) => {
            tracing::warn!(channel = %track.key, error = %e, "new-epoch catch-up failed");
            return;
        }
    };
    track.epoch = Arc::from(epoch);
    track.last = 0;
    if r.entries.first().is_none_or(|e| e.seq != 1) {
        tracing::warn!(channel = %track.key, "history of the new epoch is incomplete; subscribers see a gap");
    }
    for e in r.entries {
        if e.seq <= track.last {
            continue;
        }
        track.last = e.seq;
        hub.on_catch_up(
            &track.key,
            &Message {
                seq: e.seq,
                epoch: track.epoch.clone(),
                data: e.data,
                published_at: instant_of(e.published_ms),
            },
        );
    }
    track.last = track.last.max(r.seq);
}

/// After a reconnect: replays from history what each channel missed.
async fn catch_up(shard: &Shard, hub: &dyn BrokerEvents, tracks: &mut HashMap<String, Track>) {
    let mut conn = shard.conn();
    for (name, (epoch, seq)) in shard.subs.noted() {
        let Some(key) = keys::parse_live_channel(&name) else {
            continue;
        };
        let track = tracks.entry(name).or_insert(Track {
            key,
            epoch: epoch.clone(),
            last: 0,
        });
        if track.last == 0 {
            track.epoch = epoch;
            track.last = seq;
        }
    }
    let pending: Vec<&mut Track> = tracks
        .values_mut()
        .filter(|t| !t.epoch.is_empty())
        .collect();
    if pending.is_empty() {
        return;
    }
    if let Err(e) = shard
        .run(scripts::ensure_loaded(&scripts::RECOVER, &mut conn))
        .await
    {
        tracing::warn!(shard = %shard.addr, error = %e, "catch-up skipped");
        return;
    }
    let mut pending = pending;
    let mut new_epochs: Vec<(ChannelKey, String)> = Vec::new();
    while !pending.is_empty() {
        let mut chunk: Vec<&mut Track> = pending
            .drain(..pending.len().min(CATCH_UP_PIPELINE))
            .collect();
        let mut pipe = redis::pipe();
        for track in &chunk {
            let keys = ChannelKeys::new(&track.key);
            let last = track.last.to_string();
            pipe.add_command(scripts::evalsha(
                &scripts::RECOVER,
                &[&keys.meta, &keys.stream],
                &["", &track.epoch, &last, &(u64::MAX / 4).to_string(), "1"],
            ));
        }
        let replies = match shard
            .run(pipe.query_async::<Vec<redis::Value>>(&mut conn))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(shard = %shard.addr, error = %e, "catch-up failed");
                return;
            }
        };
        for (track, reply) in chunk.iter_mut().zip(replies.iter()) {
            match crate::replies::recover(reply) {
                Ok(r) if r.recovered => {
                    for e in r.entries {
                        if e.seq <= track.last {
                            continue;
                        }
                        track.last = e.seq;
                        let msg = Message {
                            seq: e.seq,
                            epoch: track.epoch.clone(),
                            data: e.data,
                            published_at: instant_of(e.published_ms),
                        };
                        hub.on_catch_up(&track.key, &msg);
                    }
                }
                Ok(r) if !r.epoch.is_empty() && *r.epoch != *track.epoch => {
                    tracing::info!(channel = %track.key, "history lost while disconnected; catching up from the new epoch's start");
                    new_epochs.push((track.key.clone(), r.epoch));
                }
                Ok(_) => tracing::info!(
                    channel = %track.key,
                    "history after the last delivered message is gone; the next message shows the gap"
                ),
                Err(e) => tracing::warn!(channel = %track.key, error = %e, "catch-up failed"),
            }
        }
    }
    for (key, epoch) in new_epochs {
        if let Some(track) = tracks.get_mut(&keys::live_channel(&key)) {
            catch_up_new_epoch(shard, hub, track, &epoch).await;
        }
    }
}
