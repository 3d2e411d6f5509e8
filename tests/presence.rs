//! Presence events (`subscribe` with `"presence":true` → `join` / `leave`) and
//! sender exclusion (`publish` with `"skipSelf":true`), DESIGN §2c: on the
//! memory broker, across two gateways on one real `redis-server` and on a
//! real `nats-server -js`, including a node killed with SIGKILL.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::cluster::{client, presence, ready, until};
use switchyard_tests::nats::NatsServer;
use switchyard_tests::redis::RedisServer;
use switchyard_tests::{Client, Gateway};

const KEY: &str = "k";

/// The presence TTL of the multi-node gateways: a killed node's `leave`
/// arrives within about this (plus a reconcile period, a third of it).
const TTL: &str = "2s";
/// Bound on the wait for a killed node's `leave`.
const KILLED_LEAVE_WITHIN: Duration = Duration::from_secs(20);

fn broker_config(node: &str, broker: &str, extra: &str) -> String {
    format!(
        r#"
[server]
node_id = "{node}"
drain_timeout = "2s"

[broker]
{broker}
presence_ttl = "{TTL}"

[limits]
{extra}

[tenants.default]
api_keys = ["{KEY}"]
"#
    )
}

fn redis_broker(r: &RedisServer) -> String {
    format!("kind = \"redis\"\nredis_urls = [\"{}\"]", r.url())
}

fn nats_broker(n: &NatsServer) -> String {
    format!("kind = \"nats\"\nnats_urls = [\"{}\"]", n.url())
}

async fn pair(broker: &str) -> (Gateway, Gateway) {
    let a = Gateway::start(&broker_config("node-a", broker, ""));
    let b = Gateway::start(&broker_config("node-b", broker, ""));
    until("ready", Duration::from_secs(15), async || {
        ready(&a).await && ready(&b).await
    })
    .await;
    (a, b)
}

/// Subscribes (with presence events when `presence`) and waits for `subscribed`.
async fn subscribe(c: &mut Client, id: u64, channel: &str, presence: bool) -> Value {
    let mut cmd = json!({"type":"subscribe","id":id,"channel":channel});
    if presence {
        cmd["presence"] = json!(true);
    }
    c.send_json(cmd).await;
    loop {
        let v = c.recv_json().await;
        if v["id"] == id {
            assert_eq!(v["type"], "subscribed", "{v}");
            return v;
        }
    }
}

/// The next `join` or `leave` frame, skipping other frames.
async fn next_event(c: &mut Client) -> Value {
    loop {
        let v = c.recv_json().await;
        if v["type"] == "join" || v["type"] == "leave" {
            return v;
        }
    }
}

/// The next presence frame, within `limit`.
async fn next_event_within(c: &mut Client, limit: Duration) -> Value {
    tokio::time::timeout(limit, next_event(c))
        .await
        .unwrap_or_else(|_| panic!("no presence event within {limit:?}"))
}

fn event(kind: &str, channel: &str, client: &str, node: &str) -> Value {
    json!({"type":kind,"channel":channel,"client":client,"principal":"","node":node})
}

/// Publishes and returns the frames up to its `ack` (inclusive).
async fn publish_frames(
    c: &mut Client,
    id: u64,
    channel: &str,
    data: Value,
    skip_self: bool,
) -> Vec<Value> {
    let mut cmd = json!({"type":"publish","id":id,"channel":channel,"data":data});
    if skip_self {
        cmd["skipSelf"] = json!(true);
    }
    c.send_json(cmd).await;
    let mut out = Vec::new();
    loop {
        let v = c.recv_json().await;
        let done = v["id"] == id && (v["type"] == "ack" || v["type"] == "error");
        out.push(v);
        if done {
            assert_eq!(out.last().expect("ack")["type"], "ack", "{out:?}");
            return out;
        }
    }
}

/// The next `message` frame.
async fn next_message(c: &mut Client) -> Value {
    c.recv_type("message").await
}

/// The publisher's own `message`: among the frames read up to the `ack` (it
/// may come first), else the next one.
async fn own_message(c: &mut Client, before_ack: &[Value]) -> Value {
    match before_ack.iter().find(|f| f["type"] == "message") {
        Some(m) => m.clone(),
        None => next_message(c).await,
    }
}

// ---------------------------------------------------------------- skipSelf

