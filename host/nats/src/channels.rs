//! Channel history, sequencing and recovery in JetStream.
//!
//! One stream per tenant (`SY_CH_<tenant>`, subjects `sy.ch.<tenant>.<channel>`)
//! keeps the last `history_size` messages of each channel
//! (`max_msgs_per_subject`) for at least a day (`max_age` =
//! max(`history_ttl`, 24 h), like the Redis broker's channel meta), and
//! republishes every stored message to the core subject
//! `sy.live.<tenant>.<channel>` in the order stored: that is the live fan-out.
//!
//! **One seq per channel.** A message carries its channel `Sy-Seq` and
//! `Sy-Epoch` in headers; a publish is a compare-and-append: it expects the
//! subject's last stream sequence (`Nats-Expected-Last-Subject-Sequence`) to
//! be the channel head it read, so two nodes publishing at once get one
//! gapless sequence (the loser re-reads the head and tries again). Each
//! message also names its predecessor's stream sequence (`Sy-Prev`), so
//! history is read back by walking that chain.
//!
//! **Epochs.** A channel with no stored message (new, or its history expired,
//! or the server lost its data) starts a new random epoch at seq 1; `recover`
//! on such a channel stores an epoch marker (`Sy-Seq: 0`, no data) so
//! subscribers get an epoch before the first publish.
//!
//! **Dedupe.** `Nats-Msg-Id` = channel + msgId: JetStream answers a repeat
//! within the stream's duplicate window (max(`history_ttl`, 2 min)) with the
//! first message's sequence, whose `Sy-Seq` is the seq to acknowledge.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderMap;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchyard_core::broker::memory::new_epoch;
use switchyard_core::broker::{BrokerError, ChannelLimit, ChannelOptions, Published};
use switchyard_core::channel::ChannelKey;
use switchyard_core::history::{Message, Recovery};
use switchyard_core::protocol::StreamPosition;
use switchyard_core::telemetry::TraceParent;

use crate::js::{Ensured, Js, JsError, StoredMsg, code, kv_config, nanos};
use crate::names;

/// Header: the channel seq (`0` = epoch marker).
pub const H_SEQ: &str = "Sy-Seq";
/// Header: the channel epoch.
pub const H_EPOCH: &str = "Sy-Epoch";
/// Header: stream sequence of the previous message of the channel (`0` = none).
pub const H_PREV: &str = "Sy-Prev";
/// Header: publish time, ms since the Unix epoch.
pub const H_TIME: &str = "Sy-Time";
/// Header: the publish span's W3C trace context.
pub const H_TRACE: &str = "traceparent";
/// Header: the connection a `"skipSelf"` publish leaves out, `<session> <node>`.
pub const H_SKIP: &str = "Sy-Skip";
/// Header: a core message on a live subject that is a presence delta, not a
/// channel message (payload: the `Delta` JSON).
pub const H_PRESENCE: &str = "Sy-Presence";
/// JetStream dedupe id.
pub const H_MSG_ID: &str = "Nats-Msg-Id";
/// JetStream compare-and-append.
pub const H_EXPECT: &str = "Nats-Expected-Last-Subject-Sequence";
/// Stream sequence on a republished message.
pub const H_STREAM_SEQ: &str = "Nats-Sequence";

/// How long a channel's epoch and seq outlive its last publish at least.
pub const META_TTL_MIN: Duration = Duration::from_secs(24 * 3600);
/// Compare-and-append attempts before a publish gives up.
const ATTEMPTS: usize = 64;
/// Heads cached before idle ones are forgotten.
const MAX_HEADS: usize = 65_536;

/// Wall-clock ms now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Converts a wall-clock publish time into a local `Instant` (clamped to now).
pub fn instant_of(published_ms: u64) -> Instant {
    let now = Instant::now();
    let age = Duration::from_millis(now_ms().saturating_sub(published_ms));
    now.checked_sub(age).unwrap_or(now)
}

/// One stored channel message, decoded.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Stream sequence.
    pub stream_seq: u64,
    /// Channel seq (`0`: the epoch marker).
    pub seq: u64,
    /// Channel epoch.
    pub epoch: Arc<str>,
    /// Stream sequence of the previous message of the channel.
    pub prev: u64,
    /// Publish time (ms).
    pub time_ms: u64,
    /// Data (`None` for a marker or bad JSON).
    pub data: Option<Arc<RawValue>>,
    /// Trace context.
    pub trace: Option<TraceParent>,
    /// The publishing connection to leave out: session, node.
    pub skip: Option<(u64, String)>,
}

