//! Document channels (DESIGN §2b), Switchyard only:
//!
//! - `docs-patch`: N editors on ONE document channel, each subscribed and
//!   keeping `window` binary `PATCH`es in flight (closed loop on the JSON
//!   acks): acked patches/s, delivered `PATCH` frames/s, ack latency and
//!   patch-to-deliver latency. `--plain` runs the same shape through the
//!   plain publish pipeline (JSON publishes to a normal channel, acked, and
//!   delivered to every subscriber), for the patch/publish ratio.
//! - `docs-snapshot`: builds a large LWW document over HTTP, then times
//!   subscribe → `SNAPSHOT` received on fresh connections, one at a time.
//! - `docs-memory`: opens D small documents over HTTP and reads the server's
//!   RSS before and after: bytes per open document.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::conn::{Connector, Prefixed, Target, Ws};
use crate::http::Http;
use crate::proto::{self, Proto};
use crate::run::{Common, connect_many, finish_tasks, timed_phases};
use crate::statepatch::{self, PATCH, SNAPSHOT};
use crate::stats::{Counters, Latencies, Phase, RunResult, now_ns, rss_kib};

// ---------------------------------------------------------------- docs-patch

/// Options of `docs-patch`.
#[derive(Debug, clap::Args)]
pub struct PatchArgs {
    /// Switchyard WebSocket endpoint, e.g. ws://127.0.0.1:9001/ws
    #[arg(long)]
    pub url: String,
    /// Editors: connections that each subscribe to the channel and write to it.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub editors: usize,
    /// Patches (or publishes) in flight per editor; the next one is sent
    /// when an ack (or error) comes back.
    #[arg(long, short = 'w', default_value_t = 8)]
    pub window: usize,
    /// Size of the value each write sets (`{"t":<ns>,"p":"xx…"}`), bytes.
    /// Editor i writes `{"k<i>":<value>}`: the document keeps N keys.
    #[arg(long, short = 's', default_value_t = 32)]
    pub size: usize,
    /// Channel written to (default `doc:bench`, with --plain `plain:bench`).
    #[arg(long)]
    pub channel: Option<String>,
    /// Publish the same JSON to a normal channel instead of patching a
    /// document: the plain publish pipeline with the same N and window.
    #[arg(long)]
    pub plain: bool,
    /// Give every write a unique msgId (the dedupe path).
    #[arg(long)]
    pub msg_id: bool,
}

/// What the editors of one run share.
struct Shared {
    plain: bool,
    channel: String,
    size: usize,
    window: usize,
    msg_id: bool,
    /// Acks: total (all phases, for the progress line), measured, sent
    /// while measuring; errors and closes.
    counters: Arc<Counters>,
    phase: Arc<Phase>,
    ack_latency: Latencies,
    delivery_latency: Latencies,
    /// Deliveries (PATCH frames or messages) received while measuring.
    delivered: AtomicU64,
    /// Times an editor waited 5 s for a window slot and sent anyway.
    stalls: AtomicU64,
}

