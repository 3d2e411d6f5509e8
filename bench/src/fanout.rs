//! `fanout` and `cross-node`: publishers send to channels, subscribers count
//! deliveries and publish-to-deliver latency. With several subscriber URLs
//! the subscribers are spread over them (publish on node A, receive on B, C).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::conn::{Target, Ws};
use crate::proto::{self, Proto};
use crate::run::{Common, connect_many, finish_tasks, timed_phases};
use crate::stats::{Counters, Latencies, Phase, RunResult, now_ns};

/// Options of the fan-out scenarios.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Where publishers connect (repeatable; publishers round-robin).
    #[arg(long = "pub-url", required = true)]
    pub pub_urls: Vec<String>,
    /// Where subscribers connect (repeatable; default: the publish URLs).
    #[arg(long = "sub-url")]
    pub sub_urls: Vec<String>,
    /// Protocol adapter.
    #[arg(long, value_enum, default_value = "switchyard")]
    pub proto: Proto,
    /// Subscriber connections in all.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Channels; subscriber i listens to channel i % channels.
    #[arg(long, short = 'm', default_value_t = 1)]
    pub channels: usize,
    /// Publisher connections; publisher j publishes to channels j, j+P, ...
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Size of the published data value in bytes.
    #[arg(long, short = 's', default_value_t = 100)]
    pub size: usize,
    /// Published messages per second in all; 0 = closed loop (as fast as
    /// deliveries keep up, `window` messages in flight per publisher).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Closed loop: messages in flight per publisher.
    #[arg(long, default_value_t = 4)]
    pub window: u64,
    /// Channel name prefix.
    #[arg(long, default_value = "bench")]
    pub channel_prefix: String,
}

/// Shared state of the closed-loop flow control: expected vs counted deliveries.
struct Flow {
    expected: AtomicU64,
    budget: u64,
    waiting: AtomicBool,
    notify: Notify,
    stalls: AtomicU64,
}

/// Runs the fan-out scenario (`scenario` = "fanout" or "cross-node").
pub async fn run(args: FanoutArgs, common: &Common, scenario: &str) -> Result<RunResult> {
    let parse = |urls: &[String]| -> Result<Vec<Target>> {
        urls.iter()
            .map(|u| {
                let mut t = Target::parse(u)?;
                t.path = args.proto.path(&t.path);
                Ok(t)
            })
            .collect()
    };
    let pub_targets = parse(&args.pub_urls)?;
    let sub_targets = if args.sub_urls.is_empty() {
        pub_targets.clone()
    } else {
        parse(&args.sub_urls)?
    };
    if args.channels == 0 || args.publishers == 0 {
        bail!("channels and publishers must be at least 1");
    }
    let channel = |c: usize| format!("{}:{c}", args.channel_prefix);
    let connector = common.connector()?;
    let proto = args.proto;

    let subs_per_channel: Vec<u64> = (0..args.channels)
        .map(|c| ((args.subscribers + args.channels - 1 - c) / args.channels) as u64)
        .collect();
    let (subs, _) = connect_many(
        &common.label(),
        args.subscribers,
        common.connect_concurrency,
        |i| {
            let (connector, target, ch) = (
                connector.clone(),
                sub_targets[i % sub_targets.len()].clone(),
                channel(i % args.channels),
            );
            async move {
                let mut ws = connector.connect(&target, i).await?;
                proto.setup(&mut ws).await?;
                proto.subscribe(&mut ws, &ch).await?;
                Ok(ws)
            }
        },
    )
    .await?;
    let (pubs, _) = connect_many(&common.label(), args.publishers, 8, |i| {
        let (connector, target) = (
            connector.clone(),
            pub_targets[i % pub_targets.len()].clone(),
        );
        async move {
            let mut ws = connector.connect(&target, args.subscribers + i).await?;
            proto.setup(&mut ws).await?;
            Ok(ws)
        }
    })
    .await?;
    // Let subscriptions settle everywhere (cross-node: through the broker).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let counters = Arc::new(Counters::default());
    let phase = Arc::new(Phase::new());
    let latencies = Arc::new(Latencies::new());
    let subs_avg = (args.subscribers as u64 / args.channels as u64).max(1);
    let budget = args.window * subs_avg * args.publishers as u64;
    let flow = Arc::new(Flow {
        expected: AtomicU64::new(0),
        budget,
        waiting: AtomicBool::new(false),
        notify: Notify::new(),
        stalls: AtomicU64::new(0),
    });
    let mut tasks = JoinSet::new();
    for (i, ws) in subs.into_iter().enumerate() {
        tasks.spawn(subscriber(
            ws,
            i,
            proto,
            counters.clone(),
            phase.clone(),
            latencies.clone(),
            flow.clone(),
        ));
    }
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.publishers as f64 / args.rate as f64));
    for (j, ws) in pubs.into_iter().enumerate() {
        let channels: Vec<(String, u64)> = (j..args.channels)
            .step_by(args.publishers)
            .map(|c| (channel(c), subs_per_channel[c]))
            .collect();
        let p = Publisher {
            proto,
            channels,
            size: args.size,
            interval,
            counters: counters.clone(),
            phase: phase.clone(),
            flow: flow.clone(),
        };
        tasks.spawn(p.run(ws));
    }
    let measured = timed_phases(common, &counters, &phase).await;
    flow.notify.notify_waiters();
    finish_tasks(&mut tasks).await;

    let secs = measured.as_secs_f64();
    let mut note = if args.rate > 0 {
        format!("{} ch, fixed rate {}/s", args.channels, args.rate)
    } else {
        format!("{} ch, closed loop window {}", args.channels, args.window)
    };
    let stalls = flow.stalls.load(Ordering::Relaxed);
    if stalls > 0 {
        note.push_str(&format!(", {stalls} flow stalls (lost deliveries)"));
    }
    Ok(RunResult {
        scenario: scenario.into(),
        case: common.case_or(format!(
            "{scenario}-{}s-{}ch-{}B",
            args.subscribers, args.channels, args.size
        )),
        server: common.server.clone(),
        connections: args.subscribers as u64,
        size: args.size as u64,
        duration_s: secs,
        rate_per_s: counters.measured.load(Ordering::Relaxed) as f64 / secs,
        sent_per_s: counters.sent.load(Ordering::Relaxed) as f64 / secs,
        latency: latencies.summary(),
        errors: counters.errors.load(Ordering::Relaxed),
        closed: counters.closed.load(Ordering::Relaxed),
        note,
        ..RunResult::default()
    })
}

