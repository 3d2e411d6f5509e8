//! `cargo bench -p switchyard-policy`: per-call overhead of each role with the
//! test guest components (small inputs), instantiation, and the hot swap of a
//! plugin whose compiled code is cached. Prints medians (results go to
//! docs/benchmarks.md, "## Plugin calls").

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use switchyard_core::policy::{ConnectRequest, Principal, PublishRequest, RateKey};
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

fn main() {
    let fx = fixtures();
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("auth-fixed", "auth"),
        ("router-v1", "router"),
        ("kv-limiter", "limiter"),
        ("merge-counter", "counter"),
    ] {
        copy(&fx.join(format!("{from}.wasm")), dir.path(), to);
    }
    let toml = format!(
        "[plugins]\ndir = {:?}\nwatch = false\n\
         [tenants.default.policies.auth]\nplugin = \"auth\"\n\
         [tenants.default.policies.router]\nplugin = \"router\"\n\
         [tenants.default.policies.rate_limit]\nplugin = \"limiter\"\nconfig = {{ limit = 4000000000 }}\n\
         [tenants.default.policies.merge]\nplugin = \"counter\"\n",
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
    let policies = node
        .tenants
        .get("default")
        .expect("tenant")
        .policies()
        .clone();
    let who = Principal {
        id: "alice".into(),
        claims: Arc::from("{\"role\":\"tester\"}"),
    };
    let data = RawValue::from_string("{\"text\":\"hello\",\"n\":1}".into()).expect("json");
    let req = ConnectRequest {
        tenant: "default".into(),
        path: "/ws".into(),
        query: String::new(),
        headers: vec![("user-agent".into(), "bench".into())],
        remote_addr: "127.0.0.1:1".into(),
        client_id: "c1".into(),
        token: Some("let-me-in".into()),
    };

    println!("| measurement | median | p90 |");
    println!("|---|---|---|");
    let row = |name: &str, (m, p): (f64, f64)| {
        println!("| {name} | {:.0} ns | {:.0} ns |", m, p);
    };
    row(
        "auth `authorize-publish` (small JSON payload)",
        per_call(200, 2000, || {
            black_box(policies.auth.authorize_publish(&who, "room:1", &data)).ok();
        }),
    );
    row(
        "auth `authorize-subscribe`",
        per_call(200, 2000, || {
            black_box(policies.auth.authorize_subscribe(&who, "room:1")).ok();
        }),
    );
    row(
        "auth `authenticate` (1 header, token)",
        per_call(100, 1000, || {
            black_box(policies.auth.authenticate(&req)).ok();
        }),
    );
    row(
        "router `route` (rewrites payload, 1 target)",
        per_call(200, 2000, || {
            black_box(policies.router.route(&PublishRequest {
                principal: &who,
                client: "c1",
                channel: "room:1",
                data: &data,
            }))
            .ok();
        }),
    );
    let key = RateKey {
        principal: "alice",
        client: "c1",
        channel: "room:1",
    };
    row(
        "rate-limit `check` (guest does kv-get + kv-set)",
        per_call(200, 2000, || {
            black_box(policies.rate_limit.check(&key, 1));
        }),
    );
    let mut doc = policies.merge.open(b"0").expect("open");
    row(
        "merge `document.apply` (counter)",
        per_call(200, 2000, || {
            black_box(doc.apply(b"1")).ok();
        }),
    );

    let inst: Vec<Duration> = (0..500)
        .map(|_| host.instantiate_once("router").expect("instantiate"))
        .collect();
    let (m, p) = median(inst);
    println!(
        "| instantiate (pooling allocator, `InstancePre`) | {:.1} µs | {:.1} µs |",
        m.as_secs_f64() * 1e6,
        p.as_secs_f64() * 1e6
    );

    // Hot swap: replace the router file (v1 <-> v2, compiled code cached on disk
    // after the first round) and rescan, until the tenant's policies changed.
    let tenant = node.tenants.get("default").expect("tenant");
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
