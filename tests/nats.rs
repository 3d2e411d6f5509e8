//! Multi-node behaviour over a real `nats-server -js`: two `switchyard`
//! processes on loopback sharing NATS (`broker.kind = "nats"`). The scenarios
//! mirror `tests/redis.rs` and share its helpers (`harness/cluster.rs`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::Gateway;
use switchyard_tests::cluster::{
    Editor, assert_within_the_shared_budget, client, document_state, messages, presence, publish,
    publish_until_accepted, ready, tally, until,
};
use switchyard_tests::nats::NatsServer;

const KEY: &str = "k";

fn config(node: &str, nats: &NatsServer, presence_ttl: &str) -> String {
    format!(
        r#"
[server]
node_id = "{node}"
drain_timeout = "2s"

[broker]
kind = "nats"
nats_urls = ["{}"]
presence_ttl = "{presence_ttl}"

[tenants.default]
api_keys = ["{KEY}"]
documents = ["doc:*"]
history_size = 100
history_ttl = "5m"
"#,
        nats.url()
    )
}

fn start(node: &str, nats: &NatsServer) -> Gateway {
    Gateway::start(&config(node, nats, "30s"))
}

async fn pair(nats: &NatsServer) -> (Gateway, Gateway) {
    let (a, b) = (start("node-a", nats), start("node-b", nats));
    until("ready", Duration::from_secs(15), async || {
        ready(&a).await && ready(&b).await
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_publish_reaches_everyone_with_one_seq_sequence() {
    let nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    let mut subs = Vec::new();
    for (i, gw) in [&a, &b].into_iter().enumerate() {
        let mut c = client(gw, &format!("sub-{i}")).await;
        let s = c.subscribe(1, "room:x").await;
        assert_eq!(s["seq"], 0, "{s}");
        subs.push(c);
    }
    // Both nodes publish at once (over WebSocket and HTTP): one gapless
    // sequence, the same order everywhere.
    let mut pa = client(&a, "pub-a").await;
    let mut pb = client(&b, "pub-b").await;
    let n = 20u64;
    let ws = async {
        let mut acks = Vec::new();
        for i in 0..n {
            let (x, y) = tokio::join!(
                publish(&mut pa, 10 + i, "room:x", json!({"from":"a","i":i})),
                publish(&mut pb, 10 + i, "room:x", json!({"from":"b","i":i})),
            );
            acks.push(x);
            acks.push(y);
        }
        acks
    };
    let http = async {
        let mut seqs = Vec::new();
        for i in 0..n {
            let body = json!({"channel":"room:x","data":{"from":"http","i":i}}).to_string();
            let (st, reply) = b.post_json("/api/publish", Some(KEY), &body).await;
            assert_eq!(st, 200, "{reply}");
            let v: Value = serde_json::from_str(&reply).expect("json");
            seqs.push(v["seq"].as_u64().expect("seq"));
        }
        seqs
    };
    let (acks, http_seqs) = tokio::join!(ws, http);
    let mut acked: Vec<u64> = acks
        .iter()
        .map(|v| {
            assert_eq!(v["type"], "ack", "{v}");
            v["seq"].as_u64().expect("seq")
        })
        .chain(http_seqs)
        .collect();
    acked.sort_unstable();
    let total = 3 * n;
    assert_eq!(acked, (1..=total).collect::<Vec<_>>(), "every seq once");
    let mut seen = Vec::new();
    for c in &mut subs {
        let m = messages(c, total as usize).await;
        assert!(m.windows(2).all(|w| w[0]["epoch"] == w[1]["epoch"]));
        seen.push(
            m.iter()
                .map(|v| (v["seq"].as_u64().expect("seq"), v["data"].clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        seen[0].iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert_eq!(
        seen[0], seen[1],
        "node b sees the same messages in the same order"
    );
    // A repeated msgId is acknowledged again with its seq, not delivered twice,
    // whichever node it reaches.
    let first = json!({"type":"publish","id":900,"channel":"room:x","data":"once","msgId":"m-1"});
    pa.send_json(first).await;
    let ack = pa.recv_type("ack").await;
    let again = json!({"type":"publish","id":901,"channel":"room:x","data":"once","msgId":"m-1"});
    pb.send_json(again).await;
    let dup = pb.recv_type("ack").await;
    assert_eq!(ack["seq"], total + 1);
    assert_eq!(dup["seq"], ack["seq"], "{dup}");
    let (st, reply) = b
        .post_json(
            "/api/publish",
            Some(KEY),
            r#"{"channel":"room:x","data":"next"}"#,
        )
        .await;
    assert_eq!(st, 200, "{reply}");
    for c in &mut subs {
        let m = messages(c, 2).await;
        assert_eq!(
            (m[0]["data"].clone(), m[1]["data"].clone()),
            (json!("once"), json!("next"))
        );
        assert_eq!(m[1]["seq"], total + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_served_by_another_node() {
    let nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    let mut c = client(&a, "reader").await;
    c.subscribe(1, "room:r").await;
    let mut p = client(&b, "writer").await;
    for i in 1..=3u64 {
        publish(&mut p, i, "room:r", json!(i)).await;
    }
    let got = messages(&mut c, 3).await;
    let epoch = got[2]["epoch"].clone();
    drop(c);
    for i in 4..=6u64 {
        publish(&mut p, i, "room:r", json!(i)).await;
    }
    let mut c = client(&b, "reader").await;
    c.send_json(
        json!({"type":"subscribe","id":2,"channel":"room:r","since":{"epoch":epoch,"seq":3}}),
    )
    .await;
    let s = c.recv_type("subscribed").await;
    assert_eq!(s["recovered"], true, "{s}");
    assert_eq!(s["seq"], 6);
    let replay = messages(&mut c, 3).await;
    let seqs: Vec<u64> = replay
        .iter()
        .map(|v| v["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![4, 5, 6]);
    assert_eq!(replay[0]["data"], 4);
    publish(&mut p, 7, "room:r", json!(7)).await;
    assert_eq!(
        messages(&mut c, 1).await[0]["seq"],
        7,
        "live follows with no gap"
    );
    // A stale epoch, or a position beyond the history, is not recovered.
    let mut d = client(&a, "stale").await;
    d.send_json(
        json!({"type":"subscribe","id":3,"channel":"room:r","since":{"epoch":"nope","seq":3}}),
    )
    .await;
    let s = d.recv_type("subscribed").await;
    assert_eq!(
        (s["recovered"].clone(), s["seq"].clone()),
        (json!(false), json!(7))
    );
    assert_eq!(s["epoch"], epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_send_reaches_a_client_on_another_node() {
    let nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    let mut alice = client(&b, "alice").await;
    let mut status = 0;
    until(
        "alice in the directory",
        Duration::from_secs(5),
        async || {
            status = a
                .post_json(
                    "/api/send",
                    Some(KEY),
                    r#"{"client":"alice","data":{"hello":1}}"#,
                )
                .await
                .0;
            status != 404
        },
    )
    .await;
    assert_eq!(status, 202);
    let d = alice.recv_type("direct").await;
    assert_eq!(d["data"], json!({"hello":1}));
    let (st, _) = a
        .post_json("/api/send", Some(KEY), r#"{"client":"nobody","data":1}"#)
        .await;
    assert_eq!(st, 404);
    let (st, _) = a
        .post_json("/api/send", Some("wrong"), r#"{"client":"alice","data":1}"#)
        .await;
    assert_eq!(st, 401);
    // acknowledged after the write: not delivered again
    assert!(
        tokio::time::timeout(Duration::from_millis(6500), alice.recv_type("direct"))
            .await
            .is_err(),
        "delivered once"
    );
    drop(alice);
    until("alice gone", Duration::from_secs(5), async || {
        a.post_json("/api/send", Some(KEY), r#"{"client":"alice","data":2}"#)
            .await
            .0
            == 404
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_expires_and_its_directed_messages_wait_for_it() {
    let nats = NatsServer::start();
    let ttl = Duration::from_secs(2);
    let a = Gateway::start(&config("node-a", &nats, "2s"));
    let cfg_b = config("node-b", &nats, "2s");
    let mut b = Gateway::start(&cfg_b);
    until("ready", Duration::from_secs(15), async || {
        ready(&a).await && ready(&b).await
    })
    .await;
    let mut watcher = client(&a, "watcher").await;
    watcher.subscribe(1, "room:p").await;
    let mut bob = client(&b, "bob").await;
    bob.subscribe(1, "room:p").await;
    until(
        "bob present from node a",
        Duration::from_secs(5),
        async || {
            presence(&mut watcher, 2, "room:p")
                .await
                .contains(&("bob".into(), "node-b".into()))
        },
    )
    .await;
    let list = presence(&mut watcher, 3, "room:p").await;
    assert!(
        list.contains(&("watcher".into(), "node-a".into())),
        "{list:?}"
    );
    // joins and leaves on another node show up
    let mut carol = client(&b, "carol").await;
    carol.subscribe(1, "room:p").await;
    until("carol present", Duration::from_secs(5), async || {
        presence(&mut watcher, 5, "room:p")
            .await
            .contains(&("carol".into(), "node-b".into()))
    })
    .await;
    carol
        .send_json(json!({"type":"unsubscribe","id":2,"channel":"room:p"}))
        .await;
    carol.recv_type("unsubscribed").await;
    until("carol gone", Duration::from_secs(5), async || {
        !presence(&mut watcher, 6, "room:p")
            .await
            .iter()
            .any(|(c, _)| c == "carol")
    })
    .await;
    drop(carol);
    until("bob in the directory", Duration::from_secs(5), async || {
        a.post_json("/api/send", Some(KEY), r#"{"client":"bob","data":{"n":0}}"#)
            .await
            .0
            == 202
    })
    .await;
    assert_eq!(bob.recv_type("direct").await["data"]["n"], 0);

    b.kill(); // SIGKILL: no withdrawal
    drop(bob);
    // node b is dead but still in the directory (within the TTL): queued for it
    let (st, body) = a
        .post_json("/api/send", Some(KEY), r#"{"client":"bob","data":{"n":1}}"#)
        .await;
    assert_eq!(st, 202, "{body}");
    let killed = Instant::now();
    until(
        "bob's presence expired",
        ttl + Duration::from_secs(3),
        async || {
            !presence(&mut watcher, 4, "room:p")
                .await
                .iter()
                .any(|(c, _)| c == "bob")
        },
    )
    .await;
    assert!(
        killed.elapsed() >= ttl - Duration::from_millis(800),
        "expired by TTL, not earlier"
    );
    // node b restarts with the same node id; bob reconnects and gets the message
    let b2 = Gateway::start(&cfg_b);
    until("b ready", Duration::from_secs(15), async || {
        ready(&b2).await
    })
    .await;
    let mut bob = client(&b2, "bob").await;
    let d = bob.recv_type("direct").await;
    assert_eq!(d["data"]["n"], 1, "kept in node b's inbox");
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), bob.recv_type("direct"))
            .await
            .is_err(),
        "delivered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_survive_a_nats_restart() {
    let mut nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    let mut sub = client(&a, "sub").await;
    sub.subscribe(1, "room:z").await;
    let mut p = client(&b, "pub").await;
    for i in 1..=3u64 {
        publish(&mut p, i, "room:z", json!(i)).await;
    }
    let got = messages(&mut sub, 3).await;
    let epoch = got[2]["epoch"].as_str().expect("epoch").to_owned();

    // HTTP publishes keep coming while NATS goes away and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let accepted_now = || accepted.load(std::sync::atomic::Ordering::Relaxed);
    let traffic = {
        let (addr, stop, accepted) = (a.addr, stop.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let auth = format!("Bearer {KEY}");
                let (st, _) = switchyard_tests::http(
                    addr,
                    "POST",
                    "/api/publish",
                    &[
                        ("content-type", "application/json"),
                        ("authorization", &auth),
                    ],
                    Some(r#"{"channel":"room:traffic","data":1}"#),
                )
                .await;
                *statuses.entry(st).or_default() += 1;
                if st == 200 {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    until("traffic accepted", Duration::from_secs(10), async || {
        accepted_now() >= 5
    })
    .await;
    nats.kill();
    until("a not ready", Duration::from_secs(10), async || {
        !ready(&a).await
    })
    .await;
    let e = publish(&mut p, 4, "room:z", json!(4)).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "unavailable", "{e}");
    let (st, body) = b
        .post_json(
            "/api/publish",
            Some(KEY),
            r#"{"channel":"room:z","data":1}"#,
        )
        .await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    let (st, _) = b
        .post_json("/api/send", Some(KEY), r#"{"client":"sub","data":1}"#)
        .await;
    assert_eq!(st, 503, "directed send is unavailable too");
    let mut late = client(&b, "late").await;
    late.send_json(json!({"type":"subscribe","id":1,"channel":"room:q"}))
        .await;
    assert_eq!(late.recv_type("error").await["code"], "unavailable");

    nats.restart(); // same store: JetStream keeps the history
    until("a ready", Duration::from_secs(15), async || ready(&a).await).await;
    until("b ready", Duration::from_secs(15), async || ready(&b).await).await;
    let before = accepted_now();
    until(
        "traffic accepted again",
        Duration::from_secs(10),
        async || accepted_now() >= before + 5,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = traffic.await.expect("traffic task");
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "only accepted or unavailable: {statuses:?}"
    );
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&503),
        "{statuses:?}"
    );
    for gw in [&a, &b] {
        assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
    }
    let (_, metrics) = a.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_broker_reconnects_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The subscription on node a is back; the history survived: same epoch,
    // the seq goes on.
    let seq = publish_until_accepted(&b, KEY, "room:z", json!("after")).await;
    assert_eq!(seq, 4);
    let m = messages(&mut sub, 1).await;
    assert_eq!(
        (m[0]["data"].clone(), m[0]["seq"].clone()),
        (json!("after"), json!(4))
    );
    assert_eq!(m[0]["epoch"], epoch.as_str());
    let mut late = client(&b, "late2").await;
    late.send_json(
        json!({"type":"subscribe","id":9,"channel":"room:z","since":{"epoch":epoch,"seq":1}}),
    )
    .await;
    let s = late.recv_type("subscribed").await;
    assert_eq!(s["recovered"], true, "{s}");
    let replay = messages(&mut late, 3).await;
    assert_eq!(
        replay
            .iter()
            .map(|v| v["seq"].as_u64().expect("seq"))
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
}

/// Messages published while a subscriber's node was cut off from NATS reach
/// it after the reconnect, in order (replayed from the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_during_a_reconnect_are_replayed() {
    let mut nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    let mut sub = client(&a, "sub").await;
    sub.subscribe(1, "room:c").await;
    assert_eq!(publish_until_accepted(&b, KEY, "room:c", json!(1)).await, 1);
    assert_eq!(messages(&mut sub, 1).await[0]["seq"], 1);
    nats.kill();
    nats.restart();
    // Publish at once through node b: node a may not be back yet.
    for i in 2..=5 {
        assert_eq!(publish_until_accepted(&b, KEY, "room:c", json!(i)).await, i);
    }
    let got = messages(&mut sub, 4).await;
    assert_eq!(
        got.iter()
            .map(|m| (m["seq"].as_u64().expect("seq"), m["data"].clone()))
            .collect::<Vec<_>>(),
        (2..=5u64).map(|i| (i, json!(i))).collect::<Vec<_>>()
    );
}

/// NATS lost its data (an empty store): the channel starts a new epoch, and
/// a subscriber that stayed connected gets every acknowledged message of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_data_loss_starts_a_new_epoch_that_reaches_a_connected_subscriber() {
    let mut nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    let mut sub = client(&b, "sub").await;
    sub.subscribe(1, "x:1").await;
    assert_eq!(
        publish_until_accepted(&a, KEY, "x:1", json!("before")).await,
        1
    );
    let old_epoch = messages(&mut sub, 1).await[0]["epoch"].clone();
    nats.restart_empty();
    let mut acked = Vec::new();
    for i in 1..=4 {
        let seq = publish_until_accepted(&a, KEY, "x:1", json!(format!("after-{i}"))).await;
        acked.push((seq, json!(format!("after-{i}"))));
    }
    assert_eq!(acked.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let got = messages(&mut sub, 4).await;
    let pairs: Vec<(u64, Value)> = got
        .iter()
        .map(|m| (m["seq"].as_u64().expect("seq"), m["data"].clone()))
        .collect();
    assert_eq!(pairs, acked, "every acknowledged message, in order");
    assert_ne!(
        got[0]["epoch"], old_epoch,
        "the epoch tells history was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_withdraws_presence_and_directory_at_once() {
    let nats = NatsServer::start();
    // A long TTL: only the drain can explain a quick disappearance.
    let a = Gateway::start(&config("node-a", &nats, "60s"));
    let mut b = Gateway::start(&config("node-b", &nats, "60s"));
    until("ready", Duration::from_secs(15), async || {
        ready(&a).await && ready(&b).await
    })
    .await;
    let mut watcher = client(&a, "watcher").await;
    watcher.subscribe(1, "room:g").await;
    let mut dave = client(&b, "dave").await;
    dave.subscribe(1, "room:g").await;
    until("dave present", Duration::from_secs(5), async || {
        presence(&mut watcher, 2, "room:g")
            .await
            .contains(&("dave".into(), "node-b".into()))
    })
    .await;
    b.signal(libc::SIGTERM);
    let (frames, code) = dave.drain_until_close().await;
    assert!(
        frames.iter().any(|f| f["type"] == "SERVER_SHUTDOWN"),
        "{frames:?}"
    );
    assert_eq!(code, Some(1001));
    assert!(
        b.wait_exit(Duration::from_secs(10)).is_some(),
        "node b exits"
    );
    until("dave withdrawn", Duration::from_secs(5), async || {
        !presence(&mut watcher, 3, "room:g")
            .await
            .iter()
            .any(|(c, _)| c == "dave")
    })
    .await;
    let (st, _) = a
        .post_json("/api/send", Some(KEY), r#"{"client":"dave","data":1}"#)
        .await;
    assert_eq!(st, 404);
}

/// `channel_limits` on NATS: one budget for all publishers of a channel
/// across nodes (a KV token bucket updated by compare-and-set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_limit_holds_cluster_wide() {
    let nats = NatsServer::start();
    let limited = |node: &str| {
        format!(
            "{}\n[[tenants.default.channel_limits]]\nmatch = \"lim:*\"\nrate = 20\nburst = 20\n\
             [limits]\npublish_rate = 100000\npublish_burst = 100000\n",
            config(node, &nats, "30s")
        )
    };
    let a = Gateway::start(&limited("node-a"));
    let b = Gateway::start(&limited("node-b"));
    for gw in [&a, &b] {
        until("ready", Duration::from_secs(15), async || ready(gw).await).await;
    }
    let mut pa = client(&a, "pa").await;
    let mut pb = client(&b, "pb").await;
    let start = Instant::now();
    let (mut ok, mut limited_replies) = (0u32, 0u32);
    for i in 0..60u64 {
        for p in [&mut pa, &mut pb] {
            let r = publish(p, 100 + i, "lim:1", json!(i)).await;
            tally(&r, &mut ok, &mut limited_replies);
        }
    }
    assert_within_the_shared_budget(ok, limited_replies, start);
    let r = publish(&mut pa, 999, "free:1", json!(1)).await;
    assert_eq!(r["type"], "ack", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_editors_on_two_nodes_converge_on_one_version_sequence() {
    let nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    const EDITORS: usize = 4;
    const EACH: usize = 20;
    let mut eds = Vec::new();
    for i in 0..EDITORS {
        let gw = if i % 2 == 0 { &a } else { &b };
        eds.push(Editor::open(gw, &format!("ed-{i}"), "doc:shared").await);
    }
    for j in 0..EACH {
        for (i, e) in eds.iter_mut().enumerate() {
            let delta = json!({ format!("k{}", j % 4): format!("{i}-{j}"), format!("own{i}"): j });
            e.c.send_patch((j + 1) as u64, "doc:shared", &delta, &format!("ed{i}-{j}"))
                .await;
        }
    }
    let total = (EDITORS * EACH) as i64;
    for e in &mut eds {
        while e.acked < EACH || e.version < total {
            e.step().await;
        }
        assert_eq!(e.version, total, "every patch made a version");
    }
    let first = Value::Object(eds[0].state.clone());
    for e in &eds {
        assert_eq!(
            Value::Object(e.state.clone()),
            first,
            "every client converged"
        );
    }
    for gw in [&a, &b] {
        let fresh = Editor::open(gw, "late", "doc:shared").await;
        assert_eq!(
            Value::Object(fresh.state),
            first,
            "a fresh snapshot on each node"
        );
        assert_eq!(fresh.version, total);
        let v = document_state(gw, KEY, "doc:shared").await;
        assert_eq!(
            (v["version"].clone(), v["state"].clone()),
            (json!(total), first.clone())
        );
    }
    // A restarted gateway (a new process) finds state and version in JetStream.
    let mut a = a;
    a.kill();
    let a2 = start("node-a", &nats);
    until("a2 ready", Duration::from_secs(15), async || {
        ready(&a2).await
    })
    .await;
    let v = document_state(&a2, KEY, "doc:shared").await;
    assert_eq!(
        (v["version"].clone(), v["state"].clone()),
        (json!(total), first)
    );
    assert_eq!(
        v["epoch"],
        json!(eds[0].epoch),
        "same epoch: nothing was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_outlives_nats_data_loss_reseeded_from_a_live_replica() {
    let mut nats = NatsServer::start();
    let (a, b) = pair(&nats).await;
    let mut sub = Editor::open(&b, "sub", "doc:r").await;
    for i in 0..3 {
        let (st, body) = a
            .post_json(
                "/api/documents/doc:r",
                Some(KEY),
                &json!({"delta": {format!("k{i}"): i}}).to_string(),
            )
            .await;
        assert_eq!(st, 200, "{body}");
    }
    while sub.version < 3 {
        sub.step().await;
    }
    let before = Value::Object(sub.state.clone());
    let old_epoch = sub.epoch.clone();
    nats.restart_empty();
    for gw in [&a, &b] {
        until("ready again", Duration::from_secs(20), async || {
            ready(gw).await
        })
        .await;
    }
    // The subscriber is told: a SNAPSHOT in a new epoch, the same state and version.
    while sub.epoch == old_epoch {
        sub.step().await;
    }
    assert_eq!(Value::Object(sub.state.clone()), before);
    assert_eq!(sub.version, 3);
    let v = document_state(&a, KEY, "doc:r").await;
    assert_eq!(
        (v["version"].clone(), v["state"].clone()),
        (json!(3), before)
    );
    let (st, body) = a
        .post_json(
            "/api/documents/doc:r",
            Some(KEY),
            r#"{"delta":{"after":true}}"#,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"version\":4"), "{body}");
    while sub.version < 4 {
        sub.step().await;
    }
    assert_eq!(sub.state["after"], json!(true));
}
