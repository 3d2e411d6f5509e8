//! The Rust client (`sdk/client-rust`, crate `switchyard-client`) against the
//! real gateway binary over real sockets: subscribe, publish, presence and
//! direct messages; recovery after the gateway restarts (memory broker: the
//! history is gone, `recovered:false`; Redis: `recovered:true` with no gap);
//! a publish whose ack was lost is retried with its msgId and applied once;
//! documents converge between the Rust client and a raw protocol client, and
//! between the Rust client and our JS client (sdk/client-js, in Node).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchyard_client::{
    Backoff, Client, DocumentKind, Event, Events, LwwMap, Options, PresenceChange, PublishOptions,
    ReconnectReason,
};
use switchyard_tests::doc::{self, Got};
use switchyard_tests::node::{ensure_node_modules, run_node_tests};
use switchyard_tests::redis::RedisServer;
use switchyard_tests::{Client as Raw, Gateway, WAIT, scratch_dir};

const KEY: &str = "k";

fn config(extra: &str) -> String {
    format!(
        r#"
[server]
node_id = "node-a"
drain_timeout = "2s"
reconnect_in = "300ms"
{extra}
[tenants.default]
api_keys = ["{KEY}"]
documents = ["doc:*"]
history_size = 100
history_ttl = "5m"
"#
    )
}

fn redis_config(node: &str, redis: &RedisServer) -> String {
    format!(
        r#"
[server]
node_id = "{node}"
drain_timeout = "2s"

[broker]
kind = "redis"
redis_urls = ["{}"]

[tenants.default]
api_keys = ["{KEY}"]
history_size = 100
history_ttl = "5m"
"#,
        redis.url()
    )
}

