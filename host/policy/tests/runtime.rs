//! Runtime tests with real guest components (tests/fixtures/plugins, built by
//! its build.sh into target/test-plugins/ when missing).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use switchyard_core::policy::{
    ConnectRequest, Denial, PolicySet, Principal, PublishRequest, RateDecision, RateKey, Route,
};
use switchyard_core::{Config, Node};
use switchyard_policy::PluginHost;

/// The test guests, (re)built once per test process by their build script
/// (an incremental no-op when nothing changed).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = std::process::Command::new(root.join("tests/fixtures/plugins/build.sh"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run tests/fixtures/plugins/build.sh");
        assert!(status.success(), "fixture build failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map_or_else(|| root.join("target"), |t| root.join(t));
        target.join("test-plugins")
    })
}

/// Copies fixture `from` into the plugins folder as `<to>.wasm` (atomically: write + rename).
fn install(dir: &Path, from: &str, to: &str) {
    let bytes = std::fs::read(fixtures().join(format!("{from}.wasm"))).expect("fixture");
    write_plugin(dir, to, &bytes);
}

fn write_plugin(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename");
}

struct Env {
    dir: tempfile::TempDir,
    node: Arc<Node>,
    host: Arc<PluginHost>,
}

impl Env {
    async fn start(tenants_toml: &str, plugins: &[(&str, &str)], watch: bool) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        for (from, to) in plugins {
            install(dir.path(), from, to);
        }
        let toml = format!(
            // A generous default deadline: the test machine is shared and busy
            // (deadlines are wall-clock); deadline tests set their own.
            "[plugins]\ndir = {:?}\nwatch = {watch}\ncall_timeout = \"2s\"\n{tenants_toml}",
            dir.path().display().to_string()
        );
        let cfg = Config::from_toml(&toml).expect("config");
        let node = Node::with_memory_broker(Arc::new(cfg));
        let host = PluginHost::start(node.clone()).await.expect("start");
        Env { dir, node, host }
    }

    fn policies(&self, tenant: &str) -> Arc<PolicySet> {
        self.node
            .tenants
            .get(tenant)
            .expect("tenant")
            .policies()
            .clone()
    }

    fn metric(&self, plugin: &str, role: &str, outcome: &str) -> u64 {
        let needle = format!(
            "switchyard_plugin_calls_total{{plugin=\"{plugin}\",role=\"{role}\",outcome=\"{outcome}\"}} "
        );
        let text = self.node.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map_or(0, |v| v.trim().parse().expect("counter value"))
    }

    fn status(&self, name: &str) -> serde_json::Value {
        self.host
            .status_json()
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).expect("json")
}

fn route(p: &PolicySet, channel: &str, data: &str) -> Result<Route, Denial> {
    let who = Principal::anonymous();
    let data = raw(data);
    p.router.route(&PublishRequest {
        principal: &who,
        client: "c1",
        channel,
        data: &data,
    })
}

/// The `v` a router-v1/v2 wrote into a single-target route.
fn routed_version(r: &Result<Route, Denial>) -> Option<u64> {
    match r {
        Ok(Route::To(t)) if t.len() == 1 => {
            let v: serde_json::Value = serde_json::from_str(t[0].data.as_ref()?.get()).ok()?;
            v["v"].as_u64()
        }
        _ => None,
    }
}

