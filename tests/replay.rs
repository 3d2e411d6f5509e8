//! Record and replay through the real binary: `POST /admin/record` while a
//! WebSocket client drives traffic, then `switchyard replay` of the recording
//! with the same plugin (exit 0), a changed one (exit 1, the differences) and
//! a bad file (exit 2); replays are deterministic. Plugins are the runtime's
//! test guests (tests/fixtures/plugins).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc;
use std::time::Duration;

use notify::Watcher as _;
use serde_json::{Value, json};
use switchyard_tests::{Client, Gateway, binary, scratch_dir, test_plugin};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "adm";

fn deploy(dir: &Path, name: &str, fixture: &str) {
    std::fs::copy(test_plugin(fixture), dir.join(format!("{name}.wasm"))).expect("copy plugin");
}

fn start(plugins: &Path, records: &Path, policies: &str) -> Gateway {
    Gateway::start(&format!(
        "[plugins]\ndir = {:?}\nwatch = false\ncall_timeout = \"1s\"\nrecord_dir = {:?}\n\
         [admin]\ntoken = \"{ADMIN}\"\n\
         [limits]\npublish_rate = 10000\npublish_burst = 10000\n{policies}",
        plugins.display().to_string(),
        records.display().to_string(),
    ))
}

async fn record(gw: &Gateway, role: &str, calls: u64) -> PathBuf {
    let body = json!({"tenant": "default", "role": role, "calls": calls}).to_string();
    let (status, body) = gw.post_json("/admin/record", Some(ADMIN), &body).await;
    assert_eq!(status, 202, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["state"], "recording", "{v}");
    PathBuf::from(v["file"].as_str().expect("file"))
}

fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |t| t.lines().count())
}

/// Waits (on file-system events, not a timer) until `file` holds a header
/// and `calls` call lines.
fn wait_for_lines(file: &Path, calls: usize) {
    let (tx, rx) = mpsc::channel();
    let mut w = notify::recommended_watcher(move |e| {
        let _ = tx.send(e);
    })
    .expect("watcher");
    w.watch(
        file.parent().expect("dir"),
        notify::RecursiveMode::NonRecursive,
    )
    .expect("watch");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Checked once after the watch is in place, then after each event.
    while lines(file) < calls + 1 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            rx.recv_timeout(left).is_ok(),
            "{} has {} lines, expected {}",
            file.display(),
            lines(file),
            calls + 1
        );
    }
    assert_eq!(lines(file), calls + 1, "no more lines than calls asked for");
}

