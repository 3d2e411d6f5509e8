//! The first-party and example plugins (`target/plugins/*.wasm`, built by
//! `scripts/build-plugins.sh`) loaded by the real gateway and exercised through
//! real WebSocket clients: jwt-auth, token-bucket, namespace-router, the Rust
//! template, and their twins in other languages, each passing its Rust twin's
//! test: the Python and JavaScript routers, the JavaScript auth plugin (HS256),
//! the C rate limiter; all load with the right role.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use switchyard_tests::{Client, Gateway, admin_plugins, repo_root, scratch_dir};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const SECRET: &str = "it-secret";
const ADMIN: &str = "admin-token";

/// A scratch plugins folder holding copies of the named built plugins.
fn plugins_dir(names: &[&str]) -> PathBuf {
    let built = repo_root().join("target/plugins");
    let dir = scratch_dir("plugins");
    for name in names {
        let src = built.join(format!("{name}.wasm"));
        assert!(
            src.exists(),
            "{} is missing: run scripts/build-plugins.sh first",
            src.display()
        );
        std::fs::copy(&src, dir.join(format!("{name}.wasm"))).expect("copy plugin");
    }
    dir
}

/// A gateway whose tenant `t` maps `policies` (TOML tables after `[tenants.t]`).
fn gateway(plugins: &[&str], policies: &str) -> Gateway {
    gateway_in(&plugins_dir(plugins), policies)
}

/// Like [`gateway`], on an existing plugins folder.
fn gateway_in(dir: &std::path::Path, policies: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[plugins]
dir = {dir:?}
watch = false
memory_limit = 268435456
# Generous: the deadline is wall-clock epochs and test machines are busy.
call_timeout = "1s"

[admin]
token = "{ADMIN}"

[tenants.default]

[tenants.t]
origins = ["*"]
{policies}
"#,
        dir = dir.display().to_string()
    ))
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

