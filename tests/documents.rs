//! Document channels (state sync) against the real binary over real sockets:
//! the same protocol suite for the built-in LWW merge and the `lww-merge`
//! plugin, a trapping merge plugin contained to its tenant, and the HTTP API.
//! Cross-node documents over real Redis and NATS servers are in `tests/brokers.rs`.

use std::path::PathBuf;

use serde_json::{Map, Value, json};
use switchyard_tests::doc::{self, Got, PATCH, SNAPSHOT};
use switchyard_tests::{Client, Gateway, repo_root, scratch_dir, test_plugin};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "doc-key";

/// A plugins folder with the first-party `lww-merge` and the `merge-counter` fixture.
fn plugins() -> PathBuf {
    let dir = scratch_dir("plugins");
    let lww = repo_root().join("target/plugins/lww-merge.wasm");
    assert!(
        lww.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        lww.display()
    );
    std::fs::copy(&lww, dir.join("lww-merge.wasm")).expect("copy lww-merge");
    std::fs::copy(test_plugin("merge-counter"), dir.join("counter.wasm")).expect("copy counter");
    dir
}

/// Tenant `builtin` (the built-in merge), `plugin` (lww-merge), `counter`
/// (a merge plugin that traps on `trap`), all with `doc:*` documents.
fn gateway(extra: &str) -> Gateway {
    let dir = plugins();
    Gateway::start(&format!(
        r#"
[plugins]
dir = {dir:?}
watch = false
call_timeout = "1s"
[limits]
document_max_bytes = 4096
document_log_size = 8
{extra}
[tenants.builtin]
documents = ["doc:*"]
api_keys = ["{KEY}"]
[tenants.plugin]
documents = ["doc:*"]
api_keys = ["plugin-key"]
[tenants.plugin.policies.merge]
plugin = "lww-merge"
[tenants.counter]
documents = ["doc:*"]
[tenants.counter.policies.merge]
plugin = "counter"
"#,
        dir = dir.display().to_string()
    ))
}

