//! `idle`: open many connections, hold them, and read the server's memory
//! per connection and the handshake rate.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::task::JoinSet;

use crate::conn::{Target, Ws};
use crate::proto::Proto;
use crate::run::{Common, connect_many, finish_tasks};
use crate::stats::{Counters, RunResult, rss_kib};

/// Options of the idle scenario.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Endpoint to connect to.
    #[arg(long)]
    pub url: String,
    /// Protocol spoken on connect.
    #[arg(long, value_enum, default_value = "plain")]
    pub proto: Proto,
    /// Connections to open (at most what the open-file limit allows).
    #[arg(long, short = 'c', default_value_t = 10_000)]
    pub connections: usize,
    /// Server process whose VmRSS is read before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Time to let the server settle after the last handshake before the
    /// second RSS reading.
    #[arg(long, default_value = "2s", value_parser = crate::run::parse_duration)]
    pub settle: Duration,
}

/// Runs the idle scenario. The hold time is `--duration`.
pub async fn run(args: IdleArgs, common: &Common) -> Result<RunResult> {
    let mut target = Target::parse(&args.url)?;
    target.path = args.proto.path(&target.path);
    let limit = crate::stats::raise_nofile();
    let wanted = args.connections;
    let connections = if limit > 0 {
        wanted.min(
            usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(200),
        )
    } else {
        wanted
    };
    if connections < wanted {
        eprintln!("  open-file limit {limit}: opening {connections} instead of {wanted}");
    }
    let connector = common.connector()?;
    let proto = args.proto;
    let rss_before = args.server_pid.and_then(rss_kib);
    let start = Instant::now();
    let mut pids = common.watch_pids.clone();
    pids.extend(args.server_pid);
    let window = crate::load::Window::start(&pids);
    let (conns, handshakes) = connect_many(
        &common.label(),
        connections,
        common.connect_concurrency,
        |i| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let mut ws = connector.connect(&target, i).await?;
                proto.setup(&mut ws).await?;
                Ok(ws)
            }
        },
    )
    .await?;
    let open_secs = start.elapsed().as_secs_f64();
    crate::load::record(window.finish());
    let opened = conns.len() as u64;
    let counters = Arc::new(Counters::default());
    let mut tasks = JoinSet::new();
    for ws in conns {
        tasks.spawn(hold(ws, proto, counters.clone()));
    }
    tokio::time::sleep(args.settle).await;
    let rss_after = args.server_pid.and_then(rss_kib);
    eprintln!(
        "  [{}] holding {opened} connections for {:?}",
        common.label(),
        common.duration
    );
    tokio::time::sleep(common.duration).await;
    let closed = counters.closed.load(Ordering::Relaxed);
    finish_tasks(&mut tasks).await;

    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if opened > 0 => Some(a.saturating_sub(b) as f64 / opened as f64),
        _ => None,
    };
    Ok(RunResult {
        scenario: "idle".into(),
        case: common.case_or(format!("idle-{connections}c")),
        server: common.server.clone(),
        connections: opened,
        duration_s: common.duration.as_secs_f64(),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_conn_kib: per_conn,
        handshakes_per_s: Some(opened as f64 / open_secs),
        handshake: Some(handshakes.summary()),
        errors: counters.errors.load(Ordering::Relaxed),
        closed,
        note: format!("{} handshakes in flight", common.connect_concurrency),
        ..RunResult::default()
    })
}

async fn hold(mut ws: Ws, proto: Proto, counters: Arc<Counters>) {
    loop {
        let reply = match ws.read_frame().await {
            Ok(f) if f.opcode == OpCode::Text => proto.reply_to(&f.payload),
            Ok(f) if f.opcode == OpCode::Close => {
                counters.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => None,
            Err(_) => {
                counters.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Some(reply) = reply {
            let _ = ws.write_frame(Frame::text(Payload::Borrowed(reply))).await;
        }
    }
}
