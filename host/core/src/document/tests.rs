//! The document engine through sessions (no sockets): snapshot on subscribe,
//! patches, dedupe, resume by version, bounds, a failing merge policy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use prost::Message as _;
use serde_json::{Value, json};

use super::frame::{Kind, StatePatch};
use crate::config::Config;
use crate::node::Node;
use crate::policy::{MergeDocument, MergeError, MergePolicy, PolicySet, Principal, Stamp};
use crate::session::Session;

fn node(extra: &str) -> Arc<Node> {
    let cfg = Config::from_toml(&format!(
        "[tenants.default]\ndocuments = [\"doc:*\"]\n{extra}"
    ))
    .expect("cfg");
    Node::with_memory_broker(Arc::new(cfg))
}

fn open(node: &Arc<Node>, client: &str) -> Session {
    let t = node.tenants.get("default").expect("tenant");
    let s = Session::open(node.clone(), t, Arc::from(client), Principal::anonymous());
    drain(&s);
    s
}

/// A frame as the client sees it.
#[derive(Debug)]
enum Got {
    Json(Value),
    Patch(StatePatch),
}

fn drain(s: &Session) -> Vec<Got> {
    let mut buf = VecDeque::new();
    crate::session::Handler::outbox(s).take(&mut buf);
    buf.iter()
        .map(|o| {
            if o.frame.is_binary() {
                Got::Patch(StatePatch::decode(&o.frame.bytes()[..]).expect("StatePatch"))
            } else {
                Got::Json(serde_json::from_str(o.frame.as_str()).expect("json"))
            }
        })
        .collect()
}

fn json(g: &Got) -> &Value {
    match g {
        Got::Json(v) => v,
        Got::Patch(p) => panic!("expected JSON, got {p:?}"),
    }
}

fn patch(g: &Got) -> &StatePatch {
    match g {
        Got::Patch(p) => p,
        Got::Json(v) => panic!("expected a binary frame, got {v}"),
    }
}

/// The one JSON frame among `f` (the sender's broadcast may come before its ack).
fn the_json(f: &[Got]) -> &Value {
    let mut j = f.iter().filter_map(|g| match g {
        Got::Json(v) => Some(v),
        Got::Patch(_) => None,
    });
    let v = j.next().expect("a JSON frame");
    assert!(j.next().is_none(), "one JSON frame: {f:?}");
    v
}

fn the_patch(f: &[Got]) -> &StatePatch {
    let mut p = f.iter().filter_map(|g| match g {
        Got::Patch(p) => Some(p),
        Got::Json(_) => None,
    });
    let v = p.next().expect("a binary frame");
    assert!(p.next().is_none(), "one binary frame: {f:?}");
    v
}

fn delta_json(p: &StatePatch) -> Value {
    serde_json::from_slice(&p.delta).expect("delta json")
}

