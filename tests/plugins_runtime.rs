//! Plugin runtime against the real binary: hot reload under load and a broken
//! plugin file, with the runtime's own test guests (tests/fixtures/plugins,
//! built into target/test-plugins/ by tests/fixtures/plugins/build.sh).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::{Client, Gateway, admin_plugins, scratch_dir, test_plugin};
use tokio_tungstenite::tungstenite::Message;

fn fixture(name: &str) -> PathBuf {
    test_plugin(name)
}

/// Puts `bytes` in place as `<name>.wasm` atomically (write + rename), as a deploy would.
fn deploy(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename");
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read fixture")
}

fn plugin_entry<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["plugins"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Publishes `data` and returns the routed `data` of the message that comes back
/// on the (subscribed) channel, after the matching ack.
async fn publish_roundtrip(
    c: &mut Client,
    id: u64,
    channel: &str,
    data: Value,
) -> Result<Value, String> {
    c.send_json(json!({"type":"publish","id":id,"channel":channel,"data":data}))
        .await;
    let (mut acked, mut routed) = (false, None);
    while !(acked && routed.is_some()) {
        match c.recv_within(Duration::from_secs(30)).await {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                match v["type"].as_str() {
                    Some("ack") if v["id"] == id => acked = true,
                    Some("message") if v["channel"] == channel && v["data"]["data"] == data => {
                        if routed.replace(v["data"].clone()).is_some() {
                            return Err(format!("message delivered twice: {v}"));
                        }
                    }
                    Some("error") => return Err(format!("error reply: {v}")),
                    _ => return Err(format!("unexpected frame: {v}")),
                }
            }
            other => return Err(format!("connection ended: {other:?}")),
        }
    }
    routed.ok_or_else(|| "no message".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_swaps_router_without_losing_messages() {
    let plugins = scratch_dir("plugins");
    let v1 = read(&fixture("router-v1"));
    let v2 = read(&fixture("router-v2"));
    deploy(&plugins, "router", &v1);
    // Present at start so its compiled code is in the cache when it is swapped in.
    deploy(&plugins, "router-next", &v2);
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\nwatch = true\ncall_timeout = \"1s\"\n\
         [limits]\npublish_rate = 10000\npublish_burst = 10000\n\
         [tenants.default.policies.router]\nplugin = \"router\"\n",
        plugins.display().to_string()
    ));
    const CLIENTS: usize = 200;
    // Every client publishes in a loop until it has seen the swap land (a few
    // messages routed by v2): the test waits for the event, not for a count of
    // publishes after a flag, since the debounced reload lands whenever it does.
    const AFTER_V2: usize = 3;
    let reached_v1 = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let url = gw.ws_url("/ws");
        let reached_v1 = reached_v1.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            let channel = format!("load:{i}");
            c.subscribe(1, &channel).await;
            let mut versions = Vec::new();
            let mut k = 0u64;
            while versions.iter().filter(|v| **v == 2).count() < AFTER_V2 {
                if Instant::now() > deadline {
                    return Err(format!("client {i} never saw v2: {versions:?}"));
                }
                k += 1;
                let routed =
                    publish_roundtrip(&mut c, 1 + k, &channel, json!({"i": i, "k": k})).await?;
                let v = routed["v"]
                    .as_u64()
                    .ok_or(format!("not routed by v1/v2: {routed}"))?;
                if v == 1 && !versions.contains(&1) {
                    reached_v1.fetch_add(1, Ordering::SeqCst);
                }
                versions.push(v);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            c.send_json(json!({"type":"ping","id":999_999})).await;
            let pong = c.recv_json().await;
            if pong["type"] != "pong" {
                return Err(format!("connection not healthy after the swap: {pong}"));
            }
            Ok::<_, String>((versions, c))
        }));
    }
    // Swap only once every client is publishing through v1.
    while reached_v1.load(Ordering::SeqCst) < CLIENTS {
        assert!(Instant::now() < deadline, "clients never all reached v1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deploy(&plugins, "router", &v2);
    let mut total = 0;
    let mut clients = Vec::new();
    for t in tasks {
        let (versions, client) = t
            .await
            .expect("client task")
            .unwrap_or_else(|e| panic!("{e}\n{}", gw.logs()));
        clients.push(client);
        assert!(versions.iter().all(|v| *v == 1 || *v == 2), "{versions:?}");
        let first_v2 = versions
            .iter()
            .position(|v| *v == 2)
            .unwrap_or(versions.len());
        assert!(
            versions[first_v2..].iter().all(|v| *v == 2),
            "v1 after v2: {versions:?}"
        );
        assert!(
            first_v2 > 0 && first_v2 < versions.len(),
            "each client published through v1, then v2: {versions:?}"
        );
        total += versions.len();
    }
    let (_, metrics) = gw.get("/metrics").await;
    let closed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_connections_closed_total{"))
        .collect();
    assert!(closed.is_empty(), "no connection was closed: {closed:?}");
    assert!(
        metrics.contains(&format!("switchyard_connections_active {CLIENTS}\n")),
        "{metrics}"
    );
    drop(clients);
    eprintln!("{CLIENTS} clients, {total} messages, all decided by v1 or v2, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_wasm_keeps_old_version_serving_and_admin_shows_error() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "router", &read(&fixture("router-v1")));
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\nwatch = true\ncall_timeout = \"1s\"\n\
         [admin]\ntoken = \"adm\"\n\
         [tenants.default.policies.router]\nplugin = \"router\"\n",
        plugins.display().to_string()
    ));
    let (status, before) = admin_plugins(&gw, "adm").await;
    assert_eq!(status, 200, "{before}");
    let entry = plugin_entry(&before, "router").clone();
    assert_eq!(entry["status"], "loaded", "{before}");
    assert_eq!(entry["role"], "router");
    let hash = entry["hash"].as_str().expect("hash").to_owned();
    assert_eq!(admin_plugins(&gw, "wrong").await.0, 401);

    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.subscribe(1, "room:1").await;
    let routed = publish_roundtrip(&mut c, 2, "room:1", json!({"n": 1}))
        .await
        .expect("publish");
    assert_eq!(routed["v"], 1);

    deploy(
        &plugins,
        "router",
        b"\0asm\x0d\0\x01\0this is not a component",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let entry = loop {
        let (_, v) = admin_plugins(&gw, "adm").await;
        let e = plugin_entry(&v, "router").clone();
        if e["status"] == "failed" {
            break e;
        }
        assert!(Instant::now() < deadline, "broken file never reported: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        entry["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{entry}"
    );
    assert_eq!(
        entry["hash"],
        hash.as_str(),
        "the old version is still the one serving"
    );
    let routed = publish_roundtrip(&mut c, 3, "room:1", json!({"n": 2}))
        .await
        .expect("publish");
    assert_eq!(routed["v"], 1, "old version keeps serving");
    gw.wait_metric("switchyard_plugin_load_failures_total{plugin=\"router\"} 1")
        .await;
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"router\",role=\"router\",outcome=\"ok\"} 2",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_and_looping_router_is_contained_per_tenant() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "misbehave", &read(&fixture("misbehave")));
    deploy(&plugins, "router", &read(&fixture("router-v1")));
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\ncall_timeout = \"1s\"\n\
         [tenants.a.policies.router]\nplugin = \"misbehave\"\ncall_timeout = \"50ms\"\n\
         [tenants.b.policies.router]\nplugin = \"router\"\n",
        plugins.display().to_string()
    ));
    let mut a = Client::connect(&gw.ws_url("/ws/a")).await;
    let mut b = Client::connect(&gw.ws_url("/ws/b")).await;
    b.subscribe(1, "room:1").await;
    for (id, channel) in [(10, "t:loop"), (11, "t:trap"), (12, "t:loop")] {
        a.send_json(json!({"type":"publish","id":id,"channel":channel,"data":1}))
            .await;
        let r = a.recv_json().await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["id"], id);
        assert_eq!(
            r["code"], "forbidden",
            "failed policy call, on_error = deny: {r}"
        );
        let routed = publish_roundtrip(&mut b, id, "room:1", json!({"id": id}))
            .await
            .expect("tenant b");
        assert_eq!(routed["v"], 1);
    }
    // Tenant a's connection survives and its next ordinary publish goes through.
    a.send_json(json!({"type":"publish","id":20,"channel":"room:2","data":1}))
        .await;
    assert_eq!(a.recv_type("ack").await["id"], 20);
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"misbehave\",role=\"router\",outcome=\"timeout\"} 2",
    )
    .await;
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"misbehave\",role=\"router\",outcome=\"trap\"} 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_tenant_plugin_mapping_without_dropping_connections() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "router-v2", &read(&fixture("router-v2")));
    let base = format!(
        "[plugins]\ndir = {:?}\nwatch = false\ncall_timeout = \"1s\"\n",
        plugins.display().to_string()
    );
    let gw = Gateway::start(&base);
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.subscribe(1, "room:1").await;
    c.send_json(json!({"type":"publish","id":2,"channel":"room:1","data":{"n":1}}))
        .await;
    let m = c.recv_type("message").await;
    assert_eq!(m["data"], json!({"n":1}), "built-in router: unchanged");
    std::fs::write(
        &gw.config_path,
        format!("{base}[tenants.default.policies.router]\nplugin = \"router-v2\"\n"),
    )
    .expect("rewrite config");
    gw.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 10;
    loop {
        id += 1;
        let data = json!({"n": id});
        c.send_json(json!({"type":"publish","id":id,"channel":"room:1","data":data}))
            .await;
        let (mut acked, mut got) = (false, None);
        while !(acked && got.is_some()) {
            let v = c.recv_json().await;
            match v["type"].as_str() {
                Some("ack") if v["id"] == id => acked = true,
                Some("ack") if v["id"] == 2 => {} // the first publish's, read past above
                // Built-in router: the payload itself; router-v2: wrapped as {"v":2,"data":…}.
                Some("message") if v["data"] == data || v["data"]["data"] == data => {
                    got = Some(v["data"].clone())
                }
                _ => panic!("unexpected frame {v}"),
            }
        }
        if got.is_some_and(|d| d["v"] == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP mapping never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.send_json(json!({"type":"ping","id":99})).await;
    assert_eq!(
        c.recv_type("pong").await["id"],
        99,
        "the connection survived the reload"
    );
}

/// A plugin that keeps crashing is taken out of service for a cool-down
/// (5 traps within 10 s): later calls are not made and `on_error` decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_plugin_is_taken_out_of_service() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "misbehave", &read(&fixture("misbehave")));
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\ncall_timeout = \"1s\"\n[admin]\ntoken = \"adm\"\n\
         [tenants.a.policies.router]\nplugin = \"misbehave\"\n",
        plugins.display().to_string()
    ));
    let mut a = Client::connect(&gw.ws_url("/ws/a")).await;
    for id in 0..8u64 {
        a.send_json(json!({"type":"publish","id":id,"channel":"t:trap","data":1}))
            .await;
        let r = a.recv_json().await;
        assert_eq!(
            (r["id"].clone(), r["code"].clone()),
            (json!(id), json!("forbidden")),
            "{r}"
        );
    }
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"misbehave\",role=\"router\",outcome=\"trap\"} 5",
    )
    .await;
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"misbehave\",role=\"router\",outcome=\"cooling_down\"} 3",
    )
    .await;
    assert!(
        gw.logs().contains("out of service for a cool-down"),
        "{}",
        gw.logs()
    );
    let (status, listing) = admin_plugins(&gw, "adm").await;
    assert_eq!(status, 200);
    let used = &plugin_entry(&listing, "misbehave")["used_by"][0];
    assert_eq!(used["tenant"], "a", "{listing}");
    assert_eq!(used["breaker"]["state"], "open", "{listing}");
    assert_eq!(used["breaker"]["trips"], 1, "{listing}");
    assert!(
        used["breaker"]["retry_in_ms"].as_u64().unwrap() > 0,
        "{listing}"
    );
}