fn connect(token: Option<&str>) -> Arc<ConnectRequest> {
    Arc::new(ConnectRequest {
        tenant: "acme".into(),
        path: "/ws/acme".into(),
        query: String::new(),
        headers: vec![("user-agent".into(), "test".into())],
        remote_addr: "127.0.0.1:5555".into(),
        client_id: "c1".into(),
        token: token.map(str::to_owned),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plugin_decides_with_its_tenant_config() {
    let env = Env::start(
        "[tenants.acme.policies.auth]\nplugin = \"auth\"\ncall_timeout = \"2s\"\nconfig = { token = \"s3cret\" }\n\
         [tenants.other.policies.auth]\nplugin = \"auth\"\n",
        &[("auth-fixed", "auth")],
        false,
    )
    .await;
    let p = env.policies("acme");
    let who = p
        .auth
        .authenticate(&connect(Some("s3cret")))
        .expect("allowed");
    assert_eq!(who.id, "alice@acme");
    assert_eq!(&*who.claims, "{\"role\":\"tester\"}");
    assert!(matches!(
        p.auth.authenticate(&connect(Some("let-me-in"))),
        Err(Denial::Unauthorized(_))
    ));
    assert!(matches!(
        p.auth.authenticate(&connect(None)),
        Err(Denial::Unauthorized(_))
    ));
    // The other tenant has no config: the plugin's default token applies.
    let other = env.policies("other");
    assert!(other.auth.authenticate(&connect(Some("let-me-in"))).is_ok());
    assert!(p.auth.authorize_subscribe(&who, "room:1").is_ok());
    assert!(matches!(
        p.auth.authorize_subscribe(&who, "secret:x"),
        Err(Denial::Forbidden(m)) if m.contains("secret:x")
    ));
    assert!(p.auth.authorize_publish(&who, "room:1", &raw("{}")).is_ok());
    assert!(matches!(
        p.auth.authorize_publish(&who, "readonly:x", &raw("{}")),
        Err(Denial::Forbidden(_))
    ));
    // Invalid return (claims not JSON) is contained and resolves by on_error = deny.
    assert!(matches!(
        p.auth.authenticate(&connect(Some("bad-claims"))),
        Err(Denial::Failed(m)) if m.contains("claims")
    ));
    assert_eq!(env.metric("auth", "auth", "ok"), 4);
    assert_eq!(env.metric("auth", "auth", "denied"), 4);
    assert_eq!(env.metric("auth", "auth", "error"), 1);
    // The plugin reads the request's parts from the lent `connect-request`.
    let mut req = (*connect(Some("echo"))).clone();
    req.query = "token=echo&x=1".into();
    let echo = p.auth.authenticate(&Arc::new(req)).expect("echo");
    assert_eq!(echo.id, "c1");
    let claims: serde_json::Value = serde_json::from_str(&echo.claims).expect("json");
    assert_eq!(
        claims,
        serde_json::json!({"tenant": "acme", "path": "/ws/acme", "query": "token=echo&x=1",
            "remote": "127.0.0.1:5555", "ua": "test", "missing": false, "headers": 1})
    );
    let st = env.status("auth");
    assert_eq!(st["status"], "loaded");
    assert_eq!(st["role"], "auth");
    assert_eq!(st["hash"].as_str().map(str::len), Some(64));
    assert!(st["loaded_at"].as_str().is_some());
    assert!(
        env.node
            .metrics
            .encode()
            .contains("switchyard_plugin_call_duration_seconds_bucket")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_rewrites_drops_and_fans_out() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"router\"\ncall_timeout = \"2s\"\n",
        &[("router-v1", "router")],
        false,
    )
    .await;
    let p = env.policies("default");
    let r = route(&p, "room:1", "{\"x\":1}");
    assert_eq!(routed_version(&r), Some(1));
    match r {
        Ok(Route::To(t)) => {
            assert_eq!(t[0].channel, "room:1");
            let v: serde_json::Value =
                serde_json::from_str(t[0].data.as_ref().expect("data").get()).expect("json");
            assert_eq!(v, serde_json::json!({"v":1,"data":{"x":1}}));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(route(&p, "drop:x", "1"), Ok(Route::To(t)) if t.is_empty()));
    match route(&p, "fanout:x", "1") {
        Ok(Route::To(t)) => {
            let chans: Vec<_> = t.iter().map(|t| t.channel.as_str()).collect();
            assert_eq!(chans, ["fanout:x:a", "fanout:x:b"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(route(&p, "deny", "1"), Err(Denial::Forbidden(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_ends_at_deadline_and_next_call_works() {
    let env = Env::start(
        "[tenants.deny.policies.router]\nplugin = \"misbehave\"\ncall_timeout = \"20ms\"\n\
         [tenants.allow.policies.router]\nplugin = \"misbehave\"\non_error = \"allow\"\ncall_timeout = \"20ms\"\n",
        &[("misbehave", "misbehave")],
        false,
    )
    .await;
    let p = env.policies("deny");
    let t0 = Instant::now();
    let r = route(&p, "loop", "1");
    let took = t0.elapsed();
    assert!(
        matches!(&r, Err(Denial::Failed(m)) if m.contains("timed out")),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(20),
        "deadline cut the call early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "deadline not enforced: {took:?}"
    );
    assert_eq!(env.metric("misbehave", "router", "timeout"), 1);
    // The next call succeeds on a fresh instance.
    assert!(matches!(route(&p, "log", "1"), Ok(Route::Direct)));
    assert_eq!(env.metric("misbehave", "router", "ok"), 1);
    // on_error = allow: the built-in answer (direct route).
    let a = env.policies("allow");
    assert!(matches!(route(&a, "loop", "1"), Ok(Route::Direct)));
    assert_eq!(env.metric("misbehave", "router", "timeout"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_capped_and_contained() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"misbehave\"\nmemory_limit = 16777216\ncall_timeout = \"2s\"\n",
        &[("misbehave", "misbehave")],
        false,
    )
    .await;
    let p = env.policies("default");
    assert!(
        matches!(route(&p, "bomb:4", "1"), Ok(Route::Direct)),
        "4 MiB fits under 16 MiB"
    );
    let r = route(&p, "bomb:64", "1");
    assert!(
        matches!(&r, Err(Denial::Failed(_))),
        "64 MiB must not fit: {r:?}"
    );
    assert_eq!(env.metric("misbehave", "router", "trap"), 1);
    assert!(matches!(route(&p, "bomb:4", "1"), Ok(Route::Direct)));
    assert_eq!(env.metric("misbehave", "router", "ok"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_contained_and_instance_replaced() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"misbehave\"\n",
        &[("misbehave", "misbehave")],
        false,
    )
    .await;
    let p = env.policies("default");
    for _ in 0..3 {
        let r = route(&p, "trap", "1");
        assert!(
            matches!(&r, Err(Denial::Failed(m)) if m.contains("trapped")),
            "{r:?}"
        );
        assert!(matches!(route(&p, "ok", "1"), Ok(Route::Direct)));
    }
    // Invalid return (payload not JSON) is contained too.
    assert!(matches!(route(&p, "badroute", "1"), Err(Denial::Failed(m)) if m.contains("invalid")));
    assert!(matches!(route(&p, "ok", "1"), Ok(Route::Direct)));
    assert_eq!(env.metric("misbehave", "router", "trap"), 3);
    assert_eq!(env.metric("misbehave", "router", "error"), 1);
    assert_eq!(env.metric("misbehave", "router", "ok"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_wasm_keeps_old_version_and_reports() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"router\"\ncall_timeout = \"2s\"\n",
        &[("router-v1", "router")],
        false,
    )
    .await;
    let v1_hash = env.status("router")["hash"].clone();
    assert_eq!(
        routed_version(&route(&env.policies("default"), "a:b", "1")),
        Some(1)
    );
    write_plugin(env.dir.path(), "router", b"\0asm\x0d\0\x01\0garbage");
    env.host.rescan().await;
    let st = env.status("router");
    assert_eq!(st["status"], "failed");
    assert_eq!(st["hash"], v1_hash, "old version still serving");
    assert_ne!(st["file_hash"], v1_hash);
    assert!(
        st["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{st}"
    );
    assert_eq!(
        routed_version(&route(&env.policies("default"), "a:b", "1")),
        Some(1)
    );
    assert!(
        env.node
            .metrics
            .encode()
            .contains("switchyard_plugin_load_failures_total{plugin=\"router\"} 1")
    );
    // A valid component of another role does not replace a serving version either.
    install(env.dir.path(), "merge-counter", "router");
    env.host.rescan().await;
    let st = env.status("router");
    assert_eq!(st["status"], "failed");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("role")),
        "{st}"
    );
    assert_eq!(
        routed_version(&route(&env.policies("default"), "a:b", "1")),
        Some(1)
    );
    // A good file recovers.
    install(env.dir.path(), "router-v2", "router");
    env.host.rescan().await;
    assert_eq!(env.status("router")["status"], "loaded");
    assert_eq!(
        routed_version(&route(&env.policies("default"), "a:b", "1")),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_v1_to_v2_while_calls_run() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"router\"\ncall_timeout = \"2s\"\n",
        &[("router-v1", "router")],
        true,
    )
    .await;
    let tenant = env.node.tenants.get("default").expect("tenant");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let p = tenant.policies().clone();
                        let r = route(&p, "room:1", "{}");
                        assert!(
                            routed_version(&r).is_some(),
                            "call failed during the swap: {r:?}"
                        );
                        seen.push(routed_version(&r));
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        install(env.dir.path(), "router-v2", "router");
        // The watcher picks the change up (debounced), no explicit rescan.
        let deadline = Instant::now() + Duration::from_secs(20);
        while routed_version(&route(&tenant.policies(), "room:1", "{}")) != Some(2) {
            assert!(Instant::now() < deadline, "watcher did not swap in v2");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect::<Vec<_>>()
    });
    for seen in results {
        assert!(
            seen.iter().all(|v| matches!(v, Some(1 | 2))),
            "a call failed during the swap"
        );
        let first_v2 = seen.iter().position(|v| *v == Some(2)).expect("saw v2");
        assert!(seen[..first_v2].iter().all(|v| *v == Some(1)));
        assert!(
            seen[first_v2..].iter().all(|v| *v == Some(2)),
            "v1 after v2"
        );
        assert!(first_v2 > 0, "saw v1 first");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugin_of_one_tenant_does_not_affect_another() {
    let env = Env::start(
        "[tenants.a.policies.router]\nplugin = \"misbehave\"\ncall_timeout = \"5ms\"\n\
         [tenants.b.policies.router]\nplugin = \"router\"\ncall_timeout = \"2s\"\n",
        &[("misbehave", "misbehave"), ("router-v1", "router")],
        false,
    )
    .await;
    let a = env.policies("a");
    let b = env.policies("b");
    std::thread::scope(|s| {
        let bad = s.spawn(|| {
            for i in 0..40 {
                let ch = if i % 2 == 0 { "loop" } else { "trap" };
                assert!(route(&a, ch, "1").is_err());
            }
        });
        let good = s.spawn(|| {
            for _ in 0..2000 {
                assert_eq!(routed_version(&route(&b, "room:1", "1")), Some(1));
            }
        });
        bad.join().expect("bad");
        good.join().expect("good");
    });
    assert_eq!(env.metric("router", "router", "ok"), 2000);
    // The first crashes (timeouts or traps) open tenant a's breaker; the rest
    // of its 40 calls are refused without running the plugin.
    let (timeouts, traps, cooling) = (
        env.metric("misbehave", "router", "timeout"),
        env.metric("misbehave", "router", "trap"),
        env.metric("misbehave", "router", "cooling_down"),
    );
    let tripped = u64::from(switchyard_policy::breaker::TRIP_FAILURES);
    assert_eq!(
        timeouts + traps,
        tripped,
        "{timeouts} timeouts, {traps} traps"
    );
    assert_eq!(cooling, 40 - tripped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_keeps_state_in_scoped_kv() {
    let env = Env::start(
        "[tenants.a.policies.rate_limit]\nplugin = \"limiter\"\nconfig = { limit = 3 }\n\
         [tenants.b.policies.rate_limit]\nplugin = \"limiter\"\nconfig = { limit = 1 }\n",
        &[("kv-limiter", "limiter")],
        false,
    )
    .await;
    let key = |p| RateKey {
        principal: p,
        client: "c",
        channel: "room:1",
    };
    let a = env.policies("a");
    for _ in 0..3 {
        assert_eq!(a.rate_limit.check(&key("alice"), 1), RateDecision::Allow);
    }
    assert_eq!(
        a.rate_limit.check(&key("alice"), 1),
        RateDecision::Reject {
            retry_after_ms: 1000
        }
    );
    assert_eq!(a.rate_limit.check(&key("bob"), 1), RateDecision::Allow);
    // Tenant b has its own store (and config): alice is fresh there.
    let b = env.policies("b");
    assert_eq!(b.rate_limit.check(&key("alice"), 1), RateDecision::Allow);
    assert_eq!(
        b.rate_limit.check(&key("alice"), 1),
        RateDecision::Reject {
            retry_after_ms: 1000
        }
    );
    // State survives a reload of the plugin (kv is per plugin+tenant, not per version).
    std::fs::remove_file(env.dir.path().join("limiter.wasm")).expect("rm");
    env.host.rescan().await;
    assert_eq!(env.status("limiter")["status"], "removed");
    assert_eq!(
        env.policies("a").rate_limit.check(&key("alice"), 1),
        RateDecision::Allow,
        "built-in after removal"
    );
    install(env.dir.path(), "kv-limiter", "limiter");
    env.host.rescan().await;
    assert_eq!(
        env.policies("a").rate_limit.check(&key("alice"), 1),
        RateDecision::Reject {
            retry_after_ms: 1000
        }
    );
    assert_eq!(env.metric("limiter", "rate_limit", "denied"), 3);
}

/// The stamp the tests give every update (WIT 0.2 plugins do not see it).
const ST: switchyard_core::policy::Stamp<'static> = switchyard_core::policy::Stamp {
    lamport: 1,
    client_id: "c",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_document_lives_in_its_instance() {
    let env = Env::start(
        "[tenants.default.policies.merge]\nplugin = \"counter\"\n",
        &[("merge-counter", "counter")],
        false,
    )
    .await;
    let p = env.policies("default");
    let mut d = p.merge.open(b"5").expect("open");
    assert_eq!(d.apply(b"3", &ST).expect("apply"), Some(b"8".to_vec()));
    assert_eq!(
        d.apply(b"0", &ST).expect("apply"),
        None,
        "no change, no broadcast"
    );
    assert!(matches!(
        d.apply(b"x", &ST),
        Err(switchyard_core::policy::MergeError::Invalid(_))
    ));
    let mut d2 = p.merge.open(b"").expect("open");
    assert_eq!(d2.apply(b"1", &ST).expect("apply"), Some(b"1".to_vec()));
    assert_eq!(
        d.snapshot().expect("snapshot"),
        b"8".to_vec(),
        "documents are independent"
    );
    assert!(matches!(
        d.apply(b"trap", &ST),
        Err(switchyard_core::policy::MergeError::Failed(_))
    ));
    assert!(
        matches!(d.apply(b"1", &ST), Err(switchyard_core::policy::MergeError::Lost(m)) if m.contains("lost"))
    );
    assert_eq!(
        d2.apply(b"1", &ST).expect("other doc unaffected"),
        Some(b"2".to_vec())
    );
    assert!(p.merge.open(b"nope").is_err());
    assert_eq!(env.metric("counter", "merge", "trap"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_role_auth_refuses_until_loaded() {
    let env = Env::start(
        "[tenants.acme.policies.auth]\nplugin = \"later\"\n\
         [tenants.acme.policies.router]\nplugin = \"auth\"\n\
         [tenants.open.policies.auth]\nplugin = \"later\"\non_error = \"allow\"\n\
         [tenants.wrong.policies.auth]\nplugin = \"router\"\ncall_timeout = \"2s\"\n",
        &[("auth-fixed", "auth"), ("router-v1", "router")],
        false,
    )
    .await;
    let acme = env.policies("acme");
    assert!(matches!(
        acme.auth.authenticate(&connect(Some("let-me-in"))),
        Err(Denial::Failed(m)) if m.contains("later")
    ));
    // A router mapped to an auth plugin: built-in router, reported.
    assert!(matches!(route(&acme, "a:b", "1"), Ok(Route::Direct)));
    // on_error = allow opts into the built-in while missing.
    assert!(
        env.policies("open")
            .auth
            .authenticate(&connect(None))
            .is_ok()
    );
    // Wrong role for auth: refused.
    assert!(
        env.policies("wrong")
            .auth
            .authenticate(&connect(Some("let-me-in")))
            .is_err()
    );
    assert_eq!(env.status("later")["status"], "missing");
    let wrong = env.status("router");
    assert_eq!(wrong["status"], "loaded");
    assert!(
        wrong["mapping_errors"]
            .to_string()
            .contains("mapped as auth"),
        "{wrong}"
    );
    install(env.dir.path(), "auth-fixed", "later");
    env.host.rescan().await;
    let who = env
        .policies("acme")
        .auth
        .authenticate(&connect(Some("let-me-in")))
        .expect("loaded now");
    assert_eq!(who.id, "alice@acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_cached_on_disk() {
    let first = Env::start(
        "[tenants.default.policies.router]\nplugin = \"router\"\ncall_timeout = \"2s\"\n",
        &[("router-v1", "router")],
        false,
    )
    .await;
    let cache = first.dir.path().join(".cache");
    let entries: Vec<_> = std::fs::read_dir(&cache).expect("cache dir").collect();
    assert_eq!(entries.len(), 1, "one compiled artefact");
    // A second host over the same folder deserializes instead of compiling.
    let cfg = first.node.config.clone();
    let node = Node::with_memory_broker(cfg);
    let host = PluginHost::start(node.clone()).await.expect("start");
    let st = host.status_json();
    assert_eq!(st[0]["compiled_from_cache"], true, "{st}");
    let p = node.tenants.get("default").expect("t").policies().clone();
    assert_eq!(routed_version(&route(&p, "a:b", "1")), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_applies_new_mapping() {
    let env = Env::start("", &[("router-v1", "v1"), ("router-v2", "v2")], false).await;
    assert!(matches!(
        route(&env.policies("default"), "a:b", "1"),
        Ok(Route::Direct)
    ));
    let toml = format!(
        "[plugins]\ndir = {:?}\nwatch = false\n[tenants.default.policies.router]\nplugin = \"v2\"\n",
        env.dir.path().display().to_string()
    );
    let cfg = Config::from_toml(&toml).expect("cfg");
    env.node.tenants.reload(&cfg);
    env.host.reload(&cfg).await.expect("reload");
    assert_eq!(
        routed_version(&route(&env.policies("default"), "a:b", "1")),
        Some(2)
    );
}

/// A tenant holds at most `plugins.max_instances` live instances (open merge
/// documents pin one each): one more is refused as busy, another tenant is not
/// affected, and a closed document gives its instance back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_held_to_its_instance_budget() {
    let env = Env::start(
        "max_instances = 2\n\
         [tenants.a.policies.merge]\nplugin = \"counter\"\n\
         [tenants.b.policies.merge]\nplugin = \"counter\"\n",
        &[("merge-counter", "counter")],
        false,
    )
    .await;
    let a = env.policies("a");
    let d1 = a.merge.open(b"1").expect("first");
    let _d2 = a.merge.open(b"2").expect("second");
    let Err(e) = a.merge.open(b"3") else {
        panic!("a third live instance was created");
    };
    assert!(e.to_string().contains("busy"), "{e}");
    assert_eq!(env.metric("counter", "merge", "busy"), 1);
    let b = env.policies("b");
    let _b1 = b.merge.open(b"1").expect("tenant b has its own budget");
    drop(d1);
    a.merge
        .open(b"3")
        .expect("the closed document gave its instance back");
    let used = &env.status("counter")["used_by"];
    let a_entry = used
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["tenant"] == "a")
        .expect("tenant a listed");
    assert_eq!(a_entry["tenant_instances"]["max"], 2, "{used}");
}

/// Waits (bounded) until the shadow listing entry of `tenant` says `calls`.
async fn shadow_entry(env: &Env, tenant: &str, calls: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = env.host.shadow_json();
        let e = v["shadows"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["tenant"] == tenant).cloned());
        if let Some(e) = e.filter(|e| e["calls"] == calls) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shadow never reached {calls} calls: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// v1 serves, v2 shadows: every decision is v1's, the shadow's are compared
/// (exact counts at sample 1.0), the differing inputs are listed, and a
/// promotion makes v2 serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_compared_never_served_and_can_be_promoted() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"v1\"\nshadow = \"v2\"\n",
        &[("router-v1", "v1"), ("router-v2", "v2")],
        false,
    )
    .await;
    let p = env.policies("default");
    // room:* differ (v1 vs v2 payloads); drop:* and deny are the same.
    for i in 0..10 {
        let r = route(&p, &format!("room:{i}"), "{\"x\":1}");
        assert_eq!(routed_version(&r), Some(1), "v1 decides");
    }
    for _ in 0..5 {
        assert!(matches!(route(&p, "drop:x", "1"), Ok(Route::To(t)) if t.is_empty()));
        assert!(matches!(route(&p, "deny", "1"), Err(Denial::Forbidden(_))));
    }
    let e = shadow_entry(&env, "default", 20).await;
    assert_eq!(
        (&e["same"], &e["differ"], &e["errors"], &e["dropped"]),
        (&json(10), &json(10), &json(0), &json(0)),
        "{e}"
    );
    assert_eq!(
        (&e["plugin"], &e["shadow"], &e["role"]),
        (&json("v1"), &json("v2"), &json("router"))
    );
    let d = &e["last_differences"][0];
    assert_eq!(d["input"]["channel"], "room:0", "{d}");
    assert_eq!(d["input"]["principal"]["claims"], "[redacted]", "{d}");
    assert!(d["serving"].to_string().contains("\\\"v\\\":1"), "{d}");
    assert!(d["shadow"].to_string().contains("\\\"v\\\":2"), "{d}");
    let metrics = env.node.metrics.encode();
    assert!(
        metrics.contains(
            "switchyard_plugin_shadow_total{tenant=\"default\",role=\"router\",plugin=\"v2\",verdict=\"differ\"} 10"
        ),
        "{metrics}"
    );
    assert!(
        env.host.promote("default", "auth").is_err(),
        "no shadow for auth"
    );
    assert!(env.host.promote("nope", "router").is_err());
    assert_eq!(
        env.host.promote("default", "router").expect("promote"),
        "v2"
    );
    let p = env.policies("default");
    assert_eq!(
        routed_version(&route(&p, "room:1", "1")),
        Some(2),
        "v2 serves"
    );
    let v = env.host.shadow_json();
    assert_eq!(v["promoted"][0]["plugin"], "v2", "{v}");
    assert_eq!(
        v["shadows"].as_array().map(Vec::len),
        Some(0),
        "no shadow runs after promotion: {v}"
    );
}

/// A shadow that loops or traps never affects the serving calls: they answer
/// at once while the shadow burns its deadline on its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_never_touches_the_serving_calls() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"v1\"\nshadow = \"bad\"\ncall_timeout = \"300ms\"\n",
        &[("router-v1", "v1"), ("misbehave", "bad")],
        false,
    )
    .await;
    let p = env.policies("default");
    for ch in ["t:loop", "t:trap", "t:loop"] {
        assert_eq!(
            routed_version(&route(&p, ch, "1")),
            Some(1),
            "v1 decides {ch}"
        );
    }
    // All three serving calls were answered while the first shadow call
    // still spins (300 ms each): the serving path never waited for it.
    let e = shadow_entry(&env, "default", 3).await;
    assert_eq!(e["errors"], 3, "{e}");
    assert_eq!(env.metric("v1", "router", "ok"), 3);
}

fn json<T: Into<serde_json::Value>>(v: T) -> serde_json::Value {
    v.into()
}

/// `/admin/plugins` shows what a plugin costs: CPU per call (one call in 64
/// per thread is timed) and the peak linear memory of its instances; the same
/// figures are metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_cpu_per_call_and_peak_memory_are_reported() {
    let env = Env::start(
        "[tenants.default.policies.router]\nplugin = \"bad\"\n",
        &[("misbehave", "bad")],
        false,
    )
    .await;
    let p = env.policies("default");
    assert!(
        route(&p, "t:bomb:8", "1").is_ok(),
        "8 MiB fit the 64 MiB cap"
    );
    for _ in 0..(3 * 64) {
        assert!(route(&p, "room:1", "1").is_ok());
    }
    let figures = &env.status("bad")["used_by"][0]["figures"];
    assert!(figures["cpu_samples"].as_u64().unwrap() >= 2, "{figures}");
    assert!(
        figures["cpu_per_call_us"].as_f64().unwrap() > 0.0,
        "{figures}"
    );
    assert!(
        figures["peak_memory_bytes"].as_u64().unwrap() >= 8 << 20,
        "{figures}"
    );
    let metrics = env.node.metrics.encode();
    let peak = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("switchyard_plugin_memory_peak_bytes{plugin=\"bad\",role=\"router\"} ")
        })
        .expect("peak memory gauge");
    assert!(peak.trim().parse::<u64>().unwrap() >= 8 << 20, "{peak}");
    assert!(
        metrics
            .contains("switchyard_plugin_call_cpu_seconds_count{plugin=\"bad\",role=\"router\"}"),
        "{metrics}"
    );
}
