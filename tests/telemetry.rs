//! OpenTelemetry tracing against the real binary: gateways export OTLP/HTTP
//! protobuf to a test receiver (`switchyard_tests::otlp`), two of them on one
//! redis-server; the spans of a publish form one trace from the client's
//! `traceparent` through `publish` on node A to `deliver` on node B.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::otlp::{Receiver, Span, kind};
use switchyard_tests::redis::RedisServer;
use switchyard_tests::{Client, Gateway, scratch_dir, test_plugin};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// How long spans may take to arrive (the export interval is 100 ms).
const SPANS: Duration = Duration::from_secs(20);

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

fn telemetry(endpoint: &str, service: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"{service}\"\nsample_ratio = 1.0\nexport_interval = \"100ms\"\n"
    )
}

fn redis_node(node: &str, redis: &RedisServer, plugins: &Path, telemetry: &str) -> String {
    format!(
        "[server]\nnode_id = \"{node}\"\ndrain_timeout = \"1s\"\n\
         [broker]\nkind = \"redis\"\nredis_urls = [\"{}\"]\n\
         [plugins]\ndir = {:?}\n\
         [tenants.default]\napi_keys = [\"k\"]\n\
         [tenants.default.policies.router]\nplugin = \"router\"\n{telemetry}",
        redis.url(),
        plugins.display().to_string()
    )
}

/// A receiver and two traced gateways (`node-a`, `node-b`, sample 1.0) on
/// one redis-server, the test router plugin loaded on both.
fn two_traced_nodes() -> (Receiver, RedisServer, Gateway, Gateway) {
    let redis = RedisServer::start();
    let rx = Receiver::start();
    let plugins = scratch_dir("plugins");
    std::fs::copy(test_plugin("router-v1"), plugins.join("router.wasm")).expect("router");
    let node = |name: &str| {
        Gateway::start(&redis_node(
            name,
            &redis,
            &plugins,
            &telemetry(&rx.endpoint(), name),
        ))
    };
    let (a, b) = (node("node-a"), node("node-b"));
    (rx, redis, a, b)
}

