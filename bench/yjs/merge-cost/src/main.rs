//! Merge cost of the `yjs-merge` plugin per small update vs document size.
//!
//! Loads `yjs-merge.wasm` through the gateway's own plugin runtime
//! (`switchyard_policy::PluginHost` building a tenant's `PolicySet` from a
//! plugins folder, as `host/policy/benches/plugin_calls.rs` does) and calls
//! `policies.merge.open(snapshot)` then `doc.apply(update, &Stamp{..})`: the
//! same calls the gateway makes for a `PATCH` on a `yjs:` document channel.
//!
//! For each size (default 1 KB, 10 KB, 100 KB, 1 MB of v1-encoded document
//! state) a Yjs text document is generated with `yrs`: four writers insert
//! 1–64 characters at random positions of their (briefly stale) replicas and
//! delete a short range now and then, until the encoded state reaches the
//! size. Then an editor replica makes `--updates` small inserts (8 characters
//! at a random position), each encoded as its own v1 update (~30 bytes), all
//! generated before timing. Each `apply` is timed on its own, in order, on
//! the document opened from the snapshot; the first `--warmup` are not
//! counted. Also reported: `open` (snapshot load) and `snapshot` (whole state
//! out) per size. Every update must change the document (`Some(update)`).
//!
//! Usage: yjs-merge-cost --plugin target/plugins/yjs-merge.wasm
//!            [--sizes 1000,10000,100000,1000000] [--updates 5000] [--warmup 500]
//!            [--passes 3] [--json FILE] [--server NAME]
//! Prints one JSON line per size to stdout (and appends it to --json).

use std::hint::black_box;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use switchyard_core::policy::Stamp;
use switchyard_core::{Config, Node};
use switchyard_policy::PluginHost;
use yrs::updates::decoder::Decode as _;
use yrs::{Doc, GetString as _, ReadTxn as _, StateVector, Text as _, Transact as _, Update};

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            0
        } else {
            (self.next() % u64::from(n)) as u32
        }
    }
}

fn chunk(rng: &mut Rng, len: u32) -> String {
    (0..len)
        .map(|_| char::from(b'a' + (rng.next() % 26) as u8))
        .collect()
}

fn sync(from: &Doc, to: &Doc) {
    let sv = to.transact().state_vector();
    let diff = from.transact().encode_state_as_update_v1(&sv);
    let update = Update::decode_v1(&diff).expect("decode diff");
    to.transact_mut().apply_update(update).expect("apply diff");
}

/// A text document whose v1 state is at least `size` bytes, from four writers.
/// Every change travels as its transaction's own update (what a Yjs client's
/// `update` event sends), not as a state diff (which carries the whole delete
/// set of the document).
fn document(size: usize, rng: &mut Rng) -> Doc {
    let master = Doc::with_client_id(1);
    let writers: Vec<Doc> = (2..6).map(Doc::with_client_id).collect();
    let mut op = 0usize;
    // Small rounds for small documents, so the size lands near the target.
    let per_round = (size / 2000).clamp(4, 64);
    loop {
        // One round: each writer edits its replica, which lags the others'
        // edits of this round; then every writer gets the round's updates.
        let mut round: Vec<(usize, Vec<u8>)> = Vec::new();
        for _ in 0..per_round {
            let wi = op % writers.len();
            op += 1;
            let w = &writers[wi];
            let text = w.get_or_insert_text("t");
            let mut txn = w.transact_mut();
            let len = text.len(&txn);
            if len > 32 && rng.below(10) == 0 {
                let at = rng.below(len - 16);
                text.remove_range(&mut txn, at, 1 + rng.below(16));
            } else {
                let n = 1 + rng.below(64);
                let s = chunk(rng, n);
                text.insert(&mut txn, rng.below(len + 1), &s);
            }
            let update = txn.encode_update_v1();
            drop(txn);
            apply(&master, &update);
            round.push((wi, update));
        }
        for (wi, w) in writers.iter().enumerate() {
            for (from, u) in &round {
                if *from != wi {
                    apply(w, u);
                }
            }
        }
        let encoded = master
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
            .len();
        if encoded >= size {
            return master;
        }
    }
}

fn apply(doc: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("decode update");
    doc.transact_mut()
        .apply_update(update)
        .expect("apply update");
}

