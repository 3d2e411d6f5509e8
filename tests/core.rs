//! Core gateway behaviour through the real binary: protocol v1, recovery,
//! handshake checks, limits, heartbeats, backpressure, HTTP API, metrics, drain.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchyard_tests::{Client, Gateway, http_full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How long a test waits for one expected reply before it fails.
const WAIT_REPLY: Duration = Duration::from_secs(10);

const BASE: &str = r#"
[limits]
heartbeat_interval = "30s"
idle_timeout = "60s"
[tenants.default]
api_keys = ["test-key"]
history_size = 5
[tenants.acme]
origins = ["https://app.acme.test"]
api_keys = ["acme-key"]
[diagnostics]
echo = true
"#;

#[tokio::test]
async fn two_clients_subscribe_publish_with_acked_seq() {
    let gw = Gateway::start(BASE);
    let mut a = Client::connect(&gw.ws_url("/ws")).await;
    let mut b = Client::connect(&gw.ws_url("/ws")).await;
    assert_eq!(a.welcome["protocol"], 1);
    assert!(a.welcome["session"].is_string());
    assert_ne!(a.welcome["client"], b.welcome["client"]);
    let sa = a.subscribe(1, "room:1").await;
    let sb = b.subscribe(1, "room:1").await;
    assert_eq!(sa["seq"], 0);
    assert_eq!(sa["epoch"], sb["epoch"]);
    for i in 0..3 {
        b.send_json(json!({"type":"publish","id":10+i,"channel":"room:1","data":{"n":i}}))
            .await;
        // b is subscribed too: it gets its own message and the ack (in either order)
        let (x, y) = (b.recv_json().await, b.recv_json().await);
        let (ack, own) = if x["type"] == "ack" { (x, y) } else { (y, x) };
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["id"], 10 + i);
        assert_eq!(ack["seq"], i + 1);
        assert_eq!(own["type"], "message");
        assert_eq!(own["seq"], i + 1);
    }
    for i in 0..3 {
        let m = a.recv_type("message").await;
        assert_eq!(m["channel"], "room:1");
        assert_eq!(m["seq"], i + 1);
        assert_eq!(m["data"]["n"], i);
        assert_eq!(m["epoch"], sa["epoch"]);
    }
    // unsubscribe → no more deliveries
    a.send_json(json!({"type":"unsubscribe","id":5,"channel":"room:1"}))
        .await;
    let u = a.recv_type("unsubscribed").await;
    assert_eq!(u["id"], 5);
    b.send_json(json!({"type":"publish","id":20,"channel":"room:1","data":"x"}))
        .await;
    b.recv_type("ack").await;
    a.send_json(json!({"type":"ping","id":6})).await;
    let next = a.recv_json().await;
    assert_eq!(
        next,
        json!({"type":"pong","id":6}),
        "no message after unsubscribe"
    );
}

#[tokio::test]
async fn repeated_msg_id_is_acked_not_redelivered() {
    let gw = Gateway::start(BASE);
    let mut s = Client::connect(&gw.ws_url("/ws")).await;
    let mut p = Client::connect(&gw.ws_url("/ws")).await;
    s.subscribe(1, "room:d").await;
    let cmd = json!({"type":"publish","id":1,"channel":"room:d","data":"once","msgId":"7f1c"});
    p.send_json(cmd.clone()).await;
    let first = p.recv_type("ack").await;
    p.send_json(cmd).await;
    let second = p.recv_type("ack").await;
    assert_eq!(first["seq"], second["seq"]);
    p.send_json(json!({"type":"publish","id":2,"channel":"room:d","data":"next","msgId":"8a2d"}))
        .await;
    assert_eq!(p.recv_type("ack").await["seq"], 2);
    let m1 = s.recv_type("message").await;
    let m2 = s.recv_type("message").await;
    assert_eq!(
        (m1["data"].clone(), m2["data"].clone()),
        (json!("once"), json!("next"))
    );
}

