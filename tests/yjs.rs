//! Unmodified npm `yjs` + `y-websocket` clients against `/yjs/{tenant}/{room}`
//! (DESIGN §2b, "Yjs clients") on two gateways (node-a, node-b) sharing one
//! real redis-server, with the first-party `yjs-merge` plugin as the merge
//! policy: initial sync, concurrent edits from six clients converging,
//! offline edits, awareness across nodes (and its removal when a client
//! leaves), the room's current awareness sent to a joiner at once (from its
//! own node and the other), a late joiner after everyone left, an idle
//! client kept alive past 60 s, refused clients (`jwt-auth`: permission denied, close 4001, no data),
//! hostile input over a raw socket (random bytes, truncated updates, a 10 MB
//! update refused by `limits.max_message_bytes`, close 1009), and the same
//! document read over protocol v1 (`GET /api/documents/yjs:<room>`).
//!
//! The scenarios live in `tests/js/yjs.test.mjs` (`node --test`); this test
//! owns the processes. Needs `node` (≥ 20), `tests/js/node_modules` (`npm ci`
//! is run when a package is missing) and `target/plugins/{yjs-merge,jwt-auth}.wasm`
//! (`scripts/build-plugins.sh`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use switchyard_tests::node::{ensure_node_modules, run_node_tests};
use switchyard_tests::redis::RedisServer;
use switchyard_tests::{Client, Gateway, repo_root, scratch_dir};
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "k";
const JWT_SECRET: &str = "yjs-test-secret";
const JWT_AUDIENCE: &str = "yjs-test";

/// Every test of `yjs.test.mjs` that must pass (the start of its name).
const SCENARIOS: &[&str] = &[
    "1. initial sync",
    "2. concurrent edits",
    "3. offline edits",
    "4. awareness across nodes",
    "4b. a joiner gets the room's current awareness at once",
    "5. a late joiner",
    "6. an idle client",
    "7. refused clients",
    "8. hostile updates",
    "protocol v1 reads the same document",
];

/// Longest the script may run (its idle scenario alone takes 65 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// The npm packages the scenarios import (from the committed lockfile).
const NODE_PACKAGES: &[&str] = &["yjs", "y-websocket", "y-protocols", "lib0", "ws"];

/// A plugins folder with the first-party `yjs-merge` and `jwt-auth`.
fn plugins() -> PathBuf {
    let dir = scratch_dir("yjs-plugins");
    for name in ["yjs-merge", "jwt-auth"] {
        let src = repo_root().join(format!("target/plugins/{name}.wasm"));
        assert!(
            src.exists(),
            "{} is missing: run scripts/build-plugins.sh first",
            src.display()
        );
        std::fs::copy(&src, dir.join(format!("{name}.wasm"))).expect("copy plugin");
    }
    dir
}

/// Tenant `t`: documents `yjs:*` merged by `yjs-merge`, an API key; tenant
/// `j`: the same behind `jwt-auth`.
fn config(node: &str, redis: &RedisServer, plugins: &Path) -> String {
    format!(
        r#"
[server]
node_id = "{node}"
drain_timeout = "2s"

[plugins]
dir = {dir:?}
watch = false
call_timeout = "1s"

[broker]
kind = "redis"
redis_urls = ["{redis}"]

[tenants.t]
documents = ["yjs:*"]
api_keys = ["{API_KEY}"]
[tenants.t.policies.merge]
plugin = "yjs-merge"

[tenants.j]
documents = ["yjs:*"]
[tenants.j.policies.merge]
plugin = "yjs-merge"
[tenants.j.policies.auth]
plugin = "jwt-auth"
config = {{ hs256_secret = "{JWT_SECRET}", audience = "{JWT_AUDIENCE}" }}
"#,
        dir = plugins.display().to_string(),
        redis = redis.url(),
    )
}

#[test]
fn y_websocket_clients_on_two_nodes() {
    let plugins = plugins();
    ensure_node_modules(NODE_PACKAGES);
    let redis = RedisServer::start();
    let a = Gateway::start(&config("node-a", &redis, &plugins));
    let b = Gateway::start(&config("node-b", &redis, &plugins));

    let (url_a, url_b) = (a.http_url(""), b.http_url(""));
    run_node_tests(
        "yjs.test.mjs",
        &[
            ("GW_A", &url_a),
            ("GW_B", &url_b),
            ("API_KEY", API_KEY),
            ("JWT_SECRET", JWT_SECRET),
            ("JWT_AUDIENCE", JWT_AUDIENCE),
        ],
        SCRIPT_LIMIT,
        SCENARIOS,
        || format!("{}\n{}", a.logs(), b.logs()),
    );
    let _ = std::fs::remove_dir_all(&plugins);
    drop((a, b, redis));
}

/// A frame over `limits.max_message_bytes` closes the socket with 1009, and
/// the client reads that close frame: the gateway keeps reading (and
/// discarding) the rest of the frame after its close instead of dropping the
/// socket with input unread, which makes the kernel reset the connection
/// (the client then sees ECONNRESET, not the close code). A 10 MB frame,
/// five times on `/yjs` and on `/ws`, each written while the client reads.
#[tokio::test]
async fn a_10_mb_frame_gets_close_1009_not_a_reset() {
    let gw = Gateway::start("[tenants.t]\ndocuments = [\"yjs:*\"]\n");
    let big = vec![7u8; 10 * 1024 * 1024];
    for round in 0..5 {
        for path in ["/yjs/t/too-big", "/ws/t"] {
            let what = format!("{path}, round {round}");
            let ws = Client::connect_raw(&gw.ws_url(path)).await;
            let (mut tx, mut rx) = ws.split();
            let frame = big.clone();
            let send = tokio::spawn(async move { tx.send(Message::binary(frame)).await });
            let read = async {
                loop {
                    match rx.next().await {
                        Some(Ok(Message::Close(f))) => return Ok(f.map(|f| u16::from(f.code))),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(format!("read failed: {e}")),
                        None => return Err("ended without a close frame".to_owned()),
                    }
                }
            };
            let got = tokio::time::timeout(Duration::from_secs(20), read)
                .await
                .unwrap_or_else(|_| panic!("{what}: no close within 20 s"));
            assert_eq!(got, Ok(Some(1009)), "{what}");
            let sent = tokio::time::timeout(Duration::from_secs(20), send)
                .await
                .unwrap_or_else(|_| panic!("{what}: the 10 MB write did not finish"))
                .expect("join");
            // The gateway read the whole frame: the write was not cut by a reset.
            assert!(sent.is_ok(), "{what}: write failed: {sent:?}");
        }
    }
    let metrics = gw.get("/metrics").await.1;
    assert_eq!(
        switchyard_tests::metric_value(
            &metrics,
            "switchyard_messages_failed_total{reason=\"too_big\"}"
        ),
        Some(10.0),
        "every frame counted as too big"
    );
    assert_eq!(gw.get("/healthz").await.0, 200);
}