async fn subscriber(
    mut ws: Ws,
    shard: usize,
    proto: Proto,
    counters: Arc<Counters>,
    phase: Arc<Phase>,
    latencies: Arc<Latencies>,
    flow: Arc<Flow>,
) {
    loop {
        let reply = match ws.read_frame().await {
            Ok(frame) if matches!(frame.opcode, OpCode::Text | OpCode::Binary) => {
                if let Some(t) = proto::timestamp(&frame.payload) {
                    let total = counters.total.fetch_add(1, Ordering::Relaxed) + 1;
                    if phase.measuring() {
                        counters.measured.fetch_add(1, Ordering::Relaxed);
                        latencies.record_ns(shard, now_ns().saturating_sub(t));
                    }
                    if flow.waiting.load(Ordering::Relaxed)
                        && flow.expected.load(Ordering::Relaxed).saturating_sub(total) < flow.budget
                    {
                        flow.waiting.store(false, Ordering::Relaxed);
                        flow.notify.notify_one();
                    }
                    None
                } else {
                    proto.reply_to(&frame.payload)
                }
            }
            Ok(frame) if frame.opcode == OpCode::Close => {
                if !phase.stopping() {
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!(
                        "subscriber closed: {}",
                        proto::close_reason(&frame.payload)
                    ));
                }
                return;
            }
            Ok(_) => None,
            Err(e) => {
                if !phase.stopping() {
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!("subscriber read: {e}"));
                }
                return;
            }
        };
        if let Some(reply) = reply {
            let _ = ws.write_frame(Frame::text(Payload::Borrowed(reply))).await;
        }
    }
}

struct Publisher {
    proto: Proto,
    channels: Vec<(String, u64)>,
    size: usize,
    interval: Option<Duration>,
    counters: Arc<Counters>,
    phase: Arc<Phase>,
    flow: Arc<Flow>,
}

impl Publisher {
    async fn run(self, ws: Ws) {
        if self.channels.is_empty() {
            return;
        }
        let (mut rx, mut tx) = ws.split(tokio::io::split);
        let reader = {
            let (counters, proto) = (self.counters.clone(), self.proto);
            tokio::spawn(async move {
                let mut ignore = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
                loop {
                    match rx.read_frame(&mut ignore).await {
                        Ok(f) if f.opcode == OpCode::Text => {
                            if proto.is_error(&f.payload) {
                                counters.error(format!(
                                    "publish error: {}",
                                    String::from_utf8_lossy(&f.payload)
                                ));
                            }
                        }
                        Ok(f) if f.opcode == OpCode::Close => {
                            counters.closed.fetch_add(1, Ordering::Relaxed);
                            counters.error(format!(
                                "publisher closed: {}",
                                proto::close_reason(&f.payload)
                            ));
                            return;
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
        };
        let mut data = Vec::with_capacity(self.size + 32);
        let mut frame = Vec::with_capacity(self.size + 128);
        let start = Instant::now();
        let mut n: u64 = 0;
        while !self.phase.stopping() {
            let (channel, subs) = &self.channels[(n % self.channels.len() as u64) as usize];
            let t = match self.interval {
                Some(interval) => {
                    let due = start + interval.mul_f64(n as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let late = Instant::now().saturating_duration_since(due);
                    now_ns().saturating_sub(u64::try_from(late.as_nanos()).unwrap_or(0))
                }
                None => {
                    self.wait_for_window().await;
                    now_ns()
                }
            };
            if self.phase.stopping() {
                break;
            }
            proto::data_value(&mut data, t, self.size);
            self.proto.publish_frame(&mut frame, n + 1, channel, &data);
            self.flow.expected.fetch_add(*subs, Ordering::Relaxed);
            if let Err(e) = tx
                .write_frame(Frame::text(Payload::BorrowedMut(&mut frame)))
                .await
            {
                self.counters.error(format!("publish write: {e}"));
                break;
            }
            if self.phase.measuring() {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        reader.abort();
    }

    /// Closed loop: waits until fewer than `budget` deliveries are
    /// outstanding. After a second without progress the outstanding count is
    /// forgiven (deliveries were lost, e.g. a subscriber was closed).
    async fn wait_for_window(&self) {
        let mut stalled_since: Option<Instant> = None;
        loop {
            let delivered = self.counters.total.load(Ordering::Relaxed);
            let expected = self.flow.expected.load(Ordering::Relaxed);
            if expected.saturating_sub(delivered) < self.flow.budget || self.phase.stopping() {
                self.flow.waiting.store(false, Ordering::Relaxed);
                return;
            }
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                self.flow.stalls.fetch_add(1, Ordering::Relaxed);
                self.flow.expected.store(delivered, Ordering::Relaxed);
                continue;
            }
            let notified = self.flow.notify.notified();
            self.flow.waiting.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
    }
}