/// A config file outside the gateway's scratch dir, so it survives restarts.
fn config_file(toml: &str) -> PathBuf {
    let path = scratch_dir("client-rust-conf").join("switchyard.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

fn options(gw: &Gateway, client_id: &str) -> Options {
    Options::new(gw.ws_url("/ws"))
        .client_id(client_id)
        .backoff(Backoff {
            max_retries: 40,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            jitter: 0.4,
        })
}

/// The next event that `f` maps to `Some` (others are kept in `skipped`), within [`WAIT`].
async fn until<T>(
    events: &mut Events,
    what: &str,
    skipped: &mut Vec<Event>,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {skipped:#?}"))
            .unwrap_or_else(|| panic!("event stream ended waiting for {what}; saw {skipped:#?}"));
        if let Some(t) = f(&e) {
            return t;
        }
        skipped.push(e);
    }
}

async fn message(events: &mut Events, channel: &str) -> (u64, String, Value) {
    let mut skipped = Vec::new();
    until(events, "a message", &mut skipped, |e| match e {
        Event::Message {
            channel: c,
            seq,
            epoch,
            data,
        } if c == channel => Some((*seq, epoch.clone(), data.clone())),
        _ => None,
    })
    .await
}

async fn http_publish(gw: &Gateway, channel: &str, data: Value) -> u64 {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (st, reply) = gw.post_json("/api/publish", Some(KEY), &body).await;
    assert_eq!(st, 200, "{reply}");
    serde_json::from_str::<Value>(&reply).expect("json")["seq"]
        .as_u64()
        .expect("seq")
}

async fn ready(gw: &Gateway) {
    let deadline = Instant::now() + WAIT;
    while gw.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publish_presence_and_direct_messages() {
    let gw = Gateway::start(&config(""));
    let (client, mut events) = Client::connect(options(&gw, "rusty"))
        .await
        .expect("connect");
    assert_eq!(client.client_id().as_deref(), Some("rusty"));
    let sub = client.subscribe("room:1").await.expect("subscribe");
    assert_eq!((sub.seq, sub.recovered), (0, false));

    // its own publish comes back; the msgId makes a repeat an ack, not a delivery
    let ack = client
        .publish("room:1", json!({"text": "hi"}))
        .await
        .expect("ack");
    assert_eq!(ack.seq, Some(1));
    assert_eq!(
        message(&mut events, "room:1").await.2,
        json!({"text": "hi"})
    );

    // another (raw protocol) client's publish and a server-side one
    let mut raw = Raw::connect(&gw.ws_url("/ws?client_id=raw")).await;
    raw.send_json(json!({"type":"publish","id":1,"channel":"room:1","data":{"from":"raw"}}))
        .await;
    assert_eq!(raw.recv_type("ack").await["seq"], 2);
    assert_eq!(http_publish(&gw, "room:1", json!({"from":"http"})).await, 3);
    let (s2, _, d2) = message(&mut events, "room:1").await;
    let (s3, _, d3) = message(&mut events, "room:1").await;
    assert_eq!(
        (s2, d2, s3, d3),
        (2, json!({"from":"raw"}), 3, json!({"from":"http"}))
    );
    assert_eq!(client.position("room:1").map(|p| p.seq), Some(3));

    // presence lists the client under its id; a refused subscribe is an error
    let who = client.presence("room:1").await.expect("presence");
    assert!(
        who.iter()
            .any(|e| e.client == "rusty" && e.node == "node-a"),
        "{who:?}"
    );
    let bad = client
        .subscribe("no-namespace")
        .await
        .expect_err("bad channel");
    assert_eq!(bad.code(), Some("bad_channel"), "{bad}");

    // POST /api/send reaches it as a Direct event
    let (st, body) = gw
        .post_json(
            "/api/send",
            Some(KEY),
            r#"{"client":"rusty","data":{"n":7}}"#,
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let mut skipped = Vec::new();
    let direct = until(&mut events, "direct", &mut skipped, |e| match e {
        Event::Direct { data } => Some(data.clone()),
        _ => None,
    })
    .await;
    assert_eq!(direct, json!({"n":7}));
    assert!(client.ping().await.expect("pong") < WAIT);

    client.close();
    let closed = until(&mut events, "closed", &mut skipped, |e| match e {
        Event::Closed { error } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert_eq!(closed, None);
}

/// Presence events (`subscribe_with(channel, true)` → `Event::Presence`) and
/// sender exclusion (`PublishOptions::skip_self`) against the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_and_skip_self() {
    let gw = Gateway::start(&config(""));
    let (client, mut events) = Client::connect(options(&gw, "watcher"))
        .await
        .expect("connect");
    client
        .subscribe_with("room:p", true)
        .await
        .expect("subscribe");
    let mut raw = Raw::connect(&gw.ws_url("/ws?client_id=raw-1")).await;
    raw.subscribe(1, "room:p").await;
    let mut skipped = Vec::new();
    let join = until(&mut events, "join", &mut skipped, |e| match e {
        Event::Presence {
            channel,
            change,
            client,
            node,
            ..
        } => Some((channel.clone(), *change, client.clone(), node.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        join,
        (
            "room:p".to_owned(),
            PresenceChange::Join,
            "raw-1".to_owned(),
            "node-a".to_owned()
        )
    );
    drop(raw);
    let leave = until(&mut events, "leave", &mut skipped, |e| match e {
        Event::Presence { change, client, .. } => Some((*change, client.clone())),
        _ => None,
    })
    .await;
    assert_eq!(leave, (PresenceChange::Leave, "raw-1".to_owned()));

    // skip_self: acked, not delivered back; the next plain publish is the
    // first message the client sees
    let ack = client
        .publish_with(
            "room:p",
            json!("mine"),
            PublishOptions {
                skip_self: true,
                ..PublishOptions::default()
            },
        )
        .await
        .expect("ack");
    assert_eq!(ack.seq, Some(1));
    client.publish("room:p", json!("echo")).await.expect("ack");
    let (seq, _, data) = message(&mut events, "room:p").await;
    assert_eq!((seq, data), (2, json!("echo")));
    client.close();
}

/// A drained gateway (SIGTERM → `SERVER_SHUTDOWN`, close 1001) restarts with
/// the memory broker: its history is gone, so the resume says
/// `recovered:false` (a new epoch), and live messages follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_drain_and_restart_the_memory_broker_cannot_recover() {
    let cfg = config_file(&config(""));
    let mut gw = Gateway::spawn(scratch_dir("gw"), cfg.clone(), "127.0.0.1:0", &[]);
    let listen = gw.addr.to_string();
    let (client, mut events) = Client::connect(options(&gw, "drained"))
        .await
        .expect("connect");
    let first = client.subscribe("room:r").await.expect("subscribe");
    for i in 1..=3u64 {
        assert_eq!(http_publish(&gw, "room:r", json!({"i": i})).await, i);
    }
    for i in 1..=3u64 {
        assert_eq!(message(&mut events, "room:r").await.0, i);
    }

    gw.signal(libc::SIGTERM);
    let mut seen = Vec::new();
    let code = until(&mut events, "disconnected", &mut seen, |e| match e {
        Event::Disconnected { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, 1001);
    let (delay, reason) = until(&mut events, "reconnecting", &mut seen, |e| match e {
        Event::Reconnecting { delay, reason, .. } => Some((*delay, *reason)),
        _ => None,
    })
    .await;
    assert_eq!(reason, ReconnectReason::ServerShutdown);
    // reconnectIn = 300 ms plus up to 40 % jitter
    assert!(
        delay >= Duration::from_millis(300) && delay <= Duration::from_millis(420),
        "{delay:?}"
    );
    let st = gw.wait_exit(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "drain exit: {st:?}");
    gw = Gateway::spawn(scratch_dir("gw"), cfg.clone(), &listen, &[]);

    let (resumed, recovered, epoch) = until(&mut events, "resubscribed", &mut seen, |e| match e {
        Event::Subscribed {
            channel,
            resumed,
            recovered,
            epoch,
            ..
        } if channel == "room:r" => Some((*resumed, *recovered, epoch.clone())),
        _ => None,
    })
    .await;
    assert!(resumed && !recovered, "history lost → recovered:false");
    assert_ne!(epoch, first.epoch, "a new epoch");
    assert_eq!(http_publish(&gw, "room:r", json!({"i": "new"})).await, 1);
    let (seq, e, data) = message(&mut events, "room:r").await;
    assert_eq!((seq, e, data), (1, epoch, json!({"i":"new"})));
    assert_eq!(client.stats().reconnects, 1);
    client.close();
    let _ = std::fs::remove_dir_all(cfg.parent().expect("dir"));
}

/// With Redis the history outlives the gateway: a client of a killed node
/// resumes on the restarted one with `recovered:true`, gets what another node
/// published meanwhile in order, then live messages, with no gap or duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_with_redis_the_client_recovers_without_a_gap() {
    let redis = RedisServer::start();
    let cfg_a = config_file(&redis_config("node-a", &redis));
    let mut a = Gateway::spawn(scratch_dir("gw"), cfg_a.clone(), "127.0.0.1:0", &[]);
    let b = Gateway::start(&redis_config("node-b", &redis));
    ready(&a).await;
    ready(&b).await;
    let listen = a.addr.to_string();
    let (client, mut events) = Client::connect(options(&a, "survivor"))
        .await
        .expect("connect");
    let first = client.subscribe("room:r").await.expect("subscribe");
    for i in 1..=3u64 {
        assert_eq!(http_publish(&a, "room:r", json!({"i": i})).await, i);
    }
    for i in 1..=3u64 {
        assert_eq!(message(&mut events, "room:r").await.0, i);
    }

    a.kill();
    let mut seen = Vec::new();
    until(&mut events, "disconnected", &mut seen, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    // while node a is down, node b takes publishes
    for i in 4..=5u64 {
        assert_eq!(http_publish(&b, "room:r", json!({"i": i})).await, i);
    }
    a = Gateway::spawn(scratch_dir("gw"), cfg_a.clone(), &listen, &[]);

    let (resumed, recovered, epoch) = until(&mut events, "resubscribed", &mut seen, |e| match e {
        Event::Subscribed {
            channel,
            resumed,
            recovered,
            epoch,
            ..
        } if channel == "room:r" => Some((*resumed, *recovered, epoch.clone())),
        _ => None,
    })
    .await;
    assert!(resumed && recovered, "Redis kept the history");
    assert_eq!(epoch, first.epoch);
    assert_eq!(http_publish(&b, "room:r", json!({"i": 6})).await, 6);
    let mut got = Vec::new();
    for _ in 4..=6 {
        let (seq, _, data) = message(&mut events, "room:r").await;
        got.push((seq, data["i"].as_u64().unwrap_or(0)));
    }
    assert_eq!(got, vec![(4, 4), (5, 5), (6, 6)], "in order, no gap");
    let stats = client.stats();
    assert_eq!((stats.gaps, stats.reconnects), (0, 1), "{stats:?}");
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::Reconnecting {
                reason: ReconnectReason::Backoff,
                ..
            }
        )),
        "{seen:?}"
    );
    client.close();
    drop(a);
    let _ = std::fs::remove_dir_all(cfg_a.parent().expect("dir"));
}

/// A publish on the wire when the connection breaks gets no ack there; the
/// client resends it with the same msgId after reconnecting, and the gateway
/// delivers it once (the second send is acknowledged with the first's seq).
/// One thread: the publish and the connection drop are both queued before the
/// client's driver runs, so the publish is written and its ack never read (on
/// more threads the driver could write it and read the ack before the drop
/// arrives, and nothing would be resent).
#[tokio::test(flavor = "current_thread")]
async fn a_publish_retried_after_a_disconnect_is_applied_once() {
    let gw = Gateway::start(&config(""));
    let mut watcher = Raw::connect(&gw.ws_url("/ws?client_id=watcher")).await;
    watcher.subscribe(1, "room:m").await;
    let (client, mut events) = Client::connect(options(&gw, "retrier"))
        .await
        .expect("connect");
    client.subscribe("room:m").await.expect("subscribe");

    let publish = client.publish("room:m", json!({"n": 1})); // queued now
    assert!(client.simulate_connection_loss().await, "was connected");
    let ack = tokio::time::timeout(WAIT, publish)
        .await
        .expect("acked in time")
        .expect("ack");
    let mut seen = Vec::new();
    until(&mut events, "reconnected", &mut seen, |e| {
        matches!(
            e,
            Event::Connected {
                reconnected: true,
                ..
            }
        )
        .then_some(())
    })
    .await;
    assert_eq!(client.stats().resent, 1, "sent again after the reconnect");
    let end = client
        .publish("room:m", json!({"end": true}))
        .await
        .expect("ack");

    // the watcher sees n:1 exactly once, at the acked seq, then the end marker
    let mut got = Vec::new();
    loop {
        let v = watcher.recv_type("message").await;
        let done = v["data"]["end"] == true;
        got.push((v["seq"].as_u64().unwrap_or(0), v["data"].clone()));
        if done {
            break;
        }
    }
    assert_eq!(
        got,
        vec![
            (ack.seq.unwrap_or(0), json!({"n":1})),
            (end.seq.unwrap_or(0), json!({"end":true}))
        ]
    );
    assert_eq!((ack.seq, end.seq), (Some(1), Some(2)));
    // and the publisher itself saw each once (resumed by since, no duplicate)
    let (s1, _, _) = message(&mut events, "room:m").await;
    let (s2, _, _) = message(&mut events, "room:m").await;
    assert_eq!((s1, s2), (1, 2));

    // an explicit msgId reused by the app: acked with the original seq, not delivered
    let opts = |id: &str| switchyard_client::PublishOptions {
        msg_id: Some(id.into()),
        ..Default::default()
    };
    let a1 = client
        .publish_with("room:m", json!({"x":1}), opts("fixed"))
        .await
        .expect("ack");
    let a2 = client
        .publish_with("room:m", json!({"x":1}), opts("fixed"))
        .await
        .expect("ack");
    assert_eq!((a1.seq, a2.seq), (Some(3), Some(3)));
    client.close();
}

/// A document edited at once by the Rust client and a raw protocol client
/// converges: both replicas and the gateway's state are equal at one
/// version; after a connection loss the Rust client resumes by version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_converge_between_the_rust_client_and_a_raw_client() {
    const DOC: &str = "doc:shared";
    let gw = Gateway::start(&config(""));
    let (client, mut events) = Client::connect(options(&gw, "rust-editor"))
        .await
        .expect("connect");
    let sub = client.document(DOC).await.expect("document");
    let mut map = LwwMap::default();
    let mut seen = Vec::new();
    let snap = until(&mut events, "snapshot", &mut seen, |e| match e {
        Event::Document(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!((snap.kind, snap.version), (DocumentKind::Snapshot, sub.seq));
    map.apply(&snap).expect("snapshot");

    let mut raw = Raw::connect(&gw.ws_url("/ws?client_id=raw-editor")).await;
    let (_, raw_snap) = raw.subscribe_doc(1, DOC, None).await;
    let mut raw_state = Map::new();
    let mut raw_version = 0;
    if let Some(p) = raw_snap {
        doc::apply_lww(&mut raw_state, &p);
        raw_version = p.version;
    }

    // Both write the same keys at once.
    let n = 10u64;
    let mut acks = Vec::new();
    for i in 0..n {
        acks.push(client.patch(DOC, &json!({"shared": format!("rust-{i}"), "rust": i})));
        raw.send_patch(
            100 + i,
            DOC,
            &json!({"shared": format!("raw-{i}"), "raw": i}),
            &format!("raw-{i}"),
        )
        .await;
    }
    let mut last = 0;
    for a in acks {
        last = last.max(a.await.expect("patch ack"));
    }
    // the raw client reads its acks and every broadcast
    let mut raw_acked = 0;
    while raw_acked < n || raw_version < 2 * n as i64 {
        match raw.recv_got().await {
            Got::Json(v) if v["type"] == "ack" => raw_acked += 1,
            Got::Json(v) => panic!("unexpected {v}"),
            Got::Patch(p) => {
                assert_eq!(p.version, raw_version + 1, "no gap for the raw client");
                doc::apply_lww(&mut raw_state, &p);
                raw_version = p.version;
            }
        }
    }
    assert_eq!(raw_version, 2 * n as i64);
    assert!(last <= 2 * n);
    while map.version() < Some(2 * n) {
        let c = until(&mut events, "patches", &mut seen, |e| match e {
            Event::Document(c) => Some(c.clone()),
            _ => None,
        })
        .await;
        assert_eq!(Some(c.version), map.version().map(|v| v + 1), "in order");
        map.apply(&c).expect("patch");
    }
    assert_eq!(map.state(), &raw_state, "the two replicas converge");
    let (st, body) = http_get_doc(&gw, DOC).await;
    assert_eq!(st, 200, "{body}");
    let server: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(server["version"], 2 * n);
    assert_eq!(server["state"], map.to_value(), "and equal the gateway's");
    assert_eq!(map.get("rust"), Some(&json!(n - 1)));
    assert_eq!(map.get("raw"), Some(&json!(n - 1)));

    // Connection loss: the raw client edits meanwhile; the Rust client resumes by version.
    assert!(client.simulate_connection_loss().await);
    let (ack, _) = raw
        .patch_acked(
            500,
            DOC,
            &json!({"offline": "edit", "raw": null}),
            "raw-off",
        )
        .await;
    assert_eq!(ack["version"], 2 * n + 1, "{ack}");
    let (resumed, recovered) = until(
        &mut events,
        "document resubscribed",
        &mut seen,
        |e| match e {
            Event::Subscribed {
                channel,
                document: true,
                resumed,
                recovered,
                ..
            } if channel == DOC => Some((*resumed, *recovered)),
            _ => None,
        },
    )
    .await;
    assert!(resumed && recovered, "resumed from version {}", 2 * n);
    let c = until(&mut events, "missed patch", &mut seen, |e| match e {
        Event::Document(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!((c.kind, c.version), (DocumentKind::Patch, 2 * n + 1));
    map.apply(&c).expect("patch");
    assert_eq!(map.get("offline"), Some(&json!("edit")));
    assert_eq!(map.get("raw"), None, "null deletes");

    // a patch from the Rust client after the resume reaches the raw client
    let v = client
        .patch(DOC, &json!({"back": true}))
        .await
        .expect("ack");
    assert_eq!(v, 2 * n + 2);
    let p = raw.recv_patch().await;
    assert_eq!((p.version, p.client_id.as_str()), (v as i64, "rust-editor"));
    doc::apply_lww(&mut raw_state, &p);
    // the own broadcast arrives at the Rust client too
    let c = until(&mut events, "own patch", &mut seen, |e| match e {
        Event::Document(c) if c.version == v => Some(c.clone()),
        _ => None,
    })
    .await;
    map.apply(&c).expect("patch");
    // (the raw client's own offline patch came before; apply it to its copy)
    raw_state.insert("offline".into(), json!("edit"));
    raw_state.remove("raw");
    assert_eq!(map.state(), &raw_state);
    client.close();
}

/// `{key: value}`.
fn one_key(key: String, value: Value) -> Value {
    Value::Object(Map::from_iter([(key, value)]))
}

/// Applies `channel`'s changes from `events` to `map` until `done(map)`;
/// each change must be the next version (no gap, no duplicate). Returns the
/// authors (client ids) of the patches applied, in order.
async fn follow_until(
    events: &mut Events,
    channel: &str,
    map: &mut LwwMap,
    what: &str,
    done: impl Fn(&LwwMap) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut authors = Vec::new();
    while !done(map) {
        let c = until(events, what, &mut seen, |e| match e {
            Event::Document(c) if c.channel == channel => Some(c.clone()),
            _ => None,
        })
        .await;
        assert_eq!(c.kind, DocumentKind::Patch, "{c:?}");
        assert_eq!(Some(c.version), map.version().map(|v| v + 1), "in order");
        map.apply(&c).expect("patch");
        authors.push(c.client_id);
    }
    authors
}

/// What the Rust client did in
/// [`documents_converge_between_the_rust_client_and_the_js_client`].
struct RustEdits {
    /// Acknowledged version of every patch (ready, keys, shared writes, done).
    acks: Vec<u64>,
    /// (acked version, value) of each write to `shared`.
    shared: Vec<(u64, String)>,
    /// Authors of the patches the Rust replica applied, in version order.
    authors: Vec<String>,
}

/// The Rust side: `rust:ready`; once `js:ready` shows, `keys` keys `rust:{i}`
/// and `shared_writes` writes to `shared`, one after the other; then
/// `rust:done`; then it follows until it has every `js:{i}` and both `done`
/// keys (after which neither side writes).
async fn rust_edits(
    client: &Client,
    events: &mut Events,
    channel: &str,
    map: &mut LwwMap,
    keys: u64,
    shared_writes: u64,
) -> RustEdits {
    let mut acks = vec![
        client
            .patch(channel, &json!({"rust:ready": true}))
            .await
            .expect("ack of rust:ready"),
    ];
    let mut authors = follow_until(events, channel, map, "js:ready", |m| {
        m.get("js:ready") == Some(&json!(true))
    })
    .await;
    // one patch in flight at a time, so that the two sides' patches interleave
    let every = keys / shared_writes;
    let mut shared = Vec::new();
    for i in 0..keys {
        let key = one_key(format!("rust:{i}"), json!(i));
        acks.push(client.patch(channel, &key).await.expect("patch ack"));
        if i % every == 0 {
            let value = format!("rust-{i}");
            let v = client
                .patch(channel, &json!({"shared": value}))
                .await
                .expect("patch ack");
            acks.push(v);
            shared.push((v, value));
        }
    }
    acks.push(
        client
            .patch(channel, &json!({"rust:done": true}))
            .await
            .expect("ack of rust:done"),
    );
    authors.extend(
        follow_until(
            events,
            channel,
            map,
            "every js key and both done keys",
            |m| {
                m.get("rust:done") == Some(&json!(true))
                    && m.get("js:done") == Some(&json!(true))
                    && (0..keys).all(|i| m.get(&format!("js:{i}")) == Some(&json!(i)))
            },
        )
        .await,
    );
    RustEdits {
        acks,
        shared,
        authors,
    }
}

/// The Rust client and our JS client (tests/js/documents-rust.test.mjs, in
/// Node) edit one document at once: each writes distinct keys and several
/// times one shared key, coordinating only through the document. Both
/// replicas and the gateway's state end equal at one version, which counts
/// every patch of both; `shared` holds the write acknowledged last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_converge_between_the_rust_client_and_the_js_client() {
    const DOC: &str = "doc:rust-js";
    const KEYS: u64 = 20;
    const SHARED_WRITES: u64 = 5;
    ensure_node_modules(&["ws"]);
    let gw = Arc::new(Gateway::start(&config("")));
    let (client, mut events) = Client::connect(options(&gw, "rust-editor"))
        .await
        .expect("connect");
    let sub = client.document(DOC).await.expect("document");
    let mut map = LwwMap::default();
    let mut seen = Vec::new();
    let snap = until(&mut events, "snapshot", &mut seen, |e| match e {
        Event::Document(c) if c.channel == DOC => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!((snap.kind, snap.version), (DocumentKind::Snapshot, sub.seq));
    map.apply(&snap).expect("snapshot");
    let start = snap.version;

    let result_file = scratch_dir("client-rust-js").join("js-replica.json");
    let mut node = {
        let gw = gw.clone();
        let env = [
            ("GATEWAY_URL", gw.http_url("")),
            ("DOC", DOC.to_owned()),
            ("KEYS", KEYS.to_string()),
            ("SHARED_WRITES", SHARED_WRITES.to_string()),
            ("RESULT_FILE", result_file.display().to_string()),
        ];
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_node_tests(
                "documents-rust.test.mjs",
                &env,
                Duration::from_secs(120),
                &["the JS replica converges with the Rust client"],
                || gw.logs(),
            );
        })
    };
    // The Rust side edits while the script runs; a failing script ends the test at once.
    let rust = {
        let edits = rust_edits(&client, &mut events, DOC, &mut map, KEYS, SHARED_WRITES);
        tokio::pin!(edits);
        tokio::select! {
            rust = &mut edits => {
                if let Err(e) = (&mut node).await {
                    std::panic::resume_unwind(e.into_panic());
                }
                rust
            }
            script = &mut node => {
                if let Err(e) = script {
                    std::panic::resume_unwind(e.into_panic());
                }
                edits.await
            }
        }
    };

    let js: Value = serde_json::from_str(
        &std::fs::read_to_string(&result_file).expect("the script's result file"),
    )
    .expect("json");
    // ready + keys + shared writes + done, from each side
    let total = 2 * (KEYS + SHARED_WRITES + 2);
    let mut js_acks: Vec<u64> = js["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .map(|a| a["version"].as_u64().expect("version"))
        .collect();
    js_acks.push(js["ready"].as_u64().expect("ready"));
    js_acks.push(js["done"].as_u64().expect("done"));
    let mut all: Vec<u64> = rust.acks.iter().copied().chain(js_acks).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (start + 1..=start + total).collect::<Vec<_>>(),
        "every patch of both sides has its own version"
    );

    let (st, body) = http_get_doc(&gw, DOC).await;
    assert_eq!(st, 200, "{body}");
    let server: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(map.version(), Some(start + total), "the Rust replica");
    // (its snapshot came before or after rust:ready, the only patch before js:ready)
    let js_start = js["start"].as_u64().expect("start");
    assert!(
        (start..=start + 1).contains(&js_start),
        "JS snapshot at {js_start}"
    );
    assert_eq!(js["version"], start + total, "the JS replica");
    assert_eq!(
        server["version"],
        start + total,
        "the gateway's state: {body}"
    );
    assert_eq!(js["epoch"].as_str(), Some(snap.epoch.as_str()), "one epoch");
    assert_eq!(js["state"], map.to_value(), "the two replicas converge");
    assert_eq!(server["state"], map.to_value(), "and equal the gateway's");

    // the state: every key of both, and `shared` from the write acked last
    for i in 0..KEYS {
        assert_eq!(map.get(&format!("rust:{i}")), Some(&json!(i)));
        assert_eq!(map.get(&format!("js:{i}")), Some(&json!(i)));
    }
    let js_shared = js["acks"].as_array().expect("acks").iter().filter_map(|a| {
        Some((
            a["version"].as_u64()?,
            a.get("shared")?.as_str()?.to_owned(),
        ))
    });
    let shared: Vec<(u64, String)> = rust.shared.iter().cloned().chain(js_shared).collect();
    assert_eq!(shared.len() as u64, 2 * SHARED_WRITES);
    let last = shared.iter().max().expect("shared writes");
    assert_eq!(map.get("shared"), Some(&json!(last.1)), "{shared:?}");
    assert_eq!(map.state().len() as u64, 2 * (KEYS + 2) + 1, "{map:?}");

    let switches = rust.authors.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!(
        "converged at version {} (from {start}); author changed {switches} times along the {} patches",
        start + total,
        rust.authors.len()
    );
    client.close();
}

async fn http_get_doc(gw: &Gateway, channel: &str) -> (u16, String) {
    let auth = format!("Bearer {KEY}");
    switchyard_tests::http(
        gw.addr,
        "GET",
        &format!("/api/documents/{channel}"),
        &[("authorization", &auth)],
        None,
    )
    .await
}

/// A gateway that stops answering (SIGSTOP: the TCP connection stays open) is
/// detected by the heartbeat; once it runs again the client reconnects and
/// resumes with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_gateway_is_detected_by_the_heartbeat() {
    let gw = Gateway::start(&config(""));
    let (client, mut events) = Client::connect(
        options(&gw, "watchful")
            .heartbeat(Duration::from_millis(300))
            .request_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    client.subscribe("room:h").await.expect("subscribe");
    assert_eq!(http_publish(&gw, "room:h", json!({"i": 1})).await, 1);
    assert_eq!(message(&mut events, "room:h").await.0, 1);

    gw.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut seen = Vec::new();
    let lost = until(&mut events, "heartbeat timeout", &mut seen, |e| match e {
        Event::Disconnected { code, reason, .. } => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    let detected = stopped.elapsed();
    gw.signal(libc::SIGCONT);
    assert_eq!(lost, (1006, "heartbeat timeout".to_owned()));
    assert!(detected < Duration::from_secs(5), "{detected:?}");

    let (resumed, recovered) = until(&mut events, "resubscribed", &mut seen, |e| match e {
        Event::Subscribed {
            channel,
            resumed,
            recovered,
            ..
        } if channel == "room:h" => Some((*resumed, *recovered)),
        _ => None,
    })
    .await;
    assert!(resumed && recovered, "same process: history intact");
    assert_eq!(http_publish(&gw, "room:h", json!({"i": 2})).await, 2);
    assert_eq!(message(&mut events, "room:h").await.0, 2);
    client.close();
}
