//! `echo`: N connections send messages and wait for them to come back, in a
//! closed loop (one in flight per connection) or at a fixed total rate.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::task::JoinSet;

use crate::conn::{Connector, Target, Ws};
use crate::proto::{self, Proto};
use crate::run::{Common, connect_many, finish_tasks, timed_phases};
use crate::stats::{Counters, Latencies, Phase, RunResult, now_ns};

/// Options of the echo scenario.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Echo endpoint, e.g. ws://127.0.0.1:9001/echo
    #[arg(long)]
    pub url: String,
    /// Protocol: `plain` sends raw frames to an echo endpoint; `switchyard`
    /// and `rooms` subscribe each connection to its own channel and publish
    /// to it (a round trip through the pub/sub path and its policies).
    #[arg(long, value_enum, default_value = "plain")]
    pub proto: Proto,
    /// Number of connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,
    /// Message size in bytes (a JSON text frame).
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
    /// Total messages per second over all connections; 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// Runs the echo scenario.
pub async fn run(args: EchoArgs, common: &Common) -> Result<RunResult> {
    let mut target = Target::parse(&args.url)?;
    target.path = args.proto.path(&target.path);
    let connector = common.connector()?;
    let proto = args.proto;
    let (conns, _handshakes) = connect_many(
        &common.label(),
        args.connections,
        common.connect_concurrency,
        |i| open(connector.clone(), target.clone(), proto, i),
    )
    .await?;
    let opened = conns.len() as u64;

    let counters = Arc::new(Counters::default());
    let phase = Arc::new(Phase::new());
    let latencies = Arc::new(Latencies::new());
    let mut tasks = JoinSet::new();
    let per_conn_interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
    for (i, ws) in conns {
        let (c, p, l) = (counters.clone(), phase.clone(), latencies.clone());
        let size = args.size;
        match per_conn_interval {
            None => tasks.spawn(closed_loop(ws, proto, i, size, c, p, l)),
            Some(interval) => tasks.spawn(fixed_rate(ws, proto, i, size, interval, c, p, l)),
        };
    }
    let measured = timed_phases(common, &counters, &phase).await;
    finish_tasks(&mut tasks).await;

    let secs = measured.as_secs_f64();
    Ok(RunResult {
        scenario: "echo".into(),
        case: common.case_or(format!("echo-{}c-{}B", args.connections, args.size)),
        server: common.server.clone(),
        connections: opened,
        size: args.size as u64,
        duration_s: secs,
        rate_per_s: counters.measured.load(Ordering::Relaxed) as f64 / secs,
        sent_per_s: counters.sent.load(Ordering::Relaxed) as f64 / secs,
        latency: latencies.summary(),
        errors: counters.errors.load(Ordering::Relaxed),
        closed: counters.closed.load(Ordering::Relaxed),
        note: if args.rate > 0 {
            format!("fixed rate {}/s", args.rate)
        } else {
            "closed loop".into()
        },
        ..RunResult::default()
    })
}

async fn open(connector: Connector, target: Target, proto: Proto, i: usize) -> Result<(usize, Ws)> {
    let mut ws = connector.connect(&target, i).await?;
    proto.setup(&mut ws).await?;
    proto.subscribe(&mut ws, &own_channel(i)).await?;
    Ok((i, ws))
}

fn own_channel(i: usize) -> String {
    format!("echo:{i}")
}

/// Builds the next message: raw data for `plain`, else a publish command
/// to the connection's own channel.
fn message(
    proto: Proto,
    out: &mut Vec<u8>,
    data: &mut Vec<u8>,
    n: u64,
    channel: &str,
    t: u64,
    size: usize,
) {
    if proto == Proto::Plain {
        proto::data_value(out, t, size);
    } else {
        proto::data_value(data, t, size);
        proto.publish_frame(out, n, channel, data);
    }
}

