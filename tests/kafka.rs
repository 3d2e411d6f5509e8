//! The Kafka bridge against a real Kafka-compatible broker (tansu) and a real
//! Kafka client (librdkafka): records reach WebSocket subscribers in order per
//! key, channel publishes reach their topic, and a Kafka restart, a gateway
//! killed mid-stream and a consumer-group rebalance lose nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use switchyard_tests::cluster::until;
use switchyard_tests::kafka::KafkaServer;
use switchyard_tests::redis::RedisServer;
use switchyard_tests::{Client, Gateway, metric_value};
use tokio::task::JoinHandle;

/// Long enough for a consumer group to settle after a member died.
const GROUP_WAIT: Duration = Duration::from_secs(60);

fn producer(kafka: &KafkaServer) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

async fn produce(p: &FutureProducer, topic: &str, key: &str, value: &str, headers: OwnedHeaders) {
    p.send(
        FutureRecord::to(topic)
            .key(key)
            .payload(value)
            .headers(headers),
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// The gateway config of a bridge on `kafka` (tenant `default`).
fn bridge_config(kafka: &KafkaServer, broker: &str, tenant_extra: &str) -> String {
    format!(
        "{broker}\n[tenants.default]\napi_keys = [\"k\"]\n{tenant_extra}\n\
         [[bridges.kafka]]\nbrokers = [\"{}\"]\ntenant = \"default\"\ngroup = \"gw\"\n\
         consume = [{{ topic = \"orders\", channel = \"orders:{{key}}\" }}]\n\
         produce = [{{ match = \"audit:*\", topic = \"audit\" }}]\n\
         options = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n",
        kafka.bootstrap()
    )
}

async fn subscribed(gw: &Gateway, channels: &[&str]) -> Client {
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    for (i, ch) in channels.iter().enumerate() {
        let r = c.subscribe(i as u64 + 1, ch).await;
        assert_eq!(r["type"], "subscribed", "{r}");
    }
    c
}

/// The next `message` frame, waiting up to `wait`.
async fn next_message(c: &mut Client, wait: Duration) -> Value {
    loop {
        match c.recv_within(wait).await {
            Some(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "message" {
                    return v;
                }
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

fn consumed(metrics: &str, outcome: &str) -> f64 {
    metric_value(
        metrics,
        &format!(
            "switchyard_kafka_consumed_total{{bridge=\"kafka-0\",topic=\"orders\",outcome=\"{outcome}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn records_reach_subscribers_in_order_per_key_and_publishes_reach_their_topic() {
    let kafka = KafkaServer::start();
    kafka.create_topic("orders", 3);
    kafka.create_topic("audit", 1);
    let gw = Gateway::start(&bridge_config(&kafka, "", ""));
    let mut k0 = subscribed(&gw, &["orders:k0"]).await;
    let mut k1 = subscribed(&gw, &["orders:k1"]).await;

    let p = producer(&kafka);
    for i in 0..60 {
        let headers = OwnedHeaders::new().insert(Header {
            key: "source",
            value: Some("test"),
        });
        let value = json!({ "n": i }).to_string();
        produce(&p, "orders", &format!("k{}", i % 2), &value, headers).await;
    }
    // A key no channel name may hold: counted, committed past, not stopping the partition.
    produce(&p, "orders", "a b", "{}", OwnedHeaders::new()).await;
    produce(&p, "orders", "k0", "not json", OwnedHeaders::new()).await;

    for (c, key, first) in [(&mut k0, "k0", 0), (&mut k1, "k1", 1)] {
        for want in (first..60).step_by(2) {
            let m = next_message(c, switchyard_tests::WAIT).await;
            assert_eq!(m["channel"], format!("orders:{key}"));
            let d = &m["data"];
            assert_eq!(d["value"]["n"], want, "in order per key: {m}");
            assert_eq!(
                (d["key"].as_str(), d["topic"].as_str()),
                (Some(key), Some("orders"))
            );
            assert_eq!(d["meta"]["source"], "test", "headers are meta: {m}");
            assert!(d["offset"].is_i64() && d["partition"].is_i64(), "{m}");
        }
    }
    let m = next_message(&mut k0, switchyard_tests::WAIT).await;
    assert_eq!(
        m["data"]["value"], "not json",
        "a text value is a JSON string"
    );
    gw.wait_metric_value(
        "switchyard_kafka_consumed_total{bridge=\"kafka-0\",topic=\"orders\",outcome=\"bad_channel\"}",
        |v| v == 1.0,
    )
    .await;
    let metrics = gw
        .wait_metric_value(
            "switchyard_kafka_consumed_total{bridge=\"kafka-0\",topic=\"orders\",outcome=\"published\"}",
            |v| v == 61.0,
        )
        .await;
    assert_eq!(metrics, 61.0);
    // Lag: every assigned partition is read to its end.
    until(
        "consumer lag 0 on every partition",
        switchyard_tests::WAIT,
        async || {
            let (_, m) = gw.get("/metrics").await;
            let lags: Vec<&str> = m
                .lines()
                .filter(|l| {
                    l.starts_with(
                        "switchyard_kafka_consumer_lag{bridge=\"kafka-0\",topic=\"orders\"",
                    )
                })
                .collect();
            lags.len() == 3 && lags.iter().all(|l| l.ends_with(" 0"))
        },
    )
    .await;

    // Produce: a client publish and an HTTP publish on audit:*, one elsewhere.
    let r = switchyard_tests::cluster::publish(&mut k0, 50, "chat:1", json!({"skip": true})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = switchyard_tests::cluster::publish(&mut k0, 51, "audit:x", json!({"a": 1})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let seq_x = r["seq"].as_u64().expect("seq");
    let (status, body) = gw
        .post_json(
            "/api/publish",
            Some("k"),
            r#"{"channel":"audit:y","data":{"b":[2]}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let verify: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "verify")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    verify.subscribe(&["audit"]).expect("subscribe");
    let mut got = BTreeMap::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), verify.recv())
            .await
            .expect("a produced record in time")
            .expect("record");
        let key = String::from_utf8_lossy(m.key().expect("key = channel")).into_owned();
        let value: Value = serde_json::from_slice(m.payload().expect("value")).expect("json");
        let seq = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "switchyard-seq"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        got.insert(key, (value, seq));
    }
    assert_eq!(got["audit:x"], (json!({"a": 1}), Some(seq_x.to_string())));
    assert_eq!(got["audit:y"].0, json!({"b": [2]}));
    gw.wait_metric_value(
        "switchyard_kafka_produced_total{bridge=\"kafka-0\",topic=\"audit\",outcome=\"delivered\"}",
        |v| v == 2.0,
    )
    .await;
}

#[tokio::test]
async fn the_tenants_router_plugin_routes_bridged_records() {
    let router = switchyard_tests::target_dir().join("plugins/namespace-router.wasm");
    assert!(
        router.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        router.display()
    );
    let plugins = switchyard_tests::scratch_dir("kafka-plugins");
    std::fs::copy(&router, plugins.join("router.wasm")).expect("copy router");
    let kafka = KafkaServer::start();
    kafka.create_topic("orders", 1);
    kafka.create_topic("audit", 1);
    let rules = "[tenants.default.policies.router]\nplugin = \"router\"\n\
                 [[tenants.default.policies.router.config.rules]]\nmatch = \"orders:spam\"\ndrop = true\n\
                 [[tenants.default.policies.router.config.rules]]\nmatch = \"orders:*\"\nto = [\"$channel\", \"orders:all\"]\n";
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\n{}",
        plugins.display().to_string(),
        bridge_config(&kafka, "", rules)
    ));
    let mut all = subscribed(&gw, &["orders:all"]).await;
    let mut one = subscribed(&gw, &["orders:k"]).await;
    let p = producer(&kafka);
    produce(&p, "orders", "spam", r#"{"n":-1}"#, OwnedHeaders::new()).await;
    for i in 0..5 {
        produce(
            &p,
            "orders",
            "k",
            &json!({ "n": i }).to_string(),
            OwnedHeaders::new(),
        )
        .await;
    }
    for want in 0..5 {
        let m = next_message(&mut one, switchyard_tests::WAIT).await;
        assert_eq!(m["data"]["value"]["n"], want, "{m}");
        let m = next_message(&mut all, switchyard_tests::WAIT).await;
        assert_eq!(
            (m["channel"].as_str(), &m["data"]["value"]["n"]),
            (Some("orders:all"), &json!(want)),
            "fanned out by the router: {m}"
        );
    }
    gw.wait_metric_value(
        "switchyard_kafka_consumed_total{bridge=\"kafka-0\",topic=\"orders\",outcome=\"routed_away\"}",
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test]
async fn a_kafka_restart_loses_nothing() {
    let mut kafka = KafkaServer::start();
    kafka.create_topic("orders", 2);
    kafka.create_topic("audit", 1);
    let gw = Gateway::start(&bridge_config(&kafka, "", ""));
    let mut c = subscribed(&gw, &["orders:k"]).await;
    {
        let p = producer(&kafka);
        for i in 0..40 {
            produce(
                &p,
                "orders",
                "k",
                &json!({ "n": i }).to_string(),
                OwnedHeaders::new(),
            )
            .await;
        }
    }
    for want in 0..40 {
        let m = next_message(&mut c, switchyard_tests::WAIT).await;
        assert_eq!(m["data"]["value"]["n"], want, "{m}");
    }
    kafka.restart();
    let p = producer(&kafka);
    for i in 40..80 {
        produce(
            &p,
            "orders",
            "k",
            &json!({ "n": i }).to_string(),
            OwnedHeaders::new(),
        )
        .await;
    }
    for want in 40..80 {
        let m = next_message(&mut c, GROUP_WAIT).await;
        assert_eq!(
            m["data"]["value"]["n"], want,
            "nothing lost or repeated: {m}"
        );
    }
}

/// Produces `{"n":i}` for i in `range` on key `k{i % keys}`, paced, until done
/// or `stop`.
fn produce_stream(
    kafka: &KafkaServer,
    range: std::ops::Range<u64>,
    keys: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let p = producer(kafka);
    tokio::spawn(async move {
        for i in range {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            produce(
                &p,
                "orders",
                &format!("k{}", i % keys),
                &json!({ "n": i }).to_string(),
                OwnedHeaders::new(),
            )
            .await;
            // The workload's pace (records spread over the disruption), not a wait for an event.
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    })
}

/// Reads messages until every n in 0..total was seen; returns how many were
/// seen twice. Panics if a key's first occurrences are out of order.
async fn collect_all(c: &mut Client, total: u64, mut on_progress: impl FnMut(u64)) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut last_per_channel: BTreeMap<String, u64> = BTreeMap::new();
    let mut duplicates = 0;
    while (seen.len() as u64) < total {
        let m = next_message(c, GROUP_WAIT).await;
        let n = m["data"]["value"]["n"].as_u64().expect("n");
        if !seen.insert(n) {
            duplicates += 1;
            continue;
        }
        let ch = m["channel"].as_str().unwrap_or_default().to_owned();
        if let Some(prev) = last_per_channel.insert(ch.clone(), n) {
            assert!(prev < n, "{ch}: {n} after {prev}");
        }
        on_progress(seen.len() as u64);
    }
    duplicates
}

#[tokio::test]
async fn a_gateway_killed_mid_stream_loses_nothing() {
    let redis = RedisServer::start();
    let kafka = KafkaServer::start();
    kafka.create_topic("orders", 2);
    kafka.create_topic("audit", 1);
    let broker = format!(
        "[broker]\nkind = \"redis\"\nredis_urls = [\"{}\"]",
        redis.url()
    );
    let mut bridged = Gateway::start(&bridge_config(&kafka, &broker, ""));
    let watcher = Gateway::start(&format!("{broker}\n"));
    let mut c = subscribed(&watcher, &["orders:k0", "orders:k1"]).await;
    let total = 400;
    let stop = Arc::new(AtomicBool::new(false));
    let stream = produce_stream(&kafka, 0..total, 2, stop.clone());
    let mut killed = false;
    let duplicates = collect_all(&mut c, total, |n| {
        if n == 100 && !killed {
            killed = true;
            // SIGKILL mid-stream: offsets stored but not yet committed are
            // redelivered to the restarted gateway.
            bridged.kill();
            let (dir, config) = (bridged.dir.clone(), bridged.config_path.clone());
            bridged = Gateway::spawn(dir, config, "127.0.0.1:0", &[]);
        }
    })
    .await;
    stream.await.expect("producer");
    assert!(killed);
    println!(
        "a_gateway_killed_mid_stream_loses_nothing: {total} records, {duplicates} delivered twice"
    );
    let (_, m) = bridged.get("/metrics").await;
    println!(
        "after the restart: published {} duplicate {}",
        consumed(&m, "published"),
        consumed(&m, "duplicate")
    );
}

#[tokio::test]
async fn a_consumer_group_rebalance_loses_nothing() {
    let redis = RedisServer::start();
    let kafka = KafkaServer::start();
    kafka.create_topic("orders", 4);
    kafka.create_topic("audit", 1);
    let broker = format!(
        "[broker]\nkind = \"redis\"\nredis_urls = [\"{}\"]",
        redis.url()
    );
    let config = bridge_config(&kafka, &broker, "");
    let mut first = Gateway::start(&config);
    let watcher = Gateway::start(&format!("{broker}\n"));
    let channels = ["orders:k0", "orders:k1", "orders:k2", "orders:k3"];
    let mut c = subscribed(&watcher, &channels).await;
    let total = 600;
    let stop = Arc::new(AtomicBool::new(false));
    let stream = produce_stream(&kafka, 0..total, 4, stop.clone());
    let mut second: Option<Gateway> = None;
    let mut first_stopped = false;
    let duplicates = collect_all(&mut c, total, |n| {
        if n == 150 && second.is_none() {
            second = Some(Gateway::start(&config)); // joins the group: partitions move
        }
        if n == 350 && !first_stopped {
            first_stopped = true;
            first.signal(libc::SIGTERM); // drains, commits, leaves the group
        }
    })
    .await;
    stream.await.expect("producer");
    let status = first.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first gateway drained: {status:?}"
    );
    let second = second.expect("second gateway");
    let (_, m) = second.get("/metrics").await;
    let took = consumed(&m, "published") + consumed(&m, "duplicate");
    assert!(
        took > 0.0,
        "the second member consumed after the rebalance:\n{m}"
    );
    let rebalances = metric_value(&m, "switchyard_kafka_rebalances_total{bridge=\"kafka-0\"}");
    assert!(
        rebalances.is_some_and(|r| r >= 2.0),
        "assigned, and again when the first left: {rebalances:?}"
    );
    println!(
        "a_consumer_group_rebalance_loses_nothing: {total} records, {duplicates} delivered twice; the second member took {took}"
    );
}