/// The protocol suite of DESIGN §2b, on tenant `tenant`.
async fn lww_suite(gw: &Gateway, tenant: &str) {
    let url = gw.ws_url(&format!("/ws/{tenant}"));
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let (sub, snap) = a.subscribe_doc(1, "doc:s", None).await;
    assert_eq!(sub["document"], true, "{sub}");
    assert_eq!(
        (sub["version"].clone(), sub["recovered"].clone()),
        (json!(0), json!(false))
    );
    let epoch = sub["epoch"].as_str().expect("epoch").to_owned();
    let snap = snap.expect("snapshot");
    assert_eq!((snap.kind, snap.version), (SNAPSHOT, 0));
    assert_eq!(snap.json(), json!({}));
    b.subscribe_doc(1, "doc:s", None).await;

    // patch → ack + broadcast to every subscriber, the sender too
    let (ack, mut seen) = b
        .patch_acked(2, "doc:s", &json!({"x": 1, "y": "two"}), "m1")
        .await;
    assert_eq!(ack, json!({"type":"ack","id":2,"version":1}));
    if seen.is_empty() {
        seen.push(b.recv_patch().await);
    }
    let p = &seen[0];
    assert_eq!((p.kind, p.version), (PATCH, 1));
    assert_eq!(p.json(), json!({"x": 1, "y": "two"}));
    assert_eq!(
        (p.msg_id.as_str(), p.channel.as_str(), p.epoch.as_str()),
        ("m1", "doc:s", epoch.as_str())
    );
    assert!(!p.client_id.is_empty() && p.lamport >= 1, "{p:?}");
    let pa = a.recv_patch().await;
    assert_eq!((pa.version, pa.json()), (1, json!({"x": 1, "y": "two"})));

    // a repeated msg_id is acked again, not applied twice
    let (ack, seen) = b.patch_acked(3, "doc:s", &json!({"x": 99}), "m1").await;
    assert_eq!(ack, json!({"type":"ack","id":3,"version":1}));
    assert!(seen.is_empty());

    // null deletes; versions rise by one
    let (ack, _) = a
        .patch_acked(4, "doc:s", &json!({"y": null, "z": [1, 2]}), "m2")
        .await;
    assert_eq!(ack["version"], 2);
    let pb = loop {
        let p = b.recv_patch().await;
        if p.version == 2 {
            break p;
        }
    };
    assert_eq!(pb.json(), json!({"y": null, "z": [1, 2]}));

    // garbage binary frames, non-object deltas, JSON publish, too big: invalid, unchanged
    a.send(Message::Binary(
        b"\xff\xff\xff\xff not protobuf".to_vec().into(),
    ))
    .await
    .expect("send");
    let e = a.recv_type("error").await;
    assert_eq!(e["code"], "invalid", "{e}");
    for (id, delta) in [(5u64, json!([1])), (6, json!("s")), (7, json!(3))] {
        let (r, _) = a.patch_acked(id, "doc:s", &delta, "").await;
        assert_eq!(
            (r["type"].clone(), r["code"].clone()),
            (json!("error"), json!("invalid")),
            "{delta}: {r}"
        );
    }
    a.send_patch_bytes(8, "doc:s", b"{broken".to_vec(), "")
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (e["id"].clone(), e["code"].clone()),
        (json!(8), json!("invalid")),
        "{e}"
    );
    a.send_json(json!({"type":"publish","id":9,"channel":"doc:s","data":{"x":2}}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (e["id"].clone(), e["code"].clone()),
        (json!(9), json!("invalid")),
        "{e}"
    );
    let big = json!({"big": "x".repeat(5000)});
    let (r, _) = a.patch_acked(10, "doc:s", &big, "").await;
    assert_eq!(r["code"], "invalid", "over document_max_bytes: {r}");

    // a late joiner gets the whole state at version 2
    let mut c = Client::connect(&url).await;
    let (sub, snap) = c.subscribe_doc(1, "doc:s", None).await;
    assert_eq!(sub["version"], 2);
    assert_eq!(snap.expect("snapshot").json(), json!({"x": 1, "z": [1, 2]}));

    // since: replay from the log, stale epoch → snapshot
    for i in 0..3 {
        c.patch_acked(20 + i, "doc:s", &json!({ format!("k{i}"): i }), "")
            .await;
    }
    let mut r = Client::connect(&url).await;
    let (sub, none) = r.subscribe_doc(1, "doc:s", Some((&epoch, 2))).await;
    assert_eq!(
        (sub["recovered"].clone(), sub["version"].clone()),
        (json!(true), json!(5)),
        "{sub}"
    );
    assert!(none.is_none());
    let versions = [
        r.recv_patch().await,
        r.recv_patch().await,
        r.recv_patch().await,
    ];
    assert_eq!(
        versions.iter().map(|p| p.version).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert!(versions.iter().all(|p| p.kind == PATCH));
    let (sub, snap) = r.subscribe_doc(2, "doc:s", Some(("stale-epoch", 2))).await;
    assert_eq!(sub["recovered"], false);
    let snap = snap.expect("snapshot");
    assert_eq!((snap.kind, snap.version), (SNAPSHOT, 5));

    // everyone converged: replay each client's frames onto its own copy
    let mut state = Map::new();
    doc::apply_lww(&mut state, &snap);
    assert_eq!(
        Value::Object(state),
        json!({"x":1,"z":[1,2],"k0":0,"k1":1,"k2":2})
    );
}

#[tokio::test]
async fn built_in_lww_document_protocol() {
    let gw = gateway("");
    lww_suite(&gw, "builtin").await;
}

#[tokio::test]
async fn lww_merge_plugin_passes_the_same_suite() {
    let gw = gateway("");
    lww_suite(&gw, "plugin").await;
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"lww-merge\",role=\"merge\",outcome=\"ok\"}",
    )
    .await;
}

#[tokio::test]
async fn a_trapping_merge_plugin_refuses_patches_and_harms_nobody_else() {
    let gw = gateway("");
    let mut c = Client::connect(&gw.ws_url("/ws/counter")).await;
    let (_, snap) = c.subscribe_doc(1, "doc:n", None).await;
    assert_eq!(snap.expect("snapshot").delta, b"0");
    c.send_patch_bytes(2, "doc:n", b"5".to_vec(), "").await;
    let (ack, p) = ack_and_patch(&mut c, 2).await;
    assert_eq!(ack["version"], 1);
    assert_eq!(p.delta, b"5");
    c.send_patch_bytes(3, "doc:n", b"trap".to_vec(), "").await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (e["id"].clone(), e["code"].clone()),
        (json!(3), json!("invalid")),
        "{e}"
    );
    // The document is unchanged and keeps serving from a rebuilt instance.
    c.send_patch_bytes(4, "doc:n", b"2".to_vec(), "").await;
    let (ack, p) = ack_and_patch(&mut c, 4).await;
    assert_eq!(ack["version"], 2);
    assert_eq!(p.delta, b"7", "5 + 2: the trap left nothing behind");
    let mut late = Client::connect(&gw.ws_url("/ws/counter")).await;
    let (_, snap) = late.subscribe_doc(1, "doc:n", None).await;
    assert_eq!(snap.expect("snapshot").delta, b"7");
    // Another tenant is not affected.
    let mut other = Client::connect(&gw.ws_url("/ws/builtin")).await;
    other.subscribe_doc(1, "doc:n", None).await;
    let (ack, _) = other
        .patch_acked(2, "doc:n", &json!({"ok": true}), "")
        .await;
    assert_eq!(ack["version"], 1);
    gw.wait_metric(
        "switchyard_plugin_calls_total{plugin=\"counter\",role=\"merge\",outcome=\"trap\"} 1",
    )
    .await;
}