#[tokio::test]
async fn recovery_with_since_and_recovered_false_past_history() {
    let gw = Gateway::start(BASE);
    let mut s = Client::connect(&gw.ws_url("/ws")).await;
    let sub = s.subscribe(1, "room:r").await;
    let epoch = sub["epoch"].as_str().expect("epoch").to_owned();
    let mut p = Client::connect(&gw.ws_url("/ws")).await;
    for i in 0..3 {
        p.send_json(json!({"type":"publish","id":i,"channel":"room:r","data":i}))
            .await;
        p.recv_type("ack").await;
    }
    let last = s.recv_type("message").await;
    assert_eq!(last["seq"], 1);
    drop(s); // disconnect having seen seq 1
    for i in 3..5 {
        p.send_json(json!({"type":"publish","id":i,"channel":"room:r","data":i}))
            .await;
        p.recv_type("ack").await;
    }
    let mut s2 = Client::connect(&gw.ws_url("/ws")).await;
    s2.send_json(
        json!({"type":"subscribe","id":2,"channel":"room:r","since":{"epoch":epoch,"seq":1}}),
    )
    .await;
    let r = s2.recv_type("subscribed").await;
    assert_eq!(r["recovered"], true);
    assert_eq!(r["seq"], 5);
    let seqs: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(s2.recv_type("message").await["seq"].as_u64().expect("seq"));
        }
        v
    };
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    // live messages follow without gap or duplicate
    p.send_json(json!({"type":"publish","id":9,"channel":"room:r","data":"live"}))
        .await;
    assert_eq!(s2.recv_type("message").await["seq"], 6);
    // history holds 5 messages: seq 2..6; since seq 0 is past it
    for i in 0..3 {
        p.send_json(json!({"type":"publish","id":20+i,"channel":"room:r","data":i}))
            .await;
        p.recv_type("ack").await;
    }
    let mut s3 = Client::connect(&gw.ws_url("/ws")).await;
    s3.send_json(
        json!({"type":"subscribe","id":3,"channel":"room:r","since":{"epoch":epoch,"seq":1}}),
    )
    .await;
    let r = s3.recv_type("subscribed").await;
    assert_eq!(r["recovered"], false);
    assert_eq!(r["seq"], 9);
    // stale epoch
    s3.send_json(
        json!({"type":"subscribe","id":4,"channel":"room:r","since":{"epoch":"gone","seq":9}}),
    )
    .await;
    assert_eq!(s3.recv_type("subscribed").await["recovered"], false);
}

#[tokio::test]
async fn handshake_checks() {
    let gw = Gateway::start(BASE);
    // Origin not on the tenant's allow-list → 403 before the upgrade
    let mut req = gw.ws_url("/ws/acme").into_client_request().expect("req");
    req.headers_mut()
        .insert("origin", "https://evil.test".parse().expect("hv"));
    let err = Client::connect_with(req).await.err().expect("refused");
    assert!(err.to_string().contains("403"), "{err}");
    // allowed origin, and no origin at all
    let mut req = gw.ws_url("/ws/acme").into_client_request().expect("req");
    req.headers_mut()
        .insert("origin", "https://app.acme.test".parse().expect("hv"));
    Client::connect_with(req).await.expect("allowed origin");
    Client::connect(&gw.ws_url("/ws/acme")).await;
    // unknown tenant
    let err = Client::connect_with(gw.ws_url("/ws/nope").into_client_request().expect("req"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("404"), "{err}");
    // only unknown subprotocols → 400; ours is negotiated
    let mut req = gw.ws_url("/ws").into_client_request().expect("req");
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("hv"));
    let err = Client::connect_with(req).await.err().expect("refused");
    assert!(err.to_string().contains("400"), "{err}");
    let mut req = gw.ws_url("/ws").into_client_request().expect("req");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "switchyard.v1".parse().expect("hv"),
    );
    Client::connect_with(req).await.expect("v1");
    // client id from X-Client-Id
    let mut req = gw.ws_url("/ws").into_client_request().expect("req");
    req.headers_mut()
        .insert("x-client-id", "alice-1".parse().expect("hv"));
    let c = Client::connect_with(req).await.expect("ok");
    assert_eq!(c.welcome["client"], "alice-1");
    let c = Client::connect(&gw.ws_url("/ws?client_id=bob-2")).await;
    assert_eq!(c.welcome["client"], "bob-2");
    // raw HTTP: wrong version → 426 with Sec-WebSocket-Version, plain GET → 426, POST → 405
    let base = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut h = base.to_vec();
    h.push(("sec-websocket-version", "8"));
    let (st, head, body) = http_full(gw.addr, "GET", "/ws", &h, None).await;
    assert_eq!(st, 426, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13")
    );
    assert!(body.contains("13"));
    let (st, _, body) = http_full(gw.addr, "GET", "/ws", &[], None).await;
    assert_eq!(st, 426);
    assert!(body.contains("Upgrade"), "{body}");
    let mut h = base.to_vec();
    h[2] = ("sec-websocket-key", "not-a-key");
    h.push(("sec-websocket-version", "13"));
    let (st, _, _) = http_full(gw.addr, "GET", "/ws", &h, None).await;
    assert_eq!(st, 400);
    let (st, _, _) = http_full(gw.addr, "POST", "/ws", &[], None).await;
    assert_eq!(st, 405);
}