fn patch_frame(id: u64, channel: &str, delta: &str, msg_id: &str) -> Vec<u8> {
    StatePatch {
        id,
        channel: channel.into(),
        delta: Bytes::copy_from_slice(delta.as_bytes()),
        msg_id: msg_id.into(),
        kind: Kind::Patch as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

async fn subscribe(
    s: &mut Session,
    id: u64,
    channel: &str,
    since: Option<(&str, u64)>,
) -> Vec<Got> {
    let cmd = match since {
        Some((e, v)) => {
            json!({"type":"subscribe","id":id,"channel":channel,"since":{"epoch":e,"version":v}})
        }
        None => json!({"type":"subscribe","id":id,"channel":channel}),
    };
    s.handle_text(&cmd.to_string()).await.expect("subscribe");
    drain(s)
}

#[tokio::test]
async fn snapshot_then_patches_to_every_subscriber_the_sender_too() {
    let n = node("");
    let mut a = open(&n, "a");
    let mut b = open(&n, "b");
    let f = subscribe(&mut a, 1, "doc:1", None).await;
    assert_eq!(json(&f[0])["type"], "subscribed");
    assert_eq!(json(&f[0])["document"], true);
    assert_eq!(json(&f[0])["version"], 0);
    assert_eq!(json(&f[0])["recovered"], false);
    let snap = patch(&f[1]);
    assert_eq!(snap.kind, Kind::Snapshot as i32);
    assert_eq!((snap.version, &snap.channel[..]), (0, "doc:1"));
    assert_eq!(&snap.delta[..], b"{}");
    subscribe(&mut b, 1, "doc:1", None).await;

    b.handle_binary(&patch_frame(7, "doc:1", r#"{"x":1,"y":"two"}"#, "m1"))
        .await
        .expect("patch");
    let fb = drain(&b);
    assert_eq!(the_json(&fb), &json!({"type":"ack","id":7,"version":1}));
    let p = the_patch(&fb);
    assert_eq!((p.kind, p.version, &p.client_id[..]), (0, 1, "b"));
    assert_eq!(p.msg_id, "m1");
    assert!(p.lamport >= 1);
    assert!(!p.epoch.is_empty());
    let fa = drain(&a);
    assert_eq!(fa.len(), 1);
    assert_eq!(delta_json(patch(&fa[0])), json!({"x":1,"y":"two"}));

    // A repeated msg_id is acked with its version and not applied again.
    b.handle_binary(&patch_frame(8, "doc:1", r#"{"x":5}"#, "m1"))
        .await
        .expect("repeat");
    let fb = drain(&b);
    assert_eq!(fb.len(), 1);
    assert_eq!(json(&fb[0]), &json!({"type":"ack","id":8,"version":1}));
    assert!(drain(&a).is_empty());

    // null deletes; no change → ack with the current version, nothing broadcast.
    a.handle_binary(&patch_frame(2, "doc:1", r#"{"y":null}"#, ""))
        .await
        .expect("delete");
    assert_eq!(the_json(&drain(&a))["version"], 2);
    drain(&b);
    a.handle_binary(&patch_frame(3, "doc:1", r#"{"x":1}"#, ""))
        .await
        .expect("same");
    let fa = drain(&a);
    assert_eq!(fa.len(), 1);
    assert_eq!(json(&fa[0]), &json!({"type":"ack","id":3,"version":2}));
    assert!(drain(&b).is_empty());

    let mut c = open(&n, "c");
    let f = subscribe(&mut c, 1, "doc:1", None).await;
    assert_eq!(json(&f[0])["version"], 2);
    assert_eq!(delta_json(patch(&f[1])), json!({"x":1}));
}

#[tokio::test]
async fn resume_by_version_replays_patches_or_sends_a_snapshot() {
    let n = node("[limits]\ndocument_log_size = 4\n");
    let mut w = open(&n, "w");
    for i in 0..3 {
        w.handle_binary(&patch_frame(
            i + 1,
            "doc:r",
            &format!(r#"{{"k{i}":{i}}}"#),
            "",
        ))
        .await
        .expect("patch");
    }
    drain(&w);
    let mut s = open(&n, "s");
    let f = subscribe(&mut s, 1, "doc:r", None).await;
    let epoch = json(&f[0])["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(json(&f[0])["version"], 3);
    let f = subscribe(&mut s, 2, "doc:r", Some((&epoch, 1))).await;
    assert_eq!(json(&f[0])["recovered"], true);
    let versions: Vec<i64> = f[1..].iter().map(|g| patch(g).version).collect();
    assert_eq!(versions, [2, 3]);
    assert!(f[1..].iter().all(|g| patch(g).kind == Kind::Patch as i32));
    // Up to date: recovered, nothing to replay.
    let f = subscribe(&mut s, 3, "doc:r", Some((&epoch, 3))).await;
    assert_eq!(
        (json(&f[0])["recovered"].clone(), f.len()),
        (json!(true), 1)
    );
    // Stale epoch, or a version the log no longer reaches: a snapshot.
    let f = subscribe(&mut s, 4, "doc:r", Some(("old", 1))).await;
    assert_eq!(json(&f[0])["recovered"], false);
    assert_eq!(patch(&f[1]).kind, Kind::Snapshot as i32);
    for i in 3..12 {
        w.handle_binary(&patch_frame(
            i + 1,
            "doc:r",
            &format!(r#"{{"k{i}":{i}}}"#),
            "",
        ))
        .await
        .expect("patch");
    }
    drain(&s);
    let f = subscribe(&mut s, 5, "doc:r", Some((&epoch, 1))).await;
    assert_eq!(json(&f[0])["recovered"], false);
    let snap = patch(&f[1]);
    assert_eq!((snap.kind, snap.version), (Kind::Snapshot as i32, 12));
    assert_eq!(delta_json(snap).as_object().map(|o| o.len()), Some(12));
}

#[tokio::test]
async fn bad_frames_and_deltas_are_invalid_and_change_nothing() {
    let n = node("[limits]\ndocument_max_bytes = 64\n");
    let mut s = open(&n, "s");
    subscribe(&mut s, 1, "doc:b", None).await;
    s.handle_binary(&patch_frame(1, "doc:b", r#"{"a":1}"#, ""))
        .await
        .expect("ok");
    drain(&s);
    for (bytes, what) in [
        (b"\xff\xfe garbage".to_vec(), "garbage"),
        (patch_frame(2, "doc:b", "[1,2]", ""), "array delta"),
        (patch_frame(3, "doc:b", "\"str\"", ""), "string delta"),
        (patch_frame(4, "doc:b", "{nope", ""), "broken JSON"),
        (patch_frame(5, "room:x", r#"{"a":2}"#, ""), "not a document"),
        (
            patch_frame(
                6,
                "doc:b",
                &format!(r#"{{"big":"{}"}}"#, "x".repeat(80)),
                "",
            ),
            "over document_max_bytes",
        ),
    ] {
        s.handle_binary(&bytes).await.expect("kept open");
        let f = drain(&s);
        assert_eq!(f.len(), 1, "{what}: {f:?}");
        assert_eq!(json(&f[0])["type"], "error", "{what}");
        assert_eq!(json(&f[0])["code"], "invalid", "{what}: {:?}", f[0]);
    }
    // JSON publish to a document channel.
    s.handle_text(r#"{"type":"publish","id":9,"channel":"doc:b","data":{"a":3}}"#)
        .await
        .expect("kept");
    let f = drain(&s);
    assert_eq!(json(&f[0])["code"], "invalid");
    assert_eq!(json(&f[0])["id"], 9);
    let view = n
        .documents
        .read(
            &n.tenants.get("default").expect("t"),
            &crate::channel::ChannelKey::new("default", "doc:b"),
        )
        .await
        .expect("read");
    assert_eq!(view.version, 1);
    assert_eq!(view.snapshot, br#"{"a":1}"#);
}

/// A merge policy whose documents fail (as a trapped plugin does) on demand.
struct Flaky(Arc<AtomicBool>);
struct FlakyDoc(crate::document::lww::LwwDocument, Arc<AtomicBool>);

impl MergePolicy for Flaky {
    fn open(&self, snapshot: &[u8]) -> Result<Box<dyn MergeDocument>, MergeError> {
        Ok(Box::new(FlakyDoc(
            crate::document::lww::LwwDocument::from_snapshot(snapshot)?,
            self.0.clone(),
        )))
    }
}

impl MergeDocument for FlakyDoc {
    fn apply(&mut self, update: &[u8], stamp: &Stamp<'_>) -> Result<Option<Vec<u8>>, MergeError> {
        if self.1.load(Ordering::SeqCst) && update == br#"{"boom":1}"# {
            // Half-applied, then failed: the engine must not keep this state.
            let _ = self.0.apply(br#"{"junk":1}"#, stamp);
            return Err(MergeError::Failed("trap".into()));
        }
        self.0.apply(update, stamp)
    }
    fn snapshot(&self) -> Result<Vec<u8>, MergeError> {
        self.0.snapshot()
    }
}

#[tokio::test]
async fn a_failing_merge_refuses_the_patch_and_the_document_is_rebuilt() {
    let n = node("");
    let fail = Arc::new(AtomicBool::new(true));
    let t = n.tenants.get("default").expect("t");
    t.set_policies(PolicySet {
        merge: Arc::new(Flaky(fail.clone())),
        ..PolicySet::default()
    });
    let mut s = open(&n, "s");
    subscribe(&mut s, 1, "doc:f", None).await;
    s.handle_binary(&patch_frame(1, "doc:f", r#"{"a":1}"#, ""))
        .await
        .expect("ok");
    drain(&s);
    s.handle_binary(&patch_frame(2, "doc:f", r#"{"boom":1}"#, ""))
        .await
        .expect("kept");
    let f = drain(&s);
    assert_eq!(json(&f[0])["code"], "invalid", "{f:?}");
    s.handle_binary(&patch_frame(3, "doc:f", r#"{"b":2}"#, ""))
        .await
        .expect("ok");
    let f = drain(&s);
    assert_eq!(the_json(&f)["version"], 2);
    let mut c = open(&n, "c");
    let f = subscribe(&mut c, 1, "doc:f", None).await;
    assert_eq!(delta_json(patch(&f[1])), json!({"a":1,"b":2}), "no junk");
}

#[tokio::test]
async fn idle_documents_leave_memory_and_reload() {
    let n = node("");
    let mut s = open(&n, "s");
    s.handle_binary(&patch_frame(1, "doc:i", r#"{"a":1}"#, "m"))
        .await
        .expect("ok");
    drain(&s);
    assert_eq!(n.documents.open_count(), 1);
    n.documents.evict_idle(std::time::Duration::ZERO);
    assert_eq!(n.documents.open_count(), 0);
    // Reloaded from the log, dedupe included.
    s.handle_binary(&patch_frame(2, "doc:i", r#"{"a":9}"#, "m"))
        .await
        .expect("ok");
    assert_eq!(
        json(&drain(&s)[0]),
        &json!({"type":"ack","id":2,"version":1})
    );
    let f = subscribe(&mut s, 3, "doc:i", None).await;
    assert_eq!(delta_json(patch(&f[1])), json!({"a":1}));
    // A document with a subscriber stays.
    n.documents.evict_idle(std::time::Duration::ZERO);
    assert_eq!(n.documents.open_count(), 1);
}

#[tokio::test]
async fn a_channel_limit_is_shared_by_every_writer_of_a_document() {
    let n = node(
        "[[tenants.default.channel_limits]]\nmatch = \"doc:lim*\"\nrate = 1\nburst = 3\n\
         [limits]\npublish_rate = 100000\npublish_burst = 100000\n",
    );
    let mut a = open(&n, "a");
    let mut b = open(&n, "b");
    subscribe(&mut a, 1, "doc:lim", None).await;
    subscribe(&mut b, 1, "doc:lim", None).await;
    let mut outcomes = Vec::new();
    for i in 0..6u64 {
        let s = if i % 2 == 0 { &mut a } else { &mut b };
        s.handle_binary(&patch_frame(
            10 + i,
            "doc:lim",
            &format!(r#"{{"k{i}":{i}}}"#),
            "",
        ))
        .await
        .expect("patch");
        let f = drain(s);
        let reply = f.iter().find_map(|g| match g {
            Got::Json(v) if v["id"] == 10 + i => Some(v.clone()),
            _ => None,
        });
        let reply = reply.expect("a reply");
        outcomes.push(match reply["type"].as_str() {
            Some("ack") => "ok".to_owned(),
            _ => reply["code"].as_str().unwrap_or("?").to_owned(),
        });
    }
    assert_eq!(
        outcomes,
        [
            "ok",
            "ok",
            "ok",
            "rate_limited",
            "rate_limited",
            "rate_limited"
        ],
        "a burst of 3 for both writers together"
    );
    drain(&a);
    let mut c = open(&n, "c");
    let f = subscribe(&mut c, 1, "doc:lim", None).await;
    assert_eq!(json(&f[0])["version"], 3, "refused patches changed nothing");
    assert_eq!(delta_json(patch(&f[1])), json!({"k0":0,"k1":1,"k2":2}));
    // Another document is not limited.
    subscribe(&mut a, 2, "doc:free", None).await;
    a.handle_binary(&patch_frame(50, "doc:free", r#"{"x":1}"#, ""))
        .await
        .expect("patch");
    assert_eq!(the_json(&drain(&a))["type"], "ack");
}

/// A merge document whose instance is lost the first time it snapshots (as
/// when a plugin call on a large document runs past its deadline): the
/// instance's state goes with it, like a trapped plugin's.
struct LosesOnSnapshot(Arc<AtomicBool>);
struct LosesOnSnapshotDoc {
    doc: crate::document::lww::LwwDocument,
    armed: Arc<AtomicBool>,
    lost: std::cell::Cell<bool>,
}

impl MergePolicy for LosesOnSnapshot {
    fn open(&self, snapshot: &[u8]) -> Result<Box<dyn MergeDocument>, MergeError> {
        Ok(Box::new(LosesOnSnapshotDoc {
            doc: crate::document::lww::LwwDocument::from_snapshot(snapshot)?,
            armed: self.0.clone(),
            lost: std::cell::Cell::new(false),
        }))
    }
}

impl MergeDocument for LosesOnSnapshotDoc {
    fn apply(&mut self, update: &[u8], stamp: &Stamp<'_>) -> Result<Option<Vec<u8>>, MergeError> {
        if self.lost.get() {
            return Err(MergeError::Lost(
                "document lost after an earlier failure".into(),
            ));
        }
        self.doc.apply(update, stamp)
    }
    fn snapshot(&self) -> Result<Vec<u8>, MergeError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.lost.set(true);
            return Err(MergeError::Failed("timed out".into()));
        }
        self.doc.snapshot()
    }
}

#[tokio::test]
async fn a_lost_instance_costs_no_patch() {
    // Compaction every 2 versions: its snapshot loses the instance once.
    let n = node("[limits]\ndocument_log_size = 4\n");
    let armed = Arc::new(AtomicBool::new(true));
    let t = n.tenants.get("default").expect("t");
    t.set_policies(PolicySet {
        merge: Arc::new(LosesOnSnapshot(armed.clone())),
        ..PolicySet::default()
    });
    let mut s = open(&n, "s");
    subscribe(&mut s, 1, "doc:l", None).await;
    for i in 0..6u64 {
        s.handle_binary(&patch_frame(
            10 + i,
            "doc:l",
            &format!(r#"{{"k{i}":{i}}}"#),
            "",
        ))
        .await
        .expect("patch");
        let f = drain(&s);
        assert_eq!(the_json(&f)["type"], "ack", "patch {i} was refused: {f:?}");
        assert_eq!(the_json(&f)["version"], i + 1);
    }
    assert!(!armed.load(Ordering::SeqCst), "the snapshot did fail once");
    let mut c = open(&n, "c");
    let f = subscribe(&mut c, 1, "doc:l", None).await;
    assert_eq!(
        delta_json(patch(&f[1])),
        json!({"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5})
    );
}

/// The replica of `channel` (tenant `default`): its base version, the entries it holds.
async fn replica_state(n: &Arc<Node>, channel: &str) -> (u64, usize, Arc<str>) {
    let key = crate::channel::ChannelKey::new("default", channel);
    let slot = n.documents.slots.get(&key).expect("open").clone();
    let guard = slot.lock().await;
    let live = guard.as_ref().expect("live");
    (live.base_version, live.log.len(), live.epoch.clone())
}

#[tokio::test]
async fn a_large_document_compacts_by_weight_not_every_half_log() {
    // Half a log is 2 versions; the document is ~8 KB, each update ~80 weighed bytes.
    let n = node("[limits]\ndocument_log_size = 4\n");
    let mut s = open(&n, "s");
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(8000));
    s.handle_binary(&patch_frame(1, "doc:w", &big, ""))
        .await
        .expect("patch");
    let mut id = 2u64;
    async fn small(s: &mut Session, id: &mut u64) {
        *id += 1;
        let f = patch_frame(*id, "doc:w", &format!(r#"{{"k":{id}}}"#), "");
        s.handle_binary(&f).await.expect("patch");
    }
    small(&mut s, &mut id).await;
    // Version 2: the first base (the empty document was all there was).
    assert_eq!(replica_state(&n, "doc:w").await.0, 2);
    for _ in 0..20 {
        small(&mut s, &mut id).await;
    }
    // 20 updates of ~80 bytes weigh less than half of 8 KB: no snapshot yet.
    assert_eq!(replica_state(&n, "doc:w").await.0, 2);
    for _ in 0..60 {
        small(&mut s, &mut id).await;
    }
    let (base, held, _) = replica_state(&n, "doc:w").await;
    assert!(
        base > 2,
        "compacted once the updates weighed half the document"
    );
    assert!(held <= 60, "the log since the base is bounded: {held}");
    drain(&s);
    let mut c = open(&n, "c");
    let f = subscribe(&mut c, 1, "doc:w", None).await;
    assert_eq!(delta_json(patch(&f[1]))["k"], id);
}

#[tokio::test]
async fn a_replica_that_only_follows_another_node_stays_bounded() {
    let n = node("[limits]\ndocument_log_size = 4\n");
    let mut s = open(&n, "s");
    s.handle_binary(&patch_frame(1, "doc:f", r#"{"a":0}"#, ""))
        .await
        .expect("patch");
    let key = crate::channel::ChannelKey::new("default", "doc:f");
    let (_, _, epoch) = replica_state(&n, "doc:f").await;
    // Another node's writes: in the log, then delivered to this replica.
    for v in 2..=200u64 {
        let e = super::log::Entry {
            version: v,
            delta: Bytes::from(format!(r#"{{"a":{v}}}"#)),
            client_id: Arc::from("other"),
            lamport: v,
            msg_id: None,
        };
        let opts = n.documents.opts();
        let r = n.documents.log.append(&key, &epoch, &e, &opts).await;
        assert!(matches!(r, Ok(super::log::Appended::Done)), "{r:?}");
        n.documents.apply_remote(&key, &epoch, e).await;
    }
    let (base, held, _) = replica_state(&n, "doc:f").await;
    assert!(base >= 198, "the follower took its own bases: {base}");
    assert!(held <= 8, "and holds a bounded log: {held}");
    let mut c = open(&n, "c");
    let f = subscribe(&mut c, 1, "doc:f", None).await;
    assert_eq!(delta_json(patch(&f[1])), json!({"a":200}));
}