/// Runs `docs-patch`.
pub async fn run_patch(args: PatchArgs, common: &Common) -> Result<RunResult> {
    ensure!(
        args.editors > 0 && args.window > 0,
        "editors and window must be at least 1"
    );
    let target = Target::parse(&args.url)?;
    let channel = args.channel.clone().unwrap_or_else(|| {
        if args.plain {
            "plain:bench".into()
        } else {
            "doc:bench".into()
        }
    });
    let connector = common.connector()?;
    let (conns, _) = connect_many(
        &common.label(),
        args.editors,
        common.connect_concurrency,
        |i| {
            let (connector, target, channel) = (connector.clone(), target.clone(), channel.clone());
            let document = !args.plain;
            async move {
                let mut ws = connector.connect(&target, i).await?;
                Proto::Switchyard.setup(&mut ws).await?;
                subscribe(&mut ws, &channel, document).await?;
                Ok(ws)
            }
        },
    )
    .await?;
    let editors = conns.len() as u64;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let phase = Arc::new(Phase::new());
    let shared = Arc::new(Shared {
        plain: args.plain,
        channel: channel.clone(),
        size: args.size,
        window: args.window,
        msg_id: args.msg_id,
        counters: Arc::new(Counters::default()),
        phase: phase.clone(),
        ack_latency: Latencies::new(),
        delivery_latency: Latencies::new(),
        delivered: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
    });
    let mut tasks = JoinSet::new();
    for (i, ws) in conns.into_iter().enumerate() {
        tasks.spawn(editor(ws, i, shared.clone()));
    }
    // The progress line shows acks/s.
    let measured = timed_phases(common, &shared.counters, &phase).await;
    finish_tasks(&mut tasks).await;

    let secs = measured.as_secs_f64();
    let c = &shared.counters;
    let mut note = if args.plain {
        format!("publish to {channel}, closed loop window {}", args.window)
    } else {
        format!("patches to {channel}, closed loop window {}", args.window)
    };
    if args.msg_id {
        note.push_str(", msgId");
    }
    let stalls = shared.stalls.load(Ordering::Relaxed);
    if stalls > 0 {
        note.push_str(&format!(", {stalls} window stalls (lost acks)"));
    }
    Ok(RunResult {
        scenario: "docs-patch".into(),
        case: common.case_or(format!("docs-patch-{}e-w{}", args.editors, args.window)),
        server: common.server.clone(),
        connections: editors,
        size: write_value(0, args.size, 0).len() as u64,
        duration_s: secs,
        rate_per_s: c.measured.load(Ordering::Relaxed) as f64 / secs,
        sent_per_s: c.sent.load(Ordering::Relaxed) as f64 / secs,
        latency: shared.ack_latency.summary(),
        delivered_per_s: Some(shared.delivered.load(Ordering::Relaxed) as f64 / secs),
        delivery: Some(shared.delivery_latency.summary()),
        errors: c.errors.load(Ordering::Relaxed),
        closed: c.closed.load(Ordering::Relaxed),
        note,
        ..RunResult::default()
    })
}

/// The JSON a write carries: `{"k<i>":{"t":<ns>,"p":"xx…"}}`.
fn write_value(editor: usize, size: usize, t: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(size + 32);
    proto::data_value(&mut value, t, size);
    let mut out = format!("{{\"k{editor}\":").into_bytes();
    out.extend_from_slice(&value);
    out.push(b'}');
    out
}

/// Subscribes and waits for `subscribed` (and, on a document, its SNAPSHOT).
/// Returns the subscribe → SNAPSHOT time and the snapshot's delta size.
async fn subscribe(ws: &mut Ws, channel: &str, document: bool) -> Result<(Duration, usize)> {
    let t0 = Instant::now();
    let cmd = format!(r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#);
    proto::send_text(ws, cmd.as_bytes()).await?;
    let mut confirmed = false;
    loop {
        let (opcode, payload) = read_message(ws).await?;
        if opcode == OpCode::Text {
            if find(&payload, b"\"type\":\"error\"").is_some() {
                bail!("subscribe refused: {}", String::from_utf8_lossy(&payload));
            }
            if find(&payload, b"\"subscribed\"").is_none() {
                continue;
            }
            let is_doc = find(&payload, b"\"document\":true").is_some();
            match (document, is_doc) {
                (true, false) => bail!(
                    "{channel} is not a document channel (tenant config: documents = [\"doc:*\"])"
                ),
                (false, true) => {
                    bail!("{channel} is a document channel; --plain needs a normal one")
                }
                (false, false) => return Ok((t0.elapsed(), 0)),
                (true, true) => confirmed = true,
            }
        } else if confirmed {
            let p = statepatch::decode(&payload)?;
            if p.kind == SNAPSHOT {
                return Ok((t0.elapsed(), p.delta.len()));
            }
        }
    }
}

/// Reads one whole message (joining continuation frames), skipping control frames.
async fn read_message(ws: &mut Ws) -> Result<(OpCode, Vec<u8>)> {
    let mut first: Option<(OpCode, Vec<u8>)> = None;
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                let data = frame.payload.to_vec();
                if frame.fin {
                    return Ok((frame.opcode, data));
                }
                first = Some((frame.opcode, data));
            }
            OpCode::Continuation => {
                let Some((_, buf)) = first.as_mut() else {
                    bail!("continuation frame without a first frame");
                };
                buf.extend_from_slice(&frame.payload);
                if frame.fin {
                    return first.context("message");
                }
            }
            OpCode::Close => bail!("closed by server: {}", proto::close_reason(&frame.payload)),
            _ => {}
        }
    }
}