impl Rec {
    /// Decodes headers and payload; `None` when they are not a Switchyard message.
    pub fn decode(stream_seq: u64, h: &HashMap<String, String>, payload: &Bytes) -> Option<Rec> {
        let num = |k: &str| h.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let seq = num(H_SEQ)?;
        let epoch = h.get(H_EPOCH).filter(|e| !e.is_empty())?;
        let data = if seq == 0 {
            None
        } else {
            let text = std::str::from_utf8(payload).ok()?;
            Some(Arc::from(RawValue::from_string(text.to_owned()).ok()?))
        };
        Some(Rec {
            stream_seq,
            seq,
            epoch: Arc::from(epoch.as_str()),
            prev: num(H_PREV).unwrap_or(0),
            time_ms: num(H_TIME).unwrap_or(0),
            data,
            trace: h.get(H_TRACE).and_then(|t| TraceParent::parse(t)),
            skip: h.get(H_SKIP).and_then(|v| {
                let (s, n) = v.split_once(' ')?;
                Some((s.parse().ok()?, n.to_owned()))
            }),
        })
    }

    fn of(m: &StoredMsg) -> Option<Rec> {
        Rec::decode(m.seq, &m.headers, &m.payload)
    }

    /// As a hub message (a marker has none).
    pub fn message(&self) -> Option<Message> {
        Some(Message {
            seq: self.seq,
            epoch: self.epoch.clone(),
            data: self.data.clone()?,
            published_at: instant_of(self.time_ms),
        })
    }
}

/// What this node knows of a channel's head.
#[derive(Debug, Clone)]
enum Head {
    Unknown,
    Empty,
    At {
        stream_seq: u64,
        seq: u64,
        epoch: Arc<str>,
    },
}

/// The history stream config of a tenant.
pub fn stream_config(tenant: &str, opts: &ChannelOptions, replicas: usize) -> Value {
    let max_age = opts.history_ttl.max(META_TTL_MIN);
    let window = opts.history_ttl.max(Duration::from_secs(120)).min(max_age);
    json!({
        "name": names::channel_stream(tenant),
        "subjects": [format!("sy.ch.{tenant}.*")],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": opts.history_size.max(1),
        "max_age": nanos(max_age),
        "max_msgs": -1,
        "max_bytes": -1,
        "max_msg_size": -1,
        "max_consumers": -1,
        "discard": "old",
        "duplicate_window": nanos(window),
        "republish": { "src": format!("sy.ch.{tenant}.*"), "dest": format!("sy.live.{tenant}.{{{{wildcard(1)}}}}") },
    })
}

/// A result of walking a channel's chain back.
#[derive(Debug, Default)]
pub struct Walk {
    /// Records found, oldest first.
    pub recs: Vec<Rec>,
    /// Whether the chain reached all the way down (nothing missing).
    pub complete: bool,
}

/// Channel sequencing, history and budgets.
pub struct Channels {
    /// JetStream.
    pub js: Js,
    /// Streams made sure of.
    pub ensured: Arc<Ensured>,
    replicas: usize,
    heads: Mutex<HashMap<ChannelKey, Arc<tokio::sync::Mutex<Head>>>>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels").finish_non_exhaustive()
    }
}

fn broker(e: JsError) -> BrokerError {
    e.into()
}

impl Channels {
    /// Channels over `js`.
    pub fn new(js: Js, ensured: Arc<Ensured>, replicas: usize) -> Self {
        Self {
            js,
            ensured,
            replicas,
            heads: Mutex::new(HashMap::new()),
        }
    }