/// A tenant whose plugin is slow (each call keeps a CPU busy for seconds) does
/// not stall other tenants: once a caller is seen slow its calls run off the
/// event loop, at most `plugins.max_concurrent_calls` at once for the tenant
/// (one more is refused as busy). Tenant b's round trips all finish while
/// tenant a's slow calls are still running: with the calls inline on the two
/// workers, b would wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tenant_plugin_does_not_stall_other_tenants() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "misbehave", &read(&fixture("misbehave")));
    deploy(&plugins, "router", &read(&fixture("router-v1")));
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\nmax_concurrent_calls = 2\n\
         [tenants.a.policies.router]\nplugin = \"misbehave\"\ncall_timeout = \"20s\"\n\
         [tenants.b.policies.router]\nplugin = \"router\"\n",
        plugins.display().to_string()
    ));
    let mut slow: Vec<Client> = Vec::new();
    for _ in 0..3 {
        slow.push(Client::connect(&gw.ws_url("/ws/a")).await);
    }
    // Two slow calls (20 ms each, inline) teach the gateway that a's router
    // is slow: the first is long on the wall clock, the second's CPU time
    // confirms it.
    for id in 1..=2 {
        slow[0]
            .send_json(json!({"type":"publish","id":id,"channel":"t:slow:20","data":1}))
            .await;
        assert_eq!(slow[0].recv_type("ack").await["id"], id);
    }
    for (i, c) in slow.iter_mut().enumerate() {
        c.send_json(json!({"type":"publish","id":10 + i,"channel":"t:slow:6000","data":1}))
            .await;
    }
    // Two run off the loop; the third is refused as busy (on_error = deny).
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"misbehave\",role=\"router\",outcome=\"busy\"} 1",
    )
    .await;
    let mut b = Client::connect(&gw.ws_url("/ws/b")).await;
    b.subscribe(1, "room:1").await;
    for id in 100..120u64 {
        let routed = publish_roundtrip(&mut b, id, "room:1", json!({"id": id}))
            .await
            .expect("tenant b");
        assert_eq!(routed["v"], 1);
    }
    // Only now do a's slow calls finish: two acks and one busy refusal.
    let ok = gw.get("/metrics").await.1;
    assert!(
        !ok.contains(
            "switchyard_plugin_calls_total{plugin=\"misbehave\",role=\"router\",outcome=\"ok\"} 4"
        ),
        "tenant b was served only after a's slow calls had finished:\n{ok}"
    );
    let mut acks = 0;
    let mut busy = 0;
    for c in &mut slow {
        let r = c.recv_json().await;
        match r["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert!(r["message"].as_str().unwrap_or("").contains("busy"), "{r}");
                busy += 1;
            }
            _ => panic!("unexpected reply {r}"),
        }
    }
    assert_eq!((acks, busy), (2, 1));
}

