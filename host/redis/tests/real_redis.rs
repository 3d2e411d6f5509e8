//! The broker against a real `redis-server` (started per test on a free port).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;
use switchyard_core::backpressure::Outbox;
use switchyard_core::broker::{Broker, BrokerError, BrokerHealth, ChannelOptions, PublishMeta};
use switchyard_core::channel::ChannelKey;
use switchyard_core::hub::{Hub, SubscriberInfo};
use switchyard_core::metrics::Metrics;
use switchyard_core::protocol::StreamPosition;
use switchyard_redis::RedisBroker;

#[path = "../../../tests/harness/redis.rs"]
#[allow(dead_code)]
mod redis_server;
use redis_server::RedisServer;

const OPTS: ChannelOptions = ChannelOptions {
    history_size: 100,
    history_ttl: Duration::from_secs(300),
    dedupe_window: 16,
    limit: None,
};

fn hub(node: &str) -> Arc<Hub> {
    Arc::new(Hub::new(node, 1024, Arc::new(Metrics::new())))
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn broker(redis: &RedisServer, hub: Arc<Hub>) -> Arc<RedisBroker> {
    let b = RedisBroker::start(&[redis.url()], Duration::from_secs(2), hub).expect("start");
    until("broker up", async || b.health() == BrokerHealth::Up).await;
    b
}

fn data(s: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(s.to_owned()).expect("json"))
}