async fn editor(ws: Ws, i: usize, shared: Arc<Shared>) {
    let (rx, mut tx) = ws.split(tokio::io::split);
    let window = Arc::new(Semaphore::new(shared.window));
    let reader = tokio::spawn(read_loop(rx, i, shared.clone(), window.clone()));
    let mut frame = Vec::with_capacity(shared.size + 128);
    let mut last_id = 0u64;
    let mut n = 0u64;
    let phase = &shared.phase;
    while !phase.stopping() {
        match tokio::time::timeout(Duration::from_secs(5), window.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => break, // the reader closed the window: connection gone
            Err(_) => {
                shared.stalls.fetch_add(1, Ordering::Relaxed);
            }
        }
        if phase.stopping() {
            break;
        }
        // The command id is the send time (ns, strictly increasing per
        // connection): the ack's id gives the ack latency without a map.
        let t = now_ns();
        let id = t.max(last_id + 1);
        last_id = id;
        n += 1;
        let delta = write_value(i, shared.size, t);
        let msg_id = shared.msg_id.then(|| format!("e{i}-{n}"));
        let sent = if shared.plain {
            publish_frame(&mut frame, id, &shared.channel, msg_id.as_deref(), &delta);
            tx.write_frame(Frame::text(Payload::BorrowedMut(&mut frame)))
                .await
        } else {
            statepatch::encode_patch(&mut frame, &shared.channel, &delta, id, msg_id.as_deref());
            tx.write_frame(Frame::binary(Payload::BorrowedMut(&mut frame)))
                .await
        };
        if let Err(e) = sent {
            if !phase.stopping() {
                shared.counters.error(format!("write: {e}"));
            }
            break;
        }
        if phase.measuring() {
            shared.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Let in-flight acks arrive before the reader goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.abort();
}

fn publish_frame(out: &mut Vec<u8>, id: u64, channel: &str, msg_id: Option<&str>, data: &[u8]) {
    use std::io::Write as _;
    out.clear();
    let _ = write!(
        out,
        r#"{{"type":"publish","id":{id},"channel":"{channel}","#
    );
    if let Some(m) = msg_id {
        let _ = write!(out, r#""msgId":"{m}","#);
    }
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
}

type WsRead = fastwebsockets::WebSocketRead<tokio::io::ReadHalf<Prefixed<tokio::net::TcpStream>>>;

async fn read_loop(mut rx: WsRead, shard: usize, shared: Arc<Shared>, window: Arc<Semaphore>) {
    let mut ignore = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    let phase = &shared.phase;
    let c = &shared.counters;
    loop {
        let frame = match rx.read_frame(&mut ignore).await {
            Ok(f) => f,
            Err(e) => {
                if !phase.stopping() {
                    c.closed.fetch_add(1, Ordering::Relaxed);
                    c.error(format!("read: {e}"));
                }
                window.close();
                return;
            }
        };
        match frame.opcode {
            OpCode::Text => {
                let text = &frame.payload[..];
                if find(text, b"\"type\":\"ack\"").is_some() {
                    window.add_permits(1);
                    c.total.fetch_add(1, Ordering::Relaxed);
                    if phase.measuring() {
                        c.measured.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = number_after(text, b"\"id\":") {
                            shared
                                .ack_latency
                                .record_ns(shard, now_ns().saturating_sub(id));
                        }
                    }
                } else if find(text, b"\"type\":\"error\"").is_some() {
                    window.add_permits(1);
                    if !phase.stopping() {
                        c.error(String::from_utf8_lossy(text));
                    }
                } else if shared.plain && find(text, b"\"type\":\"message\"").is_some() {
                    delivered(&shared, shard, proto::timestamp(text));
                }
            }
            OpCode::Binary => match statepatch::decode(&frame.payload) {
                Ok(p) if p.kind == PATCH => delivered(&shared, shard, proto::timestamp(p.delta)),
                Ok(_) => {}
                Err(e) => c.error(format!("bad binary frame: {e}")),
            },
            OpCode::Close => {
                if !phase.stopping() {
                    c.closed.fetch_add(1, Ordering::Relaxed);
                    c.error(format!("closed: {}", proto::close_reason(&frame.payload)));
                }
                window.close();
                return;
            }
            _ => {}
        }
    }
}

fn delivered(shared: &Shared, shard: usize, t: Option<u64>) {
    if shared.phase.measuring() {
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = t {
            shared
                .delivery_latency
                .record_ns(shard, now_ns().saturating_sub(t));
        }
    }
}

// ---------------------------------------------------------------- docs-snapshot

/// Options of `docs-snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Switchyard WebSocket endpoint (the HTTP API is on the same address).
    #[arg(long)]
    pub url: String,
    /// Tenant API key for `POST /api/documents/…`.
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// The document channel.
    #[arg(long, default_value = "doc:snapshot")]
    pub channel: String,
    /// Keys in the document.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Bytes of each key's string value.
    #[arg(long, default_value_t = 1000)]
    pub value_size: usize,
    /// Keys per POST (keep a POST under limits.max_message_bytes, 64 KiB).
    #[arg(long, default_value_t = 40)]
    pub batch: usize,
    /// Fresh connections, one after another, each timed from subscribe to
    /// its SNAPSHOT (stops early when --duration is up).
    #[arg(long, short = 'k', default_value_t = 50)]
    pub samples: usize,
    /// Use the document as it is instead of writing it first.
    #[arg(long)]
    pub no_build: bool,
}

/// `{"delta":{"key00000":"xx…",…}}` for keys `from..to`.
fn build_body(from: usize, to: usize, value_size: usize) -> Vec<u8> {
    let value = "x".repeat(value_size);
    let mut s = String::with_capacity((to - from) * (value_size + 16) + 16);
    s.push_str("{\"delta\":{");
    for k in from..to {
        if k > from {
            s.push(',');
        }
        s.push_str(&format!("\"key{k:05}\":\"{value}\""));
    }
    s.push_str("}}");
    s.into_bytes()
}

fn api_path(channel: &str) -> String {
    format!("/api/documents/{channel}")
}

/// Runs `docs-snapshot`.
pub async fn run_snapshot(args: SnapshotArgs, common: &Common) -> Result<RunResult> {
    ensure!(args.batch > 0, "batch must be at least 1");
    let target = Target::parse(&args.url)?;
    let path = api_path(&args.channel);
    let mut http = Http::connect(&target, &args.api_key).await?;
    let mut note = String::new();
    if !args.no_build {
        let t0 = Instant::now();
        let mut from = 0;
        while from < args.keys {
            let to = (from + args.batch).min(args.keys);
            let r = http
                .request("POST", &path, &build_body(from, to, args.value_size))
                .await?;
            r.json()
                .with_context(|| format!("POST {path} (keys {from}..{to})"))?;
            from = to;
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "  [{}] wrote {} keys x {} B in {secs:.2}s",
            common.label(),
            args.keys,
            args.value_size
        );
        note.push_str(&format!(
            "{} keys x {} B written over HTTP in {secs:.2}s; ",
            args.keys, args.value_size
        ));
    }
    let doc = http.request("GET", &path, b"").await?.json()?;
    let version = doc["version"].as_u64().unwrap_or(0);
    let keys = doc["state"].as_object().map_or(0, serde_json::Map::len);
    eprintln!(
        "  [{}] {} at version {version}, {keys} keys",
        common.label(),
        args.channel
    );
    ensure!(version > 0, "{} is empty", args.channel);

    let connector = common.connector()?;
    let latencies = Latencies::new();
    let mut snapshot_bytes = 0usize;
    let mut errors = 0u64;
    // Two unmeasured rounds first (code paths, allocator, the replica).
    for i in 0..2 {
        let _ = snapshot_once(&connector, &target, &args.channel, i).await;
    }
    let start = Instant::now();
    let mut taken = 0usize;
    for i in 0..args.samples {
        if start.elapsed() > common.duration {
            eprintln!(
                "  [{}] --duration {:?} up after {taken} samples",
                common.label(),
                common.duration
            );
            break;
        }
        match snapshot_once(&connector, &target, &args.channel, i + 2).await {
            Ok((elapsed, bytes)) => {
                latencies.record_ns(i, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                snapshot_bytes = bytes;
                taken += 1;
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("first error: {e:#}");
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    note.push_str(&format!(
        "{keys} keys at version {version}, fresh connection per sample, one at a time"
    ));
    Ok(RunResult {
        scenario: "docs-snapshot".into(),
        case: common.case_or(format!(
            "docs-snapshot-{}KB",
            (args.keys * (args.value_size + 12)).div_ceil(1000)
        )),
        server: common.server.clone(),
        connections: taken as u64,
        size: snapshot_bytes as u64,
        duration_s: secs,
        rate_per_s: taken as f64 / secs,
        latency: latencies.summary(),
        errors,
        note,
        ..RunResult::default()
    })
}

/// Opens a connection (not timed), then times subscribe → SNAPSHOT.
async fn snapshot_once(
    connector: &Connector,
    target: &Target,
    channel: &str,
    index: usize,
) -> Result<(Duration, usize)> {
    let mut ws = connector.connect(target, index).await?;
    Proto::Switchyard.setup(&mut ws).await?;
    let r = subscribe(&mut ws, channel, true).await?;
    let _ = ws.write_frame(Frame::close(1000, b"")).await;
    Ok(r)
}

// ---------------------------------------------------------------- docs-memory

/// Options of `docs-memory`.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Switchyard WebSocket endpoint (the HTTP API is on the same address).
    #[arg(long)]
    pub url: String,
    /// Tenant API key for `POST /api/documents/…`.
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Documents to open (limits.documents_max_open must allow them).
    #[arg(long, short = 'D', default_value_t = 2000)]
    pub documents: usize,
    /// Small keys written to each document.
    #[arg(long, default_value_t = 4)]
    pub keys: usize,
    /// Channel prefix; document i is `<prefix><i>`.
    #[arg(long, default_value = "doc:mem:")]
    pub prefix: String,
    /// Server process whose VmRSS is read before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Time to let the server settle before the second RSS reading.
    #[arg(long, default_value = "2s", value_parser = crate::run::parse_duration)]
    pub settle: Duration,
    /// HTTP connections writing documents in parallel.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// `{"delta":{"k0":"v0-<doc>","k1":1,…}}`: a few small keys.
fn small_body(doc: usize, keys: usize) -> Vec<u8> {
    let mut s = String::from("{\"delta\":{");
    for k in 0..keys {
        if k > 0 {
            s.push(',');
        }
        if k % 2 == 0 {
            s.push_str(&format!("\"k{k}\":\"v{k}-{doc}\""));
        } else {
            s.push_str(&format!("\"k{k}\":{}", doc * 10 + k));
        }
    }
    s.push_str("}}");
    s.into_bytes()
}

/// Writes documents `<prefix><i>` for i in `ids`, over one connection.
async fn write_docs(
    target: Target,
    api_key: String,
    prefix: String,
    ids: Vec<usize>,
    keys: usize,
) -> Result<u64> {
    let mut http = Http::connect(&target, &api_key).await?;
    let mut errors = 0;
    for i in ids {
        let path = api_path(&format!("{prefix}{i}"));
        let r = http.request("POST", &path, &small_body(i, keys)).await?;
        if let Err(e) = r.json() {
            errors += 1;
            if errors == 1 {
                eprintln!("first error: POST {path}: {e:#}");
            }
        }
    }
    Ok(errors)
}

/// Runs `docs-memory`.
pub async fn run_memory(args: MemoryArgs, common: &Common) -> Result<RunResult> {
    let target = Target::parse(&args.url)?;
    let c = args.concurrency.max(1);
    // Warm-up documents, not counted: first-use allocations are not per document.
    write_docs(
        target.clone(),
        args.api_key.clone(),
        format!("{}warm-", args.prefix),
        (0..20).collect(),
        args.keys,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = args.server_pid.and_then(rss_kib);
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..c {
        let ids: Vec<usize> = (w..args.documents).step_by(c).collect();
        tasks.spawn(write_docs(
            target.clone(),
            args.api_key.clone(),
            args.prefix.clone(),
            ids,
            args.keys,
        ));
    }
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r??;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  [{}] {} documents written in {secs:.2}s, settling {:?}",
        common.label(),
        args.documents,
        args.settle
    );
    tokio::time::sleep(args.settle).await;
    let rss_after = args.server_pid.and_then(rss_kib);
    // Still open? (a replica evicted as idle would not count)
    let mut http = Http::connect(&target, &args.api_key).await?;
    let last = format!("{}{}", args.prefix, args.documents.saturating_sub(1));
    let doc = http.request("GET", &api_path(&last), b"").await?.json()?;
    ensure!(
        doc["version"].as_u64().unwrap_or(0) > 0,
        "{last} is empty after the run"
    );
    let opened = args.documents as u64 - errors.min(args.documents as u64);
    let per_doc = match (rss_before, rss_after) {
        (Some(b), Some(a)) if opened > 0 => {
            Some(a.saturating_sub(b) as f64 * 1024.0 / opened as f64)
        }
        _ => None,
    };
    Ok(RunResult {
        scenario: "docs-memory".into(),
        case: common.case_or(format!("docs-memory-{}d", args.documents)),
        server: common.server.clone(),
        connections: c as u64,
        documents: Some(opened),
        size: small_body(args.documents, args.keys).len() as u64,
        duration_s: secs,
        rate_per_s: opened as f64 / secs,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        bytes_per_doc: per_doc,
        errors,
        note: format!(
            "{} small keys each over HTTP, {c} connections; memory broker keeps its own copy",
            args.keys
        ),
        ..RunResult::default()
    })
}

// ---------------------------------------------------------------- helpers

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer right after `key` (e.g. `"id":`).
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(text, key)? + key.len();
    let digits = text[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&text[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_json_with_a_timestamp() {
        let w = write_value(17, 40, 12345);
        let v: serde_json::Value = serde_json::from_slice(&w).expect("JSON");
        assert_eq!(v["k17"]["t"], 12345);
        assert_eq!(proto::timestamp(&w), Some(12345));
        let mut out = Vec::new();
        publish_frame(&mut out, 9, "plain:bench", Some("e1-1"), &w);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            (v["id"].as_u64(), v["msgId"].as_str()),
            (Some(9), Some("e1-1"))
        );
        assert_eq!(v["data"]["k17"]["t"], 12345);
    }

    #[test]
    fn bodies_are_json_of_the_requested_size() {
        let b = build_body(0, 40, 1000);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("JSON");
        assert_eq!(v["delta"].as_object().map(serde_json::Map::len), Some(40));
        assert!(b.len() < 64 * 1024, "a POST stays under max_message_bytes");
        let s: serde_json::Value = serde_json::from_slice(&small_body(3, 4)).expect("JSON");
        assert_eq!(s["delta"]["k0"], "v0-3");
        assert_eq!(s["delta"]["k1"], 31);
    }

    #[test]
    fn ack_ids_parse() {
        let ack = br#"{"type":"ack","id":18446744073,"version":7}"#;
        assert_eq!(number_after(ack, b"\"id\":"), Some(18_446_744_073));
        assert_eq!(number_after(ack, b"\"seq\":"), None);
    }
}