async fn connect(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Client {
    let mut req = gw.ws_url(path).into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    Client::connect_with(req).await.expect("connect")
}

async fn publish(c: &mut Client, v: Value) -> Value {
    let id = v["id"].clone();
    c.send_json(v).await;
    loop {
        let r = c.recv_json().await;
        if r["id"] == id && (r["type"] == "ack" || r["type"] == "error") {
            return r;
        }
    }
}

async fn message(c: &mut Client, channel: &str) -> Value {
    loop {
        let v = tokio::time::timeout(SPANS, c.recv_json())
            .await
            .expect("message in time");
        if v["type"] == "message" && v["channel"] == channel {
            return v;
        }
    }
}

fn find(spans: &[Span], f: impl Fn(&Span) -> bool) -> Option<&Span> {
    spans.iter().find(|s| f(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_client_through_publish_on_a_to_deliver_on_b() {
    let (rx, _redis, a, b) = two_traced_nodes();
    let mut sub = Client::connect(&b.ws_url("/ws?client_id=sub")).await;
    sub.subscribe(1, "room:1").await;
    let tp = traceparent(TRACE, PARENT);
    let mut client = connect(
        &a,
        "/ws?client_id=pub",
        &[("traceparent", &tp), ("tracestate", "vendor=1")],
    )
    .await;
    let ack = publish(
        &mut client,
        json!({"type":"publish","id":1,"channel":"room:1","data":{"n":1}}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = message(&mut sub, "room:1").await;
    assert_eq!(
        got["data"],
        json!({"v":1,"data":{"n":1}}),
        "routed by the plugin"
    );

    // publish on A: PRODUCER, in the client's trace.
    let publish_span = rx
        .wait_for(SPANS, |s| {
            find(s, |x| x.name == "publish room:1" && x.trace_id == TRACE).cloned()
        })
        .await;
    assert_eq!(publish_span.service, "node-a");
    assert_eq!(publish_span.kind, kind::PRODUCER);
    assert_eq!(publish_span.attr("messaging.system"), "switchyard");
    assert_eq!(publish_span.attr("messaging.destination.name"), "room:1");
    assert_eq!(publish_span.attr("messaging.operation.name"), "publish");
    // deliver on B: CONSUMER, same trace, child of the publish span.
    let deliver = rx
        .wait_for(SPANS, |s| {
            find(s, |x| x.name == "deliver room:1" && x.trace_id == TRACE).cloned()
        })
        .await;
    assert_eq!(
        deliver.service, "node-b",
        "delivered by node B: {deliver:?}"
    );
    assert_eq!(deliver.kind, kind::CONSUMER);
    assert_eq!(deliver.parent_span_id, publish_span.span_id);
    assert_eq!(deliver.attr("messaging.destination.name"), "room:1");
    assert_eq!(deliver.attr("switchyard.seq"), "1");
    // The router plugin's span carries its attributes, under the publish.
    let plugin = rx
        .wait_for(SPANS, |s| {
            find(s, |x| x.name == "plugin router" && x.trace_id == TRACE).cloned()
        })
        .await;
    assert_eq!(plugin.service, "node-a");
    assert_eq!(plugin.parent_span_id, publish_span.span_id);
    assert_eq!(plugin.attr("switchyard.plugin"), "router");
    assert_eq!(plugin.attr("switchyard.tenant"), "default");
    assert_eq!(plugin.attr("switchyard.outcome"), "ok");

    // A publish command's own traceparent is the parent of its span.
    let own_trace = "0af7651916cd43dd8448eb211c80319c";
    let own = traceparent(own_trace, "b7ad6b7169203331");
    let ack = publish(
        &mut client,
        json!({"type":"publish","id":2,"channel":"room:1","data":2,"traceparent":own}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    message(&mut sub, "room:1").await;
    let (p2, d2) = rx
        .wait_for(SPANS, |s| {
            let p = find(s, |x| x.name == "publish room:1" && x.trace_id == own_trace)?;
            let d = find(s, |x| x.name == "deliver room:1" && x.trace_id == own_trace)?;
            Some((p.clone(), d.clone()))
        })
        .await;
    assert_eq!(p2.parent_span_id, "b7ad6b7169203331");
    assert_eq!(
        (d2.service.as_str(), d2.parent_span_id.as_str()),
        ("node-b", p2.span_id.as_str())
    );

    // The connection span (exported when the connection ends) is the
    // client's span's child and the first publish's parent.
    client.inner().close(None).await.expect("close");
    let conn = rx
        .wait_for(SPANS, |s| {
            find(s, |x| x.name == "connect websocket" && x.trace_id == TRACE).cloned()
        })
        .await;
    assert_eq!(conn.service, "node-a");
    assert_eq!(conn.kind, kind::SERVER);
    assert_eq!(conn.parent_span_id, PARENT);
    assert_eq!(conn.attr("switchyard.client"), "pub");
    assert_eq!(publish_span.parent_span_id, conn.span_id);
    assert_eq!(rx.bad_requests(), 0, "every export was valid OTLP protobuf");
    a.wait_metric_value("switchyard_trace_spans_total{outcome=\"exported\"}", |v| {
        v >= 3.0
    })
    .await;
}

/// A trace the caller did not sample records nothing under it on any node:
/// no connection, publish, plugin or deliver span (the gateway skips them
/// before building them, and carries no context through the broker), while a
/// sampled client on the same nodes is traced as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_records_nothing_under_it_on_any_node() {
    let (rx, _redis, a, b) = two_traced_nodes();
    let mut sub = Client::connect(&b.ws_url("/ws?client_id=sub")).await;
    sub.subscribe(1, "room:u").await;
    let unsampled = "5ce929d0e0e473664bf92f3577b34da6";
    let command = "8448eb211c80319c0af7651916cd43dd";
    let mut quiet = connect(
        &a,
        "/ws?client_id=quiet",
        &[("traceparent", &format!("00-{unsampled}-{PARENT}-00"))],
    )
    .await;
    for (id, tp) in [
        (1, None),
        (2, Some(format!("00-{command}-b7ad6b7169203331-00"))),
    ] {
        let mut cmd = json!({"type":"publish","id":id,"channel":"room:u","data":id});
        if let Some(tp) = tp {
            cmd["traceparent"] = json!(tp);
        }
        let ack = publish(&mut quiet, cmd).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        message(&mut sub, "room:u").await;
    }
    quiet.inner().close(None).await.expect("close");
    // Then a sampled client: once its spans from both nodes are in, the
    // unsampled ones (ended earlier, exported in order) would be too.
    let sampled = "6a3ce929d0e0e4736a3ce929d0e0e473";
    let mut loud = connect(
        &a,
        "/ws?client_id=loud",
        &[("traceparent", &traceparent(sampled, PARENT))],
    )
    .await;
    let ack = publish(
        &mut loud,
        json!({"type":"publish","id":3,"channel":"room:u","data":3}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    message(&mut sub, "room:u").await;
    loud.inner().close(None).await.expect("close");
    let spans = rx
        .wait_for(SPANS, |s| {
            let conn = find(s, |x| {
                x.name == "connect websocket" && x.trace_id == sampled
            });
            let plugin = find(s, |x| x.name == "plugin router" && x.trace_id == sampled);
            let deliver = find(s, |x| x.name == "deliver room:u" && x.trace_id == sampled);
            (conn.is_some() && plugin.is_some() && deliver.is_some()).then(|| s.to_vec())
        })
        .await;
    let leaked: Vec<_> = spans
        .iter()
        .filter(|x| {
            x.trace_id == unsampled
                || x.trace_id == command
                || x.attr("switchyard.client") == "quiet"
        })
        .collect();
    assert!(leaked.is_empty(), "spans of unsampled traces: {leaked:?}");
    assert_eq!(rx.bad_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_trace_context_is_ignored_and_fallbacks_are_traced() {
    let rx = Receiver::start();
    let gw = Gateway::start(&format!(
        "[tenants.default]\napi_keys = [\"k\"]\n{}",
        telemetry(&rx.endpoint(), "single")
    ));
    let bad_headers = [
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ];
    for (i, bad) in bad_headers.iter().enumerate() {
        let client_id = format!("bad{i}");
        let mut c = connect(
            &gw,
            &format!("/ws?client_id={client_id}"),
            &[("traceparent", bad), ("tracestate", "=,,not valid==")],
        )
        .await;
        let channel = format!("bad:{i}");
        let mut sub = Client::connect(&gw.ws_url("/ws")).await;
        sub.subscribe(1, &channel).await;
        // An invalid traceparent field in the command is ignored too.
        let ack = publish(
            &mut c,
            json!({"type":"publish","id":2,"channel":channel,"data":i,"traceparent":"00-zz"}),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{bad}: {ack}");
        message(&mut sub, &channel).await;
        c.inner().close(None).await.expect("close");
        let name = format!("publish {channel}");
        let (conn, publish_span, deliver) = rx
            .wait_for(SPANS, |s| {
                let conn = find(s, |x| {
                    x.name == "connect websocket" && x.attr("switchyard.client") == client_id
                })?;
                let p = find(s, |x| x.name == name)?;
                let d = find(s, |x| x.name == format!("deliver {channel}"))?;
                Some((conn.clone(), p.clone(), d.clone()))
            })
            .await;
        // A new trace: the connection span is a root, not the bad header's child.
        assert_eq!(conn.parent_span_id, "", "{bad}");
        assert_ne!(conn.trace_id, TRACE, "{bad}");
        assert_eq!(conn.trace_id.len(), 32);
        assert_eq!(
            (
                publish_span.trace_id.as_str(),
                publish_span.parent_span_id.as_str()
            ),
            (conn.trace_id.as_str(), conn.span_id.as_str()),
            "{bad}"
        );
        assert_eq!(deliver.parent_span_id, publish_span.span_id);
    }

    // Long-polling: the traceparent at connect is the connection's parent.
    let poll_trace = "11111111111111111111111111111111";
    let tp = traceparent(poll_trace, "2222222222222222");
    let (st, body) = switchyard_tests::http(
        gw.addr,
        "POST",
        "/poll?client_id=poller",
        &[("traceparent", &tp), ("content-length", "0")],
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let open: Value = serde_json::from_str(&body).expect("json");
    let session = open["session"].as_str().expect("session");
    let csrf = open["csrf"].as_str().expect("csrf");
    let (st, body) = switchyard_tests::http(
        gw.addr,
        "POST",
        &format!("/poll/session/{session}"),
        &[
            ("content-type", "application/json"),
            ("x-switchyard-csrf", csrf),
        ],
        Some(r#"{"type":"publish","id":1,"channel":"poll:1","data":1}"#),
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let p = rx
        .wait_for(SPANS, |s| {
            find(s, |x| {
                x.name == "publish poll:1" && x.trace_id == poll_trace
            })
            .cloned()
        })
        .await;
    assert_eq!(p.kind, kind::PRODUCER);
    assert_ne!(
        p.parent_span_id, "2222222222222222",
        "its parent is the connection span"
    );

    // The HTTP API's publishes are traced too (a new trace each).
    let (st, _) = gw
        .post_json("/api/publish", Some("k"), r#"{"channel":"api:1","data":1}"#)
        .await;
    assert_eq!(st, 200);
    rx.wait_for(SPANS, |s| find(s, |x| x.name == "publish api:1").cloned())
        .await;
    assert_eq!(rx.bad_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_telemetry_off_nothing_is_sent() {
    let rx = Receiver::start();
    // Tracing off, even with the standard OTLP variable pointing at the receiver.
    let endpoint = rx.endpoint();
    let mut off = Gateway::start_with_env(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ],
    );
    // A gateway with tracing on beside it: once its spans arrive, the off
    // one had as long to send anything.
    let on = Gateway::start(&telemetry(&endpoint, "control"));
    for gw in [&off, &on] {
        let tp = traceparent(TRACE, PARENT);
        let mut sub = Client::connect(&gw.ws_url("/ws")).await;
        sub.subscribe(1, "off:1").await;
        let mut c = connect(gw, "/ws", &[("traceparent", &tp)]).await;
        let ack = publish(
            &mut c,
            json!({"type":"publish","id":2,"channel":"off:1","data":1,"traceparent":tp}),
        )
        .await;
        assert_eq!(ack["type"], "ack");
        message(&mut sub, "off:1").await;
    }
    rx.wait_for(SPANS, |s| {
        find(s, |x| x.service == "control" && x.name == "deliver off:1").cloned()
    })
    .await;
    let (_, metrics) = off.get("/metrics").await;
    assert!(
        !metrics.contains("switchyard_trace_spans"),
        "no exporter when off"
    );
    // Stopping drains and would flush a tracer: still nothing from it.
    off.signal(libc::SIGTERM);
    assert!(
        off.wait_exit(Duration::from_secs(10)).is_some(),
        "off gateway exits"
    );
    let foreign: Vec<Span> = rx
        .spans()
        .into_iter()
        .filter(|s| s.service != "control")
        .collect();
    assert!(
        foreign.is_empty(),
        "the off gateway sent spans: {foreign:#?}"
    );
    assert_eq!(rx.bad_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_connect_traceparent_parents_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rx = Receiver::start();
    let gw = Gateway::start(&telemetry(&rx.endpoint(), "sse"));
    let sse_trace = "33333333333333333333333333333333";
    let tp = traceparent(sse_trace, "4444444444444444");
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /sse?client_id=sse-1 HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\ntraceparent: {tp}\r\n\r\n",
        gw.addr
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    // The welcome event names the session and its CSRF token.
    let mut buf = String::new();
    let welcome: Value = loop {
        if let Some(start) = buf.find("data: ")
            && let Some(end) = buf[start..].find("\n\n")
        {
            break serde_json::from_str(&buf[start + 6..start + end]).expect("event json");
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("sse data in time")
            .expect("read");
        assert!(n > 0, "stream ended: {buf}");
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let session = welcome["session"].as_str().expect("session");
    let csrf = welcome["csrf"].as_str().expect("csrf");
    let (st, body) = switchyard_tests::http(
        gw.addr,
        "POST",
        &format!("/sse/session/{session}"),
        &[
            ("content-type", "application/json"),
            ("x-switchyard-csrf", csrf),
        ],
        Some(r#"{"type":"publish","id":1,"channel":"sse:1","data":1}"#),
    )
    .await;
    assert_eq!(st, 202, "{body}");
    drop(stream); // ends the SSE connection: its span is exported
    let (conn, p) = rx
        .wait_for(SPANS, |s| {
            let c = find(s, |x| x.name == "connect sse" && x.trace_id == sse_trace)?;
            let p = find(s, |x| x.name == "publish sse:1" && x.trace_id == sse_trace)?;
            Some((c.clone(), p.clone()))
        })
        .await;
    assert_eq!(conn.parent_span_id, "4444444444444444");
    assert_eq!(conn.attr("switchyard.transport"), "sse");
    assert_eq!(p.parent_span_id, conn.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_never_blocks_publishing() {
    // Nothing listens there: every export fails; a tiny queue overflows.
    let closed = switchyard_tests::redis::free_port();
    let gw = Gateway::start(&format!(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{closed}\"\nexport_interval = \"100ms\"\nqueue_spans = 4\n"
    ));
    let mut sub = Client::connect(&gw.ws_url("/ws")).await;
    sub.subscribe(1, "down:1").await;
    let tp = traceparent(TRACE, PARENT);
    let mut c = connect(&gw, "/ws", &[("traceparent", &tp)]).await;
    let started = std::time::Instant::now();
    for i in 0..100u64 {
        let ack = publish(
            &mut c,
            json!({"type":"publish","id":i + 10,"channel":"down:1","data":i}),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for i in 0..100u64 {
        let m = message(&mut sub, "down:1").await;
        assert_eq!(m["data"], json!(i));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "publishing waited on the exporter: {:?}",
        started.elapsed()
    );
    assert_eq!(gw.get("/healthz").await.0, 200);
    gw.wait_metric_value("switchyard_trace_spans_total{outcome=\"failed\"}", |v| {
        v > 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yjs_connect_traceparent_parents_the_connection() {
    use futures_util::{SinkExt, StreamExt};
    let rx = Receiver::start();
    let gw = Gateway::start(&format!(
        "[tenants.t]\ndocuments = [\"yjs:*\"]\n{}",
        telemetry(&rx.endpoint(), "yjs")
    ));
    let yjs_trace = "55555555555555555555555555555555";
    let tp = traceparent(yjs_trace, "6666666666666666");
    let mut req = gw
        .ws_url("/yjs/t/room-1")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("traceparent", HeaderValue::from_str(&tp).expect("value"));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws.close(None).await.expect("close");
    // Read to the end of the close handshake.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(SPANS, ws.next()).await {}
    let conn = rx
        .wait_for(SPANS, |s| {
            find(s, |x| x.name == "connect yjs" && x.trace_id == yjs_trace).cloned()
        })
        .await;
    assert_eq!(conn.parent_span_id, "6666666666666666");
    assert_eq!(conn.kind, kind::SERVER);
    assert_eq!(conn.attr("switchyard.tenant"), "t");
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
}
