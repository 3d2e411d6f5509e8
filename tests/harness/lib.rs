//! Integration-test harness: spawns the real `switchyard` binary on a free
//! loopback port and talks to it with real WebSocket and HTTP clients.

pub mod cluster;
pub mod doc;
pub mod kafka;
pub mod nats;
pub mod node;
pub mod otlp;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default wait for any single expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Path of the binary under test (`SWITCHYARD_BIN` overrides).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("debug").join("switchyard");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p switchyard` first (the README's test command does)",
        p.display()
    );
    p
}

/// A unique scratch directory for one test.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// Address it listens on.
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Its scratch directory (config file lives here).
    pub dir: PathBuf,
    /// Path of its config file.
    pub config_path: PathBuf,
}

impl Gateway {
    /// Starts `switchyard serve` with this config (listen address is forced to
    /// 127.0.0.1:0) and waits until it listens and `/healthz` answers.
    pub fn start(config_toml: &str) -> Gateway {
        Self::start_with_env(config_toml, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = scratch_dir("gw");
        let config_path = dir.join("switchyard.toml");
        std::fs::write(&config_path, config_toml).expect("write config");
        Self::spawn(dir, config_path, "127.0.0.1:0", env)
    }

    /// Starts on a fixed address with an existing config file (restarts).
    pub fn spawn(
        dir: PathBuf,
        config_path: PathBuf,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let gw = Self::spawn_listening(dir, config_path, listen, env);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = blocking_get(gw.addr, "/healthz") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "healthz never answered:\n{}",
                gw.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    /// Like [`Gateway::spawn`], returning once it logged its listen address,
    /// without asking plain-HTTP `/healthz` (a TLS-only listener).
    pub fn spawn_listening(
        dir: PathBuf,
        config_path: PathBuf,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(listen)
            .current_dir(repo_root())
            .env("RUST_LOG", "info,switchyard=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let clean = strip_ansi(&line);
                    if let Some(addr) = clean
                        .split("listen=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|a| a.trim_matches('"').parse::<SocketAddr>().ok())
                    {
                        let _ = tx.send(addr);
                    }
                    if let Ok(mut l) = logs.lock()
                        && l.len() < 20_000
                    {
                        l.push(clean);
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let l = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("switchyard did not start listening:\n{l}");
            }
        };
        Gateway {
            child,
            addr,
            logs,
            dir,
            config_path,
        }
    }

    /// `ws://addr{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `http://addr{path}`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// GET a path; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], None).await
    }

    /// Polls `/metrics` until it contains `needle` (returns the text), or panics after [`WAIT`].
    pub async fn wait_metric(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, m) = self.get("/metrics").await;
            if m.contains(needle) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never showed {needle}:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/metrics` until the sample named exactly `series` (name and labels,
    /// as printed) has a value for which `ok` holds; returns that value.
    pub async fn wait_metric_value(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, m) = self.get("/metrics").await;
            let value = metric_value(&m, series);
            if let Some(v) = value
                && ok(v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never reached the expected value (last {value:?}):\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POST JSON with an optional bearer token; returns (status, body).
    pub async fn post_json(&self, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        http(self.addr, "POST", path, &headers, Some(body)).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- switchyard logs ({}) ----\n{}", self.addr, self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn blocking_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(parse_response(&buf))
}

fn parse_response(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET /admin/plugins` with `Authorization: Bearer <token>`: the status and
/// the JSON body (`Value::Null` when it is not JSON).
pub async fn admin_plugins(gw: &Gateway, token: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let (status, body) = http(
        gw.addr,
        "GET",
        "/admin/plugins",
        &[("authorization", &auth)],
        None,
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Minimal HTTP/1.1 request (Connection: close); returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// Like [`http`], also returning the raw response head.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&buf).into_owned();
    let head = raw
        .split_once("\r\n\r\n")
        .map(|(h, _)| h.to_owned())
        .unwrap_or_default();
    let (status, body) = parse_response(&raw);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, head, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A protocol v1 WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `welcome` message.
    pub welcome: Value,
}

impl Client {
    /// Connects to `url` and reads `welcome`.
    pub async fn connect(url: &str) -> Client {
        let req = url.into_client_request().expect("request");
        Self::connect_with(req).await.expect("connect")
    }

    /// Connects with a prepared request (headers, subprotocols) and reads `welcome`.
    pub async fn connect_with(
        req: tungstenite::handshake::client::Request,
    ) -> Result<Client, tungstenite::Error> {
        let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
        let mut c = Client {
            ws,
            welcome: Value::Null,
        };
        let w = c.recv_json().await;
        assert_eq!(w["type"], "welcome", "first frame is welcome: {w}");
        c.welcome = w;
        Ok(c)
    }

    /// Connects without reading anything (raw access, e.g. `/echo`).
    pub async fn connect_raw(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        ws
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_owned()))
            .await
            .expect("send");
    }

    /// Sends any message.
    pub async fn send(&mut self, m: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(m).await
    }

    /// Next data or close message (pings are answered and skipped); `None` at end.
    pub async fn recv(&mut self) -> Option<Message> {
        self.recv_within(WAIT).await
    }

    /// Like [`Client::recv`] with a custom wait.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("message in time");
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Next text frame as JSON (panics on close).
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Some(Message::Text(t)) => serde_json::from_str(&t).expect("json"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Next JSON message of `type`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the close frame and returns its code (`None` if the socket ended without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Some(Message::Close(f)) => return Some(f.map_or(1005, |f| u16::from(f.code))),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Reads everything until close; returns the JSON frames and the close code.
    pub async fn drain_until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut got = Vec::new();
        loop {
            match self.recv().await {
                Some(Message::Text(t)) => got.push(serde_json::from_str(&t).expect("json")),
                Some(Message::Close(f)) => {
                    return (got, Some(f.map_or(1005, |f| u16::from(f.code))));
                }
                Some(_) => continue,
                None => return (got, None),
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, id: u64, channel: &str) -> Value {
        self.send_json(serde_json::json!({"type":"subscribe","id":id,"channel":channel}))
            .await;
        let v = self.recv_type("subscribed").await;
        assert_eq!(v["id"], id);
        v
    }

    /// The underlying stream.
    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}

/// The value of the sample named exactly `series` (name plus labels as printed)
/// in a Prometheus text exposition, if present.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A test guest from `tests/fixtures/plugins`, after (re)building them once per
/// test process (an incremental no-op when nothing changed).
pub fn test_plugin(name: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let ok = std::process::Command::new(repo_root().join("tests/fixtures/plugins/build.sh"))
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tests/fixtures/plugins/build.sh failed");
    });
    target_dir()
        .join("test-plugins")
        .join(format!("{name}.wasm"))
}