/// `POST /admin/shadow/promote` for the default tenant's `role`.
async fn promote(gw: &Gateway, bearer: Option<&str>, role: &str) -> (u16, String) {
    let body = json!({"tenant": "default", "role": role}).to_string();
    gw.post_json("/admin/shadow/promote", bearer, &body).await
}

/// `GET /admin/shadow` as JSON.
async fn admin_shadow(gw: &Gateway) -> Value {
    let (status, body) = switchyard_tests::http(
        gw.addr,
        "GET",
        "/admin/shadow",
        &[("authorization", "Bearer adm")],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// The only shadow's `/admin/shadow` entry once it has judged `calls` calls
/// (the shadow thread works after the serving calls answered).
async fn shadow_after(gw: &Gateway, calls: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = admin_shadow(gw).await;
        let e = v["shadows"][0].clone();
        if e["calls"] == calls {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "shadow calls never reached {calls}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// v1 serves and v2 shadows, through the real gateway: every message is
/// routed by v1, `/admin/shadow` counts exactly (sample 1.0) and lists the
/// differing inputs, and a promotion makes v2 serve on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_router_is_compared_and_promoted_without_dropping_a_connection() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "v1", &read(&fixture("router-v1")));
    deploy(&plugins, "v2", &read(&fixture("router-v2")));
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\ncall_timeout = \"1s\"\n[admin]\ntoken = \"adm\"\n\
         [tenants.default.policies.router]\nplugin = \"v1\"\nshadow = \"v2\"\n",
        plugins.display().to_string()
    ));
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.subscribe(1, "room:1").await;
    for id in 10..20u64 {
        let routed = publish_roundtrip(&mut c, id, "room:1", json!({"id": id}))
            .await
            .expect("publish");
        assert_eq!(routed["v"], 1, "v1 serves");
    }
    // drop:* is dropped by both: the same decision.
    for id in 30..35u64 {
        c.send_json(json!({"type":"publish","id":id,"channel":"drop:x","data":1}))
            .await;
        assert_eq!(c.recv_type("ack").await["id"], id);
    }
    let entry = shadow_after(&gw, 15).await;
    assert_eq!(
        (&entry["same"], &entry["differ"], &entry["errors"]),
        (&json!(5), &json!(10), &json!(0)),
        "{entry}"
    );
    assert_eq!(
        entry["last_differences"][0]["input"]["channel"], "room:1",
        "{entry}"
    );
    gw.wait_metric(
        "switchyard_plugin_shadow_total{tenant=\"default\",role=\"router\",plugin=\"v2\",verdict=\"differ\"} 10",
    )
    .await;

    let (st, body) = promote(&gw, Some("adm"), "auth").await;
    assert_eq!(st, 404, "no shadow on auth: {body}");
    let (st, body) = promote(&gw, Some("adm"), "nope").await;
    assert_eq!(st, 400, "{body}");
    let (st, body) = promote(&gw, None, "router").await;
    assert_eq!(st, 401, "{body}");
    let (st, body) = promote(&gw, Some("adm"), "router").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"plugin\":\"v2\""), "{body}");
    // The same connection, now routed by v2.
    let routed = publish_roundtrip(&mut c, 50, "room:1", json!({"id": 50}))
        .await
        .expect("publish after promote");
    assert_eq!(routed["v"], 2, "v2 serves after the promotion");
    let v = admin_shadow(&gw).await;
    assert_eq!(v["promoted"][0]["plugin"], "v2", "{v}");
    assert!(
        gw.logs().contains("shadow promoted to serving"),
        "{}",
        gw.logs()
    );
}

