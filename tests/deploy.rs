//! The deploy/ recipes in front of real gateways: nginx (deploy/nginx/nginx.conf)
//! and HAProxy (deploy/haproxy/haproxy.cfg), each templated only in its listen
//! and upstream addresses, in front of three gateways (node-a, node-b, node-c)
//! on free loopback ports. Checked through the proxy: WebSocket, SSE and
//! long-poll round trips; every DESIGN §3 endpoint reaching a gateway; the
//! sticky cookie; the forwarded client address (the headers nginx sends, and
//! the gateway's per-IP limit counting each real client behind it); nginx's
//! commented edge option (Origin allow-list, per-IP handshake rate) once
//! enabled; HAProxy's /readyz check taking a draining node out of rotation.
//!
//! nginx and haproxy come from apt (scripts/check-deploy.sh installs them; a
//! test installs a missing one itself); a test that cannot get one prints why
//! and skips.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_tests::redis::free_port;
use switchyard_tests::{Gateway, http_full, repo_root, scratch_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const KEY: &str = "k";
const WAIT: Duration = Duration::from_secs(10);

// ---- tools -------------------------------------------------------------------

/// Path of `tool` (PATH, /usr/sbin), installing `package` with apt when missing.
/// `None` (with the reason printed) when it cannot be had.
fn tool(tool: &str, package: &str) -> Option<PathBuf> {
    static APT: Mutex<()> = Mutex::new(());
    let find = || {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/usr/bin", "/sbin"])
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = find() {
        return Some(p);
    }
    let root = uid() == 0;
    let sudo: &[&str] = if root { &[] } else { &["sudo", "-n"] };
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend_from_slice(args);
        Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let _ = run(&["apt-get", "update", "-qq"]);
    let _ = run(&["apt-get", "install", "-y", "-qq", package]);
    let found = find();
    if found.is_none() {
        eprintln!("skipped: {tool} is not installed and `apt-get install {package}` failed");
    }
    found
}

fn uid() -> u32 {
    // SAFETY: getuid(2) has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::getuid()
    }
}

/// A proxy process (nginx or haproxy) in the foreground, stopped on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    name: &'static str,
}