#[tokio::test]
async fn oversize_message_closes_1009() {
    let gw = Gateway::start("[limits]\nmax_message_bytes = 1024\n");
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    let big = format!(
        r#"{{"type":"publish","id":1,"channel":"room:1","data":"{}"}}"#,
        "x".repeat(2000)
    );
    c.send_text(&big).await;
    assert_eq!(c.close_code().await, Some(1009));
}

#[tokio::test]
async fn malformed_input_gets_error_and_connection_lives() {
    let gw = Gateway::start(BASE);
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.send_text("{not json").await;
    let e = c.recv_json().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "bad_request");
    c.send_json(json!({"type":"teleport","id":42})).await;
    let e = c.recv_json().await;
    assert_eq!(
        (e["code"].clone(), e["id"].clone()),
        (json!("unknown_type"), json!(42))
    );
    c.send_json(json!({"type":"subscribe","id":43,"channel":"no colon"}))
        .await;
    assert_eq!(c.recv_json().await["code"], "bad_channel");
    // A binary frame that is no StatePatch (document channels take those).
    c.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(c.recv_json().await["code"], "invalid");
    c.send_json(json!({"type":"ping","id":44})).await;
    assert_eq!(c.recv_json().await, json!({"type":"pong","id":44}));
}

#[tokio::test]
async fn sustained_garbage_closes_1008() {
    let gw = Gateway::start("[limits]\nprotocol_strikes = 5\n");
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    for _ in 0..5 {
        c.send_text("garbage").await;
    }
    let (frames, code) = c.drain_until_close().await;
    assert_eq!(code, Some(1008));
    assert_eq!(
        frames.iter().filter(|f| f["type"] == "error").count(),
        5,
        "every bad frame answered"
    );
}

#[tokio::test]
async fn publish_rate_limit_errors_then_4029() {
    let gw =
        Gateway::start("[limits]\npublish_rate = 1\npublish_burst = 3\nrate_limit_strikes = 5\n");
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    for i in 0..3 {
        c.send_json(json!({"type":"publish","id":i,"channel":"room:1","data":i}))
            .await;
        assert_eq!(c.recv_type("ack").await["id"], i);
    }
    c.send_json(json!({"type":"publish","id":99,"channel":"room:1","data":0}))
        .await;
    let e = c.recv_json().await;
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(e["id"], 99);
    for i in 0..10 {
        if c.send_json_ok(json!({"type":"publish","id":100+i,"channel":"room:1","data":0}))
            .await
        {
            continue;
        }
    }
    assert_eq!(c.close_code().await, Some(4029));
}

trait SendOk {
    async fn send_json_ok(&mut self, v: serde_json::Value) -> bool;
}

impl SendOk for Client {
    async fn send_json_ok(&mut self, v: serde_json::Value) -> bool {
        self.send(Message::text(v.to_string())).await.is_ok()
    }
}

/// Performs the upgrade on a raw TCP socket and returns it, never answering pings.
async fn raw_upgrade(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    s
}

