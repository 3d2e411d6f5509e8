//! `cargo bench -p switchyard-policy`: per-call overhead of each role with the
//! test guest components (small inputs), instantiation, and the hot swap of a
//! plugin whose compiled code is cached. Prints medians (results go to
//! docs/benchmarks.md, "## Plugin calls").

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use switchyard_core::policy::{
    ConnectRequest, PolicySet, Principal, PublishRequest, RateDecision, RateKey,
};
use switchyard_core::{Config, Node};
use switchyard_policy::PluginHost;

/// The test guests, (re)built by their build script (a no-op when up to date).
fn fixtures() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ok = std::process::Command::new(root.join("tests/fixtures/plugins/build.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "fixture build failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |t| root.join(t))
        .join("test-plugins")
}

fn copy(from: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename");
}

/// The first-party plugins, built by scripts/build-plugins.sh (a no-op when up to date).
fn first_party_plugins() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ok = std::process::Command::new(root.join("scripts/build-plugins.sh"))
        .env("SWITCHYARD_SKIP_PYTHON", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "plugin build failed");
    root.join("target/plugins")
}

/// HS256 token of examples/configs/demo.toml (secret `demo-secret`, aud `demo`,
/// sub `demo-user`, expires 2100-01-01, channels `chat:*`, `room:*`, …).
const DEMO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZW1vLXVzZXIiLCJhdWQiOiJkZW1vIiwiZXhwIjo0MTAyNDQ0ODAwLCJjaGFubmVscyI6WyJjaGF0OioiLCJyb29tOioiLCJuZXdzOioiLCJsb2c6KiIsImF1ZGl0OioiLCJkb2M6KiJdfQ.6t6XZfMPnJZ4o0s4h3GktLut5vDiIr4Bl0CDkAgW-TI";

/// Median ns per call over `rounds` batches of `batch` calls.
fn per_call(rounds: usize, batch: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..batch {
        f();
    }
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() * 9 / 10])
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

/// Inputs shared by both plugin sets.
struct Inputs {
    who: Principal,
    data: Box<RawValue>,
    req: Arc<ConnectRequest>,
    channel: &'static str,
    route_channel: &'static str,
    update: &'static [u8],
    snapshot: &'static [u8],
}

/// Whether a row is wanted: `SWITCHYARD_BENCH_ONLY` (a substring) filters rows.
fn wanted(name: &str) -> bool {
    std::env::var("SWITCHYARD_BENCH_ONLY").map_or(true, |f| name.contains(&f))
}

/// One measured row: name, (median, p90) in ns.
type Row = (String, (f64, f64));

/// One row per role call against `policies`.
fn roles(set: &str, policies: &PolicySet, i: &Inputs, out: &mut Vec<Row>) {
    let mut row = |call: &str, rounds: usize, batch: usize, f: &mut dyn FnMut()| {
        let name = format!("{set}: {call}");
        if wanted(&name) {
            out.push((name, per_call(rounds, batch, f)));
        }
    };
    row("auth `authorize-subscribe`", 200, 2000, &mut || {
        black_box(policies.auth.authorize_subscribe(&i.who, i.channel)).expect("allowed");
    });
    row(
        "auth `authorize-publish` (small JSON payload)",
        200,
        2000,
        &mut || {
            black_box(policies.auth.authorize_publish(&i.who, i.channel, &i.data))
                .expect("allowed");
        },
    );
    row(
        "auth `authenticate` (1 header, token)",
        100,
        1000,
        &mut || {
            black_box(policies.auth.authenticate(&i.req)).expect("authenticated");
        },
    );
    let publish = PublishRequest {
        principal: &i.who,
        client: "c1",
        channel: i.route_channel,
        data: &i.data,
    };
    row(
        &format!("router `route` ({})", i.route_channel),
        200,
        2000,
        &mut || {
            black_box(policies.router.route(&publish)).expect("routed");
        },
    );
    let key = RateKey {
        principal: &i.who.id,
        client: "c1",
        channel: i.channel,
    };
    row("rate-limit `check`", 200, 2000, &mut || {
        let d = black_box(policies.rate_limit.check(&key, 1));
        assert_eq!(d, RateDecision::Allow);
    });
    let mut doc = policies.merge.open(i.snapshot).expect("open");
    let stamp = switchyard_core::policy::Stamp {
        lamport: 1,
        client_id: "c1",
    };
    row("merge `document.apply`", 200, 2000, &mut || {
        black_box(doc.apply(i.update, &stamp)).expect("applied");
    });
}