#[tokio::test]
async fn skip_self_over_websocket_and_long_poll() {
    let gw = Gateway::start("[tenants.default]\napi_keys = [\"k\"]\n");
    let mut a = client(&gw, "a").await;
    let mut b = client(&gw, "b").await;
    subscribe(&mut a, 1, "room:1", false).await;
    subscribe(&mut b, 1, "room:1", false).await;
    let frames = publish_frames(&mut a, 2, "room:1", json!("skipped"), true).await;
    assert!(
        frames.iter().all(|f| f["type"] != "message"),
        "no message before the ack: {frames:?}"
    );
    assert_eq!(next_message(&mut b).await["data"], "skipped");
    // without skipSelf the publisher gets its own message; and it is the
    // first message it sees, so the skipped one never came
    let frames = publish_frames(&mut a, 3, "room:1", json!("echoed"), false).await;
    let m = own_message(&mut a, &frames).await;
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(2), json!("echoed"))
    );
    assert_eq!(next_message(&mut b).await["seq"], 2);

    // long-poll: the same, commands over POST
    let (st, body) = gw
        .post_json("/poll?channels=room:1&client_id=lp", None, "")
        .await;
    assert_eq!(st, 200, "{body}");
    let open: Value = serde_json::from_str(&body).expect("json");
    let id = open["session"].as_str().expect("session").to_owned();
    let csrf = open["csrf"].as_str().expect("csrf").to_owned();
    let path = format!("/poll/session/{id}");
    let post = async |body: &str| {
        switchyard_tests::http(
            gw.addr,
            "POST",
            &path,
            &[
                ("content-type", "application/json"),
                ("x-switchyard-csrf", &csrf),
            ],
            Some(body),
        )
        .await
        .0
    };
    let mut seen: Vec<Value> = open["frames"].as_array().expect("frames").clone();
    let poll = async |seen: &mut Vec<Value>, until_id: &str| {
        while !seen
            .iter()
            .any(|f| f["id"] == until_id && f["type"] == "ack")
        {
            let (st, b) = gw.get(&format!("{path}?wait=5")).await;
            assert_eq!(st, 200, "{b}");
            seen.extend(serde_json::from_str::<Vec<Value>>(&b).expect("json"));
        }
    };
    assert_eq!(
        post(
            r#"{"type":"publish","id":"p1","channel":"room:1","data":"lp-skipped","skipSelf":true}"#
        )
        .await,
        202
    );
    poll(&mut seen, "p1").await;
    assert_eq!(next_message(&mut b).await["data"], "lp-skipped");
    assert_eq!(
        post(r#"{"type":"publish","id":"p2","channel":"room:1","data":"lp-echoed"}"#).await,
        202
    );
    poll(&mut seen, "p2").await;
    assert_eq!(next_message(&mut b).await["data"], "lp-echoed");
    // the session's own echo of p2 arrives; the p1 message never does
    while !seen
        .iter()
        .any(|f| f["type"] == "message" && f["data"] == "lp-echoed")
    {
        let (_, b) = gw.get(&format!("{path}?wait=5")).await;
        seen.extend(serde_json::from_str::<Vec<Value>>(&b).expect("json"));
    }
    let data: Vec<&Value> = seen
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| &f["data"])
        .collect();
    assert_eq!(data, vec![&json!("lp-echoed")], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_self_across_redis_nodes() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis_broker(&redis)).await;
    skip_self_across(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_self_across_nats_nodes() {
    let nats = NatsServer::start();
    let (a, b) = pair(&nats_broker(&nats)).await;
    skip_self_across(&a, &b).await;
}

/// The publisher on node A skips itself; a second connection of the same
/// client on A and a subscriber on B get the message.
async fn skip_self_across(a: &Gateway, b: &Gateway) {
    let mut pub_a = client(a, "p").await;
    let mut twin_a = client(a, "p").await;
    let mut sub_b = client(b, "s").await;
    for c in [&mut pub_a, &mut twin_a, &mut sub_b] {
        subscribe(c, 1, "room:x", false).await;
    }
    publish_frames(&mut pub_a, 2, "room:x", json!("one"), true).await;
    assert_eq!(next_message(&mut sub_b).await["data"], "one");
    assert_eq!(
        next_message(&mut twin_a).await["data"],
        "one",
        "only the publishing connection is left out, not its client id"
    );
    let frames = publish_frames(&mut pub_a, 3, "room:x", json!("two"), false).await;
    let m = own_message(&mut pub_a, &frames).await;
    assert_eq!(m["data"], "two", "the skipped message never arrived: {m}");
}

// ---------------------------------------------------------------- presence

#[tokio::test]
async fn presence_events_on_one_node_and_the_limit() {
    let gw = Gateway::start("[limits]\npresence_events_max = 3\n");
    let node = {
        let c = client(&gw, "probe").await;
        c.welcome["node"].as_str().expect("node").to_owned()
    };
    let mut w = client(&gw, "w").await;
    subscribe(&mut w, 1, "room:p", true).await;
    let mut c1 = client(&gw, "c1").await;
    subscribe(&mut c1, 1, "room:p", false).await;
    assert_eq!(
        next_event(&mut w).await,
        event("join", "room:p", "c1", &node)
    );
    let mut c2 = client(&gw, "c2").await;
    subscribe(&mut c2, 1, "room:p", false).await;
    assert_eq!(
        next_event(&mut w).await,
        event("join", "room:p", "c2", &node)
    );
    // a 4th subscriber is over the limit of 3: no join; the next frame the
    // watcher gets is c3's message
    let mut c3 = client(&gw, "c3").await;
    subscribe(&mut c3, 1, "room:p", false).await;
    publish_frames(&mut c3, 2, "room:p", json!("marker"), false).await;
    let v = w.recv_json().await;
    assert_eq!(
        (v["type"].clone(), v["data"].clone()),
        (json!("message"), json!("marker")),
        "{v}"
    );
    c3.send_json(json!({"type":"unsubscribe","id":3,"channel":"room:p"}))
        .await;
    c3.recv_type("unsubscribed").await;
    // back within the limit: unsubscribe and disconnect give leaves
    c1.send_json(json!({"type":"unsubscribe","id":3,"channel":"room:p"}))
        .await;
    c1.recv_type("unsubscribed").await;
    let first = next_event(&mut w).await;
    // c3's leave (4 members counted with it) is not sent either
    assert_eq!(first, event("leave", "room:p", "c1", &node));
    drop(c2);
    assert_eq!(
        next_event(&mut w).await,
        event("leave", "room:p", "c2", &node)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_across_redis_nodes_and_a_killed_node() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis_broker(&redis)).await;
    presence_across(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_across_nats_nodes_and_a_killed_node() {
    let nats = NatsServer::start();
    let (a, b) = pair(&nats_broker(&nats)).await;
    presence_across(a, b).await;
}

async fn presence_across(a: Gateway, mut b: Gateway) {
    let ch = "room:lobby";
    let mut wa = client(&a, "watch-a").await;
    let mut wb = client(&b, "watch-b").await;
    subscribe(&mut wa, 1, ch, true).await;
    subscribe(&mut wb, 1, ch, true).await;
    // Each watcher learns the other's join (the first read after it began
    // watching may already have listed it: then there is no frame for it).
    // From here on every change is an event on both nodes.
    let mut cb = client(&b, "alice").await;
    subscribe(&mut cb, 1, ch, false).await;
    let want = event("join", ch, "alice", "node-b");
    assert_eq!(skip_watchers(&mut wa).await, want);
    assert_eq!(skip_watchers(&mut wb).await, want);
    let mut ca = client(&a, "bob").await;
    subscribe(&mut ca, 1, ch, false).await;
    let want = event("join", ch, "bob", "node-a");
    assert_eq!(skip_watchers(&mut wa).await, want);
    assert_eq!(skip_watchers(&mut wb).await, want);
    // unsubscribe on B, disconnect on A
    cb.send_json(json!({"type":"unsubscribe","id":2,"channel":ch}))
        .await;
    cb.recv_type("unsubscribed").await;
    let want = event("leave", ch, "alice", "node-b");
    assert_eq!(skip_watchers(&mut wa).await, want);
    assert_eq!(skip_watchers(&mut wb).await, want);
    drop(ca);
    let want = event("leave", ch, "bob", "node-a");
    assert_eq!(skip_watchers(&mut wa).await, want);
    assert_eq!(skip_watchers(&mut wb).await, want);
    // A client on B, then B is killed: A's watcher gets the leave once B's
    // presence entries expired (presence_ttl), never before B died.
    let mut carol = client(&b, "carol").await;
    subscribe(&mut carol, 1, ch, false).await;
    assert_eq!(
        skip_watchers(&mut wa).await,
        event("join", ch, "carol", "node-b")
    );
    b.signal(libc::SIGKILL);
    assert!(
        b.wait_exit(Duration::from_secs(10)).is_some(),
        "node-b exited"
    );
    let started = std::time::Instant::now();
    let mut left = std::collections::BTreeSet::new();
    while left.len() < 2 {
        let v = next_event_within(&mut wa, KILLED_LEAVE_WITHIN).await;
        assert_eq!(v["type"], "leave", "{v}");
        assert_eq!(v["node"], "node-b", "{v}");
        left.insert(v["client"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        vec!["carol".to_owned(), "watch-b".to_owned()],
        "both of node-b's clients left"
    );
    eprintln!("killed node's leaves after {:?}", started.elapsed());
    drop(carol);
    drop(wb);
}

/// The next presence event that is not about the two watchers themselves.
async fn skip_watchers(c: &mut Client) -> Value {
    loop {
        let v = next_event(c).await;
        if !v["client"]
            .as_str()
            .unwrap_or_default()
            .starts_with("watch-")
        {
            return v;
        }
    }
}

/// `presence_events_max` across nodes: over the bound (this node's
/// subscriptions plus the other node's members) nothing is sent, not even the
/// leaves of members it never announced; back within it, events resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_max_across_redis_nodes() {
    let redis = RedisServer::start();
    let broker = redis_broker(&redis);
    let a = Gateway::start(&broker_config("node-a", &broker, "presence_events_max = 2"));
    let b = Gateway::start(&broker_config("node-b", &broker, "presence_events_max = 2"));
    until("ready", Duration::from_secs(15), async || {
        ready(&a).await && ready(&b).await
    })
    .await;
    let ch = "room:big";
    let mut wa = client(&a, "watch-a").await;
    subscribe(&mut wa, 1, ch, true).await;
    let mut c1 = client(&b, "c1").await;
    subscribe(&mut c1, 1, ch, false).await;
    assert_eq!(next_event(&mut wa).await, event("join", ch, "c1", "node-b"));
    // a third member: over the bound of 2
    let mut c2 = client(&b, "c2").await;
    subscribe(&mut c2, 1, ch, false).await;
    // node-b wrote (and announced) c2 before it leaves
    let mut probe = client(&a, "probe").await;
    let mut n = 10;
    until("c2 in presence", Duration::from_secs(10), async || {
        n += 1;
        presence(&mut probe, n, ch)
            .await
            .iter()
            .any(|(c, _)| c == "c2")
    })
    .await;
    for c in [&mut c2, &mut c1] {
        c.send_json(json!({"type":"unsubscribe","id":9,"channel":ch}))
            .await;
        c.recv_type("unsubscribed").await;
    }
    // Back within the bound once a presence read saw it; until then a new
    // member goes unannounced (learned silently: no burst). So c4 comes and
    // goes until its join shows; each time it waits until the cluster's
    // presence no longer lists it, so node-b writes (and announces) the leave
    // before the next join instead of folding the pair into nothing.
    // Whatever arrives is about c4: never c2's join or leave, nor c1's leave.
    let mut c4 = client(&b, "c4").await;
    let deadline = std::time::Instant::now() + KILLED_LEAVE_WITHIN;
    loop {
        assert!(std::time::Instant::now() < deadline, "no join of c4");
        subscribe(&mut c4, 1, ch, false).await;
        let got = tokio::time::timeout(Duration::from_millis(1500), next_event(&mut wa)).await;
        if let Ok(v) = got {
            assert_eq!(v["client"], "c4", "{v}");
            if v["type"] == "join" {
                break;
            }
        }
        c4.send_json(json!({"type":"unsubscribe","id":2,"channel":ch}))
            .await;
        c4.recv_type("unsubscribed").await;
        until(
            "c4 gone from presence",
            Duration::from_secs(10),
            async || {
                n += 1;
                !presence(&mut probe, n, ch)
                    .await
                    .iter()
                    .any(|(c, _)| c == "c4")
            },
        )
        .await;
    }
}
