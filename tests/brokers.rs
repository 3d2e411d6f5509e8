//! The shared broker suite: every scenario is written once as an async fn
//! taking a [`Broker`] (the broker process and the `[broker]` config of
//! `switchyard` processes on loopback), and instantiated per broker by
//! [`on!`] as its own test, `memory::…`, `redis::…`, `nats::…`. Multi-node
//! scenarios run on Redis and NATS; those that make sense on one node also
//! run on memory (every node index then names the one node). What only one
//! broker has lives in `redis_specific` and `nats_specific`.
//!
//! `cargo test -p switchyard-tests --test brokers -- --test-threads 2`
//! (filter by broker: `… --test brokers redis`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::Gateway;
use switchyard_tests::cluster::broker::{Broker, BrokerKind, KEY};
use switchyard_tests::cluster::{
    Editor, assert_within_the_shared_budget, client, document_state, messages, presence, publish,
    publish_until_accepted, ready, tally, until,
};

/// One `#[tokio::test]` per scenario, each starting its own broker of `$kind`.
macro_rules! on {
    ($kind:ident: $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario(Broker::start(BrokerKind::$kind)).await;
            }
        )+
    };
}

mod memory {
    use super::*;
    on!(Memory:
        cross_node_publish_reaches_everyone_with_the_same_seq,
        concurrent_publishes_make_one_gapless_sequence_and_msg_ids_dedupe,
        recovery_is_served_by_another_node,
        directed_send_reaches_a_client_on_another_node,
        presence_follows_joins_and_leaves,
        concurrent_editors_converge_on_one_version_sequence,
        a_channel_limit_holds_cluster_wide,
        a_channel_limit_holds_cluster_wide_for_document_patches,
    );
}

/// Every scenario of a multi-node broker (Redis, NATS), as tests on `$kind`.
macro_rules! multi_node {
    ($kind:ident) => {
        on!($kind:
            cross_node_publish_reaches_everyone_with_the_same_seq,
            concurrent_publishes_make_one_gapless_sequence_and_msg_ids_dedupe,
            recovery_is_served_by_another_node,
            directed_send_reaches_a_client_on_another_node,
            a_killed_nodes_presence_expires_and_its_directed_messages_wait_for_it,
            graceful_stop_withdraws_presence_and_directory_at_once,
            gateways_survive_a_broker_restart,
            data_loss_new_epoch_reaches_a_subscriber_on_another_node,
            data_loss_new_epoch_reaches_a_subscriber_on_the_same_node,
            concurrent_editors_converge_on_one_version_sequence,
            a_document_outlives_broker_data_loss_reseeded_from_a_live_replica,
            a_channel_limit_holds_cluster_wide,
            a_channel_limit_holds_cluster_wide_for_document_patches,
        );
    };
}

mod redis {
    use super::*;
    multi_node!(Redis);
}

mod nats {
    use super::*;
    multi_node!(Nats);
}