async fn closed_loop(
    mut ws: Ws,
    proto: Proto,
    shard: usize,
    size: usize,
    counters: Arc<Counters>,
    phase: Arc<Phase>,
    latencies: Arc<Latencies>,
) {
    let mut buf = Vec::with_capacity(size + 128);
    let mut data = Vec::with_capacity(size + 32);
    let channel = own_channel(shard);
    let mut n = 0;
    'send: while !phase.stopping() {
        let sent_at = now_ns();
        n += 1;
        message(proto, &mut buf, &mut data, n, &channel, sent_at, size);
        if let Err(e) = ws
            .write_frame(Frame::text(Payload::BorrowedMut(&mut buf)))
            .await
        {
            counters.error(format!("write: {e}"));
            return;
        }
        let measuring = phase.measuring();
        if measuring {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            match ws.read_frame().await {
                Ok(frame) if matches!(frame.opcode, OpCode::Text | OpCode::Binary) => {
                    if proto == Proto::Plain || proto::timestamp(&frame.payload).is_some() {
                        break;
                    }
                    if proto.is_error(&frame.payload) {
                        // The publish was refused: nothing will come back.
                        counters.error(String::from_utf8_lossy(&frame.payload));
                        continue 'send;
                    }
                }
                Ok(frame) if frame.opcode == OpCode::Close => {
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!("closed: {}", proto::close_reason(&frame.payload)));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    counters.error(format!("read: {e}"));
                    return;
                }
            }
        }
        counters.total.fetch_add(1, Ordering::Relaxed);
        if measuring && phase.measuring() {
            counters.measured.fetch_add(1, Ordering::Relaxed);
            latencies.record_ns(shard, now_ns().saturating_sub(sent_at));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn fixed_rate(
    ws: Ws,
    proto: Proto,
    shard: usize,
    size: usize,
    interval: Duration,
    counters: Arc<Counters>,
    phase: Arc<Phase>,
    latencies: Arc<Latencies>,
) {
    let (mut rx, mut tx) = ws.split(tokio::io::split);
    let reader = {
        let (counters, phase) = (counters.clone(), phase.clone());
        tokio::spawn(async move {
            let mut ignore = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
            loop {
                match rx.read_frame(&mut ignore).await {
                    Ok(frame) if matches!(frame.opcode, OpCode::Text | OpCode::Binary) => {
                        let Some(t) = proto::timestamp(&frame.payload) else {
                            continue;
                        };
                        counters.total.fetch_add(1, Ordering::Relaxed);
                        if phase.measuring() {
                            counters.measured.fetch_add(1, Ordering::Relaxed);
                            latencies.record_ns(shard, now_ns().saturating_sub(t));
                        }
                    }
                    Ok(frame) if frame.opcode == OpCode::Close => {
                        counters.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    };
    // Spread the connections' send times over one interval.
    let offset = interval.mul_f64((shard % 1000) as f64 / 1000.0);
    let start = Instant::now() + offset;
    let mut buf = Vec::with_capacity(size + 128);
    let mut data = Vec::with_capacity(size + 32);
    let channel = own_channel(shard);
    let mut n: u32 = 0;
    while !phase.stopping() {
        let due = start + interval * n;
        tokio::time::sleep_until(due.into()).await;
        // The message carries its intended send time, so a late send counts
        // its lateness as latency (no coordinated omission).
        let intended = now_ns().saturating_sub(
            u64::try_from(Instant::now().saturating_duration_since(due).as_nanos()).unwrap_or(0),
        );
        message(
            proto,
            &mut buf,
            &mut data,
            u64::from(n) + 1,
            &channel,
            intended,
            size,
        );
        if tx
            .write_frame(Frame::text(Payload::BorrowedMut(&mut buf)))
            .await
            .is_err()
        {
            break;
        }
        if phase.measuring() {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        n = n.wrapping_add(1);
    }
    // Let in-flight replies arrive before the reader is dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.abort();
}