/// `count` small updates by a fresh editor replica of `doc`, in order, each
/// its transaction's own update (one insert of 8 characters).
fn updates(doc: &Doc, count: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let editor = Doc::with_client_id(1000);
    sync(doc, &editor);
    let text = editor.get_or_insert_text("t");
    (0..count)
        .map(|_| {
            let mut txn = editor.transact_mut();
            let len = text.len(&txn);
            let s = chunk(rng, 8);
            text.insert(&mut txn, rng.below(len + 1), &s);
            txn.encode_update_v1()
        })
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Args {
    plugin: PathBuf,
    sizes: Vec<usize>,
    updates: usize,
    warmup: usize,
    passes: usize,
    json: Option<PathBuf>,
    server: String,
}

fn args() -> Args {
    let mut a = Args {
        plugin: PathBuf::from("target/plugins/yjs-merge.wasm"),
        sizes: vec![1_000, 10_000, 100_000, 1_000_000],
        updates: 5000,
        warmup: 500,
        passes: 3,
        json: None,
        server: "switchyard-yjs-merge".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--plugin" => a.plugin = val().into(),
            "--sizes" => {
                a.sizes = val()
                    .split(',')
                    .map(|s| s.trim().parse().expect("--sizes: bytes"))
                    .collect();
            }
            "--updates" => a.updates = val().parse().expect("--updates"),
            "--warmup" => a.warmup = val().parse().expect("--warmup"),
            "--passes" => a.passes = val().parse::<usize>().expect("--passes").max(1),
            "--json" => a.json = Some(val().into()),
            "--server" => a.server = val(),
            "-h" | "--help" => {
                println!(
                    "yjs-merge-cost --plugin FILE [--sizes 1000,10000,100000,1000000] \
                     [--updates 5000] [--warmup 500] [--passes 3] [--json FILE]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn main() {
    let a = args();
    assert!(
        a.plugin.exists(),
        "{} is missing (scripts/build-plugins.sh)",
        a.plugin.display()
    );
    let dir = std::env::temp_dir().join(format!("yjs-merge-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("plugins dir");
    std::fs::copy(&a.plugin, dir.join("yjs-merge.wasm")).expect("copy plugin");
    let toml = format!(
        "[plugins]\ndir = {:?}\nwatch = false\n\
         [tenants.default]\ndocuments = [\"yjs:*\"]\n\
         [tenants.default.policies.merge]\nplugin = \"yjs-merge\"\n",
        dir.display().to_string()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = Arc::new(Config::from_toml(&toml).expect("config"));
    let (node, _host) = rt.block_on(async {
        let node = Node::with_memory_broker(cfg);
        let host = PluginHost::start(node.clone()).await.expect("plugin host");
        (node, host)
    });
    let policies = node
        .tenants
        .get("default")
        .expect("tenant")
        .policies()
        .clone();
    let stamp = Stamp {
        lamport: 1,
        client_id: "c1",
    };
    let mut json = a.json.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("open --json file")
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &size in &a.sizes {
        let t = Instant::now();
        let doc = document(size, &mut rng);
        let snapshot = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let text_len = doc
            .get_or_insert_text("t")
            .get_string(&doc.transact())
            .len();
        let ups = updates(&doc, a.warmup + a.updates, &mut rng);
        let update_bytes = ups.iter().map(Vec::len).sum::<usize>() as f64 / ups.len().max(1) as f64;
        let gen_s = t.elapsed().as_secs_f64();
        // Each pass: open from the snapshot, apply every update in order.
        // A pass reports its percentiles; the quietest pass (lowest median)
        // is the row, since noise on a shared machine only ever adds time.
        let mut best: Option<(f64, f64, f64, f64)> = None;
        let mut medians = Vec::new();
        let mut opens = Vec::new();
        for _ in 0..a.passes {
            let t = Instant::now();
            let mut d = policies.merge.open(&snapshot).expect("open");
            opens.push(t.elapsed().as_secs_f64() * 1e6);
            let mut samples = Vec::with_capacity(a.updates);
            for (i, u) in ups.iter().enumerate() {
                let t = Instant::now();
                let out = black_box(d.apply(u, &stamp)).expect("apply");
                let us = t.elapsed().as_secs_f64() * 1e6;
                assert!(out.is_some(), "update {i} changed nothing");
                if i >= a.warmup {
                    samples.push(us);
                }
            }
            samples.sort_by(f64::total_cmp);
            let row = (
                pct(&samples, 0.5),
                pct(&samples, 0.9),
                pct(&samples, 0.99),
                samples.iter().sum::<f64>() / samples.len() as f64,
            );
            medians.push(row.0);
            if best.is_none_or(|b| row.0 < b.0) {
                best = Some(row);
            }
        }
        let (p50, p90, p99, mean) = best.expect("a pass");
        // Whole-state snapshot out of the plugin (compaction, late joiners).
        let d = policies.merge.open(&snapshot).expect("open");
        let mut snaps: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                black_box(d.snapshot()).expect("snapshot");
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        snaps.sort_by(f64::total_cmp);
        opens.sort_by(f64::total_cmp);
        let line = serde_json::json!({
            "scenario": "yjs-merge-cost",
            "case": format!("doc-{}", human(size)),
            "server": a.server,
            "doc_bytes": snapshot.len(),
            "doc_text_chars": text_len,
            "update_bytes_mean": update_bytes,
            "updates": a.updates,
            "passes": a.passes,
            "apply_us": { "p50": p50, "p90": p90, "p99": p99, "mean": mean },
            "apply_p50_us_per_pass": medians,
            "open_us_p50": pct(&opens, 0.5),
            "snapshot_us_p50": pct(&snaps, 0.5),
            "generate_s": gen_s,
        });
        println!("{line}");
        eprintln!(
            "yjs-merge-cost: {:>8} B document ({} chars): apply p50 {:.2} µs, p99 {:.2} µs; open {:.0} µs, snapshot {:.0} µs",
            snapshot.len(),
            text_len,
            p50,
            p99,
            pct(&opens, 0.5),
            pct(&snaps, 0.5)
        );
        if let Some(f) = json.as_mut() {
            writeln!(f, "{line}").expect("write --json");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn human(size: usize) -> String {
    if size >= 1_000_000 && size.is_multiple_of(1_000_000) {
        format!("{}MB", size / 1_000_000)
    } else if size >= 1000 && size.is_multiple_of(1000) {
        format!("{}KB", size / 1000)
    } else {
        format!("{size}B")
    }
}