#[tokio::test]
async fn silent_peer_is_terminated_after_idle_timeout() {
    let gw = Gateway::start("[limits]\nheartbeat_interval = \"200ms\"\nidle_timeout = \"1s\"\n");
    let mut s = raw_upgrade(gw.addr, "/ws").await;
    let started = Instant::now();
    // Read (without ever answering) until the server cuts the connection.
    let mut buf = vec![0u8; 4096];
    let mut pings = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("server must terminate the zombie");
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => pings += buf[..n].iter().filter(|b| **b == 0x89).count(),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before idle_timeout"
    );
    assert!(pings >= 2, "server pinged the peer ({pings})");
    // a peer that answers pings (tungstenite does while it is polled) stays past the idle timeout
    let mut ok = Client::connect(&gw.ws_url("/ws")).await;
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ok.send_json(json!({"type":"ping","id":i})).await;
        assert_eq!(ok.recv_json().await["type"], "pong");
    }
    gw.wait_metric("switchyard_zombies_terminated_total 1")
        .await;
    // The answering peer's pongs were timed: a non-zero count, not just the family.
    gw.wait_metric_value("switchyard_heartbeat_rtt_seconds_count", |n| n >= 1.0)
        .await;
}

#[tokio::test]
async fn stalled_reader_gets_4008_while_fast_subscriber_gets_everything() {
    let gw = Gateway::start(
        "[limits]\nsend_queue_messages = 64\nclose_timeout = \"20s\"\n[tenants.default]\napi_keys = [\"k\"]\n",
    );
    let mut fast = Client::connect(&gw.ws_url("/ws")).await;
    fast.subscribe(1, "room:flood").await;
    // the stalled reader: a raw socket that subscribes and then stops reading
    let mut slow = raw_upgrade(gw.addr, "/ws").await;
    let sub = br#"{"type":"subscribe","id":1,"channel":"room:flood"}"#;
    let mut frame = vec![0x81u8, 0x80 | sub.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(sub);
    slow.write_all(&frame).await.expect("subscribe");
    // read up to its `subscribed` reply, then never read again
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains("\"subscribed\"") {
        let n = tokio::time::timeout(WAIT_REPLY, slow.read(&mut buf))
            .await
            .expect("subscribed reply")
            .expect("read");
        assert!(n > 0, "closed before subscribed");
        seen.extend_from_slice(&buf[..n]);
    }

    let total = 3000u64;
    let payload = "y".repeat(2000);
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < total as usize {
            let m = fast.recv_type("message").await;
            seqs.push(m["seq"].as_u64().expect("seq"));
        }
        seqs
    });
    let mut p = Client::connect(&gw.ws_url("/ws")).await;
    for i in 0..total {
        let body = json!({"channel":"room:flood","data":{"i":i,"pad":payload}}).to_string();
        let (st, _) = gw.post_json("/api/publish", Some("k"), &body).await;
        assert_eq!(st, 200);
    }
    p.send_json(json!({"type":"ping","id":1})).await;
    let seqs = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("fast subscriber keeps up")
        .expect("join");
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "fast subscriber got everything in order"
    );

    // Now read the stalled socket: buffered frames, then close 4008.
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        slow,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let mut code = None;
    let mut messages = 0u64;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        match m {
            Message::Close(f) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Message::Text(_) => messages += 1,
            _ => {}
        }
    }
    assert_eq!(code, Some(4008));
    assert!(
        messages < total,
        "the slow consumer's queue was dropped ({messages})"
    );
    // Poll on so tungstenite flushes its close reply, completing the handshake.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    let metrics = gw
        .wait_metric("switchyard_connections_closed_total{code=\"4008\"} 1")
        .await;
    assert!(
        metrics.contains("switchyard_send_queue_overflows_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_drains_with_server_shutdown_and_1001() {
    let mut gw = Gateway::start("[server]\ndrain_timeout = \"10s\"\nreconnect_in = \"2s\"\n");
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(&gw.ws_url("/ws")).await;
        c.subscribe(1, "room:drain").await;
        clients.push(c);
    }
    gw.signal(libc::SIGTERM);
    for c in &mut clients {
        let (frames, code) = c.drain_until_close().await;
        let last = frames.last().expect("a frame before close");
        assert_eq!(last["type"], "SERVER_SHUTDOWN");
        assert_eq!(last["reconnectIn"], 2000);
        assert_eq!(code, Some(1001));
    }
    drop(clients);
    let st = gw.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(st.success(), "exit status {st:?}");
}