fn replay(args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .arg("replay")
        .args(args)
        .output()
        .expect("run switchyard replay")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Publishes and waits for the ack (or the error reply); returns the reply type.
async fn publish(c: &mut Client, id: u64, channel: &str, data: Value) -> String {
    c.send_json(json!({"type":"publish","id":id,"channel":channel,"data":data}))
        .await;
    loop {
        match c.recv_within(Duration::from_secs(30)).await {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                match v["type"].as_str() {
                    Some("ack" | "error") if v["id"] == id => {
                        return v["type"].as_str().unwrap_or("").to_owned();
                    }
                    _ => {}
                }
            }
            other => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_router_calls_replay_same_with_the_same_plugin_and_differ_with_another() {
    let plugins = scratch_dir("plugins");
    let records = scratch_dir("records");
    deploy(&plugins, "router", "router-v1");
    let gw = start(
        &plugins,
        &records,
        "[tenants.default.policies.router]\nplugin = \"router\"\nconfig = { note = \"v1\" }\n",
    );
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.subscribe(1, "room:1").await;
    // Whitespace and number formats in the payload must survive the recording.
    let n = 6;
    let file = record(&gw, "router", n).await;
    let traffic = [
        ("room:1", json!({"text": "hi", "n": 1.5})),
        ("room:1", json!([1, 2, 3])),
        ("fanout:f", json!("s")),
        ("drop:d", json!(1)),
        ("room:1", json!({"big": "x".repeat(2000)})),
        ("room:1", json!({ "last": 6 })),
        // Past the recording: not written.
        ("room:1", json!({"after": true})),
    ];
    let mut id = 10;
    let mut replies = Vec::new();
    for (channel, data) in traffic {
        id += 1;
        replies.push(publish(&mut c, id, channel, data).await);
    }
    assert_eq!(replies, ["ack"; 7]);
    wait_for_lines(&file, n as usize);
    let rec = std::fs::read_to_string(&file).expect("read recording");
    let header: Value = serde_json::from_str(rec.lines().next().unwrap()).expect("header");
    assert_eq!(header["format"], "switchyard-record");
    assert_eq!(header["version"], 1);
    assert_eq!(header["role"], "router");
    assert_eq!(header["config"], json!({"note": "v1"}));
    assert!(!rec.contains("\"after\""), "a call past N was recorded");
    let (status, body) = switchyard_tests::http(
        gw.addr,
        "GET",
        "/admin/record",
        &[("authorization", "Bearer adm")],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"recorded\":6"), "{body}");

    let f = file.to_str().unwrap();
    let v1 = test_plugin("router-v1");
    let same = replay(&["--plugin", v1.to_str().unwrap(), "--calls", f]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}{}",
        text(&same.stdout),
        text(&same.stderr)
    );
    assert!(
        text(&same.stdout).contains("6 calls replayed"),
        "{}",
        text(&same.stdout)
    );
    assert!(
        text(&same.stdout).contains("6 same, 0 differ"),
        "{}",
        text(&same.stdout)
    );

    // v2 wraps payloads with "v":2: the five routed calls differ, the drop
    // (an empty route) does not.
    let v2 = test_plugin("router-v2");
    let differ = replay(&["--plugin", v2.to_str().unwrap(), "--calls", f]);
    let out = text(&differ.stdout);
    assert_eq!(
        differ.status.code(),
        Some(1),
        "{out}{}",
        text(&differ.stderr)
    );
    assert!(out.contains("1 same, 5 differ"), "{out}");
    for seq in [1, 2, 3, 5, 6] {
        assert!(
            out.contains(&format!("call {seq} (route) differs")),
            "{out}"
        );
    }
    assert!(!out.contains("call 4 (route)"), "{out}");

    // Deterministic, and --json for CI.
    let j1 = replay(&["--plugin", v2.to_str().unwrap(), "--calls", f, "--json"]);
    let j2 = replay(&["--plugin", v2.to_str().unwrap(), "--calls", f, "--json"]);
    assert_eq!(j1.status.code(), Some(1));
    assert_eq!(j1.stdout, j2.stdout, "two replays differ");
    let again = replay(&["--plugin", v2.to_str().unwrap(), "--calls", f]);
    assert_eq!(again.stdout, differ.stdout, "two text replays differ");
    let report: Value = serde_json::from_slice(&j1.stdout).expect("json report");
    assert_eq!(
        (report["calls"].as_u64(), report["differ"].as_u64()),
        (Some(6), Some(5))
    );
    let d = &report["differences"][0];
    assert_eq!(d["seq"], 1);
    assert_eq!(d["recorded"]["route"][0]["channel"], "room:1");
    assert!(
        d["recorded"]["route"][0]["data"]
            .as_str()
            .unwrap()
            .starts_with("{\"v\":1,")
    );
    assert!(
        d["replayed"]["route"][0]["data"]
            .as_str()
            .unwrap()
            .starts_with("{\"v\":2,")
    );

    // Bad input: exit 2 with a clear message, nothing on stdout.
    let bad = records.join("bad.jsonl");
    let mut broken = rec.lines().take(2).collect::<Vec<_>>().join("\n");
    broken.push_str("\n{not json\n");
    std::fs::write(&bad, broken).unwrap();
    let out = replay(&[
        "--plugin",
        v1.to_str().unwrap(),
        "--calls",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("line 3: not JSON"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&bad, "{\"format\":\"other\"}\n").unwrap();
    let out = replay(&[
        "--plugin",
        v1.to_str().unwrap(),
        "--calls",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a Switchyard recording"),
        "{}",
        text(&out.stderr)
    );
    let out = replay(&[
        "--plugin",
        v1.to_str().unwrap(),
        "--calls",
        "/nonexistent.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
    // A plugin of another role than the recording's.
    let limiter = test_plugin("kv-limiter");
    let out = replay(&["--plugin", limiter.to_str().unwrap(), "--calls", f]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("implements the rate_limit role"),
        "{}",
        text(&out.stderr)
    );

    // The admin API refuses what it cannot record.
    let bad_req = |body: Value| {
        let gw = &gw;
        async move {
            gw.post_json("/admin/record", Some(ADMIN), &body.to_string())
                .await
                .0
        }
    };
    assert_eq!(
        bad_req(json!({"tenant": "default", "role": "router", "calls": 0})).await,
        400
    );
    assert_eq!(
        bad_req(json!({"tenant": "default", "role": "merge", "calls": 1})).await,
        400
    );
    assert_eq!(
        bad_req(json!({"tenant": "default", "role": "auth", "calls": 1})).await,
        404
    );
    assert_eq!(
        bad_req(json!({"tenant": "nope", "role": "router", "calls": 1})).await,
        404
    );
    assert_eq!(
        bad_req(json!({"tenant": "default", "role": "router"})).await,
        400
    );
    let (status, _) = gw
        .post_json(
            "/admin/record",
            None,
            &json!({"tenant": "default", "role": "router", "calls": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 401);
}

/// A rate limiter that counts in the key-value store: the replay answers its
/// reads with the recorded values, so the same plugin decides the same even
/// though the replay starts with an empty store; a stricter `--config` differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_reads_and_config_are_replayed_as_recorded() {
    let plugins = scratch_dir("plugins");
    let records = scratch_dir("records");
    deploy(&plugins, "limiter", "kv-limiter");
    let gw = start(
        &plugins,
        &records,
        "[tenants.default.policies.rate_limit]\nplugin = \"limiter\"\nconfig = { limit = 3 }\n",
    );
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    // Calls before the recording count too: the recording starts mid-stream.
    assert_eq!(publish(&mut c, 1, "room:1", json!(1)).await, "ack");
    let n = 4;
    let file = record(&gw, "rate_limit", n).await;
    let mut replies = Vec::new();
    for id in 2..=5 {
        replies.push(publish(&mut c, id, "room:1", json!(id)).await);
    }
    assert_eq!(replies, ["ack", "ack", "error", "error"]);
    wait_for_lines(&file, n as usize);
    let rec = std::fs::read_to_string(&file).unwrap();
    assert!(rec.contains("\"kv\":[{\"key\":"), "{rec}");

    let f = file.to_str().unwrap();
    let limiter = test_plugin("kv-limiter");
    let same = replay(&["--plugin", limiter.to_str().unwrap(), "--calls", f]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}{}",
        text(&same.stdout),
        text(&same.stderr)
    );
    assert!(
        text(&same.stdout).contains("4 same, 0 differ"),
        "{}",
        text(&same.stdout)
    );

    let strict = replay(&[
        "--plugin",
        limiter.to_str().unwrap(),
        "--calls",
        f,
        "--config",
        "{\"limit\":1}",
    ]);
    let out = text(&strict.stdout);
    assert_eq!(
        strict.status.code(),
        Some(1),
        "{out}{}",
        text(&strict.stderr)
    );
    assert!(
        out.contains("call 1 (check) differs") && out.contains("call 2 (check) differs"),
        "{out}"
    );
    assert!(out.contains("2 same, 2 differ"), "{out}");
    let bad = replay(&[
        "--plugin",
        limiter.to_str().unwrap(),
        "--calls",
        f,
        "--config",
        "{",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--config is not JSON"),
        "{}",
        text(&bad.stderr)
    );
}