/// Sends a patch of raw `delta` bytes and reads until the JSON reply with
/// `id` (`ack` or `error`), skipping the broadcasts read meanwhile.
async fn patch_reply(c: &mut Client, id: u64, channel: &str, delta: &[u8]) -> Value {
    c.send_patch_bytes(id, channel, delta.to_vec(), "").await;
    loop {
        match c.recv_got().await {
            switchyard_tests::doc::Got::Json(v) if v["id"] == id => return v,
            switchyard_tests::doc::Got::Json(v) => panic!("unexpected frame {v}"),
            switchyard_tests::doc::Got::Patch(_) => {}
        }
    }
}

/// The counter document a fresh subscriber of `channel` is sent.
async fn counter_snapshot(gw: &Gateway, channel: &str) -> String {
    let mut late = Client::connect(&gw.ws_url("/ws")).await;
    let (_, snap) = late.subscribe_doc(1, channel, None).await;
    String::from_utf8(snap.expect("snapshot").delta).expect("decimal")
}

/// A merge shadow runs a twin document in its own state: merge-counter
/// serves, merge-counter-v2 (which ignores negative deltas) shadows; every
/// update is decided by the serving counter, the twin's outputs are compared
/// exactly (sample 1.0), and a promotion carries the document's state over to
/// v2 on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_merge_runs_a_twin_document_and_is_promoted_with_its_state() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "counter", &read(&fixture("merge-counter")));
    deploy(&plugins, "counter-v2", &read(&fixture("merge-counter-v2")));
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\ncall_timeout = \"1s\"\n[admin]\ntoken = \"adm\"\n\
         [tenants.default]\ndocuments = [\"doc:*\"]\n\
         [tenants.default.policies.merge]\nplugin = \"counter\"\nshadow = \"counter-v2\"\n",
        plugins.display().to_string()
    ));
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    let (_, snap) = c.subscribe_doc(1, "doc:n", None).await;
    assert_eq!(snap.expect("snapshot").delta, b"0");
    // Serving totals 5, 3, 6, 5; the twin's 5, 5, 8, 8: the three negative
    // or diverged outputs differ, the first and the refused one agree.
    let mut version = 0;
    for (id, delta) in [(2u64, "5"), (3, "-2"), (4, "3"), (5, "-1")] {
        let ack = patch_reply(&mut c, id, "doc:n", delta.as_bytes()).await;
        version += 1;
        assert_eq!(
            ack,
            json!({"type":"ack","id":id,"version":version}),
            "{delta}"
        );
    }
    let e = patch_reply(&mut c, 6, "doc:n", b"x").await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("invalid")),
        "{e}"
    );
    assert_eq!(
        counter_snapshot(&gw, "doc:n").await,
        "5",
        "the serving counter decides"
    );

    let entry = shadow_after(&gw, 6).await; // the open + 5 updates
    assert_eq!(entry["role"], "merge", "{entry}");
    assert_eq!(
        (
            &entry["same"],
            &entry["differ"],
            &entry["errors"],
            &entry["dropped"]
        ),
        (&json!(3), &json!(3), &json!(0), &json!(0)),
        "{entry}"
    );
    let first = &entry["last_differences"][0];
    assert_eq!(
        (&first["input"]["call"], &first["input"]["update"]),
        (&json!("apply"), &json!("-2")),
        "{entry}"
    );
    assert_eq!(
        (&first["serving"], &first["shadow"]),
        (&json!({"broadcast": "3"}), &json!("unchanged")),
        "{entry}"
    );
    gw.wait_metric(
        "switchyard_plugin_shadow_total{tenant=\"default\",role=\"merge\",plugin=\"counter-v2\",verdict=\"differ\"} 3",
    )
    .await;

    let (st, body) = promote(&gw, Some("adm"), "merge").await;
    assert_eq!(st, 200, "{body}");
    // The same connection and document, now merged by v2 from the state 5.
    let ack = patch_reply(&mut c, 7, "doc:n", b"2").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    patch_reply(&mut c, 8, "doc:n", b"-4").await;
    assert_eq!(
        counter_snapshot(&gw, "doc:n").await,
        "7",
        "v2 serves with the carried state (5 + 2; the negative is ignored)"
    );
}