fn command_calls(redis: &RedisServer, name: &str) -> u64 {
    let info = redis.cmd(&["INFO", "commandstats"]);
    let text = info.text().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn numsub(redis: &RedisServer, key: &ChannelKey) -> i64 {
    let r = redis.cmd(&[
        "PUBSUB",
        "NUMSUB",
        &switchyard_redis::keys::live_channel(key),
    ]);
    r.items().get(1).and_then(|v| v.int()).unwrap_or(-1)
}

fn frames(outbox: &Outbox) -> Vec<Value> {
    let mut q = VecDeque::new();
    outbox.take(&mut q);
    q.into_iter()
        .map(|o| serde_json::from_str(o.frame.as_str()).expect("json frame"))
        .collect()
}

fn subscribe_local(hub: &Hub, key: &ChannelKey, session: u64, outbox: &Arc<Outbox>) {
    hub.add(
        key,
        SubscriberInfo {
            session,
            outbox: outbox.clone(),
            client: format!("c{session}").into(),
            principal: "".into(),
        },
    );
    hub.activate(key, session, Vec::new(), None, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batched_subscription_per_channel() {
    let redis = RedisServer::start();
    let b = broker(&redis, hub("n1")).await;
    let keys: Vec<ChannelKey> = (0..10)
        .map(|i| ChannelKey::new("t", format!("room:{i}")))
        .collect();
    let subscribes_before = command_calls(&redis, "subscribe");
    // 5 local subscriptions on each of 10 channels, all at once.
    let b2 = &b;
    let watches = keys.iter().flat_map(|k| (0..5).map(move |_| b2.watch(k)));
    for r in futures_util::future::join_all(watches).await {
        r.expect("watch");
    }
    for k in &keys {
        assert_eq!(
            numsub(&redis, k),
            1,
            "{k}: one Redis subscription per channel"
        );
    }
    let subscribes = command_calls(&redis, "subscribe") - subscribes_before;
    assert!(
        subscribes <= 2,
        "50 watches were coalesced into {subscribes} SUBSCRIBE commands"
    );

    // A quick unsubscribe + resubscribe cancels out.
    let unsubscribes_before = command_calls(&redis, "unsubscribe");
    for _ in 0..5 {
        b.unwatch(&keys[1]).await;
    }
    b.watch(&keys[1]).await.expect("rewatch");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(command_calls(&redis, "unsubscribe"), unsubscribes_before);
    assert_eq!(numsub(&redis, &keys[1]), 1);

    // The subscription stays until the last local subscriber leaves.
    for _ in 0..4 {
        b.unwatch(&keys[0]).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(numsub(&redis, &keys[0]), 1);
    b.unwatch(&keys[0]).await;
    until("unsubscribed", async || numsub(&redis, &keys[0]) == 0).await;
    assert_eq!(numsub(&redis, &keys[2]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sequences_dedupes_delivers_and_recovers() {
    let redis = RedisServer::start();
    let h = hub("n1");
    let b = broker(&redis, h.clone()).await;
    let key = ChannelKey::new("t", "room:a");
    let outbox = Arc::new(Outbox::new(64));
    subscribe_local(&h, &key, 1, &outbox);
    b.watch(&key).await.expect("watch");

    let mut epoch = None;
    for i in 1..=5u64 {
        let p = b
            .publish(
                &key,
                data(&format!("{{\"n\":{i}}}")),
                &OPTS,
                PublishMeta::msg_id(Some(&format!("m{i}"))),
            )
            .await
            .expect("publish");
        assert_eq!(p.seq, i);
        assert!(!p.duplicate);
        epoch.get_or_insert(p.epoch.clone());
        assert_eq!(Some(&p.epoch), epoch.as_ref());
    }
    let dup = b
        .publish(
            &key,
            data("{\"n\":99}"),
            &OPTS,
            PublishMeta::msg_id(Some("m3")),
        )
        .await
        .expect("dup");
    assert_eq!((dup.seq, dup.duplicate), (3, true));

    let mut got = Vec::new();
    until("5 live messages", async || {
        got.extend(frames(&outbox));
        got.len() >= 5
    })
    .await;
    let seqs: Vec<u64> = got
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "in order, duplicate not delivered"
    );
    assert_eq!(got[0]["data"]["n"], 1);

    let epoch = epoch.expect("epoch").to_string();
    let since = StreamPosition {
        epoch: epoch.clone(),
        seq: 2,
    };
    let r = b.recover(&key, Some(&since), &OPTS).await.expect("recover");
    assert!(r.recovered);
    assert_eq!(r.seq, 5);
    let rec: Vec<u64> = r.messages.iter().map(|m| m.seq).collect();
    assert_eq!(rec, vec![3, 4, 5]);
    assert_eq!(r.messages[0].data.get(), "{\"n\":3}");

    let stale = StreamPosition {
        epoch: "other".into(),
        seq: 2,
    };
    assert!(
        !b.recover(&key, Some(&stale), &OPTS)
            .await
            .expect("recover")
            .recovered
    );
    let ahead = StreamPosition {
        epoch: epoch.clone(),
        seq: 9,
    };
    assert!(
        !b.recover(&key, Some(&ahead), &OPTS)
            .await
            .expect("recover")
            .recovered
    );

    // Beyond history_size the gap is reported, never papered over.
    let small = ChannelOptions {
        history_size: 3,
        ..OPTS
    };
    let k2 = ChannelKey::new("t", "room:small");
    let mut e2 = String::new();
    for i in 1..=6 {
        e2 = b
            .publish(&k2, data(&i.to_string()), &small, PublishMeta::msg_id(None))
            .await
            .expect("publish")
            .epoch
            .to_string();
    }
    let old = StreamPosition {
        epoch: e2.clone(),
        seq: 1,
    };
    assert!(
        !b.recover(&k2, Some(&old), &small)
            .await
            .expect("recover")
            .recovered
    );
    let recent = StreamPosition { epoch: e2, seq: 3 };
    let r = b
        .recover(&k2, Some(&recent), &small)
        .await
        .expect("recover");
    assert!(r.recovered);
    assert_eq!(r.messages.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_history_gets_a_new_epoch() {
    let redis = RedisServer::start();
    let b = broker(&redis, hub("n1")).await;
    let key = ChannelKey::new("t", "room:e");
    let first = b
        .publish(&key, data("1"), &OPTS, PublishMeta::msg_id(None))
        .await
        .expect("publish");
    b.publish(&key, data("2"), &OPTS, PublishMeta::msg_id(None))
        .await
        .expect("publish");
    redis.cmd(&["FLUSHALL"]);
    let since = StreamPosition {
        epoch: first.epoch.to_string(),
        seq: 2,
    };
    let r = b.recover(&key, Some(&since), &OPTS).await.expect("recover");
    assert!(!r.recovered);
    assert_ne!(*r.epoch, *first.epoch);
    let p = b
        .publish(&key, data("3"), &OPTS, PublishMeta::msg_id(None))
        .await
        .expect("publish");
    assert_eq!(p.seq, 1);
    assert_eq!(
        p.epoch, r.epoch,
        "recover created the epoch publishes continue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_redis_restart_and_resubscribes() {
    let mut redis = RedisServer::start();
    let h = hub("n1");
    let b = broker(&redis, h.clone()).await;
    let key = ChannelKey::new("t", "room:r");
    let outbox = Arc::new(Outbox::new(64));
    subscribe_local(&h, &key, 1, &outbox);
    b.watch(&key).await.expect("watch");

    redis.kill();
    until("health down", async || b.health() == BrokerHealth::Down).await;
    let err = b
        .publish(&key, data("1"), &OPTS, PublishMeta::msg_id(None))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    let other = ChannelKey::new("t", "room:other");
    assert!(matches!(
        b.watch(&other).await,
        Err(BrokerError::Unavailable(_))
    ));

    redis.restart();
    until("health up", async || b.health() == BrokerHealth::Up).await;
    until("resubscribed", async || numsub(&redis, &key) == 1).await;
    let p = b
        .publish(
            &key,
            data("{\"after\":true}"),
            &OPTS,
            PublishMeta::msg_id(None),
        )
        .await
        .expect("publish");
    assert_eq!(p.seq, 1, "fresh Redis: new epoch, seq restarts");
    let mut got = Vec::new();
    until("delivered after restart", async || {
        got.extend(frames(&outbox));
        !got.is_empty()
    })
    .await;
    assert_eq!(got[0]["data"]["after"], true);
    assert_eq!(got[0]["epoch"], *p.epoch);
    let metrics = h.metrics().encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_broker_reconnects_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_history_missed_while_pubsub_was_down() {
    let redis = RedisServer::start();
    let h = hub("n1");
    let b = broker(&redis, h.clone()).await;
    let publisher = broker(&redis, hub("n2")).await;
    let key = ChannelKey::new("t", "room:c");
    let outbox = Arc::new(Outbox::new(64));
    subscribe_local(&h, &key, 1, &outbox);
    b.watch(&key).await.expect("watch");
    publisher
        .publish(&key, data("1"), &OPTS, PublishMeta::msg_id(None))
        .await
        .expect("publish");
    let mut got = Vec::new();
    until("first", async || {
        got.extend(frames(&outbox));
        !got.is_empty()
    })
    .await;
    // Drop only the pub/sub connection of n1; commands keep working.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for i in 2..=4 {
        publisher
            .publish(&key, data(&i.to_string()), &OPTS, PublishMeta::msg_id(None))
            .await
            .expect("publish");
    }
    until("caught up", async || {
        got.extend(frames(&outbox));
        got.len() >= 4
    })
    .await;
    publisher
        .publish(&key, data("5"), &OPTS, PublishMeta::msg_id(None))
        .await
        .expect("publish");
    until("live again", async || {
        got.extend(frames(&outbox));
        got.len() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    got.extend(frames(&outbox));
    let seqs: Vec<u64> = got
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "no gap, no duplicate across the reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_starts_at_the_recovered_position_before_any_live_message() {
    let redis = RedisServer::start();
    let h = hub("n1");
    let b = broker(&redis, h.clone()).await;
    let publisher = broker(&redis, hub("n2")).await;
    let key = ChannelKey::new("t", "room:q");
    publisher
        .publish(&key, data("1"), &OPTS, PublishMeta::msg_id(None))
        .await
        .expect("publish");
    let outbox = Arc::new(Outbox::new(64));
    subscribe_local(&h, &key, 1, &outbox);
    b.watch(&key).await.expect("watch");
    let r = b.recover(&key, None, &OPTS).await.expect("recover");
    assert_eq!(r.seq, 1);
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for i in 2..=3 {
        publisher
            .publish(&key, data(&i.to_string()), &OPTS, PublishMeta::msg_id(None))
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    until("caught up", async || {
        got.extend(frames(&outbox));
        got.len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    got.extend(frames(&outbox));
    let seqs: Vec<u64> = got
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        vec![2, 3],
        "only what followed the recovered position"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_is_rewritten_after_data_loss() {
    let redis = RedisServer::start();
    let (h1, h2) = (hub("n1"), hub("n2"));
    let (b1, b2) = (
        broker(&redis, h1.clone()).await,
        broker(&redis, h2.clone()).await,
    );
    let key = ChannelKey::new("t", "room:p");
    let names = async |b: &RedisBroker| -> Vec<(String, String)> {
        let mut v: Vec<_> = b
            .presence(&key)
            .await
            .expect("presence")
            .into_iter()
            .map(|e| (e.client, e.node))
            .collect();
        v.sort();
        v
    };
    let o = Arc::new(Outbox::new(8));
    subscribe_local(&h1, &key, 1, &o);
    b1.watch(&key).await.expect("watch");
    subscribe_local(&h2, &key, 2, &o);
    subscribe_local(&h2, &key, 3, &o);
    b2.watch(&key).await.expect("watch");
    b2.watch(&key).await.expect("watch");
    b2.flush_presence().await;
    let all = vec![
        ("c1".to_owned(), "n1".to_owned()),
        ("c2".to_owned(), "n2".to_owned()),
        ("c3".to_owned(), "n2".to_owned()),
    ];
    assert_eq!(names(&b1).await, all);

    redis.cmd(&["FLUSHALL"]);
    assert_eq!(names(&b1).await, vec![("c1".to_owned(), "n1".to_owned())]);
    b2.refresh_presence().await;
    assert_eq!(names(&b1).await, all, "heartbeat rewrote the lost entries");

    h2.remove(&key, 2);
    b2.unwatch(&key).await;
    b2.flush_presence().await;
    assert_eq!(
        names(&b1).await,
        vec![
            ("c1".to_owned(), "n1".to_owned()),
            ("c3".to_owned(), "n2".to_owned())
        ]
    );
    h2.remove(&key, 3);
    b2.unwatch(&key).await;
    b2.flush_presence().await;
    assert_eq!(names(&b1).await, vec![("c1".to_owned(), "n1".to_owned())]);
    let index = redis.cmd(&["HKEYS", "sy:{t:room:p}:presence"]);
    assert!(
        index.items().iter().all(|n| n.text() != Some("n2")),
        "{index:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_channels_subscribe_in_a_few_commands() {
    let redis = RedisServer::start();
    let b = broker(&redis, hub("n1")).await;
    let keys: Vec<ChannelKey> = (0..5000)
        .map(|i| ChannelKey::new("t", format!("room:{i}")))
        .collect();
    let before = command_calls(&redis, "subscribe");
    let b2 = &b;
    for r in futures_util::future::join_all(keys.iter().map(|k| b2.watch(k))).await {
        r.expect("watch");
    }
    let live = |r: &RedisServer| r.cmd(&["PUBSUB", "CHANNELS", "sy:*"]).items().len();
    assert_eq!(live(&redis), 5000);
    let commands = command_calls(&redis, "subscribe") - before;
    assert!(commands <= 5000 / 512 + 3, "{commands} SUBSCRIBE commands");
    for k in &keys {
        b.unwatch(k).await;
    }
    until("all unsubscribed", async || live(&redis) == 0).await;
    assert!(command_calls(&redis, "unsubscribe") <= 5000 / 512 + 3);
}