fn main() {
    let fx = fixtures();
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("noop-auth", "auth"),
        ("noop-router", "noop-router"),
        ("noop-limiter", "limiter"),
        ("merge-counter", "counter"),
        ("router-v1", "router"),
    ] {
        copy(&fx.join(format!("{from}.wasm")), dir.path(), to);
    }
    let first_party = first_party_plugins();
    for name in ["jwt-auth", "token-bucket", "namespace-router", "lww-merge"] {
        copy(&first_party.join(format!("{name}.wasm")), dir.path(), name);
    }
    let toml = format!(
        "[plugins]\ndir = {:?}\nwatch = false\n\
         [tenants.default.policies.auth]\nplugin = \"auth\"\n\
         [tenants.default.policies.router]\nplugin = \"noop-router\"\n\
         [tenants.default.policies.rate_limit]\nplugin = \"limiter\"\n\
         [tenants.swap.policies.router]\nplugin = \"router\"\n\
         [tenants.default.policies.merge]\nplugin = \"counter\"\n\
         [tenants.demo.policies.auth]\nplugin = \"jwt-auth\"\n\
         config = {{ hs256_secret = \"demo-secret\", audience = \"demo\" }}\n\
         [tenants.demo.policies.rate_limit]\nplugin = \"token-bucket\"\n\
         config = {{ rate = 1000000000, burst = 1000000000, key = \"principal\" }}\n\
         [tenants.demo.policies.router]\nplugin = \"namespace-router\"\n\
         [[tenants.demo.policies.router.config.rules]]\nmatch = \"chat:*\"\nto = [\"$channel\", \"chat:all\"]\n\
         [[tenants.demo.policies.router.config.rules]]\nmatch = \"spam:*\"\ndrop = true\n\
         [tenants.demo.policies.merge]\nplugin = \"lww-merge\"\n",
        dir.path().display().to_string()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = Arc::new(Config::from_toml(&toml).expect("config"));
    let (node, host) = rt.block_on(async {
        let node = Node::with_memory_broker(cfg);
        let host = PluginHost::start(node.clone()).await.expect("start");
        (node, host)
    });
    let policies = |t: &str| node.tenants.get(t).expect("tenant").policies().clone();
    let req = |tenant: &str, token: &str| {
        Arc::new(ConnectRequest {
            tenant: tenant.into(),
            path: "/ws".into(),
            query: String::new(),
            headers: vec![("user-agent".into(), "bench".into())],
            remote_addr: "127.0.0.1:1".into(),
            client_id: "c1".into(),
            token: Some(token.into()),
        })
    };
    let data = || RawValue::from_string("{\"text\":\"hello\",\"n\":1}".into()).expect("json");

    let passes: usize = std::env::var("SWITCHYARD_BENCH_PASSES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5)
        .max(1);
    let demo = policies("demo");
    let jwt_req = req("demo", DEMO_TOKEN);
    let jwt_who = demo
        .auth
        .authenticate(&jwt_req)
        .expect("demo token accepted");
    // Each pass measures every row; a row reports its quietest pass (the
    // lowest median), since noise on a shared machine only ever adds time.
    let mut all: Vec<Vec<Row>> = Vec::new();
    for _ in 0..passes {
        let mut out = Vec::new();
        // No-op guests: what the platform itself costs per call.
        roles(
            "no-op guest",
            &policies("default"),
            &Inputs {
                who: Principal {
                    id: "alice".into(),
                    claims: Arc::from("{\"role\":\"tester\"}"),
                },
                data: data(),
                req: req("default", "alice"),
                channel: "room:1",
                route_channel: "room:1",
                update: b"1",
                snapshot: b"0",
            },
            &mut out,
        );
        // The first-party plugins doing their real work.
        roles(
            "first-party",
            &demo,
            &Inputs {
                who: jwt_who.clone(),
                data: data(),
                req: jwt_req.clone(),
                channel: "room:1",
                route_channel: "chat:1",
                update: br#"{"title":"hello"}"#,
                snapshot: b"",
            },
            &mut out,
        );
        all.push(out);
    }
    println!("| measurement | median | p90 | medians of the {passes} passes |");
    println!("|---|---|---|---|");
    for (i, (name, _)) in all[0].iter().enumerate() {
        let mut pass: Vec<(f64, f64)> = all.iter().map(|o| o[i].1).collect();
        let medians: Vec<String> = pass.iter().map(|(m, _)| format!("{m:.0}")).collect();
        pass.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (m, p) = pass[0];
        println!(
            "| {name} | {m:.0} ns | {p:.0} ns | {} |",
            medians.join(" / ")
        );
    }

    if wanted("instantiate") {
        let inst: Vec<Duration> = (0..500)
            .map(|_| host.instantiate_once("router").expect("instantiate"))
            .collect();
        let (m, p) = median(inst);
        println!(
            "| instantiate (pooling allocator, `InstancePre`) | {:.1} µs | {:.1} µs |",
            m.as_secs_f64() * 1e6,
            p.as_secs_f64() * 1e6
        );
    }
    if !wanted("hot swap") {
        return;
    }
    // Hot swap: replace the router file (v1 <-> v2, compiled code cached on disk
    // after the first round) and rescan, until the tenant's policies changed.
    let tenant = node.tenants.get("swap").expect("tenant");
    let mut swaps = Vec::new();
    for i in 0..42 {
        let from = if i % 2 == 0 { "router-v2" } else { "router-v1" };
        copy(&fx.join(format!("{from}.wasm")), dir.path(), "router");
        let before = Arc::as_ptr(&tenant.policies().router) as *const u8;
        let t = Instant::now();
        rt.block_on(host.rescan());
        let took = t.elapsed();
        let after = Arc::as_ptr(&tenant.policies().router) as *const u8;
        assert_ne!(before, after, "router swapped");
        if i >= 2 {
            swaps.push(took);
        }
    }
    let (m, p) = median(swaps);
    println!(
        "| hot swap of a cached plugin (read + sha256 + deserialize + link + probe instantiate + install) | {:.2} ms | {:.2} ms |",
        m.as_secs_f64() * 1e3,
        p.as_secs_f64() * 1e3
    );
    // First-time compile for reference.
    std::fs::remove_dir_all(dir.path().join(".cache")).ok();
    copy(&fx.join("misbehave.wasm"), dir.path(), "fresh");
    let t = Instant::now();
    rt.block_on(host.rescan());
    println!(
        "| load of an uncached plugin (compile with Cranelift, ~50 KB component) | {:.1} ms | |",
        t.elapsed().as_secs_f64() * 1e3
    );
}