/// Per-tenant families: connections, messages in/out and plugin calls carry
/// a `tenant` label for the tenants in `telemetry.tenant_labels`; the rest
/// are counted as `other` (bounded cardinality).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_labels_are_bounded_by_the_allow_list() {
    let plugins = scratch_dir("plugins");
    deploy(&plugins, "router", &read(&fixture("router-v1")));
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = {:?}\ncall_timeout = \"1s\"\n[telemetry]\ntenant_labels = [\"a\"]\n\
         [tenants.a.policies.router]\nplugin = \"router\"\n\
         [tenants.b.policies.router]\nplugin = \"router\"\n\
         [tenants.c.policies.router]\nplugin = \"router\"\n",
        plugins.display().to_string()
    ));
    let mut a = Client::connect(&gw.ws_url("/ws/a")).await;
    let mut b = Client::connect(&gw.ws_url("/ws/b")).await;
    let mut c = Client::connect(&gw.ws_url("/ws/c")).await;
    for (cl, id) in [(&mut a, 1u64), (&mut b, 2), (&mut c, 3)] {
        cl.subscribe(id, "room:1").await;
        publish_roundtrip(cl, 10 + id, "room:1", json!(id))
            .await
            .expect("publish");
    }
    let m = gw
        .wait_metric("switchyard_tenant_connections_active{tenant=\"other\"} 2")
        .await;
    assert!(
        m.contains("switchyard_tenant_connections_active{tenant=\"a\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("tenant=\"b\"") && !m.contains("tenant=\"c\""),
        "b and c are other:\n{m}"
    );
    for series in [
        "switchyard_tenant_messages_in_total{tenant=\"a\"}",
        "switchyard_tenant_messages_out_total{tenant=\"a\"}",
        "switchyard_tenant_messages_in_total{tenant=\"other\"}",
    ] {
        gw.wait_metric_value(series, |v| v >= 2.0).await;
    }
    gw.wait_metric(
        "switchyard_tenant_plugin_calls_total{tenant=\"a\",role=\"router\",outcome=\"ok\"} 1",
    )
    .await;
    gw.wait_metric(
        "switchyard_tenant_plugin_calls_total{tenant=\"other\",role=\"router\",outcome=\"ok\"} 2",
    )
    .await;
    drop(a);
    gw.wait_metric("switchyard_tenant_connections_active{tenant=\"a\"} 0")
        .await;
}