/// Three nodes (memory: one) publish over WebSocket and HTTP, one after the
/// other: every subscriber sees the same seqs in the same order.
async fn cross_node_publish_reaches_everyone_with_the_same_seq(broker: Broker) {
    let cl = broker.cluster(3).await;
    let mut subs = Vec::new();
    for i in 0..3 {
        let mut c = client(cl.node(i), &format!("sub-{i}")).await;
        let s = c.subscribe(1, "room:x").await;
        assert_eq!(s["seq"], 0);
        assert_eq!(c.welcome["node"], cl.name(i));
        subs.push(c);
    }
    // Publishes from two nodes over WebSocket and one over HTTP.
    let mut pa = client(cl.node(0), "pub-a").await;
    let mut pb = client(cl.node(1), "pub-b").await;
    for i in 0..3u64 {
        let ack = publish(&mut pa, 10 + i, "room:x", json!({"from":"a","i":i})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let ack = publish(&mut pb, 20, "room:x", json!({"from":"b"})).await;
    assert_eq!(ack["seq"], 4);
    let (st, body) = cl
        .node(2)
        .post_json(
            "/api/publish",
            Some(KEY),
            r#"{"channel":"room:x","data":{"from":"http"}}"#,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let mut seen: Vec<Vec<(u64, Value)>> = Vec::new();
    for c in &mut subs {
        let m = messages(c, 5).await;
        seen.push(
            m.iter()
                .map(|v| (v["seq"].as_u64().expect("seq"), v["data"].clone()))
                .collect(),
        );
        let epochs: Vec<&Value> = m.iter().map(|v| &v["epoch"]).collect();
        assert!(epochs.windows(2).all(|w| w[0] == w[1]));
    }
    assert_eq!(
        seen[0].iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(seen[0], seen[1], "node b sees the same order");
    assert_eq!(seen[0], seen[2], "node c sees the same order");
    assert_eq!(seen[0][4].1["from"], "http");
}

/// Two nodes publish at once (over WebSocket and HTTP): one gapless
/// sequence, the same order everywhere; a repeated `msgId` is acknowledged
/// again with its seq, whichever node it reaches, and delivered once.
async fn concurrent_publishes_make_one_gapless_sequence_and_msg_ids_dedupe(broker: Broker) {
    let cl = broker.cluster(2).await;
    let (a, b) = (cl.node(0), cl.node(1));
    let mut subs = Vec::new();
    for (i, gw) in [a, b].into_iter().enumerate() {
        let mut c = client(gw, &format!("sub-{i}")).await;
        let s = c.subscribe(1, "room:x").await;
        assert_eq!(s["seq"], 0, "{s}");
        subs.push(c);
    }
    let mut pa = client(a, "pub-a").await;
    let mut pb = client(b, "pub-b").await;
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

/// A reader that left node a resumes on node b from where it was: the
/// missed messages, then live ones with no gap; a stale epoch is not
/// recovered.
async fn recovery_is_served_by_another_node(broker: Broker) {
    let cl = broker.cluster(2).await;
    let (a, b) = (cl.node(0), cl.node(1));
    let mut c = client(a, "reader").await;
    c.subscribe(1, "room:r").await;
    let mut p = client(b, "writer").await;
    for i in 1..=3u64 {
        publish(&mut p, i, "room:r", json!(i)).await;
    }
    let got = messages(&mut c, 3).await;
    let epoch = got[2]["epoch"].clone();
    drop(c);
    for i in 4..=6u64 {
        publish(&mut p, i, "room:r", json!(i)).await;
    }
    let mut c = client(b, "reader").await;
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
    // A stale epoch is not recovered.
    let mut d = client(a, "stale").await;
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

/// `POST /api/send` on node a reaches a client on node b, once; an unknown
/// client is 404, a wrong key 401; a client that left is 404.
async fn directed_send_reaches_a_client_on_another_node(broker: Broker) {
    let cl = broker.cluster(2).await;
    let (a, b) = (cl.node(0), cl.node(1));
    let mut alice = client(b, "alice").await;
    // The directory is written right after connect (debounced); poll for it.
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
    if broker.kind == BrokerKind::Redis {
        // acknowledged (after the write) and removed from node b's inbox
        let redis = broker.redis();
        until("inbox drained", Duration::from_secs(5), async || {
            let pending = redis.cmd(&["XPENDING", "sy:node:{node-b}:inbox", "sy"]);
            redis.cmd(&["XLEN", "sy:node:{node-b}:inbox"]).int() == Some(0)
                && pending.items().first().and_then(|v| v.int()) == Some(0)
        })
        .await;
    }
    let (st, _) = a
        .post_json("/api/send", Some(KEY), r#"{"client":"nobody","data":1}"#)
        .await;
    assert_eq!(st, 404);
    let (st, _) = a
        .post_json("/api/send", Some("wrong"), r#"{"client":"alice","data":1}"#)
        .await;
    assert_eq!(st, 401);
    if broker.kind == BrokerKind::Nats {
        // acknowledged after the write: not delivered again (past the
        // consumer's redelivery wait)
        assert!(
            tokio::time::timeout(Duration::from_millis(6500), alice.recv_type("direct"))
                .await
                .is_err(),
            "delivered once"
        );
    }
    // after alice leaves, nobody holds her
    drop(alice);
    until("alice gone", Duration::from_secs(5), async || {
        a.post_json("/api/send", Some(KEY), r#"{"client":"alice","data":2}"#)
            .await
            .0
            == 404
    })
    .await;
}

/// Joins and leaves on node b show up in node a's presence list (on
/// memory, one node's).
async fn joins_and_leaves_show_up(cl: &switchyard_tests::cluster::broker::Cluster) {
    let (a, b) = (cl.node(0), cl.node(1));
    let (na, nb) = (cl.name(0).to_owned(), cl.name(1).to_owned());
    let mut watcher = client(a, "observer").await;
    watcher.subscribe(1, "room:j").await;
    let mut carol = client(b, "carol").await;
    carol.subscribe(1, "room:j").await;
    until("carol present", Duration::from_secs(5), async || {
        presence(&mut watcher, 5, "room:j")
            .await
            .contains(&("carol".into(), nb.clone()))
    })
    .await;
    let list = presence(&mut watcher, 3, "room:j").await;
    assert!(list.contains(&("observer".into(), na)), "{list:?}");
    carol
        .send_json(json!({"type":"unsubscribe","id":2,"channel":"room:j"}))
        .await;
    carol.recv_type("unsubscribed").await;
    until("carol gone", Duration::from_secs(5), async || {
        !presence(&mut watcher, 6, "room:j")
            .await
            .iter()
            .any(|(c, _)| c == "carol")
    })
    .await;
}

/// Presence lists members, joins and leaves.
async fn presence_follows_joins_and_leaves(broker: Broker) {
    let cl = broker.cluster(2).await;
    joins_and_leaves_show_up(&cl).await;
}

/// A node killed with SIGKILL withdraws nothing: its clients' presence
/// expires by the TTL (not earlier), and a directed message sent meanwhile
/// waits in its inbox for the restarted node, delivered once.
async fn a_killed_nodes_presence_expires_and_its_directed_messages_wait_for_it(broker: Broker) {
    let ttl = Duration::from_secs(2);
    let mut cl = broker.cluster_with(2, "2s", "").await;
    joins_and_leaves_show_up(&cl).await;
    let (a, b) = cl.pair_mut();
    let mut watcher = client(a, "watcher").await;
    watcher.subscribe(1, "room:p").await;
    let mut bob = client(b, "bob").await;
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
    until("bob in the directory", Duration::from_secs(5), async || {
        a.post_json("/api/send", Some(KEY), r#"{"client":"bob","data":{"n":0}}"#)
            .await
            .0
            == 202
    })
    .await;
    assert_eq!(bob.recv_type("direct").await["data"]["n"], 0);
    if broker.kind == BrokerKind::Redis {
        // acknowledged once written (a kill before the XACK would deliver it again: at-least-once)
        let redis = broker.redis();
        until("n:0 acknowledged", Duration::from_secs(5), async || {
            let pending = redis.cmd(&["XPENDING", "sy:node:{node-b}:inbox", "sy"]);
            pending.items().first().and_then(|v| v.int()) == Some(0)
        })
        .await;
    }

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
    let b2 = Gateway::start(&broker.config("node-b", "2s"));
    until("b ready", Duration::from_secs(15), async || {
        ready(&b2).await
    })
    .await;
    let mut bob = client(&b2, "bob").await;
    let d = bob.recv_type("direct").await;
    assert_eq!(d["data"]["n"], 1, "re-claimed from node b's inbox");
    // acknowledged after the write: not delivered again
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), bob.recv_type("direct"))
            .await
            .is_err(),
        "delivered once"
    );
}

/// SIGTERM on node b: its client is told and closed with 1001, and its
/// presence and directory entries go at once (a 60 s TTL could not explain it).
async fn graceful_stop_withdraws_presence_and_directory_at_once(broker: Broker) {
    let mut cl = broker.cluster_with(2, "60s", "").await;
    let (a, b) = cl.pair_mut();
    let mut watcher = client(a, "watcher").await;
    watcher.subscribe(1, "room:g").await;
    let mut dave = client(b, "dave").await;
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
    if broker.kind == BrokerKind::Redis {
        assert_eq!(
            broker
                .redis()
                .cmd(&["EXISTS", "sy:dir:{default:dave}"])
                .int(),
            Some(0)
        );
    }
}

/// The broker process is killed and started again while HTTP publishes keep
/// coming: only 200 or 503 (`unavailable`, `/readyz` 503 meanwhile), no
/// panic, a reconnect counted, the subscription restored. A broker that keeps
/// its data (NATS) goes on in the same epoch; one that lost it (Redis) starts
/// a new epoch and tells a resuming client.
async fn gateways_survive_a_broker_restart(mut broker: Broker) {
    let cl = broker.cluster(2).await;
    let (a, b) = (cl.node(0), cl.node(1));
    let mut sub = client(a, "sub").await;
    sub.subscribe(1, "room:z").await;
    let mut p = client(b, "pub").await;
    for i in 1..=3u64 {
        publish(&mut p, i, "room:z", json!(i)).await;
    }
    let got = messages(&mut sub, 3).await;
    let old_epoch = got[2]["epoch"].as_str().expect("epoch").to_owned();

    // HTTP publishes keep coming while the broker goes away and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Publishes accepted and refused so far: the test waits on them, never
    // on the clock.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let accepted_now = || accepted.load(std::sync::atomic::Ordering::Relaxed);
    let refused_now = || refused.load(std::sync::atomic::Ordering::Relaxed);
    let traffic = {
        let (addr, stop) = (a.addr, stop.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
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
                let counter = if st == 200 { &accepted } else { &refused };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    until("traffic accepted", Duration::from_secs(10), async || {
        accepted_now() >= 5
    })
    .await;
    broker.kill();
    until("a not ready", Duration::from_secs(10), async || {
        !ready(a).await
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
    let mut late = client(b, "late").await;
    late.send_json(json!({"type":"subscribe","id":1,"channel":"room:q"}))
        .await;
    assert_eq!(late.recv_type("error").await["code"], "unavailable");
    // The traffic on node a is refused too (a publish in flight when the
    // broker went may take its call timeout to fail).
    until("traffic refused", Duration::from_secs(10), async || {
        refused_now() >= 1
    })
    .await;

    broker.restart();
    until("a ready", Duration::from_secs(15), async || ready(a).await).await;
    until("b ready", Duration::from_secs(15), async || ready(b).await).await;
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
    for gw in [a, b] {
        assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
    }
    let (_, metrics) = a.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_broker_reconnects_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    if broker.keeps_data_across_restart() {
        // The subscription on node a is back; the history survived: same
        // epoch, the seq goes on, and a client resumes from before the restart.
        //
        // A publish refused while the client library had not yet seen the
        // connection drop may still be in its queue and land after the
        // reconnect (`unavailable` on a call in flight means "outcome
        // unknown", docs/brokers.md): then it is seq 4, one of the refused
        // payloads, and "after" is seq 5. Never a gap, never another epoch.
        let seq = publish_until_accepted(b, KEY, "room:z", json!("after")).await;
        assert!((4..=5).contains(&seq), "seq {seq}");
        let m = messages(&mut sub, (seq - 3) as usize).await;
        for (i, msg) in m.iter().enumerate() {
            assert_eq!(msg["seq"], json!(4 + i as u64), "{m:?}");
            assert_eq!(msg["epoch"], old_epoch.as_str(), "{m:?}");
        }
        if seq == 5 {
            assert!(
                m[0]["data"] == json!(4) || m[0]["data"] == json!(1),
                "{m:?}"
            );
        }
        assert_eq!(m.last().expect("after")["data"], "after");
        let mut late = client(b, "late2").await;
        late.send_json(
            json!({"type":"subscribe","id":9,"channel":"room:z","since":{"epoch":old_epoch,"seq":1}}),
        )
        .await;
        let s = late.recv_type("subscribed").await;
        assert_eq!(s["recovered"], true, "{s}");
        let replay = messages(&mut late, (seq - 1) as usize).await;
        assert_eq!(
            replay
                .iter()
                .map(|v| v["seq"].as_u64().expect("seq"))
                .collect::<Vec<_>>(),
            (2..=seq).collect::<Vec<_>>()
        );
    } else {
        // The subscription on node a was restored: live messages flow again,
        // in a new epoch.
        let mut ack = json!(null);
        until(
            "publish accepted again",
            Duration::from_secs(10),
            async || {
                ack = publish(&mut p, 5, "room:z", json!("after")).await;
                ack["type"] == "ack"
            },
        )
        .await;
        let m = messages(&mut sub, 1).await;
        assert_eq!(m[0]["data"], "after");
        assert_ne!(m[0]["epoch"], old_epoch.as_str());
        // a client resuming from before the restart learns history was lost
        let mut late = client(b, "late2").await;
        late.send_json(
            json!({"type":"subscribe","id":9,"channel":"room:z","since":{"epoch":old_epoch,"seq":3}}),
        )
        .await;
        let s = late.recv_type("subscribed").await;
        assert_eq!(s["recovered"], false, "{s}");
        assert_ne!(s["epoch"], old_epoch.as_str());
    }
}

/// Issue 17: the broker lost its data; acknowledged publishes of the new
/// epoch all reach a subscriber that stayed connected, in order, whichever
/// connection of its node comes back first.
async fn new_epoch_messages_reach_a_connected_subscriber(mut broker: Broker, same_node: bool) {
    let cl = broker.cluster(2).await;
    let a = cl.node(0);
    let sub_node = if same_node { a } else { cl.node(1) };
    let mut sub = client(sub_node, "sub").await;
    sub.subscribe(1, "x:1").await;
    assert_eq!(
        publish_until_accepted(a, KEY, "x:1", json!("before")).await,
        1
    );
    let first = messages(&mut sub, 1).await;
    let old_epoch = first[0]["epoch"].clone();
    broker.lose_data();
    // Publish at once: the first accepted publish may land before the
    // subscriber's node has its broker connection back.
    let mut acked = Vec::new();
    for i in 1..=4 {
        let seq = publish_until_accepted(a, KEY, "x:1", json!(format!("after-{i}"))).await;
        acked.push((seq, json!(format!("after-{i}"))));
    }
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "a new epoch restarts at 1"
    );
    let got = messages(&mut sub, 4).await;
    let got_pairs: Vec<(u64, Value)> = got
        .iter()
        .map(|m| (m["seq"].as_u64().expect("seq"), m["data"].clone()))
        .collect();
    assert_eq!(got_pairs, acked, "every acknowledged message, in order");
    assert!(got.iter().all(|m| m["epoch"] == got[0]["epoch"]));
    assert_ne!(
        got[0]["epoch"], old_epoch,
        "the epoch tells the client history was lost"
    );
}

async fn data_loss_new_epoch_reaches_a_subscriber_on_another_node(broker: Broker) {
    new_epoch_messages_reach_a_connected_subscriber(broker, false).await;
}

async fn data_loss_new_epoch_reaches_a_subscriber_on_the_same_node(broker: Broker) {
    new_epoch_messages_reach_a_connected_subscriber(broker, true).await;
}

/// Editors on two nodes (memory: one) patch overlapping keys at once: one
/// gapless version sequence, every replica converges, a fresh snapshot on
/// each node agrees; a shared broker keeps the document for a restarted
/// gateway (same epoch).
async fn concurrent_editors_converge_on_one_version_sequence(broker: Broker) {
    let mut cl = broker.cluster(2).await;
    const EDITORS: usize = 6;
    const EACH: usize = 30;
    let mut eds = Vec::new();
    for i in 0..EDITORS {
        eds.push(Editor::open(cl.node(i % 2), &format!("ed-{i}"), "doc:shared").await);
    }
    // Everyone patches overlapping keys at once, without waiting for acks.
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
    for i in 0..EDITORS {
        assert_eq!(first[format!("own{i}")], json!(EACH - 1));
    }
    for gw in &cl.gws {
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
    if !broker.multi_node() {
        return; // memory keeps documents only while the process runs
    }
    // A restarted gateway (a new process) finds state and version in the broker.
    cl.node_mut(0).kill();
    let a2 = broker.gateway("node-a");
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

/// The broker lost a document (Redis restarted empty, JetStream's store
/// wiped): a node with a live replica re-seeds it, the subscriber gets a
/// SNAPSHOT in a new epoch with the same state and version, and the document
/// goes on from there.
async fn a_document_outlives_broker_data_loss_reseeded_from_a_live_replica(mut broker: Broker) {
    let cl = broker.cluster(2).await;
    let (a, b) = (cl.node(0), cl.node(1));
    let mut sub = Editor::open(b, "sub", "doc:r").await;
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
    broker.lose_data();
    for gw in [a, b] {
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
    let v = document_state(a, KEY, "doc:r").await;
    assert_eq!(
        (v["version"].clone(), v["state"].clone()),
        (json!(3), before)
    );
    assert_eq!(v["epoch"], json!(sub.epoch));
    // And the document goes on from there, on both nodes.
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
    a.wait_metric_value("switchyard_documents_open", |n| n >= 1.0)
        .await;
}

/// `channel_limits` on channel `match`: burst 20, then 20/s (publishes
/// themselves unlimited).
fn channel_limit(pattern: &str) -> String {
    format!(
        "\n[[tenants.default.channel_limits]]\nmatch = \"{pattern}\"\nrate = 20\nburst = 20\n\
         [limits]\npublish_rate = 100000\npublish_burst = 100000\n"
    )
}

/// `channel_limits` with a shared broker: one budget for all publishers of a
/// channel across nodes (Redis: taken in the publish script; NATS: a KV
/// token bucket updated by compare-and-set; memory: one node's bucket).
async fn a_channel_limit_holds_cluster_wide(broker: Broker) {
    let cl = broker.cluster_with(2, "30s", &channel_limit("lim:*")).await;
    let mut pa = client(cl.node(0), "pa").await;
    let mut pb = client(cl.node(1), "pb").await;
    let start = Instant::now();
    let (mut ok, mut limited_replies) = (0u32, 0u32);
    for i in 0..60u64 {
        for p in [&mut pa, &mut pb] {
            let r = publish(p, 100 + i, "lim:1", json!(i)).await;
            tally(&r, &mut ok, &mut limited_replies);
        }
    }
    assert_within_the_shared_budget(ok, limited_replies, start);
    // Other channels are not limited.
    let r = publish(&mut pa, 999, "free:1", json!(1)).await;
    assert_eq!(r["type"], "ack", "{r}");
}

/// The same budget holds for a document channel: patches from writers on two
/// nodes together stay within burst + rate·t, and a refused patch changes
/// nothing.
async fn a_channel_limit_holds_cluster_wide_for_document_patches(broker: Broker) {
    let cl = broker
        .cluster_with(2, "30s", &channel_limit("doc:lim*"))
        .await;
    let a = cl.node(0);
    let mut pa = client(a, "pa").await;
    let mut pb = client(cl.node(1), "pb").await;
    for p in [&mut pa, &mut pb] {
        p.subscribe_doc(1, "doc:lim", None).await;
    }
    let start = Instant::now();
    let (mut ok, mut limited_replies) = (0u32, 0u32);
    for i in 0..60u64 {
        for (w, p) in [(&"a", &mut pa), (&"b", &mut pb)] {
            // Distinct keys per writer: every accepted patch changes the document.
            let delta = json!({ format!("{w}{i}"): i });
            let (r, _) = p.patch_acked(100 + i, "doc:lim", &delta, "").await;
            tally(&r, &mut ok, &mut limited_replies);
        }
    }
    assert_within_the_shared_budget(ok, limited_replies, start);
    // One version per accepted patch, none for refused ones (node a may still
    // be applying node b's last entries: wait for them, never past `ok`).
    let mut n = 0;
    until(
        "every accepted patch on node a",
        Duration::from_secs(10),
        async || {
            n += 1;
            let mut reader = client(a, &format!("reader{n}")).await;
            let (sub, _) = reader.subscribe_doc(1, "doc:lim", None).await;
            let v = sub["version"].as_u64().expect("version");
            assert!(v <= u64::from(ok), "{v} versions for {ok} accepted patches");
            v == u64::from(ok)
        },
    )
    .await;
}

/// What only the Redis broker has: sharding over several servers.
mod redis_specific {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_shards_spread_channels_and_fail_independently() {
        let mut broker = Broker::start_sharded(BrokerKind::Redis, 2);
        let cl = broker.cluster(2).await;
        let (a, b) = (cl.node(0), cl.node(1));
        let mut p = client(a, "pub").await;
        let channels: Vec<String> = (0..24).map(|i| format!("room:{i}")).collect();
        for (i, ch) in channels.iter().enumerate() {
            let ack = publish(&mut p, i as u64, ch, json!(i)).await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        let on = |shard: usize, ch: &str| {
            broker.redis[shard]
                .cmd(&["EXISTS", &format!("sy:{{default:{ch}}}:meta")])
                .int()
                == Some(1)
        };
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        for ch in &channels {
            match (on(0, ch), on(1, ch)) {
                (true, false) => s1.push(ch.clone()),
                (false, true) => s2.push(ch.clone()),
                other => panic!("{ch} lives on exactly one shard, got {other:?}"),
            }
        }
        assert!(
            !s1.is_empty() && !s2.is_empty(),
            "spread: {} vs {}",
            s1.len(),
            s2.len()
        );

        // a subscriber on node b of one channel per shard
        let mut sub = client(b, "sub").await;
        sub.subscribe(1, &s1[0]).await;
        broker.redis[1].kill();
        // Wait until the node has seen the shard go (a publish on it fails),
        // then check it stays in rotation.
        let mut probe = 300;
        until("shard 2 seen down", Duration::from_secs(10), async || {
            probe += 1;
            publish(&mut p, probe, &s2[0], json!("probe")).await["code"] == "unavailable"
        })
        .await;
        assert!(
            ready(a).await,
            "one shard down does not take the node out of rotation"
        );
        for (i, ch) in s1.iter().enumerate() {
            let ack = publish(&mut p, 100 + i as u64, ch, json!("still")).await;
            assert_eq!(ack["type"], "ack", "{ch} on the live shard: {ack}");
        }
        for (i, ch) in s2.iter().enumerate() {
            let e = publish(&mut p, 200 + i as u64, ch, json!("down")).await;
            assert_eq!(e["code"], "unavailable", "{ch} on the dead shard: {e}");
        }
        let m = messages(&mut sub, 1).await;
        assert_eq!(m[0]["data"], "still", "the live shard keeps delivering");
        sub.send_json(json!({"type":"subscribe","id":2,"channel":s2[0]}))
            .await;
        let e = sub.recv_type("error").await;
        assert_eq!(e["code"], "unavailable", "{e}");
    }
}

/// What only the NATS broker has: history that survives a broker restart.
mod nats_specific {
    use super::*;

    /// Messages published while a subscriber's node was cut off from NATS
    /// reach it after the reconnect, in order (replayed from the stream).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_stored_during_a_reconnect_are_replayed() {
        let mut broker = Broker::start(BrokerKind::Nats);
        let cl = broker.cluster(2).await;
        let (a, b) = (cl.node(0), cl.node(1));
        let mut sub = client(a, "sub").await;
        sub.subscribe(1, "room:c").await;
        assert_eq!(publish_until_accepted(b, KEY, "room:c", json!(1)).await, 1);
        assert_eq!(messages(&mut sub, 1).await[0]["seq"], 1);
        broker.kill();
        broker.restart();
        // Publish at once through node b: node a may not be back yet.
        for i in 2..=5 {
            assert_eq!(publish_until_accepted(b, KEY, "room:c", json!(i)).await, i);
        }
        let got = messages(&mut sub, 4).await;
        assert_eq!(
            got.iter()
                .map(|m| (m["seq"].as_u64().expect("seq"), m["data"].clone()))
                .collect::<Vec<_>>(),
            (2..=5u64).map(|i| (i, json!(i))).collect::<Vec<_>>()
        );
    }
}
