//! SSE and long-polling: the same sessions, commands and recovery as WebSocket.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::{Client, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CFG: &str = "[tenants.default]\napi_keys = [\"k\"]\norigins = [\"https://app.test\"]\n[tenants.wsonly]\nfallbacks = []\n[tenants.pollonly]\nfallbacks = [\"poll\"]\npoll_interval = \"1500ms\"\n";

/// POSTs a command to a fallback session with its CSRF token (and an Origin).
async fn command(gw: &Gateway, path: &str, csrf: &str, origin: Option<&str>, body: &str) -> u16 {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("x-switchyard-csrf", csrf),
    ];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    switchyard_tests::http(gw.addr, "POST", path, &headers, Some(body))
        .await
        .0
}

/// A raw SSE reader: yields the JSON of each `data:` event.
struct Sse {
    stream: TcpStream,
    buf: String,
    head: String,
}

impl Sse {
    async fn open(addr: std::net::SocketAddr, path: &str) -> Sse {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut s = Sse {
            stream,
            buf: String::new(),
            head: String::new(),
        };
        while !s.buf.contains("\r\n\r\n") {
            s.fill().await;
        }
        let (head, rest) = s.buf.split_once("\r\n\r\n").expect("head");
        s.head = head.to_owned();
        s.buf = rest.to_owned();
        s
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("sse data in time")
            .expect("read");
        assert!(n > 0, "stream ended");
        self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(start) = self.buf.find("data: ")
                && let Some(end) = self.buf[start..].find("\n\n")
            {
                let data = self.buf[start + 6..start + end].to_owned();
                self.buf = self.buf[start + end + 2..].to_owned();
                return serde_json::from_str(&data).expect("event json");
            }
            self.fill().await;
        }
    }

    async fn next_type(&mut self, t: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == t {
                return v;
            }
        }
    }

    fn session(&self) -> String {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("x-switchyard-session: "))
            .expect("session header")
            .trim()
            .to_owned()
    }
}

#[tokio::test]
async fn sse_session_subscribes_receives_and_sends_commands() {
    let gw = Gateway::start(CFG);
    let mut sse = Sse::open(gw.addr, "/sse?channels=room:1&client_id=sse-1").await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    assert!(sse.head.contains("text/event-stream"));
    let w = sse.next().await;
    assert_eq!(
        (w["type"].clone(), w["client"].clone()),
        (json!("welcome"), json!("sse-1"))
    );
    let csrf = w["csrf"]
        .as_str()
        .expect("the SSE welcome carries a CSRF token")
        .to_owned();
    let sub = sse.next_type("subscribed").await;
    assert_eq!(sub["channel"], "room:1");
    let epoch = sub["epoch"].as_str().expect("epoch").to_owned();
    // a WebSocket publisher reaches the SSE subscriber
    let mut ws = Client::connect(&gw.ws_url("/ws")).await;
    ws.send_json(json!({"type":"publish","id":1,"channel":"room:1","data":{"via":"ws"}}))
        .await;
    ws.recv_type("ack").await;
    let m = sse.next_type("message").await;
    assert_eq!(
        (m["seq"].clone(), m["data"]["via"].clone()),
        (json!(1), json!("ws"))
    );
    // commands over POST, replies on the stream
    let id = sse.session();
    let path = format!("/sse/session/{id}");
    let publish = r#"{"type":"publish","id":"p0","channel":"room:1","data":"forged"}"#;
    // Without the session's token, or from a foreign page: 403, nothing runs.
    assert_eq!(gw.post_json(&path, None, publish).await.0, 403);
    assert_eq!(command(&gw, &path, "wrong", None, publish).await, 403);
    assert_eq!(
        command(&gw, &path, &csrf, Some("https://evil.test"), publish).await,
        403
    );
    let st = command(
        &gw,
        &path,
        &csrf,
        Some("https://app.test"),
        r#"{"type":"publish","id":"p1","channel":"room:1","data":"from-sse"}"#,
    )
    .await;
    assert_eq!(st, 202);
    let ack = sse.next_type("ack").await;
    assert_eq!(
        (ack["id"].clone(), ack["seq"].clone()),
        (json!("p1"), json!(2)),
        "seq 2: the refused publishes never ran"
    );
    assert_eq!(command(&gw, &path, &csrf, None, "nope").await, 202);
    assert_eq!(sse.next_type("error").await["code"], "bad_request");
    // resume with since: everything after seq 1
    let mut again = Sse::open(
        gw.addr,
        &format!("/sse?channels=room:1&since=room:1@{epoch}:1"),
    )
    .await;
    let sub = again.next_type("subscribed").await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(again.next_type("message").await["data"], "from-sse");
    // unknown session
    assert_eq!(gw.post_json("/sse/session/nope", None, "{}").await.0, 404);
}