#[tokio::test]
async fn draining_fails_readiness_then_closes_the_listener() {
    let gw = Gateway::start("[server]\ndrain_timeout = \"5s\"\ndrain_grace = \"1500ms\"\n");
    assert_eq!(gw.get("/readyz").await.0, 200);
    // hold a connection that never answers, so the drain lasts
    let _stuck = raw_upgrade(gw.addr, "/ws").await;
    gw.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.get("/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "readiness never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.get("/healthz").await.0, 200, "still alive");
    let err = Client::connect_with(gw.ws_url("/ws").into_client_request().expect("req"))
        .await
        .err()
        .expect("no new sessions while draining");
    assert!(err.to_string().contains("503"), "{err}");
    // The listener closes once the grace period is over: wait for that event.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(gw.addr),
        )
        .await;
        if matches!(r, Ok(Err(_)) | Err(_)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "listener never closed after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn handshake_timeout_and_connection_limit() {
    let gw = Gateway::start("[limits]\nhandshake_timeout = \"500ms\"\nmax_connections = 2\n");
    // a client that connects and never sends its request is cut
    let mut idle = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("the server closes a connection that sends no request");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before handshake_timeout"
    );
    // over max_connections → 503
    let _a = Client::connect(&gw.ws_url("/ws")).await;
    let _b = Client::connect(&gw.ws_url("/ws")).await;
    let err = Client::connect_with(gw.ws_url("/ws").into_client_request().expect("req"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn http_publish_api() {
    let gw = Gateway::start(BASE);
    let mut s = Client::connect(&gw.ws_url("/ws")).await;
    s.subscribe(1, "news:1").await;
    let body = r#"{"channel":"news:1","data":{"headline":"hi"}}"#;
    assert_eq!(gw.post_json("/api/publish", None, body).await.0, 401);
    assert_eq!(
        gw.post_json("/api/publish", Some("wrong"), body).await.0,
        401
    );
    let (st, resp) = gw.post_json("/api/publish", Some("test-key"), body).await;
    assert_eq!(st, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).expect("json");
    assert_eq!(v["seq"], 1);
    let m = s.recv_type("message").await;
    assert_eq!(m["data"]["headline"], "hi");
    let (st, resp) = gw
        .post_json("/api/publish", Some("test-key"), "{oops")
        .await;
    assert_eq!(st, 400);
    assert!(resp.contains("invalid JSON"), "{resp}");
    let (st, _) = gw
        .post_json(
            "/api/publish",
            Some("test-key"),
            r#"{"channel":"bad","data":1}"#,
        )
        .await;
    assert_eq!(st, 400);
    // the acme key publishes into acme, not default
    let (st, _) = gw
        .post_json(
            "/api/publish",
            Some("acme-key"),
            r#"{"channel":"news:1","data":2}"#,
        )
        .await;
    assert_eq!(st, 200);
    s.send_json(json!({"type":"ping","id":2})).await;
    assert_eq!(
        s.recv_json().await["type"],
        "pong",
        "acme publish did not reach default"
    );
    // directed send
    let client = s.welcome["client"].as_str().expect("client").to_owned();
    let (st, _) = gw
        .post_json(
            "/api/send",
            Some("test-key"),
            &json!({"client":client,"data":{"x":1}}).to_string(),
        )
        .await;
    assert_eq!(st, 202);
    assert_eq!(s.recv_json().await, json!({"type":"direct","data":{"x":1}}));
    let (st, _) = gw
        .post_json(
            "/api/send",
            Some("test-key"),
            r#"{"client":"nobody","data":1}"#,
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn metrics_expose_the_families() {
    let gw = Gateway::start(BASE);
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.subscribe(1, "room:m").await;
    c.send_json(json!({"type":"publish","id":2,"channel":"room:m","data":1}))
        .await;
    c.recv_type("message").await;
    c.send_text("junk").await;
    c.recv_type("error").await;
    drop(c);
    let m = gw
        .wait_metric("switchyard_connections_closed_total{code=")
        .await;
    for family in [
        "switchyard_connections_active",
        "switchyard_connections_opened_total{transport=\"ws\"} 1",
        "switchyard_connections_closed_total{code=",
        "switchyard_messages_in_total",
        "switchyard_messages_out_total",
        "switchyard_messages_failed_total{reason=\"malformed\"} 1",
        "switchyard_frame_size_bytes_bucket",
        // One delivery, recorded: a connection's first is always sampled.
        "switchyard_publish_to_deliver_seconds_count{transport=\"ws\"} 1",
        "switchyard_heartbeat_rtt_seconds",
        "switchyard_send_queue_overflows_total",
    ] {
        assert!(m.contains(family), "missing {family}:\n{m}");
    }
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
}

#[tokio::test]
async fn echo_endpoint_uses_the_connection_machinery() {
    let gw = Gateway::start("[diagnostics]\necho = true\n[limits]\nmax_message_bytes = 1024\n");
    let mut ws = Client::connect_raw(&gw.ws_url("/echo")).await;
    ws.send(Message::text("hello")).await.expect("send");
    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .expect("send");
    let mut got = Vec::new();
    while got.len() < 2 {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => got.push(m),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got[0], Message::text("hello"));
    assert_eq!(got[1], Message::binary(vec![0u8, 159, 146, 150]));
    ws.send(Message::binary(vec![0u8; 2048]))
        .await
        .expect("send");
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1009));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let off = Gateway::start("");
    assert_eq!(off.get("/echo").await.0, 404);
}

#[test]
fn config_check_names_unknown_keys() {
    let dir = switchyard_tests::scratch_dir("cfg");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_mesage_bytes = 10\n").expect("write");
    let out = std::process::Command::new(switchyard_tests::binary())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_mesage_bytes"), "{err}");
    let good = dir.join("good.toml");
    std::fs::write(&good, "[limits]\npublish_rate = 5\n").expect("write");
    let out = std::process::Command::new(switchyard_tests::binary())
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("publish_rate = 5"), "{text}");
    assert!(
        text.contains("max_message_bytes = 65536"),
        "effective config printed: {text}"
    );
    let out = std::process::Command::new(switchyard_tests::binary())
        .arg("--version")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
}

/// Flow control: a client that pipelines publishes on its own channel and
/// reads promptly is slowed by TCP backpressure, never closed for its own
/// replies — even with a tiny queue (issue 11, point 2).
#[tokio::test]
async fn pipelining_client_with_a_small_queue_is_never_closed_for_its_replies() {
    let gw = Gateway::start(
        "[limits]\nsend_queue_messages = 32\npublish_rate = 100000\npublish_burst = 100000\n",
    );
    let ws = Client::connect_raw(&gw.ws_url("/ws")).await;
    const N: u64 = 2000;
    let (mut tx, mut rx) = ws.split();
    let sub = json!({"type":"subscribe","id":1,"channel":"pipe:1"});
    tx.send(Message::text(sub.to_string()))
        .await
        .expect("subscribe");
    // welcome, then subscribed
    for want in ["welcome", "subscribed"] {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => assert!(t.contains(want), "{t}"),
            other => panic!("{want}: {other:?}"),
        }
    }
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let cmd = json!({"type":"publish","id":10 + i,"channel":"pipe:1","data":i});
            tx.send(Message::text(cmd.to_string())).await.expect("send");
        }
        tx
    });
    let (mut acks, mut msgs) = (0u64, 0u64);
    while acks < N || msgs < N {
        match tokio::time::timeout(WAIT_REPLY, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                match v["type"].as_str() {
                    Some("ack") => acks += 1,
                    Some("message") => msgs += 1,
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?} after {acks} acks"),
            Ok(Some(Ok(_))) => {}
            other => panic!("connection ended after {acks} acks, {msgs} messages: {other:?}"),
        }
    }
    drop(writer.await.expect("writer"));
    let (_, m) = gw.get("/metrics").await;
    assert!(
        !m.contains("switchyard_connections_closed_total{code=\"4008\"}"),
        "{m}"
    );
}