fn hs256(claims: Value, secret: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(&json!({"alg":"HS256","typ":"JWT"})),
        b64(&claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Connects to tenant `t` with a bearer token; the handshake status on refusal.
async fn connect_bearer(gw: &Gateway, token: Option<&str>) -> Result<Client, u16> {
    let mut req = gw.ws_url("/ws/t").into_client_request().expect("request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    match Client::connect_with(req).await {
        Ok(c) => Ok(c),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

/// A client that keeps the `message` frames it reads while waiting for replies.
struct Peer {
    c: Client,
    inbox: VecDeque<Value>,
}

impl Peer {
    async fn connect(url: &str) -> Peer {
        Peer::from(Client::connect(url).await)
    }

    /// Publishes and returns the `ack` or `error` reply.
    async fn publish(&mut self, id: u64, channel: &str, data: Value) -> Value {
        self.c
            .send_json(json!({"type":"publish","id":id,"channel":channel,"data":data}))
            .await;
        loop {
            let v = self.c.recv_json().await;
            if v["type"] == "message" {
                self.inbox.push_back(v);
            } else if v["id"] == id && (v["type"] == "ack" || v["type"] == "error") {
                return v;
            }
        }
    }

    /// Next `message` frame, or `None` when none arrives within `wait`.
    async fn next_message(&mut self, wait: Duration) -> Option<Value> {
        if let Some(m) = self.inbox.pop_front() {
            return Some(m);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.c.recv_json()).await.ok()?;
            if msg["type"] == "message" {
                return Some(msg);
            }
        }
    }
}

impl From<Client> for Peer {
    fn from(c: Client) -> Peer {
        Peer {
            c,
            inbox: VecDeque::new(),
        }
    }
}

/// An auth policy with an HS256 secret, audience, issuer and leeway (config keys
/// that jwt-auth and js-auth share).
fn auth_policy(plugin: &str) -> String {
    format!(
        r#"[tenants.t.policies.auth]
plugin = "{plugin}"
config = {{ hs256_secret = "{SECRET}", audience = "demo", issuer = "it", leeway_secs = 2 }}
"#
    )
}

#[tokio::test]
async fn jwt_auth_connect_refusals_and_channel_claim() {
    let gw = gateway(&["jwt-auth"], &auth_policy("jwt-auth"));
    auth_checks(&gw).await;
}

#[tokio::test]
async fn js_auth_passes_the_same_test_as_its_rust_twin() {
    let gw = hot_loaded("js-auth", "auth", &auth_policy("js-auth")).await;
    auth_checks(&gw).await;
}

/// Connect refusals (401) and the channel claim (403 / `forbidden`) of an auth
/// policy configured by [`auth_policy`], through a gateway whose tenant `t` maps it.
async fn auth_checks(gw: &Gateway) {
    let now = now_secs();
    let good = json!({"sub":"alice","aud":"demo","iss":"it","exp":now + 300,"channels":["room:*"]});

    // Valid token: connects, may use room:*, nothing else.
    let mut c = connect_bearer(gw, Some(&hs256(good.clone(), SECRET)))
        .await
        .expect("valid token connects");
    c.subscribe(1, "room:lobby").await;
    c.send_json(json!({"type":"subscribe","id":2,"channel":"admin:x"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (e["id"].clone(), e["code"].clone()),
        (json!(2), json!("forbidden")),
        "{e}"
    );
    let mut c = Peer::from(c);
    let ack = c.publish(3, "room:lobby", json!({"hi":1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = c
        .next_message(Duration::from_secs(5))
        .await
        .expect("own message");
    assert_eq!(m["data"], json!({"hi":1}));
    let denied = c.publish(4, "admin:x", json!(1)).await;
    assert_eq!(denied["code"], "forbidden", "{denied}");

    // The token may also come from the query string.
    let url = format!(
        "{}?token={}",
        gw.ws_url("/ws/t"),
        hs256(good.clone(), SECRET)
    );
    Client::connect(&url).await;

    // Refusals: 401 before the upgrade.
    let mut expired = good.clone();
    expired["exp"] = json!(now - 60);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("other");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("evil");
    let mut early = good.clone();
    early["nbf"] = json!(now + 600);
    for (what, token) in [
        ("expired", Some(hs256(expired, SECRET))),
        ("bad signature", Some(hs256(good.clone(), "not-the-secret"))),
        ("wrong audience", Some(hs256(wrong_aud, SECRET))),
        ("wrong issuer", Some(hs256(wrong_iss, SECRET))),
        ("not yet valid", Some(hs256(early, SECRET))),
        ("garbage", Some("not.a.jwt".to_owned())),
        ("missing", None),
    ] {
        let got = connect_bearer(gw, token.as_deref()).await.err();
        assert_eq!(got, Some(401), "{what} token must be refused with 401");
    }
}

/// A rate-limit policy: rate 1/s, burst 3, keyed by client (the built-in auth
/// makes everyone anonymous); config keys that token-bucket and c-rate-limit share.
fn rate_limit_policy(plugin: &str) -> String {
    format!(
        r#"[tenants.t.policies.rate_limit]
plugin = "{plugin}"
config = {{ rate = 1, burst = 3, key = "client" }}
"#
    )
}

#[tokio::test]
async fn token_bucket_enforces_the_configured_rate() {
    let gw = gateway(&["token-bucket"], &rate_limit_policy("token-bucket"));
    rate_limit_checks(&gw).await;
}

#[tokio::test]
async fn c_rate_limit_passes_the_same_test_as_its_rust_twin() {
    let gw = gateway(&["c-rate-limit"], &rate_limit_policy("c-rate-limit"));
    rate_limit_checks(&gw).await;
}

/// Burst, refusal, per-client buckets and refill of a policy configured by
/// [`rate_limit_policy`], through a gateway whose tenant `t` maps it.
async fn rate_limit_checks(gw: &Gateway) {
    let mut a = Peer::connect(&gw.ws_url("/ws/t")).await;
    let mut b = Peer::connect(&gw.ws_url("/ws/t")).await;
    let mut outcomes = Vec::new();
    for i in 0..6 {
        let r = a.publish(i, "room:1", json!(i)).await;
        outcomes.push(r["type"] == "ack");
        if r["type"] == "error" {
            assert_eq!(r["code"], "rate_limited", "{r}");
        }
    }
    assert_eq!(
        outcomes,
        [true, true, true, false, false, false],
        "burst of 3, then refused"
    );
    // Another client has its own bucket.
    assert_eq!(b.publish(1, "room:1", json!(1)).await["type"], "ack");
    // Two seconds refill two tokens (at 1/s): two more go through, the third does not.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut again = Vec::new();
    for i in 10..13 {
        again.push(a.publish(i, "room:1", json!(i)).await["type"] == "ack");
    }
    assert_eq!(again, [true, true, false]);
}

/// The demo rule set, in the TOML of a router policy's `config`.
const ROUTER_RULES: &str = r#"
[[tenants.t.policies.router.config.rules]]
match = "chat:*"
to = ["chat:all", "$channel"]

[[tenants.t.policies.router.config.rules]]
match = "spam:*"
drop = true

[[tenants.t.policies.router.config.rules]]
match = "log:*"
to = ["audit:$channel"]
wrap = "envelope"
"#;

/// Rewrites, fan-out and drops of the demo rules, through the gateway.
async fn router_scenario(plugin: &str) {
    let gw = gateway(&[plugin], &router_policy(plugin));
    router_checks(&gw).await;
}

fn router_policy(plugin: &str) -> String {
    format!("[tenants.t.policies.router]\nplugin = \"{plugin}\"\n{ROUTER_RULES}")
}

/// Polls `/admin/plugins` until `name` is loaded and serves tenant `t`; returns its entry.
async fn wait_loaded(gw: &Gateway, name: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, list) = admin_plugins(gw, ADMIN).await;
        assert_eq!(status, 200, "{list}");
        let entry = list["plugins"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name).cloned());
        if let Some(p) = entry
            && p["status"] == "loaded"
            && p["used_by"].as_array().is_some_and(|u| !u.is_empty())
        {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not loaded in time: {list}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The router checks of the demo rules, through a gateway whose tenant `t` maps them.
async fn router_checks(gw: &Gateway) {
    let mut sub = Client::connect(&gw.ws_url("/ws/t")).await;
    for (i, ch) in [
        "chat:all",
        "chat:lobby",
        "audit:log:app",
        "log:app",
        "spam:x",
        "news:today",
    ]
    .into_iter()
    .enumerate()
    {
        sub.subscribe(i as u64 + 1, ch).await;
    }
    let mut sub = Peer::from(sub);
    let mut publ = Peer::connect(&gw.ws_url("/ws/t")).await;

    // Fan-out: chat:lobby → chat:all and chat:lobby, payload unchanged.
    let ack = publ.publish(1, "chat:lobby", json!({"text":"hi"})).await;
    let routes: Vec<&str> = ack["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("routes in {ack}"))
        .iter()
        .filter_map(|r| r["channel"].as_str())
        .collect();
    assert_eq!(routes, ["chat:all", "chat:lobby"], "{ack}");
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = sub
            .next_message(Duration::from_secs(5))
            .await
            .expect("fan-out message");
        assert_eq!(m["data"], json!({"text":"hi"}));
        got.push(m["channel"].as_str().unwrap_or_default().to_owned());
    }
    got.sort();
    assert_eq!(got, ["chat:all", "chat:lobby"]);

    // Drop: acknowledged as dropped, delivered nowhere.
    let ack = publ.publish(2, "spam:x", json!("buy")).await;
    assert_eq!(ack["dropped"], true, "{ack}");

    // Rewrite: log:app → audit:log:app wrapped in an envelope; nothing on log:app.
    let ack = publ.publish(3, "log:app", json!({"level":"warn"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = sub
        .next_message(Duration::from_secs(5))
        .await
        .expect("rewritten message");
    assert_eq!(
        m["channel"], "audit:log:app",
        "the dropped spam never arrives: {m}"
    );
    assert_eq!(
        m["data"],
        json!({"channel":"log:app","data":{"level":"warn"}})
    );

    // No rule: direct.
    let ack = publ.publish(4, "news:today", json!(7)).await;
    assert!(ack["seq"].is_u64() && ack.get("routes").is_none(), "{ack}");
    let m = sub
        .next_message(Duration::from_secs(5))
        .await
        .expect("direct message");
    assert_eq!(
        (m["channel"].clone(), m["data"].clone()),
        (json!("news:today"), json!(7))
    );
    assert!(sub.next_message(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn namespace_router_rewrites_fans_out_and_drops() {
    router_scenario("namespace-router").await;
}

/// A gateway whose tenant `t` maps `policies`, started with an empty plugins
/// folder into which the built plugin `name` is then dropped (hot reload), once
/// it serves with the role `role`. For the large components (an embedded Python
/// or JavaScript engine) that take a while to compile in a debug build.
async fn hot_loaded(name: &str, role: &str, policies: &str) -> Gateway {
    let dir = plugins_dir(&[]);
    let gw = gateway_in(&dir, policies);
    let src = repo_root().join(format!("target/plugins/{name}.wasm"));
    assert!(
        src.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        src.display()
    );
    let tmp = dir.join(format!("{name}.wasm.tmp"));
    std::fs::copy(&src, &tmp).expect("copy plugin");
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename plugin");
    gw.signal(libc::SIGHUP); // rescans the folder (the config has watch = false)
    let p = wait_loaded(&gw, name, Duration::from_secs(300)).await;
    assert_eq!(p["role"], role, "{p}");
    gw
}

#[tokio::test]
async fn python_router_passes_the_same_test_as_its_rust_twin() {
    let gw = hot_loaded("python-router", "router", &router_policy("python-router")).await;
    router_checks(&gw).await;
}

#[tokio::test]
async fn js_router_passes_the_same_test_as_its_rust_twin() {
    let gw = hot_loaded("js-router", "router", &router_policy("js-router")).await;
    router_checks(&gw).await;
}

#[tokio::test]
async fn every_built_plugin_loads_with_its_role() {
    let expected = [
        ("jwt-auth", "auth"),
        ("token-bucket", "rate_limit"),
        ("namespace-router", "router"),
        ("lww-merge", "merge"),
        ("plugin-template", "router"),
        ("c-rate-limit", "rate_limit"),
    ];
    let names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    let gw = gateway(
        &names,
        r#"[tenants.t.policies.merge]
plugin = "lww-merge"
"#,
    );
    let (status, list) = admin_plugins(&gw, ADMIN).await;
    assert_eq!(status, 200, "{list}");
    for (name, role) in expected {
        let p = list["plugins"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{name} not listed: {list}"));
        assert_eq!(p["status"], "loaded", "{name}: {p}");
        let got = p["role"].as_str().unwrap_or_default().replace('-', "_");
        assert_eq!(got, role, "{name}: {p}");
    }
}

#[tokio::test]
async fn template_router_drops_and_mirrors() {
    let gw = gateway(
        &["plugin-template"],
        r#"[tenants.t.policies.router]
plugin = "plugin-template"
config = { mirror_to = "chat:everything" }
"#,
    );
    let mut c = Peer::connect(&gw.ws_url("/ws/t")).await;
    assert_eq!(c.publish(1, "spam:1", json!(1)).await["dropped"], true);
    let ack = c.publish(2, "chat:a", json!(1)).await;
    let routes: Vec<&str> = ack["routes"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["channel"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(routes, ["chat:a", "chat:everything"], "{ack}");
}
