//! The admin API (`/admin/connections`, `/admin/connections/{session}/close`,
//! `/admin/drain`, `/admin/stats`) and the live dashboard (`GET /admin/`) on
//! the real binary: WebSocket, SSE, long-poll and Yjs sessions listed and
//! filtered, closed with an operator's code, the node drained as on SIGTERM,
//! stats that follow real traffic, and the dashboard in headless Chromium
//! (Debian `chromium` + npm `playwright-core`, as `tests/browser.rs`) showing
//! the live numbers, with a screenshot under `target/`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::{Client, Gateway, WAIT, http, repo_root, scratch_dir, target_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "s3cret-admin";

fn config(extra: &str) -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\n\
         [tenants.default]\napi_keys = [\"k\"]\ndocuments = [\"yjs:*\"]\n\
         [tenants.acme]\n{extra}"
    )
}

/// An admin request with `token` (none = no Authorization header).
async fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let (status, text) = http(gw.addr, method, path, &headers, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn list(gw: &Gateway, query: &str) -> Value {
    let (status, v) = admin(
        gw,
        "GET",
        &format!("/admin/connections{query}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls the listing with `query` until `ok` holds (bounded by [`WAIT`]).
async fn wait_list(gw: &Gateway, query: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = list(gw, query).await;
        let conns = v["connections"].as_array().cloned().unwrap_or_default();
        if ok(&conns) {
            return conns;
        }
        assert!(
            Instant::now() < deadline,
            "/admin/connections{query} never reached the expected state: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/admin/stats` until `ok` holds; returns that body.
async fn wait_stats(gw: &Gateway, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = admin(gw, "GET", "/admin/stats", Some(TOKEN), None).await;
        assert_eq!(status, 200, "{v}");
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "/admin/stats never reached the expected state: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn clients(conns: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = conns
        .iter()
        .map(|c| c["client"].as_str().unwrap_or("").to_owned())
        .collect();
    v.sort();
    v
}

fn by_client<'a>(conns: &'a [Value], client: &str) -> &'a Value {
    conns
        .iter()
        .find(|c| c["client"] == client)
        .unwrap_or_else(|| panic!("{client} not listed in {conns:?}"))
}

/// An SSE stream held open; `next_close` reads up to its `close` event.
struct Sse {
    stream: TcpStream,
    buf: String,
}

impl Sse {
    async fn open(gw: &Gateway, path: &str) -> Sse {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            gw.addr
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        Sse {
            stream,
            buf: String::new(),
        }
    }

    /// The JSON of the `close` event.
    async fn next_close(&mut self) -> Value {
        loop {
            if let Some(i) = self.buf.find("event: close\ndata: ") {
                let rest = &self.buf[i + "event: close\ndata: ".len()..];
                if let Some(end) = rest.find('\n') {
                    return serde_json::from_str(&rest[..end]).expect("close json");
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("sse data in time")
                .expect("read");
            assert!(
                n > 0,
                "SSE stream ended without a close event: {}",
                self.buf
            );
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}

#[tokio::test]
async fn connections_are_listed_filtered_and_closed_with_a_code() {
    let gw = Gateway::start(&config(""));
    let mut alice = Client::connect(&gw.ws_url("/ws?client_id=alice")).await;
    alice.subscribe(1, "room:1").await;
    let mut bob = Client::connect(&gw.ws_url("/ws?client_id=bob")).await;
    bob.subscribe(1, "room:2").await;
    let mut carol = Client::connect(&gw.ws_url("/ws/acme?client_id=carol")).await;
    carol.subscribe(1, "room:1").await;
    let mut sse = Sse::open(&gw, "/sse?channels=room:1&client_id=sse-1").await;
    let (status, poll) = {
        let (s, body) = http(
            gw.addr,
            "POST",
            "/poll?client_id=poll-1",
            &[("content-type", "application/json")],
            Some(""),
        )
        .await;
        (
            s,
            serde_json::from_str::<Value>(&body).expect("poll open json"),
        )
    };
    assert_eq!(status, 200, "{poll}");
    let poll_session = poll["session"].as_str().expect("poll session").to_owned();
    // A y-websocket connection: listed as transport "yjs".
    let mut yjs = Client::connect_raw(&gw.ws_url("/yjs/default/notes?client_id=yjs-1")).await;
    // Sync step 1 with an empty state vector: the connection joins the room's document.
    futures_util::SinkExt::send(
        &mut yjs,
        tokio_tungstenite::tungstenite::Message::binary(vec![0u8, 0, 1, 0]),
    )
    .await
    .expect("send sync step 1");

    let all = wait_list(&gw, "", |c| c.len() == 6).await;
    assert_eq!(
        clients(&all),
        ["alice", "bob", "carol", "poll-1", "sse-1", "yjs-1"]
    );
    let a = by_client(&all, "alice");
    assert_eq!(a["session"], alice.welcome["session"], "{a}");
    assert_eq!(a["tenant"], "default");
    assert_eq!(a["transport"], "websocket");
    assert_eq!(a["principal"], "");
    assert_eq!(a["channels"], json!(["room:1"]));
    assert!(a["queued"].is_u64(), "{a}");
    assert!(
        a["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{a}"
    );
    assert!(
        a["connected_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20") && t.ends_with('Z')),
        "{a}"
    );
    assert_eq!(by_client(&all, "sse-1")["transport"], "sse");
    let p = by_client(&all, "poll-1");
    assert_eq!(
        (&p["transport"], &p["session"]),
        (&json!("poll"), &json!(poll_session))
    );
    assert_eq!(by_client(&all, "yjs-1")["transport"], "yjs");
    let y = wait_list(&gw, "?client=yjs-1", |c| {
        c.first()
            .is_some_and(|y| y["channels"].as_array().is_some_and(|l| !l.is_empty()))
    })
    .await;
    assert!(
        y[0]["channels"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("yjs:notes"))),
        "{y:?}"
    );
    assert_eq!(by_client(&all, "carol")["tenant"], "acme");

    // Filters, alone and together.
    assert_eq!(
        clients(&wait_list(&gw, "?tenant=acme", |_| true).await),
        ["carol"]
    );
    // The SSE session's subscription runs on its own task: wait for it.
    let room1 = wait_list(&gw, "?channel=room:1", |c| c.len() == 3).await;
    assert_eq!(clients(&room1), ["alice", "carol", "sse-1"]);
    let room1_default = wait_list(&gw, "?channel=room%3A1&tenant=default", |_| true).await;
    assert_eq!(clients(&room1_default), ["alice", "sse-1"]);
    assert_eq!(
        clients(&wait_list(&gw, "?client=bob", |_| true).await),
        ["bob"]
    );
    assert!(wait_list(&gw, "?tenant=nope", |_| true).await.is_empty());
    let two = list(&gw, "?limit=2").await;
    assert_eq!(
        two["connections"].as_array().map(Vec::len),
        Some(2),
        "{two}"
    );
    assert_eq!(
        (&two["total"], &two["truncated"]),
        (&json!(6), &json!(true))
    );
    for bad in ["?limit=0", "?limit=10001", "?limit=abc", "?color=red"] {
        let (status, v) = admin(
            &gw,
            "GET",
            &format!("/admin/connections{bad}"),
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"], "bad_request", "{bad}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }

    // Close alice with 4003: she gets that code (and the reason), and is no longer listed.
    let session = alice.welcome["session"]
        .as_str()
        .expect("session")
        .to_owned();
    let path = format!("/admin/connections/{session}/close");
    for (body, why) in [
        (r#"{"code":3000}"#, "a registered code"),
        (r#"{"code":1006}"#, "a reserved code"),
        (r#"{"code":5000}"#, "beyond application codes"),
        (r#"{"reason":"no code"}"#, "no code"),
        ("", "no body"),
        ("{nope", "bad JSON"),
    ] {
        let (status, v) = admin(&gw, "POST", &path, Some(TOKEN), Some(body)).await;
        assert_eq!(status, 400, "{why}: {v}");
        assert_eq!(v["error"], "bad_request", "{why}: {v}");
    }
    let long = format!(r#"{{"code":4003,"reason":"{}"}}"#, "x".repeat(124));
    assert_eq!(
        admin(&gw, "POST", &path, Some(TOKEN), Some(&long)).await.0,
        400
    );
    let (status, v) = admin(
        &gw,
        "POST",
        "/admin/connections/no-such-session/close",
        Some(TOKEN),
        Some(r#"{"code":4003}"#),
    )
    .await;
    assert_eq!((status, &v["error"]), (404, &json!("not_found")), "{v}");
    // Not without the token.
    assert_eq!(
        admin(&gw, "POST", &path, None, Some(r#"{"code":4003}"#))
            .await
            .0,
        401
    );
    assert_eq!(
        admin(&gw, "POST", &path, Some("wrong"), Some(r#"{"code":4003}"#))
            .await
            .0,
        401
    );
    let (status, _) = admin(
        &gw,
        "POST",
        &path,
        Some(TOKEN),
        Some(r#"{"code":4003,"reason":"kicked by ops"}"#),
    )
    .await;
    assert_eq!(status, 204);
    let reason = loop {
        match alice.recv().await {
            Some(tokio_tungstenite::tungstenite::Message::Close(f)) => {
                let f = f.expect("a close frame with a code");
                assert_eq!(u16::from(f.code), 4003);
                break f.reason.to_string();
            }
            Some(_) => continue,
            None => panic!("alice's socket ended without a close frame"),
        }
    };
    assert_eq!(reason, "kicked by ops");
    let left = wait_list(&gw, "", |c| c.len() == 5).await;
    assert!(!clients(&left).contains(&"alice".to_owned()), "{left:?}");
    assert!(
        gw.logs().contains("admin action: close a connection"),
        "the close is logged:\n{}",
        gw.logs()
    );
    let logged = gw
        .logs()
        .lines()
        .find(|l| l.contains("admin action: close"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        logged.contains("who=127.0.0.1") && logged.contains(&session) && logged.contains("4003"),
        "who and what are logged: {logged}"
    );

    // An SSE session closed with 4000 gets the close event with that code.
    let sse_session = by_client(&left, "sse-1")["session"]
        .as_str()
        .expect("sse session")
        .to_owned();
    let (status, _) = admin(
        &gw,
        "POST",
        &format!("/admin/connections/{sse_session}/close"),
        Some(TOKEN),
        Some(r#"{"code":4000,"reason":"moved"}"#),
    )
    .await;
    assert_eq!(status, 204);
    let close = sse.next_close().await;
    assert_eq!(
        (&close["code"], &close["reason"]),
        (&json!(4000), &json!("moved"))
    );
    wait_list(&gw, "?client=sse-1", <[Value]>::is_empty).await;
    // 1000 is allowed too.
    let bob_session = bob.welcome["session"].as_str().expect("session").to_owned();
    let (status, _) = admin(
        &gw,
        "POST",
        &format!("/admin/connections/{bob_session}/close"),
        Some(TOKEN),
        Some(r#"{"code":1000}"#),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(bob.close_code().await, Some(1000));
    drop((carol, yjs));
}

#[tokio::test]
async fn every_admin_route_needs_the_token_and_is_off_without_one() {
    let gw = Gateway::start(&config(""));
    for (method, path) in [
        ("GET", "/admin/connections"),
        ("GET", "/admin/stats"),
        ("GET", "/admin/plugins"),
        ("POST", "/admin/drain"),
        ("POST", "/admin/connections/x/close"),
        ("GET", "/admin/nope"),
    ] {
        for token in [None, Some("wrong"), Some("s3cret-admin-but-longer")] {
            let (status, v) = admin(&gw, method, path, token, Some("{}")).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {v}");
            assert_eq!(v["error"], "unauthorized", "{v}");
        }
    }
    assert_eq!(gw.get("/readyz").await.0, 200, "no drain without the token");
    // Wrong methods and unknown paths, with the token.
    let (status, v) = admin(&gw, "GET", "/admin/drain", Some(TOKEN), None).await;
    assert_eq!((status, &v["error"]), (405, &json!("method_not_allowed")));
    assert_eq!(
        admin(&gw, "GET", "/admin/nope", Some(TOKEN), None).await.0,
        404
    );
    // The page itself loads without the token.
    let (status, head, body) =
        switchyard_tests::http_full(gw.addr, "GET", "/admin/", &[], None).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy"),
        "{head}"
    );
    assert!(body.contains("/admin/dashboard.js"), "{body}");
    let (status, js) = gw.get("/admin/dashboard.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("sessionStorage"));

    // With `[admin] token` empty the whole admin API is off (404), page included.
    let off = Gateway::start("");
    for path in ["/admin/", "/admin/connections", "/admin/stats"] {
        let (status, v) = admin(&off, "GET", path, Some(TOKEN), None).await;
        assert_eq!((status, &v["error"]), (404, &json!("admin_off")), "{path}");
    }
    assert_eq!(
        admin(&off, "POST", "/admin/drain", Some(TOKEN), None)
            .await
            .0,
        404
    );
    assert_eq!(off.get("/readyz").await.0, 200);
}

#[tokio::test]
async fn drain_fails_readiness_and_closes_clients_with_1001_like_sigterm() {
    let mut gw = Gateway::start(&config(
        "[server]\ndrain_grace = \"1s\"\ndrain_timeout = \"5s\"\n",
    ));
    let mut a = Client::connect(&gw.ws_url("/ws?client_id=a")).await;
    let mut b = Client::connect(&gw.ws_url("/ws/acme?client_id=b")).await;
    wait_list(&gw, "", |c| c.len() == 2).await;
    assert_eq!(gw.get("/readyz").await.0, 200);
    let (status, v) = admin(&gw, "POST", "/admin/drain", Some(TOKEN), None).await;
    assert_eq!(status, 202, "{v}");
    // Readiness fails at once (the grace period keeps the listener open meanwhile).
    let (status, body) = gw.get("/readyz").await;
    assert_eq!((status, body.trim()), (503, "draining"));
    for c in [&mut a, &mut b] {
        let (frames, code) = c.drain_until_close().await;
        assert!(
            frames.iter().any(|f| f["type"] == "SERVER_SHUTDOWN"),
            "{frames:?}"
        );
        assert_eq!(code, Some(1001));
    }
    let st = gw
        .wait_exit(Duration::from_secs(15))
        .expect("exits after the drain");
    assert!(st.success(), "exit status {st:?}");
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("admin action: drain") && l.contains("who=127.0.0.1")),
        "{logs}"
    );
    assert!(logs.contains("drained"), "{logs}");
}

/// Keeps publishing to `room:1` from `client` until `stop` is set.
fn publisher(
    mut client: Client,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            client
                .send_json(json!({"type":"publish","id":i,"channel":"room:1","data":{"n":i}}))
                .await;
            tokio::time::sleep(every).await;
        }
    })
}

/// Reads and discards everything a client receives until `stop`.
fn reader(mut client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if client.recv_within(Duration::from_secs(30)).await.is_none() {
                break;
            }
        }
    })
}

fn plugin_dir(names: &[&str]) -> PathBuf {
    let dir = scratch_dir("admin-plugins");
    for n in names {
        let wasm = repo_root().join(format!("target/plugins/{n}.wasm"));
        assert!(
            wasm.exists(),
            "{} is missing: run scripts/build-plugins.sh first",
            wasm.display()
        );
        std::fs::copy(&wasm, dir.join(format!("{n}.wasm"))).expect("copy plugin");
    }
    dir
}

fn traffic_config(plugins: &std::path::Path) -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\n\
         [plugins]\ndir = {:?}\nwatch = false\n\
         [limits]\npublish_rate = 1000\npublish_burst = 1000\n\
         [tenants.default]\n\
         [tenants.default.policies.rate_limit]\nplugin = \"token-bucket\"\n\
         config = {{ rate = 10000, burst = 10000, key = \"client\" }}\n\
         [tenants.acme]\n",
        plugins.display().to_string()
    )
}

/// Three WebSocket clients on `room:1`, two of them publishing.
async fn traffic(gw: &Gateway, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&gw.ws_url(&format!("/ws?client_id=load-{i}"))).await;
        c.subscribe(1, "room:1").await;
        tasks.push(if i < 2 {
            publisher(c, stop.clone(), Duration::from_millis(20))
        } else {
            reader(c, stop.clone())
        });
    }
    tasks
}

#[tokio::test]
async fn stats_follow_the_traffic() {
    let plugins = plugin_dir(&["token-bucket"]);
    let gw = Gateway::start(&traffic_config(&plugins));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = traffic(&gw, &stop).await;
    let v = wait_stats(&gw, |v| {
        let t = &v["tenants"]["default"];
        t["connections"] == 3
            && t["messages_in_per_sec"].as_f64().unwrap_or(0.0) > 10.0
            && t["messages_out_per_sec"].as_f64().unwrap_or(0.0) > 30.0
            && t["plugin_calls_per_sec"].as_f64().unwrap_or(0.0) > 10.0
            && v["node"]["delivery_latency"]["p50_ms"].is_number()
    })
    .await;
    let t = &v["tenants"]["default"];
    assert_eq!(t["subscriptions"], 3, "{v:#}");
    assert_eq!(t["transports"], json!({"websocket": 3}), "{v:#}");
    // Two publishers at ~50/s each, every message delivered to three subscribers.
    let in_rate = t["messages_in_per_sec"].as_f64().unwrap_or(0.0);
    assert!(in_rate < 200.0, "{in_rate}");
    assert!(t["plugin_calls"].as_f64().unwrap_or(0.0) > 0.0, "{v:#}");
    assert_eq!(t["plugin_failures"].as_f64(), Some(0.0), "{v:#}");
    let bucket = &t["plugins"][0];
    assert_eq!(
        (&bucket["plugin"], &bucket["role"]),
        (&json!("token-bucket"), &json!("rate_limit")),
        "{v:#}"
    );
    let acme = &v["tenants"]["acme"];
    assert_eq!(
        (&acme["connections"], &acme["subscriptions"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(acme["messages_in_per_sec"], 0.0);
    let node = &v["node"];
    assert_eq!(node["connections"], 3);
    assert_eq!(node["draining"], false);
    assert!(
        node["delivery_latency"]["p99_ms"].as_f64() >= node["delivery_latency"]["p50_ms"].as_f64()
    );
    // Traffic stops: the rates fall back to zero, the totals stay.
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let v = wait_stats(&gw, |v| {
        v["tenants"]["default"]["connections"] == 0
            && v["tenants"]["default"]["messages_in_per_sec"] == 0.0
    })
    .await;
    assert!(
        v["tenants"]["default"]["messages_in"].as_u64().unwrap_or(0) > 10,
        "closed connections' messages still count: {v:#}"
    );
}

#[test]
fn dashboard_in_chromium_shows_live_numbers() {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "{} is missing: install Debian's `chromium` (scripts/test.sh does)",
        chromium.display()
    );
    let js = repo_root().join("tests/js");
    assert!(
        js.join("node_modules/playwright-core/package.json")
            .exists(),
        "tests/js/node_modules is missing: run `npm ci` in tests/js (scripts/test.sh does)"
    );
    let plugins = plugin_dir(&["token-bucket"]);
    // The same limiter as a shadow of itself: the page's shadow table fills.
    std::fs::copy(
        plugins.join("token-bucket.wasm"),
        plugins.join("token-bucket-next.wasm"),
    )
    .expect("copy shadow");
    let config = traffic_config(&plugins).replace(
        "key = \"client\" }\n",
        "key = \"client\" }\nshadow = \"token-bucket-next\"\n",
    );
    assert!(config.contains("shadow ="), "{config}");
    let gw = Gateway::start(&config);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = rt.block_on(traffic(&gw, &stop));
    let screenshot = target_dir().join("admin-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".to_owned()))
        .arg("admin.test.mjs")
        .current_dir(&js)
        .env("GATEWAY_URL", gw.http_url(""))
        .env("ADMIN_TOKEN", TOKEN)
        .env("EXPECT_CONNECTIONS", "3")
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node admin.test.mjs");
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.abort();
        }
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("PASS dashboard-live"),
        "admin.test.mjs failed ({}):\n{stdout}\n{stderr}\n---- gateway ----\n{}",
        out.status,
        gw.logs()
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    println!("dashboard screenshot: {}", screenshot.display());
    print!("{stdout}");
}
