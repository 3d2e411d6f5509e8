//! The browser/Node client SDK (`sdk/client-js`) and the demo page
//! (`examples/demo-page`) in real headless Chromium against the real gateway:
//! WebSocket, forced SSE and long-poll round trips, fallback when WebSocket
//! (and SSE) are blocked, resume after a dropped connection (recovered:true),
//! SIGKILL + restart on the same port (backoff, recovered:false) and a SIGTERM
//! drain handing over to the next process on the port; document channels (two
//! pages converging on one LWW document, an offline page resuming by version
//! with its edits applied once, `unsupported` over SSE) and the Yjs example
//! (`examples/yjs-page`: two pages typing into one textarea converge through
//! the y-websocket endpoint and the `yjs-merge` plugin). The scenarios live in
//! `tests/js/browser.test.mjs`; this test owns the gateway processes and
//! restarts them when the script asks (`CONTROL kill|drain` on its stdout,
//! `ok` on its stdin). It also runs the SDK's `node --test` unit tests and
//! `tests/js/node.test.mjs` (the SDK in Node against the gateway).
//!
//! Needs `node` (≥ 20), `/usr/bin/chromium` (Debian `chromium`; `CHROMIUM`
//! overrides), `tests/js/node_modules` (`npm ci` is run when a package is
//! missing; `scripts/test.sh` installs them) and `target/plugins/yjs-merge.wasm`
//! (`scripts/build-plugins.sh`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchyard_tests::{Gateway, http_full, repo_root, scratch_dir};

/// Every scenario `browser.test.mjs` must report as passed.
const SCENARIOS: &[&str] = &[
    "websocket-roundtrip",
    "sse-roundtrip",
    "poll-roundtrip",
    "fallback-websocket-blocked",
    "fallback-websocket-and-sse-blocked",
    "recover-websocket",
    "recover-sse",
    "recover-poll",
    "publish-retry-exactly-once",
    "refused-origin-stops",
    "kill-restart-unrecovered",
    "drain-reconnect",
    "document-converge",
    "document-offline-resume",
    "document-unsupported-sse",
    "yjs-page-converge",
];

/// Longest the whole browser script may run before it is killed.
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);

fn node() -> String {
    std::env::var("NODE").unwrap_or_else(|_| "node".to_owned())
}

