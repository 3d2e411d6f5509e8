//! `[server.tls]` through the real binary: wss and https on a TLS-only
//! listener, certificate rotation on SIGHUP without dropping connections, a
//! bad new certificate keeping the old one, a bad file at start naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use switchyard_tests::{Gateway, WAIT, binary, metric_value, repo_root, scratch_dir};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// Writes a fresh self-signed certificate for `localhost` (new key each time)
/// to `cert`/`key`; returns its DER.
fn write_cert(cert: &Path, key: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    std::fs::write(cert, ck.cert.pem()).expect("write cert");
    std::fs::write(key, ck.signing_key.serialize_pem()).expect("write key");
    ck.cert.der().clone()
}

fn connector(trusted: &[&CertificateDer<'static>]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every handshake a full one, so each shows the certificate served now
    // (a resumed session would carry the one it was made with).
    cfg.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(
    addr: SocketAddr,
    tls: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, tls.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The leaf certificate the server presented.
fn peer_leaf(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("peer certificate")
        .clone()
        .into_owned()
}

/// Reads until the peer closes (an unclean TLS close counts as the end).
async fn read_all(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return buf,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("peer did not close in time; read so far: {buf:?}"),
        }
    }
}

/// One HTTPS request (Connection: close); returns (status, body).
async fn https(
    addr: SocketAddr,
    tls: &TlsConnector,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tls_connect(addr, tls).await.expect("tls connect");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let raw = String::from_utf8_lossy(&read_all(&mut s).await).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn wss(addr: SocketAddr, tls: &TlsConnector) -> (Wss, CertificateDer<'static>) {
    let stream = tls_connect(addr, tls).await.expect("tls connect");
    let leaf = peer_leaf(&stream);
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    let mut ws = ws;
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, leaf)
}

async fn recv_json(ws: &mut Wss) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn recv_type(ws: &mut Wss, kind: &str) -> Value {
    loop {
        let v = recv_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

/// A WebSocket ping answered by a pong with the same payload.
async fn ping_pong(ws: &mut Wss, payload: &'static [u8]) {
    ws.send(Message::Ping(payload.into())).await.expect("ping");
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("pong in time")
            .expect("open")
            .expect("frame");
        if let Message::Pong(p) = m {
            assert_eq!(&p[..], payload);
            return;
        }
    }
}

/// Publishes over `publisher` and reads the delivery on `subscriber`.
async fn round_trip(publisher: &mut Wss, subscriber: &mut Wss, id: u64, n: u64) {
    publisher
        .send(Message::text(
            json!({"type":"publish","id":id,"channel":"room:tls","data":{"n":n}}).to_string(),
        ))
        .await
        .expect("publish");
    let ack = recv_type(publisher, "ack").await;
    assert_eq!(ack["id"], id);
    let m = recv_type(subscriber, "message").await;
    assert_eq!(m["channel"], "room:tls");
    assert_eq!(m["data"]["n"], n);
}

async fn wait_log(gw: &Gateway, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !gw.logs().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "log never showed {needle:?}:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(cert: &Path, key: &Path) -> String {
    format!(
        r#"
[server.tls]
cert = "{}"
key = "{}"
[limits]
handshake_timeout = "2s"
[tenants.default]
api_keys = ["tls-key"]
"#,
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn tls_only_listener_serves_wss_and_https_and_rotates_on_sighup() {
    let dir = scratch_dir("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let first = write_cert(&cert, &key);
    let config_path = dir.join("switchyard.toml");
    std::fs::write(&config_path, config(&cert, &key)).expect("config");
    let gw = Gateway::spawn_listening(dir, config_path, "127.0.0.1:0", &[]);
    let addr = gw.addr;
    let trust_first = connector(&[&first]);

    // HTTPS: health, then the whole surface is behind TLS.
    let (st, body) = https(addr, &trust_first, "GET", "/healthz", &[], "").await;
    assert_eq!(st, 200, "{body}\n{}", gw.logs());

    // wss: subscribe, publish over wss and over the HTTPS API.
    let (mut a, leaf) = wss(addr, &trust_first).await;
    assert_eq!(leaf, first);
    let (mut b, _) = wss(addr, &trust_first).await;
    a.send(Message::text(
        json!({"type":"subscribe","id":1,"channel":"room:tls"}).to_string(),
    ))
    .await
    .expect("subscribe");
    assert_eq!(recv_type(&mut a, "subscribed").await["id"], 1);
    round_trip(&mut b, &mut a, 2, 1).await;
    let (st, body) = https(
        addr,
        &trust_first,
        "POST",
        "/api/publish",
        &[
            ("authorization", "Bearer tls-key"),
            ("content-type", "application/json"),
        ],
        &json!({"channel":"room:tls","data":{"n":2}}).to_string(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(recv_type(&mut a, "message").await["data"]["n"], 2);

    // Plain TCP: no HTTP answer, the failed handshake is counted.
    let mut plain = TcpStream::connect(addr).await.expect("tcp");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_all(&mut plain).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/"),
        "a plain request got an HTTP answer: {got:?}"
    );
    // A silent client is cut at limits.handshake_timeout (read_all waits for the close).
    let mut silent = TcpStream::connect(addr).await.expect("tcp");
    let started = Instant::now();
    assert!(read_all(&mut silent).await.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let (_, metrics) = https(addr, &trust_first, "GET", "/metrics", &[], "").await;
    let rejected = metric_value(
        &metrics,
        r#"switchyard_handshake_rejections_total{reason="tls"}"#,
    );
    assert!(
        rejected.is_some_and(|v| v >= 2.0),
        "{rejected:?}\n{metrics}"
    );

    // Rotation: a new pair on disk + SIGHUP; new handshakes get it.
    let second = write_cert(&cert, &key);
    assert_ne!(first, second);
    let trust_both = connector(&[&first, &second]);
    gw.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    loop {
        let s = tls_connect(addr, &trust_both).await.expect("tls connect");
        if peer_leaf(&s) == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_log(&gw, "SIGHUP: TLS certificate reloaded").await;
    // The connections opened under the old certificate stay and still work.
    ping_pong(&mut a, b"still-there").await;
    round_trip(&mut b, &mut a, 3, 3).await;
    let trust_second = connector(&[&second]);
    let (mut c, leaf) = wss(addr, &trust_second).await;
    assert_eq!(leaf, second);
    round_trip(&mut c, &mut a, 1, 4).await;
    // A client trusting only the old certificate is refused now.
    assert!(tls_connect(addr, &trust_first).await.is_err());

    // A bad new file + SIGHUP: an error is logged, the current pair keeps serving.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .expect("write bad cert");
    gw.signal(libc::SIGHUP);
    wait_log(&gw, "keeping the old certificate").await;
    assert!(
        gw.logs().contains(&cert.display().to_string()),
        "{}",
        gw.logs()
    );
    let s = tls_connect(addr, &trust_both)
        .await
        .expect("tls connect after a bad reload");
    assert_eq!(peer_leaf(&s), second);
    let (st, _) = https(addr, &trust_second, "GET", "/healthz", &[], "").await;
    assert_eq!(st, 200);
    ping_pong(&mut a, b"after-bad-reload").await;
    ping_pong(&mut c, b"after-bad-reload").await;
    assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
}

/// Runs `switchyard serve` on `config`, expecting it to exit; returns its stderr.
fn serve_expecting_exit(config: &Path) -> String {
    let mut child = Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchyard kept running with a bad [server.tls]");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(!status.success(), "exit status {status:?}\n{err}");
    err
}

#[test]
fn a_bad_tls_file_at_start_is_an_error_naming_it() {
    let dir: PathBuf = scratch_dir("tls-bad");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let config_path = dir.join("switchyard.toml");
    std::fs::write(&config_path, config(&cert, &key)).expect("config");
    // Missing files.
    let err = serve_expecting_exit(&config_path);
    assert!(err.contains(&cert.display().to_string()), "{err}");
    // A certificate with a key that is not its own.
    write_cert(&cert, &key);
    let other_key = dir.join("other-key.pem");
    write_cert(&dir.join("other-cert.pem"), &other_key);
    std::fs::write(&config_path, config(&cert, &other_key)).expect("config");
    let err = serve_expecting_exit(&config_path);
    assert!(err.contains(&other_key.display().to_string()), "{err}");
    // A key file that is no key.
    std::fs::write(&other_key, "nothing here\n").expect("write");
    let err = serve_expecting_exit(&config_path);
    assert!(
        err.contains("other-key.pem") && err.contains("private key"),
        "{err}"
    );
    // Half a table: the config names the missing key.
    std::fs::write(
        &config_path,
        format!("[server.tls]\ncert = \"{}\"\n", cert.display()),
    )
    .expect("config");
    let err = serve_expecting_exit(&config_path);
    assert!(err.contains("server.tls") && err.contains("key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