async fn ack_and_patch(c: &mut Client, id: u64) -> (Value, doc::Patch) {
    let (mut ack, mut patch) = (None, None);
    while ack.is_none() || patch.is_none() {
        match c.recv_got().await {
            Got::Json(v) if v["id"] == id => ack = Some(v),
            Got::Json(v) => panic!("unexpected {v}"),
            Got::Patch(p) => patch = Some(p),
        }
    }
    (ack.expect("ack"), patch.expect("patch"))
}

#[tokio::test]
async fn http_api_reads_and_patches_documents() {
    let gw = gateway("");
    let mut sub = Client::connect(&gw.ws_url("/ws/builtin")).await;
    sub.subscribe_doc(1, "doc:h", None).await;
    let (st, body) = gw
        .post_json(
            "/api/documents/doc:h",
            Some(KEY),
            r#"{"delta":{"a":1,"b":2},"msgId":"h1"}"#,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["version"], 1);
    let p = sub.recv_patch().await;
    assert_eq!(
        (p.version, p.json(), p.client_id.as_str()),
        (1, json!({"a":1,"b":2}), "")
    );
    // msgId dedupe over HTTP too
    let (st, body) = gw
        .post_json(
            "/api/documents/doc:h",
            Some(KEY),
            r#"{"delta":{"a":5},"msgId":"h1"}"#,
        )
        .await;
    assert_eq!(
        (
            st,
            serde_json::from_str::<Value>(&body).expect("json")["version"].clone()
        ),
        (200, json!(1))
    );
    let (st, body) = gw
        .post_json("/api/documents/doc:h", Some(KEY), r#"{"delta":{"b":null}}"#)
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = get_auth(&gw, "/api/documents/doc:h", KEY).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["channel"], "doc:h");
    assert_eq!(v["version"], 2);
    assert_eq!(v["state"], json!({"a": 1}));
    assert!(v["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    // errors: no key, other tenant's key, not a document, bad delta
    assert_eq!(get_auth(&gw, "/api/documents/doc:h", "nope").await.0, 401);
    assert_eq!(get_auth(&gw, "/api/documents/room:1", KEY).await.0, 404);
    let (st, body) = gw
        .post_json("/api/documents/doc:h", Some(KEY), r#"{"delta":[1,2]}"#)
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("invalid"), "{body}");
    let (st, _) = gw.post_json("/api/documents/doc:h", Some(KEY), "{").await;
    assert_eq!(st, 400);
    let (_, body) = get_auth(&gw, "/api/documents/doc:h", "plugin-key").await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["version"].clone(), v["state"].clone()),
        (json!(0), json!({})),
        "tenants are separate"
    );
}

async fn get_auth(gw: &Gateway, path: &str, key: &str) -> (u16, String) {
    let auth = format!("Bearer {key}");
    switchyard_tests::http(gw.addr, "GET", path, &[("authorization", &auth)], None).await
}

#[tokio::test]
async fn documents_need_a_websocket_and_fallbacks_say_so() {
    let gw = gateway("");
    let (st, body) = switchyard_tests::http(
        gw.addr,
        "POST",
        "/poll/builtin",
        &[("content-type", "application/json")],
        Some(r#"{}"#),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let open: Value = serde_json::from_str(&body).expect("json");
    let session = open["session"].as_str().expect("session").to_owned();
    let csrf = open["csrf"].as_str().unwrap_or_default().to_owned();
    let path = format!("/poll/session/{session}");
    let cmd = r#"{"type":"subscribe","id":1,"channel":"doc:x"}"#;
    let (st, body) = switchyard_tests::http(
        gw.addr,
        "POST",
        &path,
        &[
            ("content-type", "application/json"),
            ("x-switchyard-csrf", &csrf),
        ],
        Some(cmd),
    )
    .await;
    assert!(st == 200 || st == 202, "{st} {body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = switchyard_tests::http(
            gw.addr,
            "GET",
            &format!("{path}?wait=5"),
            &[("x-switchyard-csrf", &csrf)],
            None,
        )
        .await;
        if body.contains("\"unsupported\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no unsupported error: {body}"
        );
    }
}