fn chromium() -> PathBuf {
    let p = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "{} is missing: install Debian's `chromium` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The npm packages the browser script and `examples/yjs-page` load.
const NODE_PACKAGES: &[&str] = &[
    "playwright-core",
    "yjs",
    "y-websocket",
    "y-protocols",
    "lib0",
];

/// `npm ci` in tests/js when one of the packages is not installed yet.
fn ensure_node_modules(js: &Path) {
    if NODE_PACKAGES.iter().all(|p| {
        js.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    }) {
        return;
    }
    let st = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(js)
        .status()
        .expect("run npm ci (is npm installed?)");
    assert!(st.success(), "npm ci in tests/js failed: {st}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn gateway_config(page_port: u16) -> String {
    format!(
        r#"[server]
drain_timeout = "5s"
reconnect_in = "2s"

[tenants.default]
origins = ["http://127.0.0.1:{page_port}"]
history_size = 100
history_ttl = "5m"
documents = ["doc:*"]
"#
    )
}

/// The headless test's extra config: tenant `yjs` (Yjs documents merged by
/// the first-party `yjs-merge` plugin, copied into `plugins`) for
/// `examples/yjs-page`.
fn yjs_config(page_port: u16, plugins: &Path) -> String {
    let wasm = repo_root().join("target/plugins/yjs-merge.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        wasm.display()
    );
    std::fs::copy(&wasm, plugins.join("yjs-merge.wasm")).expect("copy yjs-merge");
    format!(
        r#"
[plugins]
dir = {dir:?}
watch = false
call_timeout = "1s"

[tenants.yjs]
origins = ["http://127.0.0.1:{page_port}"]
documents = ["yjs:*"]
[tenants.yjs.policies.merge]
plugin = "yjs-merge"
"#,
        dir = plugins.display().to_string()
    )
}

#[test]
fn client_sdk_unit_tests() {
    let root = repo_root();
    let out = Command::new(node())
        .arg("--test")
        .arg(root.join("sdk/client-js/test/unit.test.js"))
        .arg(root.join("sdk/client-js/test/documents.test.js"))
        .current_dir(&root)
        .output()
        .expect("run node --test (is node installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "no unit test ran:\n{stdout}");
}

/// The SDK in Node against the real gateway: WebSocket and long-polling.
#[test]
fn client_sdk_in_node() {
    let root = repo_root();
    let gw = Gateway::start(&gateway_config(9));
    let mut cmd = Command::new(node());
    // Node 20 has WebSocket only behind a flag (global from Node 22 on).
    let has_ws = Command::new(node())
        .args(["-p", "typeof WebSocket"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "function");
    if !has_ws {
        cmd.arg("--experimental-websocket");
    }
    let out = cmd
        .arg("--test")
        .arg(root.join("tests/js/node.test.mjs"))
        .current_dir(&root)
        .env("GATEWAY_URL", gw.http_url(""))
        .output()
        .expect("run node --test tests/js/node.test.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node SDK test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("# pass 2") && stdout.contains("# skipped 0"),
        "{stdout}"
    );
}

#[test]
fn client_sdk_in_headless_chromium() {
    let root = repo_root();
    let js = root.join("tests/js");
    let chromium = chromium();
    ensure_node_modules(&js);

    let page_port = free_port();
    let conf_dir = scratch_dir("browser");
    let config_path = conf_dir.join("switchyard.toml");
    let plugins = scratch_dir("browser-plugins");
    let config = gateway_config(page_port) + &yjs_config(page_port, &plugins);
    std::fs::write(&config_path, config).expect("write config");
    let mut gw = Gateway::spawn(scratch_dir("gw"), config_path.clone(), "127.0.0.1:0", &[]);
    let listen = gw.addr.to_string();

    let mut child = Command::new(node())
        .arg(js.join("browser.test.mjs"))
        .current_dir(&root)
        .env("GATEWAY_URL", format!("http://{listen}"))
        .env("PAGE_PORT", page_port.to_string())
        .env("REPO_ROOT", &root)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node tests/js/browser.test.mjs");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));

    // Watchdog: a hung browser must not hang the suite.
    let done = Arc::new(AtomicBool::new(false));
    let pid = child.id();
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let step = Duration::from_millis(200);
            let mut waited = Duration::ZERO;
            while waited < SCRIPT_LIMIT {
                if done.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(step);
                waited += step;
            }
            eprintln!("browser script exceeded {SCRIPT_LIMIT:?}: killing it");
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on our own child's pid.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        });
    }

    let mut transcript = String::new();
    let mut passed = Vec::new();
    for line in stdout.lines() {
        let line = line.expect("read script output");
        println!("{line}");
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(cmd) = line.strip_prefix("CONTROL ") {
            match cmd {
                "kill" => {
                    gw.kill();
                    // Stay down long enough that the client's first retry fails.
                    std::thread::sleep(Duration::from_millis(1500));
                }
                "drain" => {
                    gw.signal(libc::SIGTERM);
                    let st = gw.wait_exit(Duration::from_secs(15));
                    assert!(
                        st.is_some_and(|s| s.success()),
                        "drained gateway did not exit cleanly: {st:?}\n{}",
                        gw.logs()
                    );
                }
                other => panic!("unknown control command {other}"),
            }
            gw = Gateway::spawn(scratch_dir("gw"), config_path.clone(), &listen, &[]);
            writeln!(stdin, "ok").expect("answer the script");
            stdin.flush().expect("flush");
        } else if let Some(rest) = line.strip_prefix("PASS ") {
            passed.push(rest.split_whitespace().next().unwrap_or("").to_owned());
        }
    }
    let status = child.wait().expect("wait for node");
    done.store(true, Ordering::Release);
    let _ = std::fs::remove_dir_all(&conf_dir);
    let _ = std::fs::remove_dir_all(&plugins);
    assert!(
        status.success(),
        "browser script failed ({status}):\n{transcript}"
    );
    for s in SCENARIOS {
        assert!(
            passed.iter().any(|p| p == s),
            "scenario {s} did not pass:\n{transcript}"
        );
    }
}

/// The fallback routes answer cross-origin browsers: a preflight, CORS headers
/// for the caller's origin (refusals included), none on other routes.
#[tokio::test]
async fn fallback_routes_carry_cors_headers() {
    let gw = Gateway::start(&gateway_config(9));
    let allowed = "http://127.0.0.1:9";
    let addr = gw.addr;
    let (status, head, _) = http_full(
        addr,
        "OPTIONS",
        "/poll/session/abc",
        &[
            ("origin", allowed),
            ("access-control-request-method", "DELETE"),
        ],
        None,
    )
    .await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status, 204, "{head}");
    assert!(head.contains(&format!("access-control-allow-origin: {allowed}")));
    assert!(head.contains("access-control-allow-methods: get, post, delete"));

    let (status, head, body) =
        http_full(addr, "POST", "/poll", &[("origin", allowed)], Some("")).await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status, 200, "{body}");
    assert!(head.contains(&format!("access-control-allow-origin: {allowed}")));
    assert!(head.contains("access-control-expose-headers: x-switchyard-session"));
    let opened: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(opened["frames"][0]["type"], "welcome");

    // A refused origin gets a 403 it can read (so a client stops retrying), nothing else.
    let (status, head, _) = http_full(
        addr,
        "POST",
        "/poll",
        &[("origin", "http://evil.test")],
        Some(""),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: http://evil.test")
    );

    // Other routes are not opened to other origins.
    let (_, head, _) = http_full(addr, "GET", "/metrics", &[("origin", allowed)], None).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("access-control-allow-origin")
    );
}
