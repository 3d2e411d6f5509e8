//! Clock, latency histograms, counters and the result record a run prints.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's clock base (monotonic).
pub fn now_ns() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

const SHARDS: usize = 16;
const MAX_LATENCY_US: u64 = 120_000_000;

/// A latency histogram in microseconds, sharded so concurrent tasks rarely
/// contend on one lock.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    /// An empty histogram (1 µs .. 120 s, 3 significant digits).
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(
                    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                        .expect("static histogram bounds are valid"),
                )
            })
            .collect();
        Self { shards }
    }

    /// Records one latency in nanoseconds from task `shard`.
    pub fn record_ns(&self, shard: usize, ns: u64) {
        let us = (ns / 1000).clamp(1, MAX_LATENCY_US);
        if let Ok(mut h) = self.shards[shard % SHARDS].lock() {
            let _ = h.record(us);
        }
    }

    /// Merges the shards into percentiles.
    pub fn summary(&self) -> LatencySummary {
        let mut all = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("static histogram bounds are valid");
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                let _ = all.add(&*h);
            }
        }
        LatencySummary {
            count: all.len(),
            p50_us: all.value_at_quantile(0.50),
            p95_us: all.value_at_quantile(0.95),
            p99_us: all.value_at_quantile(0.99),
            max_us: all.max(),
        }
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Phase of a timed run: warm-up, measuring, stopping.
pub struct Phase(AtomicU8);

impl Phase {
    pub const WARMUP: u8 = 0;
    pub const MEASURE: u8 = 1;
    pub const STOP: u8 = 2;

    pub fn new() -> Self {
        Self(AtomicU8::new(Self::WARMUP))
    }
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }
    pub fn measuring(&self) -> bool {
        self.get() == Self::MEASURE
    }
    pub fn stopping(&self) -> bool {
        self.get() == Self::STOP
    }
}

impl Default for Phase {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters shared by the tasks of a run.
#[derive(Default)]
pub struct Counters {
    /// Messages counted (echo replies or fan-out deliveries), all phases.
    pub total: AtomicU64,
    /// Messages counted while measuring.
    pub measured: AtomicU64,
    /// Messages sent while measuring.
    pub sent: AtomicU64,
    /// Error replies and failed connections.
    pub errors: AtomicU64,
    /// Connections closed by the server during the run.
    pub closed: AtomicU64,
    /// Set once something printed a first error (to avoid floods).
    pub error_printed: AtomicBool,
}

impl Counters {
    /// Counts an error and prints the first one.
    pub fn error(&self, what: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.error_printed.swap(true, Ordering::Relaxed) {
            eprintln!("first error: {what}");
        }
    }
}

/// One result record: printed as a table row and as a JSON line.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunResult {
    /// Scenario kind: echo, fanout, idle, cross-node.
    pub scenario: String,
    /// Case name grouping comparable runs (e.g. `echo-100c-64B`).
    pub case: String,
    /// Server under test (e.g. `node-ws`).
    pub server: String,
    pub connections: u64,
    pub size: u64,
    pub duration_s: f64,
    /// Echo replies or fan-out deliveries per second while measuring.
    pub rate_per_s: f64,
    /// Messages published (fan-out) or sent (echo) per second.
    pub sent_per_s: f64,
    pub latency: LatencySummary,
    pub errors: u64,
    pub closed: u64,
    /// Idle: server RSS before and after opening the connections, KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_conn_kib: Option<f64>,
    /// Idle: handshakes per second and handshake latency.
    pub handshakes_per_s: Option<f64>,
    pub handshake: Option<LatencySummary>,
    /// docs-patch: deliveries (PATCH frames or messages) per second at all
    /// editors, and write-to-deliver latency.
    pub delivered_per_s: Option<f64>,
    pub delivery: Option<LatencySummary>,
    /// docs-memory: documents opened, and server RSS per open document, bytes.
    pub documents: Option<u64>,
    pub bytes_per_doc: Option<f64>,
    /// Free-form notes (e.g. loss, target rate).
    pub note: String,
    /// CPU other processes used while this run measured, % of one core
    /// ([`crate::load`]); above [`crate::load::NOISY_PCT`] the run is noisy.
    #[serde(default)]
    pub other_cpu_pct: Option<f64>,
    /// Server the report computes ratios against, for this case.
    #[serde(default)]
    pub ref_server: String,
    /// The target of this case, as text for the report.
    #[serde(default)]
    pub target: String,
}

impl RunResult {
    /// One human-readable line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<10} {:<24} {:<22} conns={:<6} rate={:>10.0}/s p50={} p95={} p99={} max={}",
            self.scenario,
            self.case,
            self.server,
            self.connections,
            self.rate_per_s,
            fmt_us(self.latency.p50_us),
            fmt_us(self.latency.p95_us),
            fmt_us(self.latency.p99_us),
            fmt_us(self.latency.max_us),
        );
        if let Some(per) = self.rss_per_conn_kib {
            s.push_str(&format!(" rss/conn={per:.1}KiB"));
        }
        if let Some(o) = self.other_cpu_pct {
            s.push_str(&format!(" other_cpu={o:.0}%"));
        }
        if let (Some(d), Some(l)) = (self.delivered_per_s, self.delivery) {
            s.push_str(&format!(
                " delivered={d:.0}/s deliver_p50={} deliver_p99={}",
                fmt_us(l.p50_us),
                fmt_us(l.p99_us)
            ));
        }
        if let Some(docs) = self.documents {
            s.push_str(&format!(" documents={docs}"));
        }
        if let Some(per) = self.bytes_per_doc {
            s.push_str(&format!(" rss/doc={per:.0}B"));
        }
        if let (Some(hs), Some(h)) = (self.handshakes_per_s, self.handshake) {
            s.push_str(&format!(
                " handshakes={hs:.0}/s hs_p99={}",
                fmt_us(h.p99_us)
            ));
        }
        if self.errors > 0 || self.closed > 0 {
            s.push_str(&format!(" errors={} closed={}", self.errors, self.closed));
        }
        if !self.note.is_empty() {
            s.push_str(&format!(" ({})", self.note));
        }
        s
    }
}

/// Formats microseconds as µs / ms / s.
pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Reads `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass, which
    // lives on this stack frame for the duration of the calls.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim = wanted;
            }
        }
    }
    lim.rlim_cur
}

/// Prints progress lines on stderr every second until `phase` stops.
pub async fn progress(
    label: String,
    counters: std::sync::Arc<Counters>,
    phase: std::sync::Arc<Phase>,
) {
    let mut last = counters.total.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        if phase.stopping() {
            break;
        }
        let now = counters.total.load(Ordering::Relaxed);
        let what = if phase.measuring() {
            "measuring"
        } else {
            "warm-up"
        };
        eprintln!(
            "  [{label} {:>3}s {what}] {:>9}/s errors={} closed={}",
            start.elapsed().as_secs(),
            now - last,
            counters.errors.load(Ordering::Relaxed),
            counters.closed.load(Ordering::Relaxed),
        );
        last = now;
    }
}