impl Proxy {
    fn spawn(name: &'static str, mut cmd: Command, addr: SocketAddr, dir: PathBuf) -> Proxy {
        let log = fs::File::create(dir.join("proxy.log")).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut p = Proxy {
            child,
            addr,
            dir,
            name,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{name} exited ({status}):\n{}", p.log());
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never listened:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill(2) on our own child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Replaces every `from` (which must occur) in the recipe.
fn subst(conf: &mut String, from: &str, to: &str) {
    assert!(conf.contains(from), "the recipe no longer has {from:?}");
    *conf = conf.replace(from, to);
}

/// deploy/nginx/nginx.conf with its listen and upstream addresses replaced
/// (optionally with the "#edge " option enabled), running.
fn nginx(nodes: [SocketAddr; 3], edge: bool) -> Option<Proxy> {
    let bin = tool("nginx", "nginx")?;
    let mut conf = fs::read_to_string(repo_root().join("deploy/nginx/nginx.conf")).expect("recipe");
    let port = free_port();
    subst(
        &mut conf,
        "listen 127.0.0.1:8080;",
        &format!("listen 127.0.0.1:{port};"),
    );
    // Placeholders first, so a gateway on port 8082 is not rewritten twice.
    for i in 0..3 {
        subst(
            &mut conf,
            &format!("127.0.0.1:{}", 8081 + i),
            &format!("@NODE{i}@"),
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        conf = conf.replace(&format!("@NODE{i}@"), &n.to_string());
    }
    if edge {
        conf = conf
            .lines()
            .map(|l| {
                let trimmed = l.trim_start();
                match trimmed.strip_prefix("#edge ") {
                    Some(rest) => format!("{}{rest}", &l[..l.len() - trimmed.len()]),
                    None => l.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(conf.contains("limit_req zone=ws_rate"));
    }
    let dir = scratch_dir("nginx");
    let path = dir.join("nginx.conf");
    fs::write(&path, conf).expect("write conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(format!("{}/", dir.display()))
        .args(["-e", "stderr", "-g", "daemon off;", "-c"])
        .arg(&path);
    Some(Proxy::spawn(
        "nginx",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    ))
}

/// deploy/haproxy/haproxy.cfg with its bind and server addresses replaced,
/// running. `maxconn` is lowered to what this machine's descriptor limit
/// allows (HAProxy refuses to start otherwise, as the recipe says).
fn haproxy(nodes: [SocketAddr; 3]) -> Option<Proxy> {
    let bin = tool("haproxy", "haproxy")?;
    let mut conf =
        fs::read_to_string(repo_root().join("deploy/haproxy/haproxy.cfg")).expect("recipe");
    let port = free_port();
    subst(
        &mut conf,
        "bind 127.0.0.1:8080",
        &format!("bind 127.0.0.1:{port}"),
    );
    for (i, n) in nodes.iter().enumerate() {
        subst(&mut conf, &format!("10.0.0.{}:8080", i + 1), &n.to_string());
    }
    subst(&mut conf, "maxconn 100000", "maxconn 2000");
    let dir = scratch_dir("haproxy");
    let path = dir.join("haproxy.cfg");
    fs::write(&path, conf).expect("write conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&path);
    Some(Proxy::spawn(
        "haproxy",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    ))
}

/// Three gateways, node-a/b/c (memory broker each: a fallback session or a
/// subscription only works on the node that holds it, so a proxy that does
/// not keep a client on one node fails these tests).
fn gateways(extra: &str) -> Vec<Gateway> {
    NODES
        .iter()
        .map(|id| {
            Gateway::start(&format!(
                "[server]\nnode_id = \"{id}\"\n{extra}\n[diagnostics]\necho = true\n\
                 [tenants.default]\napi_keys = [\"{KEY}\"]\n"
            ))
        })
        .collect()
}

fn addrs(gws: &[Gateway]) -> [SocketAddr; 3] {
    [gws[0].addr, gws[1].addr, gws[2].addr]
}

// ---- clients -----------------------------------------------------------------

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket through the proxy with extra request headers.
async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))?
}

async fn ws_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("json");
        }
    }
}

async fn ws_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = ws_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// `POST /api/publish` through the proxy.
async fn publish(proxy: SocketAddr, channel: &str, data: Value, cookie: Option<&str>) -> u16 {
    let auth = format!("Bearer {KEY}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    let body = json!({"channel": channel, "data": data}).to_string();
    http_full(proxy, "POST", "/api/publish", &headers, Some(&body))
        .await
        .0
}

/// A raw SSE reader.
struct Sse {
    stream: TcpStream,
    buf: String,
    head: String,
}

impl Sse {
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
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
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("sse data in time (is the proxy buffering?)")
            .expect("read");
        assert!(n > 0, "stream ended");
        self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }

    async fn next_type(&mut self, t: &str) -> Value {
        loop {
            if let Some(start) = self.buf.find("data: ")
                && let Some(end) = self.buf[start..].find('\n')
            {
                let data = self.buf[start + 6..start + end].trim().to_owned();
                self.buf = self.buf[start + end..].to_owned();
                let v: Value = serde_json::from_str(&data).expect("event json");
                if v["type"] == t {
                    return v;
                }
                continue;
            }
            self.fill().await;
        }
    }
}

/// A long-poll session opened through the proxy, once its `channels=`
/// subscription is confirmed (it may arrive after the open reply): its id and
/// the open reply.
async fn poll_open(proxy: SocketAddr, channel: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let (st, head, body) = http_full(
        proxy,
        "POST",
        &format!("/poll?channels={channel}"),
        headers,
        Some(""),
    )
    .await;
    assert_eq!(st, 200, "poll open through the proxy: {head}\n{body}");
    let v: Value = serde_json::from_str(&body).expect("open json");
    let id = v["session"].as_str().expect("session").to_owned();
    let frames = v["frames"].as_array().cloned().unwrap_or_default();
    if !frames.iter().any(|f| f["type"] == "subscribed") {
        poll_until(proxy, &id, headers, "subscribed").await;
    }
    (id, v)
}

/// `GET /poll/session/{id}?wait=` through the proxy until a frame of `kind` arrives.
async fn poll_until(proxy: SocketAddr, id: &str, headers: &[(&str, &str)], kind: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (st, head, body) = http_full(
            proxy,
            "GET",
            &format!("/poll/session/{id}?wait=5"),
            headers,
            None,
        )
        .await;
        assert_eq!(st, 200, "poll through the proxy: {head}\n{body}");
        let frames: Vec<Value> = serde_json::from_str(&body).expect("frames json");
        if let Some(m) = frames.into_iter().find(|f| f["type"] == kind) {
            return m;
        }
        assert!(Instant::now() < deadline, "no {kind} by long-poll");
    }
}

/// `GET /poll/session/{id}?wait=` through the proxy until a `message` arrives.
async fn poll_message(proxy: SocketAddr, id: &str, headers: &[(&str, &str)]) -> Value {
    poll_until(proxy, id, headers, "message").await
}

// ---- nginx -------------------------------------------------------------------

#[tokio::test]
async fn nginx_proxies_websocket_sse_and_long_poll_to_the_gateway() {
    let gws = gateways("");
    let Some(ngx) = nginx(addrs(&gws), false) else {
        return;
    };
    let p = ngx.addr;

    // WebSocket round trip: welcome, subscribe, publish, message, ack; the
    // gateway's sticky cookie and node header come back through nginx.
    let (mut ws, resp) = ws_connect(p, "/ws?client_id=ws-1", &[])
        .await
        .expect("WebSocket upgrade through nginx");
    let welcome = ws_type(&mut ws, "welcome").await;
    let node = welcome["node"].as_str().expect("node").to_owned();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.starts_with(&format!("SWITCHYARD_NODE={node};")),
        "sticky cookie through nginx: {cookie:?}"
    );
    assert_eq!(
        resp.headers()
            .get("x-switchyard-node")
            .and_then(|v| v.to_str().ok()),
        Some(node.as_str())
    );
    ws_send(
        &mut ws,
        json!({"type":"subscribe","id":1,"channel":"room:1"}),
    )
    .await;
    ws_type(&mut ws, "subscribed").await;
    ws_send(
        &mut ws,
        json!({"type":"publish","id":2,"channel":"room:1","data":"over-ws"}),
    )
    .await;
    assert_eq!(ws_type(&mut ws, "message").await["data"], "over-ws");
    // a publish through the HTTP API (same client address → same node) reaches it
    assert_eq!(publish(p, "room:1", json!("over-api"), None).await, 200);
    assert_eq!(ws_type(&mut ws, "message").await["data"], "over-api");

    // SSE: the stream opens through nginx and frames arrive unbuffered.
    let mut sse = Sse::open(p, "/sse?channels=news:1", &[]).await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    assert!(sse.head.contains("text/event-stream"), "{}", sse.head);
    assert_eq!(sse.next_type("welcome").await["node"], node.as_str());
    sse.next_type("subscribed").await;
    assert_eq!(publish(p, "news:1", json!({"n": 1}), None).await, 200);
    assert_eq!(sse.next_type("message").await["data"], json!({"n": 1}));
    assert_eq!(publish(p, "news:1", json!({"n": 2}), None).await, 200);
    assert_eq!(sse.next_type("message").await["data"], json!({"n": 2}));

    // Long-poll through /poll (404 behind the old recipe): open, then a poll
    // that is waiting when the message is published returns it.
    let (id, _) = poll_open(p, "news:2", &[]).await;
    let waiting = tokio::spawn(async move { poll_message(p, &id, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publish(p, "news:2", json!("long-polled"), None).await, 200);
    let m = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("long-poll returns")
        .expect("task");
    assert_eq!(m["data"], "long-polled");

    // /ws/{tenant}, /yjs/{tenant}/{room} and /echo upgrade through nginx too.
    let (mut t, _) = ws_connect(p, "/ws/default", &[])
        .await
        .expect("/ws/{tenant}");
    assert_eq!(ws_type(&mut t, "welcome").await["type"], "welcome");
    let (_yjs, resp) = ws_connect(p, "/yjs/default/room-1", &[])
        .await
        .expect("/yjs/{tenant}/{room} upgrade through nginx");
    assert_eq!(resp.status(), 101);
    let (mut echo, _) = ws_connect(p, "/echo", &[]).await.expect("/echo upgrade");
    echo.send(Message::text("ping-through-nginx"))
        .await
        .expect("send");
    let back = tokio::time::timeout(WAIT, echo.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("frame");
    assert_eq!(back.into_text().expect("text"), "ping-through-nginx");
}

#[tokio::test]
async fn nginx_reaches_every_endpoint_and_serves_nothing_else() {
    let gws = gateways("");
    let Some(ngx) = nginx(addrs(&gws), false) else {
        return;
    };
    let p = ngx.addr;
    // Each answer must be the gateway's (its text or JSON), not nginx's page.
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/healthz", 200, "ok"),
        ("GET", "/readyz", 200, "ready"),
        ("GET", "/metrics", 200, "switchyard_"),
        ("GET", "/admin/plugins", 404, "admin API is off"),
        ("GET", "/api/publish", 405, "method not allowed"),
        ("POST", "/api/send", 401, "\"error\""),
        ("GET", "/api/documents/doc:1", 401, "\"error\""),
        ("GET", "/poll/session/nope?wait=0", 404, "no such session"),
        ("POST", "/sse/session/nope", 404, "no such session"),
        ("GET", "/ws", 426, ""),
        ("GET", "/yjs/default", 404, "use /yjs/{tenant}/{room}"),
    ];
    for (method, path, status, needle) in cases {
        let body = (*method == "POST").then_some("{}");
        let (st, head, text) = http_full(p, method, path, &[], body).await;
        assert!(
            !text.contains("<center>nginx"),
            "{method} {path} answered by nginx, not the gateway: {st} {text}"
        );
        let direct = http_full(gws[0].addr, method, path, &[], body).await.0;
        assert_eq!(
            st, direct,
            "{method} {path}: {st} through nginx, {direct} direct\n{head}\n{text}"
        );
        assert_eq!(st, *status, "{method} {path}: {head}\n{text}");
        assert!(text.contains(needle), "{method} {path}: {text}");
    }
    // nothing else is proxied
    for path in ["/", "/nope", "/index.html"] {
        let (st, _, text) = http_full(p, "GET", path, &[], None).await;
        assert_eq!(st, 404, "{path}");
        assert!(text.contains("nginx"), "{path} is nginx's own 404: {text}");
    }
}

#[tokio::test]
async fn nginx_pins_a_client_to_the_node_in_the_sticky_cookie() {
    let gws = gateways("");
    let Some(ngx) = nginx(addrs(&gws), false) else {
        return;
    };
    let p = ngx.addr;
    // With the cookie, every node can be chosen by the client.
    for id in NODES {
        let cookie = format!("SWITCHYARD_NODE={id}");
        for _ in 0..3 {
            let (mut ws, _) = ws_connect(p, "/ws", &[("cookie", &cookie)])
                .await
                .expect("upgrade");
            assert_eq!(ws_type(&mut ws, "welcome").await["node"], id, "{cookie}");
        }
        // a fallback session with the cookie lives on that node and is polled there
        let (sid, _) = poll_open(p, "pinned:1", &[("cookie", &cookie)]).await;
        assert_eq!(publish(p, "pinned:1", json!(id), Some(&cookie)).await, 200);
        let m = poll_message(p, &sid, &[("cookie", &cookie)]).await;
        assert_eq!(m["data"], id);
    }
    // Without it (or with an unknown node), one client address stays on one node.
    let mut seen = Vec::new();
    for c in [None, Some("SWITCHYARD_NODE=node-x"), None] {
        let h: Vec<(&str, &str)> = c.map(|c| ("cookie", c)).into_iter().collect();
        let (mut ws, _) = ws_connect(p, "/ws", &h).await.expect("upgrade");
        seen.push(ws_type(&mut ws, "welcome").await["node"].clone());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "ip_hash: {seen:?}");
    // A node that is down: its cookie falls back to a live node (backup servers).
    let mut gws = gws;
    let down = gws.remove(1); // node-b
    drop(down);
    let (mut ws, _) = ws_connect(p, "/ws", &[("cookie", "SWITCHYARD_NODE=node-b")])
        .await
        .expect("upgrade with a dead node's cookie");
    let w = ws_type(&mut ws, "welcome").await;
    assert_ne!(w["node"], "node-b");
}

/// Reads one proxied request head and answers it.
async fn capture_one(listener: &TcpListener, reply: &'static str) -> String {
    let (mut s, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("proxied request in time")
        .expect("accept");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("head in time")
            .expect("read");
        assert!(n > 0, "upstream request ended early");
        buf.extend_from_slice(&chunk[..n]);
    }
    s.write_all(reply.as_bytes()).await.expect("reply");
    let _ = s.shutdown().await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn nginx_sets_the_client_address_and_upgrade_headers_upstream() {
    // All three upstreams → one listener that records what nginx sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = listener.local_addr().expect("addr");
    let Some(ngx) = nginx([up, up, up], false) else {
        return;
    };
    let p = ngx.addr;
    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    // A client-sent X-Forwarded-For / X-Real-IP is replaced by the peer address.
    let req = tokio::spawn(async move {
        http_full(
            p,
            "POST",
            "/api/publish",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-real-ip", "203.0.113.9"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
            Some("{}"),
        )
        .await
    });
    let head = capture_one(&listener, OK).await;
    assert_eq!(req.await.expect("task").0, 200);
    assert_eq!(header(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(header(&head, "x-real-ip"), ["127.0.0.1"], "{head}");
    assert!(!head.contains("203.0.113.9"), "{head}");
    assert_eq!(header(&head, "x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(header(&head, "traceparent").len(), 1, "{head}");
    assert!(head.starts_with("POST /api/publish HTTP/1.1"), "{head}");
    // A plain request keeps the upstream connection reusable (no Connection: close/upgrade).
    assert!(
        header(&head, "connection").is_empty(),
        "Connection on a plain request: {head}"
    );
    // An upgrade request carries Upgrade / Connection: upgrade.
    let req = tokio::spawn(async move { ws_connect(p, "/ws", &[]).await.is_ok() });
    let head = capture_one(&listener, OK).await;
    let _ = req.await;
    assert!(head.starts_with("GET /ws HTTP/1.1"), "{head}");
    assert_eq!(header(&head, "upgrade"), ["websocket"], "{head}");
    assert_eq!(header(&head, "connection"), ["upgrade"], "{head}");
    assert_eq!(header(&head, "x-real-ip"), ["127.0.0.1"], "{head}");
    assert_eq!(header(&head, "sec-websocket-version"), ["13"], "{head}");
}

/// A WebSocket to `proxy` from the loopback address `from` (127.0.0.x).
async fn ws_from(
    from: [u8; 4],
    proxy: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from((from, 0))).expect("bind source");
    let stream = sock.connect(proxy).await.expect("connect");
    let mut req = format!("ws://{proxy}/ws")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(ws)
}

#[tokio::test]
async fn nginx_gives_the_gateway_the_real_client_address() {
    // The gateways believe nginx (server.trusted_proxies) and allow one
    // connection per client address; clients come from 127.0.0.2 and .3.
    let gws =
        gateways("trusted_proxies = [\"127.0.0.1/32\"]\n[limits]\nmax_connections_per_ip = 1");
    let Some(ngx) = nginx(addrs(&gws), false) else {
        return;
    };
    let p = ngx.addr;
    let cookie = [("cookie", "SWITCHYARD_NODE=node-a")];
    let mut a = ws_from([127, 0, 0, 2], p, &cookie)
        .await
        .expect("first from .2");
    ws_type(&mut a, "welcome").await;
    // a second from the same address is over the limit: 429 before the upgrade
    match ws_from([127, 0, 0, 2], p, &cookie).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("second connection from .2: {:?}", other.map(|_| ())),
    }
    // another address is another client, even though nginx is the peer of both
    // — and it cannot pass itself off as .2 (nginx overwrites X-Forwarded-For)
    let spoof = [
        cookie[0],
        ("x-forwarded-for", "127.0.0.2"),
        ("x-real-ip", "127.0.0.2"),
    ];
    let mut b = ws_from([127, 0, 0, 3], p, &spoof)
        .await
        .expect("first from .3");
    ws_type(&mut b, "welcome").await;
    match ws_from([127, 0, 0, 3], p, &spoof).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("second connection from .3: {:?}", other.map(|_| ())),
    }
    // and a third address, without any header of its own, is a third client
    let mut c = ws_from([127, 0, 0, 4], p, &cookie)
        .await
        .expect("first from .4");
    ws_type(&mut c, "welcome").await;
    drop((a, b, c));
}

#[tokio::test]
async fn nginx_edge_option_checks_origin_and_limits_handshakes_per_ip() {
    let gws = gateways("");
    let Some(ngx) = nginx(addrs(&gws), true) else {
        return;
    };
    let p = ngx.addr;
    // Origin allow-list (the seed's regex): a foreign page is refused before the
    // gateway; the allowed origins and a client without Origin pass.
    let evil = ws_connect(p, "/ws", &[("origin", "https://evil.example")]).await;
    match evil {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("foreign origin: {other:?}"),
    }
    for origin in ["https://app.example.com", "https://admin.example.com"] {
        let (mut ws, _) = ws_connect(p, "/ws", &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        ws_type(&mut ws, "welcome").await;
    }
    let (mut ws, _) = ws_connect(p, "/ws", &[]).await.expect("no Origin");
    ws_type(&mut ws, "welcome").await;
    for (method, path) in [
        ("POST", "/poll"),
        ("GET", "/sse"),
        ("GET", "/poll/session/x"),
        ("POST", "/sse/session/x"),
    ] {
        let body = (method == "POST").then_some("");
        let (st, _, _) =
            http_full(p, method, path, &[("origin", "https://evil.example")], body).await;
        assert_eq!(st, 403, "{method} {path} from a foreign origin");
    }
    // Per-IP handshake rate: 10/s with bursts of 100 (a few were used above),
    // then 429 before the gateway sees the request.
    let mut statuses = Vec::new();
    for _ in 0..400 {
        let st = http_full(p, "GET", "/ws", &[], None).await.0;
        statuses.push(st);
        if st == 429 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "never limited: {statuses:?}");
    assert!(
        statuses.len() > 90 && statuses[..statuses.len() - 1].iter().all(|s| *s == 426),
        "the burst passes to the gateway (426 for a plain GET), then 429: {statuses:?}"
    );
    // polls of an open session are not handshakes: never limited
    for _ in 0..50 {
        let st = http_full(p, "GET", "/poll/session/nope?wait=0", &[], None)
            .await
            .0;
        assert_eq!(st, 404);
    }
    drop(gws);
}

// ---- HAProxy -----------------------------------------------------------------

#[tokio::test]
async fn haproxy_proxies_with_sticky_cookie_and_drops_a_draining_node() {
    // node-b drains for 20s on SIGTERM with readiness failing for 10s first.
    let gws = gateways("drain_grace = \"10s\"\ndrain_timeout = \"20s\"");
    let Some(ha) = haproxy(addrs(&gws)) else {
        return;
    };
    let p = ha.addr;

    // WebSocket: the gateway's own cookie comes back once (preserved, not doubled).
    let (mut ws, resp) = ws_connect(p, "/ws", &[])
        .await
        .expect("upgrade through HAProxy");
    let node = ws_type(&mut ws, "welcome").await["node"]
        .as_str()
        .expect("node")
        .to_owned();
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(
        cookies[0]
            .to_str()
            .unwrap_or_default()
            .starts_with(&format!("SWITCHYARD_NODE={node};")),
        "{cookies:?}"
    );
    ws_send(
        &mut ws,
        json!({"type":"subscribe","id":1,"channel":"room:1"}),
    )
    .await;
    ws_type(&mut ws, "subscribed").await;
    let cookie = format!("SWITCHYARD_NODE={node}");
    assert_eq!(
        publish(p, "room:1", json!("via-haproxy"), Some(&cookie)).await,
        200
    );
    assert_eq!(ws_type(&mut ws, "message").await["data"], "via-haproxy");

    // The cookie picks the node.
    for id in NODES {
        let c = format!("SWITCHYARD_NODE={id}");
        let (mut ws, _) = ws_connect(p, "/ws", &[("cookie", &c)])
            .await
            .expect("upgrade");
        assert_eq!(ws_type(&mut ws, "welcome").await["node"], id);
    }

    // SSE: HAProxy inserts the cookie (the gateway sets none on a stream); frames
    // arrive at once.
    let mut sse = Sse::open(p, "/sse?channels=news:1", &[]).await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    let sse_node = sse.next_type("welcome").await["node"]
        .as_str()
        .expect("node")
        .to_owned();
    let set = header(&sse.head, "set-cookie");
    assert!(
        set.iter()
            .any(|c| c.starts_with(&format!("SWITCHYARD_NODE={sse_node}"))),
        "HAProxy inserts the sticky cookie on the SSE response: {}",
        sse.head
    );
    sse.next_type("subscribed").await;
    let c = format!("SWITCHYARD_NODE={sse_node}");
    assert_eq!(
        publish(p, "news:1", json!("sse-via-haproxy"), Some(&c)).await,
        200
    );
    assert_eq!(sse.next_type("message").await["data"], "sse-via-haproxy");

    // Long-poll: a client that keeps no cookies stays on its node (stick table
    // by address, stored by the SSE request above), so every poll finds the session.
    let (sid, open) = poll_open(p, "news:2", &[]).await;
    let poll_node = open["frames"][0]["node"]
        .as_str()
        .expect("welcome node")
        .to_owned();
    assert_eq!(poll_node, sse_node, "one client address, one node");
    for _ in 0..5 {
        let (st, _, body) =
            http_full(p, "GET", &format!("/poll/session/{sid}?wait=0"), &[], None).await;
        assert_eq!(
            st, 200,
            "poll without a cookie lands on the session's node: {body}"
        );
    }
    let c = format!("SWITCHYARD_NODE={poll_node}");
    let waiting = {
        let sid = sid.clone();
        tokio::spawn(async move { poll_message(p, &sid, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publish(p, "news:2", json!("polled"), Some(&c)).await, 200);
    let m = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("long-poll returns")
        .expect("task");
    assert_eq!(m["data"], "polled");

    // Operator endpoints from loopback reach a gateway; unknown paths do not.
    assert_eq!(http_full(p, "GET", "/readyz", &[], None).await.0, 200);
    assert_eq!(http_full(p, "GET", "/nope", &[], None).await.0, 404);

    // Draining: node-b's /readyz turns 503, the health check takes it out of
    // rotation, and its cookie is redispatched to a live node.
    gws[1].signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = ws_connect(p, "/ws", &[("cookie", "SWITCHYARD_NODE=node-b")]).await;
        if let Ok((mut ws, _)) = r {
            let n = ws_type(&mut ws, "welcome").await["node"].clone();
            if n != "node-b" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node-b still in rotation after its readiness failed:\n{}",
            ha.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