    fn head_cell(&self, key: &ChannelKey) -> Arc<tokio::sync::Mutex<Head>> {
        let mut heads = self.heads.lock();
        if heads.len() > MAX_HEADS {
            heads.retain(|_, c| Arc::strong_count(c) > 1);
        }
        heads
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Head::Unknown)))
            .clone()
    }

    /// Makes sure the tenant's history stream exists with these options.
    pub async fn ensure(&self, tenant: &str, opts: &ChannelOptions) -> Result<(), BrokerError> {
        self.js
            .ensure_once(&self.ensured, &stream_config(tenant, opts, self.replicas))
            .await
            .map_err(broker)
    }

    /// The channel's last stored record.
    pub async fn last(&self, key: &ChannelKey) -> Result<Option<Rec>, BrokerError> {
        let stream = names::channel_stream(&key.tenant);
        let m = self.js.last(&stream, &names::channel_subject(key)).await;
        let m = self.unless_stream_lost(&stream, m)?;
        Ok(m.as_ref().and_then(Rec::of))
    }

    /// The record at stream sequence `seq`.
    pub async fn at(&self, key: &ChannelKey, seq: u64) -> Result<Option<Rec>, BrokerError> {
        let stream = names::channel_stream(&key.tenant);
        let m = self.js.at(&stream, seq).await;
        let m = self.unless_stream_lost(&stream, m)?;
        Ok(m.as_ref()
            .filter(|m| m.subject == names::channel_subject(key))
            .and_then(Rec::of))
    }

    /// A read of `stream` that found no stream (JetStream lost its data, e.g.
    /// restarted with an empty store) holds nothing: `None`, and the stream is
    /// created again by the next write instead of every read failing with an
    /// internal error until then.
    fn unless_stream_lost(
        &self,
        stream: &str,
        r: Result<Option<crate::js::StoredMsg>, crate::js::JsError>,
    ) -> Result<Option<crate::js::StoredMsg>, BrokerError> {
        match r {
            Err(e) if e.code() == Some(code::STREAM_NOT_FOUND) => {
                self.ensured.forget(stream);
                Ok(None)
            }
            r => r.map_err(broker),
        }
    }

    /// Records of `from`'s epoch with seq in `(down_to, from.seq]`, walking
    /// back from `from` along `Sy-Prev`.
    pub async fn walk_back(
        &self,
        key: &ChannelKey,
        from: Rec,
        down_to: u64,
    ) -> Result<Walk, BrokerError> {
        let mut recs = vec![];
        let epoch = from.epoch.clone();
        let mut cur = from;
        let complete = loop {
            if cur.seq <= down_to || *cur.epoch != *epoch {
                break false;
            }
            let (want, prev) = (cur.seq - 1, cur.prev);
            recs.push(cur);
            if want == down_to {
                break true;
            }
            if prev == 0 {
                break false;
            }
            match self.at(key, prev).await? {
                Some(r) if r.seq == want && *r.epoch == *epoch => cur = r,
                _ => break false,
            }
        };
        recs.reverse();
        Ok(Walk { recs, complete })
    }

    /// Publishes (see the module docs).
    pub async fn publish(
        &self,
        key: &ChannelKey,
        data: Arc<RawValue>,
        msg_id: Option<&str>,
        opts: &ChannelOptions,
        trace: Option<TraceParent>,
        skip: Option<(u64, &str)>,
    ) -> Result<Published, BrokerError> {
        self.ensure(&key.tenant, opts).await?;
        let cell = self.head_cell(key);
        let mut head = cell.lock().await;
        if let Some(limit) = opts.limit
            && let Some(retry) = self.take_token(key, limit).await?
        {
            let (seq, epoch) = match &*head {
                Head::At { seq, epoch, .. } => (*seq, epoch.clone()),
                _ => (0, Arc::from("")),
            };
            return Ok(Published {
                seq,
                epoch,
                duplicate: false,
                limited: Some(retry),
            });
        }
        let stream = names::channel_stream(&key.tenant);
        let subject = names::channel_subject(key);
        let payload = Bytes::copy_from_slice(data.get().as_bytes());
        for attempt in 0..ATTEMPTS {
            if matches!(*head, Head::Unknown) {
                *head = match self.last(key).await? {
                    Some(r) => Head::At {
                        stream_seq: r.stream_seq,
                        seq: r.seq,
                        epoch: r.epoch,
                    },
                    None => Head::Empty,
                };
            }
            let (epoch, seq, expected) = match &*head {
                Head::At {
                    stream_seq,
                    seq,
                    epoch,
                } => (epoch.clone(), seq + 1, *stream_seq),
                _ => (new_epoch(), 1, 0),
            };
            let mut h = HeaderMap::new();
            h.insert(H_SEQ, seq.to_string().as_str());
            h.insert(H_EPOCH, &*epoch);
            h.insert(H_PREV, expected.to_string().as_str());
            h.insert(H_TIME, now_ms().to_string().as_str());
            h.insert(H_EXPECT, expected.to_string().as_str());
            if let Some(id) = msg_id {
                let id = format!("{}:{}", names::enc(&key.channel), names::enc(id));
                h.insert(H_MSG_ID, id.as_str());
            }
            if let Some(tp) = trace {
                h.insert(H_TRACE, tp.header().as_str());
            }
            if let Some((session, node)) = skip {
                h.insert(H_SKIP, format!("{session} {node}").as_str());
            }
            match self.js.publish(subject.clone(), h, payload.clone()).await {
                Ok(ack) if !ack.duplicate => {
                    *head = Head::At {
                        stream_seq: ack.seq,
                        seq,
                        epoch: epoch.clone(),
                    };
                    return Ok(Published {
                        seq,
                        epoch,
                        duplicate: false,
                        limited: None,
                    });
                }
                Ok(ack) => {
                    let first = self.js.at(&stream, ack.seq).await.map_err(broker)?;
                    let (seq, epoch) = match first.as_ref().and_then(Rec::of) {
                        Some(r) => (r.seq, r.epoch),
                        None => (seq - 1, epoch),
                    };
                    return Ok(Published {
                        seq,
                        epoch,
                        duplicate: true,
                        limited: None,
                    });
                }
                Err(e) if e.code() == Some(code::WRONG_LAST_SEQUENCE) => {
                    *head = Head::Unknown;
                    if attempt > 4 {
                        let jitter = rand::random::<u64>() % 3;
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                }
                Err(e) if e.code() == Some(code::STREAM_NOT_FOUND) => {
                    *head = Head::Unknown;
                    self.ensured.forget(&stream);
                    self.ensure(&key.tenant, opts).await?;
                }
                Err(e) => {
                    // A publish that timed out may have been stored: re-read.
                    *head = Head::Unknown;
                    return Err(broker(e));
                }
            }
        }
        Err(BrokerError::Unavailable(format!(
            "nats: channel {key} too contended"
        )))
    }

    /// The channel head, storing an epoch marker when the channel has none.
    async fn head_or_marker(
        &self,
        key: &ChannelKey,
        opts: &ChannelOptions,
    ) -> Result<Rec, BrokerError> {
        for _ in 0..ATTEMPTS {
            if let Some(r) = self.last(key).await? {
                return Ok(r);
            }
            let epoch = new_epoch();
            let mut h = HeaderMap::new();
            h.insert(H_SEQ, "0");
            h.insert(H_EPOCH, &*epoch);
            h.insert(H_PREV, "0");
            h.insert(H_TIME, now_ms().to_string().as_str());
            h.insert(H_EXPECT, "0");
            match self
                .js
                .publish(names::channel_subject(key), h, Bytes::new())
                .await
            {
                Ok(ack) => {
                    return Ok(Rec {
                        stream_seq: ack.seq,
                        seq: 0,
                        epoch,
                        prev: 0,
                        time_ms: now_ms(),
                        data: None,
                        trace: None,
                        skip: None,
                    });
                }
                Err(e) if e.code() == Some(code::WRONG_LAST_SEQUENCE) => {}
                Err(e) if e.code() == Some(code::STREAM_NOT_FOUND) => {
                    self.ensured.forget(&names::channel_stream(&key.tenant));
                    self.ensure(&key.tenant, opts).await?;
                }
                Err(e) => return Err(broker(e)),
            }
        }
        Err(BrokerError::Unavailable(format!(
            "nats: channel {key} too contended"
        )))
    }

    /// Current epoch and seq, plus the messages after `since` when history
    /// still holds all of them (and they are within `history_ttl`).
    pub async fn recover(
        &self,
        key: &ChannelKey,
        since: Option<&StreamPosition>,
        opts: &ChannelOptions,
    ) -> Result<Recovery, BrokerError> {
        self.ensure(&key.tenant, opts).await?;
        let head = self.head_or_marker(key, opts).await?;
        let (epoch, seq) = (head.epoch.clone(), head.seq);
        let none = |recovered| Recovery {
            epoch: epoch.clone(),
            seq,
            recovered,
            messages: Vec::new(),
        };
        let Some(pos) = since else {
            return Ok(none(false));
        };
        if *pos.epoch != *epoch || pos.seq > seq {
            return Ok(none(false));
        }
        if pos.seq == seq {
            return Ok(none(true));
        }
        if seq - pos.seq > opts.history_size as u64 {
            return Ok(none(false));
        }
        let walk = self.walk_back(key, head, pos.seq).await?;
        let fresh = walk
            .recs
            .first()
            .is_some_and(|r| r.time_ms + opts.history_ttl.as_millis() as u64 >= now_ms());
        if !walk.complete || !fresh {
            return Ok(none(false));
        }
        Ok(Recovery {
            epoch: epoch.clone(),
            seq,
            recovered: true,
            messages: walk.recs.iter().filter_map(Rec::message).collect(),
        })
    }

    /// Takes one token from the channel's shared bucket (a KV entry updated by
    /// compare-and-set); `Some(retry_ms)` when it is empty.
    pub async fn take_token(
        &self,
        key: &ChannelKey,
        limit: ChannelLimit,
    ) -> Result<Option<u64>, BrokerError> {
        let bucket = names::LIMITS_BUCKET;
        let stream = names::kv_stream(bucket);
        let subject = names::kv_subject(
            bucket,
            &format!("{}.{}", key.tenant, names::enc(&key.channel)),
        );
        let (rate, burst) = (f64::from(limit.rate.max(1)), f64::from(limit.burst.max(1)));
        for _ in 0..ATTEMPTS {
            self.js
                .ensure_once(
                    &self.ensured,
                    &kv_config(bucket, Duration::from_secs(3600), true, self.replicas),
                )
                .await
                .map_err(broker)?;
            let last = self.js.last(&stream, &subject).await.map_err(broker)?;
            let now = now_ms();
            let (mut tokens, ts, rev) = match &last {
                Some(m) => {
                    let text = String::from_utf8_lossy(&m.payload);
                    let mut parts = text.split(' ');
                    let t = parts
                        .next()
                        .and_then(|t| t.parse::<f64>().ok())
                        .unwrap_or(burst);
                    let ts = parts
                        .next()
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(now);
                    (t, ts, m.seq)
                }
                None => (burst, now, 0),
            };
            tokens = burst.min(tokens + now.saturating_sub(ts) as f64 * rate / 1000.0);
            if tokens < 1.0 {
                return Ok(Some(((1.0 - tokens) * 1000.0 / rate).ceil() as u64));
            }
            let mut h = HeaderMap::new();
            h.insert(H_EXPECT, rev.to_string().as_str());
            let body = Bytes::from(format!("{} {now}", tokens - 1.0));
            match self.js.publish(subject.clone(), h, body).await {
                Ok(_) => return Ok(None),
                Err(e) if e.code() == Some(code::WRONG_LAST_SEQUENCE) => {}
                Err(e) if e.code() == Some(code::STREAM_NOT_FOUND) => self.ensured.forget(&stream),
                Err(e) => return Err(broker(e)),
            }
        }
        Err(BrokerError::Unavailable(
            "nats: channel budget too contended".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn records_decode_and_reject() {
        let h = headers(&[
            (H_SEQ, "5"),
            (H_EPOCH, "e1"),
            (H_PREV, "17"),
            (H_TIME, "1700000000000"),
        ]);
        let r = Rec::decode(20, &h, &Bytes::from_static(br#"{"a":1}"#)).expect("rec");
        assert_eq!((r.stream_seq, r.seq, &*r.epoch, r.prev), (20, 5, "e1", 17));
        assert_eq!(r.message().expect("message").data.get(), r#"{"a":1}"#);
        // A marker has no data; foreign or broken messages are not records.
        let m = headers(&[(H_SEQ, "0"), (H_EPOCH, "e1")]);
        assert!(
            Rec::decode(1, &m, &Bytes::new())
                .expect("marker")
                .message()
                .is_none()
        );
        assert!(Rec::decode(1, &headers(&[(H_EPOCH, "e1")]), &Bytes::new()).is_none());
        assert!(Rec::decode(1, &headers(&[(H_SEQ, "1"), (H_EPOCH, "")]), &Bytes::new()).is_none());
        assert!(Rec::decode(1, &h, &Bytes::from_static(b"{oops")).is_none());
    }

    #[test]
    fn the_history_stream_follows_the_tenant_options() {
        let opts = ChannelOptions {
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            dedupe_window: 1024,
            limit: None,
        };
        let c = stream_config("acme", &opts, 1);
        assert_eq!(c["name"], "SY_CH_acme");
        assert_eq!(c["subjects"][0], "sy.ch.acme.*");
        assert_eq!(c["max_msgs_per_subject"], 1, "the head always stays");
        assert_eq!(c["max_age"], nanos(META_TTL_MIN));
        assert_eq!(c["duplicate_window"], nanos(Duration::from_secs(300)));
        assert_eq!(c["republish"]["dest"], "sy.live.acme.{{wildcard(1)}}");
    }
}