#[tokio::test]
async fn long_poll_session_round_trip() {
    let gw = Gateway::start(CFG);
    let (st, body) = gw.post_json("/poll?channels=news:1", None, "").await;
    assert_eq!(st, 200, "{body}");
    let open: Value = serde_json::from_str(&body).expect("json");
    let id = open["session"].as_str().expect("session").to_owned();
    let csrf = open["csrf"].as_str().expect("csrf").to_owned();
    assert_eq!(
        open["pollInterval"], 3000,
        "the tenant's poll_interval (default 3s)"
    );
    let mut frames: Vec<Value> = open["frames"].as_array().expect("frames").clone();
    if frames.len() < 2 {
        let (_, b) = gw.get(&format!("/poll/session/{id}?wait=5")).await;
        frames.extend(serde_json::from_str::<Vec<Value>>(&b).expect("json"));
    }
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[1]["type"], "subscribed");
    let (st, _) = gw
        .post_json(
            "/api/publish",
            Some("k"),
            r#"{"channel":"news:1","data":"hello"}"#,
        )
        .await;
    assert_eq!(st, 200);
    let (st, b) = gw.get(&format!("/poll/session/{id}?wait=5")).await;
    assert_eq!(st, 200);
    let got: Vec<Value> = serde_json::from_str(&b).expect("json");
    assert_eq!(
        (got[0]["type"].clone(), got[0]["data"].clone()),
        (json!("message"), json!("hello"))
    );
    // a poll with nothing queued waits, then returns an empty list
    let (st, b) = gw.get(&format!("/poll/session/{id}?wait=1")).await;
    assert_eq!((st, b.as_str()), (200, "[]"));
    let path = format!("/poll/session/{id}");
    assert_eq!(
        gw.post_json(&path, None, r#"{"type":"ping","id":8}"#)
            .await
            .0,
        403,
        "no CSRF token"
    );
    assert_eq!(
        command(&gw, &path, &csrf, None, r#"{"type":"ping","id":9}"#).await,
        202
    );
    let (_, b) = gw.get(&format!("/poll/session/{id}?wait=5")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&b).expect("json"),
        json!([{"type":"pong","id":9}])
    );
    // directed send reaches a long-poll client too
    let client = frames[0]["client"].as_str().expect("client").to_owned();
    let (st, _) = gw
        .post_json(
            "/api/send",
            Some("k"),
            &json!({"client":client,"data":1}).to_string(),
        )
        .await;
    assert_eq!(st, 202);
    let (_, b) = gw.get(&format!("/poll/session/{id}?wait=5")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&b).expect("json"),
        json!([{"type":"direct","data":1}])
    );
    // close
    let (st, _) = switchyard_tests::http(
        gw.addr,
        "GET",
        &format!("{path}?wait=1"),
        &[("origin", "https://evil.test")],
        None,
    )
    .await;
    assert_eq!(st, 403, "a foreign page cannot read the session");
    let (st, _) = switchyard_tests::http(gw.addr, "DELETE", &path, &[], None).await;
    assert_eq!(st, 403, "DELETE needs the token too");
    let (st, _) = switchyard_tests::http(
        gw.addr,
        "DELETE",
        &path,
        &[("x-switchyard-csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = gw.get(&format!("/poll/session/{id}?wait=1")).await;
    assert!(st == 410 || st == 404, "closed session: {st}");
}

#[tokio::test]
async fn a_tenant_chooses_its_fallbacks() {
    let gw = Gateway::start(CFG);
    assert_eq!(gw.post_json("/poll/wsonly", None, "").await.0, 404);
    let (st, _) = gw.get("/sse/wsonly").await;
    assert_eq!(st, 404);
    assert_eq!(gw.get("/sse/pollonly").await.0, 404);
    let (st, body) = gw.post_json("/poll/pollonly", None, "").await;
    assert_eq!(st, 200, "{body}");
    let open: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(open["pollInterval"], 1500);
}

/// Publish-to-deliver latency is recorded per delivery on every transport
/// (one delivery in 8 sampled), with outbound frame sizes beside it.
#[tokio::test]
async fn delivery_latency_is_recorded_on_every_transport() {
    let gw = Gateway::start(CFG);
    let mut sse = Sse::open(gw.addr, "/sse?channels=news:m").await;
    sse.next_type("subscribed").await;
    let (st, body) = gw.post_json("/poll?channels=news:m", None, "").await;
    assert_eq!(st, 200, "{body}");
    let open: Value = serde_json::from_str(&body).expect("json");
    let poll_id = open["session"].as_str().expect("session").to_owned();
    let mut ws = Client::connect(&gw.ws_url("/ws")).await;
    ws.subscribe(1, "news:m").await;
    let n = 40;
    for i in 0..n {
        let (st, _) = gw
            .post_json(
                "/api/publish",
                Some("k"),
                &format!(r#"{{"channel":"news:m","data":{i}}}"#),
            )
            .await;
        assert_eq!(st, 200);
    }
    for i in 0..n {
        assert_eq!(sse.next_type("message").await["data"], i);
        assert_eq!(ws.recv_type("message").await["data"], i);
    }
    let mut polled = 0;
    while polled < n {
        let (_, b) = gw.get(&format!("/poll/session/{poll_id}?wait=5")).await;
        let frames: Vec<Value> = serde_json::from_str(&b).expect("json");
        polled += frames.iter().filter(|f| f["type"] == "message").count();
    }
    for transport in ["ws", "sse", "poll"] {
        gw.wait_metric_value(
            &format!("switchyard_publish_to_deliver_seconds_count{{transport=\"{transport}\"}}"),
            |v| v >= 1.0,
        )
        .await;
    }
    gw.wait_metric_value("switchyard_outbound_frame_size_bytes_count", |v| v >= 3.0)
        .await;
    // The same samples by tenant: each of the three connections' first
    // delivery at least, and never more than the per-transport series hold.
    let series = "switchyard_tenant_publish_to_deliver_seconds_count{tenant=\"default\"}";
    gw.wait_metric_value(series, |v| v >= 3.0).await;
    let (_, text) = gw.get("/metrics").await;
    let by_tenant = switchyard_tests::metric_value(&text, series).unwrap_or(0.0);
    let by_transport: f64 = ["ws", "sse", "poll"]
        .iter()
        .filter_map(|t| {
            switchyard_tests::metric_value(
                &text,
                &format!("switchyard_publish_to_deliver_seconds_count{{transport=\"{t}\"}}"),
            )
        })
        .sum();
    assert!(by_tenant <= by_transport, "{by_tenant} > {by_transport}");
}