/// A recovery replay longer than the queue streams under the same flow
/// control instead of closing the subscriber with 4008.
#[tokio::test]
async fn a_replay_longer_than_the_queue_is_delivered_whole() {
    let gw = Gateway::start(
        "[limits]\nsend_queue_messages = 16\n[tenants.default]\napi_keys = [\"k\"]\nhistory_size = 500\n",
    );
    let mut first = Client::connect(&gw.ws_url("/ws")).await;
    let sub = first.subscribe(1, "replay:1").await;
    let epoch = sub["epoch"].as_str().expect("epoch").to_owned();
    drop(first);
    for i in 0..300 {
        let body = json!({"channel":"replay:1","data":i}).to_string();
        assert_eq!(gw.post_json("/api/publish", Some("k"), &body).await.0, 200);
    }
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.send_json(
        json!({"type":"subscribe","id":2,"channel":"replay:1","since":{"epoch":epoch,"seq":0}}),
    )
    .await;
    let s = c.recv_type("subscribed").await;
    assert_eq!(s["recovered"], true, "{s}");
    for seq in 1..=300u64 {
        let m = c.recv_type("message").await;
        assert_eq!(m["seq"], seq);
    }
}

async fn connect_as(gw: &Gateway, forwarded_for: Option<&str>) -> Result<Client, String> {
    let mut req = gw.ws_url("/ws").into_client_request().expect("req");
    if let Some(ip) = forwarded_for {
        req.headers_mut()
            .insert("x-forwarded-for", ip.parse().expect("header"));
    }
    Client::connect_with(req).await.map_err(|e| e.to_string())
}

