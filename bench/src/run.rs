//! What every scenario shares: common options, opening many connections
//! with bounded concurrency and progress, and the warm-up/measure timeline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt as _;
use tokio::task::JoinSet;

use crate::conn::Connector;
use crate::jwt;
use crate::stats::{Counters, Latencies, Phase, progress};

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Name of the server under test, for the table.
    #[arg(long, default_value = "server", global = true)]
    pub server: String,
    /// Case name grouping comparable runs (default: derived from the options).
    #[arg(long, global = true)]
    pub case: Option<String>,
    /// Warm-up before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration, global = true)]
    pub warmup: Duration,
    /// Measuring time.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration, global = true)]
    pub duration: Duration,
    /// Append the result as one JSON line to this file ("-" = stdout).
    #[arg(long, global = true)]
    pub json: Option<String>,
    /// Loopback source addresses to spread connections over (127.0.0.1..N).
    #[arg(long, default_value_t = 8, global = true)]
    pub sources: u8,
    /// Handshakes in flight at once while opening connections.
    #[arg(long, default_value_t = 64, global = true)]
    pub connect_concurrency: usize,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', global = true)]
    pub headers: Vec<String>,
    /// Send `Authorization: Bearer <HS256 JWT>` signed with this secret.
    #[arg(long, global = true)]
    pub jwt_secret: Option<String>,
    /// Server the report compares this case against.
    #[arg(long, default_value = "", global = true)]
    pub ref_server: String,
    /// Target of this case, as text for the report.
    #[arg(long, default_value = "", global = true)]
    pub target: String,
    /// A server process (repeatable): its CPU time counts as the run's own
    /// when measuring how busy the rest of the machine was ([`crate::load`]).
    #[arg(long = "watch-pid", global = true)]
    pub watch_pids: Vec<u32>,
    /// Claims of that JWT (JSON object); `exp` is added when missing.
    #[arg(
        long,
        default_value = r#"{"sub":"bench","channels":["*"]}"#,
        global = true
    )]
    pub jwt_claims: String,
}

impl Common {
    /// A label for progress lines.
    pub fn label(&self) -> String {
        self.server.clone()
    }

    /// The given case name, or `default`.
    pub fn case_or(&self, default: String) -> String {
        self.case.clone().unwrap_or(default)
    }

    /// The connector with source addresses and headers from the options.
    pub fn connector(&self) -> Result<Connector> {
        let mut headers = self.headers.clone();
        if let Some(secret) = &self.jwt_secret {
            let token = jwt::hs256(secret, &self.jwt_claims)?;
            headers.push(format!("Authorization: Bearer {token}"));
        }
        Ok(Connector::new(self.sources, &headers))
    }
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Opens `n` connections with at most `concurrency` handshakes in flight,
/// printing progress each second. Returns the connections in index order
/// and the handshake latency histogram. Fails if more than 1% of the connections failed.
pub async fn connect_many<T, F, Fut>(
    label: &str,
    n: usize,
    concurrency: usize,
    open: F,
) -> Result<(Vec<T>, Arc<Latencies>)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let latencies = Arc::new(Latencies::new());
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let ticker = {
        let (done, label) = (done.clone(), label.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "  [{label} connecting] {}/{n}",
                    done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut results: Vec<(usize, Result<T>)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let fut = open(i);
            let (lat, done) = (latencies.clone(), done.clone());
            async move {
                let t0 = Instant::now();
                let r = fut.await;
                if r.is_ok() {
                    lat.record_ns(
                        i,
                        u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    );
                }
                done.fetch_add(1, Ordering::Relaxed);
                (i, r)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    ticker.abort();
    results.sort_unstable_by_key(|(i, _)| *i);
    let mut conns = Vec::with_capacity(n);
    let mut failures = 0usize;
    let mut first = None;
    for (_, r) in results {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                failures += 1;
                first.get_or_insert(e);
            }
        }
    }
    if failures > 0 {
        let e = first.map(|e| format!("{e:#}")).unwrap_or_default();
        eprintln!("  [{label}] {failures}/{n} connections failed, first: {e}");
        if failures * 100 > n {
            bail!("{failures} of {n} connections failed: {e}");
        }
    }
    eprintln!(
        "  [{label}] {} connections open in {:.1}s",
        conns.len(),
        start.elapsed().as_secs_f64()
    );
    Ok((conns, latencies))
}

/// Runs warm-up then the measuring window, switching `phase`; returns the
/// measured wall time.
pub async fn timed_phases(
    common: &Common,
    counters: &Arc<Counters>,
    phase: &Arc<Phase>,
) -> Duration {
    let ticker = tokio::spawn(progress(common.label(), counters.clone(), phase.clone()));
    tokio::time::sleep(common.warmup).await;
    phase.set(Phase::MEASURE);
    let start = Instant::now();
    let window = crate::load::Window::start(&common.watch_pids);
    tokio::time::sleep(common.duration).await;
    phase.set(Phase::STOP);
    let measured = start.elapsed();
    crate::load::record(window.finish());
    ticker.abort();
    measured
}

/// Gives tasks a moment to stop by themselves, then aborts the rest.
pub async fn finish_tasks(tasks: &mut JoinSet<()>) {
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { return },
            () = &mut deadline => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}
