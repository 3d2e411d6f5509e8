//! Unmodified npm `centrifuge` (5.x) clients in Node (with the `ws` package
//! as WebSocket) against the real gateway's `/connection/websocket` (DESIGN
//! §2c): connect with a token through the first-party `jwt-auth` plugin, and
//! refused with 3500 (no reconnect); subscribe; publications from another
//! Centrifuge client, from a protocol v1 client over a real WebSocket and
//! from `POST /api/publish`, on one channel with one seq/offset sequence;
//! authorize-subscribe and authorize-publish refusals (103); presence,
//! presence stats and history (limit, reverse, since, an unrecoverable
//! `since`: 112); a dropped connection reconnected with its missed
//! publications recovered (`recovered: true`, no gap, no duplicate), and
//! one the history no longer covers (`recovered: false`); a path
//! tenant without an auth plugin; hostile input (3501, 3502) that harms no
//! other client. And the protobuf subprotocol refused with HTTP 400.
//!
//! The scenarios live in `tests/js/centrifuge-clients.test.mjs` (`node
//! --test`); this test owns the process. Needs `node` (≥ 20),
//! `tests/js/node_modules` (`npm ci` is run when a package is missing) and
//! `target/plugins/jwt-auth.wasm` (`scripts/build-plugins.sh`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_tests::node::{ensure_node_modules, run_node_tests};
use switchyard_tests::{Gateway, repo_root, scratch_dir};

const API_KEY: &str = "centrifuge-key";
const JWT_SECRET: &str = "centrifuge-test-secret";
const JWT_AUDIENCE: &str = "centrifuge-test";

/// Every test of the script that must pass (the start of its name).
const SCENARIOS: &[&str] = &[
    "1. connect with a token",
    "2. refused credentials",
    "3. one channel",
    "4. reconnect after the connection is dropped",
    "4b. a recovery the history no longer covers",
    "5. a path tenant without an auth plugin",
    "6. hostile input",
];

/// Longest the script may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);

/// The npm packages the script imports (from the committed lockfile).
const NODE_PACKAGES: &[&str] = &["centrifuge", "ws"];

/// A plugins folder with the first-party `jwt-auth`.
fn plugins() -> PathBuf {
    let dir = scratch_dir("centrifuge-plugins");
    let src = repo_root().join("target/plugins/jwt-auth.wasm");
    assert!(
        src.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        src.display()
    );
    std::fs::copy(&src, dir.join("jwt-auth.wasm")).expect("copy plugin");
    dir
}

/// Tenant `default` behind `jwt-auth` (claim `channels` = what a token may
/// subscribe and publish to) with an API key; tenant `open` with the
/// built-in policies.
fn config(plugins: &Path) -> String {
    format!(
        r#"
[limits]
handshake_timeout = "2s"

[plugins]
dir = {dir:?}
watch = false
call_timeout = "1s"

[tenants.default]
api_keys = ["{API_KEY}"]
[tenants.default.policies.auth]
plugin = "jwt-auth"
config = {{ hs256_secret = "{JWT_SECRET}", audience = "{JWT_AUDIENCE}" }}

[tenants.open]

[tenants.short]
history_size = 2
"#,
        dir = plugins.display().to_string(),
    )
}

#[test]
fn centrifuge_js_clients() {
    let plugins = plugins();
    ensure_node_modules(NODE_PACKAGES);
    let gw = Gateway::start(&config(&plugins));

    let url = gw.http_url("");
    run_node_tests(
        "centrifuge-clients.test.mjs",
        &[
            ("GW", &url),
            ("API_KEY", API_KEY),
            ("JWT_SECRET", JWT_SECRET),
            ("JWT_AUDIENCE", JWT_AUDIENCE),
        ],
        SCRIPT_LIMIT,
        SCENARIOS,
        || gw.logs(),
    );
    let _ = std::fs::remove_dir_all(&plugins);
}

/// The protobuf format is not offered: a client asking for the
/// `centrifuge-protobuf` subprotocol gets HTTP 400 before any upgrade, and
/// the JSON endpoint still works on the same gateway.
#[tokio::test]
async fn the_protobuf_subprotocol_is_refused_with_400() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::{Error, Message};
    let gw = Gateway::start("[tenants.open]\n");
    let mut req = gw
        .ws_url("/connection/websocket/open")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("centrifuge-protobuf"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/connection/websocket/open"))
        .await
        .expect("JSON upgrade");
    use futures_util::{SinkExt as _, StreamExt as _};
    ws.send(Message::text(r#"{"id":1,"connect":{}}"#))
        .await
        .expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a reply in time")
        .expect("a frame")
        .expect("ok");
    let v: serde_json::Value = serde_json::from_str(reply.to_text().expect("text")).expect("json");
    assert_eq!(v["id"], 1);
    assert!(v["connect"]["client"].is_string(), "{v}");
    assert_eq!(v["connect"]["pong"], true);
}