/// `max_connections_per_ip`: 429 before the upgrade (fallbacks too), a slot
/// frees when a connection ends; proxy headers count only from trusted proxies.
#[tokio::test]
async fn per_ip_connection_limit_and_trusted_proxies() {
    let gw = Gateway::start("[limits]\nmax_connections_per_ip = 2\n");
    let a = connect_as(&gw, None).await.expect("1st");
    let _b = connect_as(&gw, None).await.expect("2nd");
    let err = connect_as(&gw, None).await.err().expect("3rd is refused");
    assert!(err.contains("429"), "{err}");
    // An untrusted peer's X-Forwarded-For is ignored: still the same address.
    let err = connect_as(&gw, Some("203.0.113.9"))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("429"), "{err}");
    assert_eq!(
        gw.post_json("/poll", None, "").await.0,
        429,
        "fallbacks too"
    );
    gw.wait_metric("switchyard_handshake_rejections_total{reason=\"per_ip_connections\"}")
        .await;
    drop(a);
    let deadline = Instant::now() + WAIT_REPLY;
    while connect_as(&gw, None).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Behind a trusted proxy, each forwarded client has its own slots.
    let gw = Gateway::start(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[limits]\nmax_connections_per_ip = 2\n",
    );
    let mut held = Vec::new();
    for ip in ["203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.2"] {
        held.push(
            connect_as(&gw, Some(ip))
                .await
                .expect("two per forwarded client"),
        );
    }
    let err = connect_as(&gw, Some("203.0.113.1"))
        .await
        .err()
        .expect("third");
    assert!(err.contains("429"), "{err}");
    assert!(connect_as(&gw, Some("203.0.113.3")).await.is_ok());
}

#[tokio::test]
async fn per_ip_handshake_rate() {
    let gw = Gateway::start("[limits]\nhandshakes_per_ip_per_sec = 1\n");
    // Burst 2, then 1/s: in t seconds at most 2 + t upgrades succeed, however
    // slow the machine is, and a quick run meets a refusal at the third.
    let start = Instant::now();
    let mut held = Vec::new();
    let refused = loop {
        match connect_as(&gw, None).await {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() < 30, "never refused");
    };
    assert!(refused.contains("429"), "{refused}");
    let allowed = 2.0 + start.elapsed().as_secs_f64();
    assert!(
        held.len() as f64 <= allowed,
        "{} upgrades in {:?}",
        held.len(),
        start.elapsed()
    );
    assert!(held.len() >= 2, "the burst of two went through");
    gw.wait_metric("switchyard_handshake_rejections_total{reason=\"per_ip_handshakes\"}")
        .await;
}
