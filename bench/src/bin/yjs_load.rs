//! Yjs room load client in Rust (bench/yjs.sh `--client rust`): the same
//! workload and the same JSON line as `bench/yjs/load.mjs`, cheap enough that
//! the server, not the client, is the limit on a 2-core machine.
//!
//! E editors in ONE room, each a real `yrs` document (its own random client
//! id) on its own WebSocket, speaking the y-websocket protocol as the npm
//! `WebsocketProvider` does: on open it sends sync step 1 (its state vector)
//! and its awareness once; it answers the server's step 1 with step 2 (the
//! diff), applies step 2 and updates (the editor is synced at the first
//! step 2) and sends each local insert as a sync update (0, 2). Hocuspocus
//! gets the same framing adapter as load.mjs: every message prefixed with
//! varString(room), an empty token first, SyncReply (4) read as Sync, the
//! SyncStatus acks (8) dropped.
//!
//! Workload: every insert is L (8) ASCII characters at a random position of
//! the editor's text "t", among its first `--span` (1024) characters:
//! yrs finds a text index by walking the items from the start (npm yjs has
//! search markers), so inserts anywhere in a 500 KB text would make the
//! client the bottleneck again; the servers integrate an update by item id
//! (origin lookup by id, not by index), so where it lands costs them the same.
//! Editor e's k-th insert is exactly the clocks [k*L, (k+1)*L) of e's client
//! id, so an observer knows which inserts it holds from its state vector
//! after each applied batch: that is arrival in the observer's document
//! (integrated, in its text), not an ack. An insert is *delivered* once
//! every other editor has it.
//!   --mode closed  each editor keeps --window inserts not yet delivered in
//!                  flight and makes the next as soon as one is delivered
//!   --mode rate    --rate inserts/s in total, round-robin over the editors,
//!                  at intended times (latency counts from the intended time)
//! Everything runs on one thread (tokio current-thread runtime; bench/yjs.sh
//! pins it to one core). Messages already read from a socket are applied in
//! one transaction per batch.
//!
//! Full and light editors (`--full-editors K`, default all): every insert
//! integrated by E-1 documents on one core makes the client the limit long
//! before a server. So only the first K editors are *full* (they integrate
//! every update, as above); the others are *light*: each owns a real yrs
//! document that integrates the initial sync (everything up to the start of
//! the run) and then holds only its own inserts, made with yrs as a full
//! editor makes them (valid updates whose origins the server holds, so the
//! server's work per update is the same; it never inserts at position 0 of
//! its own text once it has one, see `insert`); it observes the others' inserts by
//! reading only the struct headers of each incoming sync update / step 2
//! (client id, first clock, each struct's clock length: `update_ranges`),
//! with a per-sender watermark that, like a state vector, advances only over
//! contiguous clocks. Delivery and latency are counted the same way for both.
//!
//! After the window, inserts stop, in-flight ones drain (<= 5 s), then the
//! checks: every full editor's document is identical (state vector and
//! text) and its state vector is exactly every insert made (`converged`),
//! and every editor has every other editor's inserts (`observed_all`):
//! exit 3 when not, or on undelivered inserts, closes or updates refused
//! (by yrs, or unreadable for a light editor).
//!
//! Usage: yjs-load --url ws://127.0.0.1:PORT/yjs/default --room R
//!          [--kind switchyard|y-websocket|hocuspocus] [-n 50] [--mode closed|rate]
//!          [--window 1] [--rate 100] [--chars 8] [--span 1024] [--warmup 2] [--duration 10]
//!          [--full-editors K|all]
//!          [--server-pid PID] [--server NAME] [--case NAME] [--json FILE] [--target TEXT]
//! Prints one JSON line (stdout) and appends it to --json.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use rand::Rng as _;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use yrs::updates::decoder::Decode as _;
use yrs::updates::encoder::Encode as _;
use yrs::{
    Doc, GetString as _, ReadTxn as _, StateVector, Text as _, TextRef, Transact as _, Update,
};

type Ws = WebSocketStream<TcpStream>;

const MSG_SYNC: u64 = 0;
const MSG_AWARENESS: u64 = 1;
const MSG_AUTH: u64 = 2;
const MSG_QUERY_AWARENESS: u64 = 3;
const SYNC_STEP1: u64 = 0;
const SYNC_STEP2: u64 = 1;
const SYNC_UPDATE: u64 = 2;
// Hocuspocus message types.
const HP_SYNC_REPLY: u64 = 4;
const HP_SYNC_STATUS: u64 = 8;
const CONTENT: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
/// Most messages read from one socket before they are applied together.
const BATCH_MAX: usize = 256;

#[derive(Parser, Debug, Clone)]
#[command(name = "yjs-load", about = "Yjs room load client (bench/yjs.sh)")]
struct Opts {
    /// Server URL without the room: ws://127.0.0.1:PORT/yjs/default (Switchyard) or ws://127.0.0.1:PORT.
    #[arg(long)]
    url: String,
    #[arg(long)]
    room: String,
    /// switchyard | y-websocket | hocuspocus (hocuspocus gets its framing).
    #[arg(long, default_value = "switchyard")]
    kind: String,
    /// Editors in the room.
    #[arg(short = 'n', long = "editors", default_value_t = 50)]
    n: usize,
    /// closed | rate
    #[arg(long, default_value = "closed")]
    mode: String,
    /// Closed loop: inserts in flight per editor.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Rate mode: inserts/s over all editors.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Characters per insert.
    #[arg(long, default_value_t = 8)]
    chars: u32,
    /// Inserts land at a random position among the first SPAN characters (0: anywhere).
    #[arg(long, default_value_t = 1024)]
    span: u32,
    #[arg(long, default_value = "2s", value_parser = secs)]
    warmup: f64,
    #[arg(long, default_value = "10s", value_parser = secs)]
    duration: f64,
    /// The server's pid, for its CPU (/proc/PID/stat) and RSS.
    #[arg(long, default_value_t = 0)]
    server_pid: u32,
    /// Server name in the JSON line (default: --kind).
    #[arg(long, default_value = "")]
    server: String,
    /// Case name in the JSON line.
    #[arg(long = "case", default_value = "")]
    case_name: String,
    /// Append the JSON line to this file.
    #[arg(long, default_value = "")]
    json: String,
    #[arg(long, default_value = "")]
    target: String,
    /// Editors that are full yrs documents integrating every update (the
    /// first K; "all" or >= -n: every editor). The others are light: they
    /// make their inserts with yrs as full ones do but observe others'
    /// inserts from the struct headers of each incoming update.
    #[arg(long, default_value = "all", value_parser = full_editors)]
    full_editors: usize,
    /// Seconds for every editor to sync.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds for in-flight inserts to drain after the window.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

fn full_editors(s: &str) -> Result<usize, String> {
    if s == "all" {
        return Ok(usize::MAX);
    }
    s.parse::<usize>()
        .ok()
        .filter(|k| *k >= 1)
        .ok_or_else(|| format!("--full-editors: a count >= 1 or all, not {s}"))
}

fn secs(s: &str) -> Result<f64, String> {
    let (v, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else {
        (s, 1.0)
    };
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| x * scale)
        .ok_or_else(|| format!("not a duration: {s}"))
}

// ---------------------------------------------------------------- lib0 encoding
fn write_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_var(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn var(&mut self) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if shift > 63 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
            shift += 7;
        }
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        self.pos = end;
        Some(())
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.var()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let b = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(b)
    }
}

/// The single client id of a v1 update holding one client's structs, if so.
fn only_client(update: &[u8]) -> Option<u64> {
    let mut r = Reader::new(update);
    if r.var()? != 1 {
        return None;
    }
    r.var()?; // structs
    r.var()
}

/// Clock length of a string item: its UTF-16 length, as Yjs counts it.
fn utf16_len(b: &[u8]) -> Option<u64> {
    if b.is_ascii() {
        return Some(b.len() as u64);
    }
    Some(std::str::from_utf8(b).ok()?.encode_utf16().count() as u64)
}

/// Skips one lib0 `Any` value.
fn skip_any(r: &mut Reader<'_>, depth: u32) -> Option<()> {
    if depth > 64 {
        return None;
    }
    match r.u8()? {
        127 | 126 | 121 | 120 => {} // undefined, null, false, true
        125 => {
            r.var()?; // varint (same continuation bits)
        }
        124 => r.skip(4)?,       // float32
        123 | 122 => r.skip(8)?, // float64, bigint64
        119 | 116 => {
            r.bytes()?; // string, Uint8Array
        }
        118 => {
            // object: key, value pairs
            for _ in 0..r.var()? {
                r.bytes()?;
                skip_any(r, depth + 1)?;
            }
        }
        117 => {
            for _ in 0..r.var()? {
                skip_any(r, depth + 1)?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// The clock ranges a v1 update holds, appended to `out` as (client, start,
/// end exclusive): every client's structs from its first clock on, skips left
/// out. Only the struct headers are read (origins and parent skipped, each
/// content's clock length taken), nothing is integrated: this is how a light
/// editor observes which inserts reached it. The delete set is not read
/// (the workload deletes nothing). None for an update it cannot read (a
/// content type the workload never makes: JSON, sub-document, move).
fn update_ranges(update: &[u8], out: &mut Vec<(u64, u64, u64)>) -> Option<()> {
    let mut r = Reader::new(update);
    for _ in 0..r.var()? {
        let structs = r.var()?;
        let client = r.var()?;
        let mut clock = r.var()?;
        let mut start = clock;
        for _ in 0..structs {
            let info = r.u8()?;
            let len = match info & 0x1f {
                0 => r.var()?, // GC: deleted content, held all the same
                10 => {
                    // Skip: a gap in this update
                    let len = r.var()?;
                    if clock > start {
                        out.push((client, start, clock));
                    }
                    clock = clock.checked_add(len)?;
                    start = clock;
                    continue;
                }
                content => {
                    if info & 0x80 != 0 {
                        r.var()?; // origin
                        r.var()?;
                    }
                    if info & 0x40 != 0 {
                        r.var()?; // right origin
                        r.var()?;
                    }
                    if info & 0xc0 == 0 {
                        // parent: a root type's name or an item's id, then parentSub
                        if r.var()? == 1 {
                            r.bytes()?;
                        } else {
                            r.var()?;
                            r.var()?;
                        }
                        if info & 0x20 != 0 {
                            r.bytes()?;
                        }
                    }
                    match content {
                        1 => r.var()?, // deleted
                        3 | 5 => {
                            r.bytes()?; // binary, embed (JSON text)
                            1
                        }
                        4 => utf16_len(r.bytes()?)?, // string
                        6 => {
                            r.bytes()?; // format: key, value
                            r.bytes()?;
                            1
                        }
                        7 => {
                            match r.var()? {
                                3 => {
                                    r.bytes()?; // XmlElement: its name
                                }
                                0 | 1 | 2 | 4 | 6 => {}
                                _ => return None,
                            }
                            1
                        }
                        8 => {
                            let n = r.var()?;
                            for _ in 0..n {
                                skip_any(&mut r, 0)?;
                            }
                            n
                        }
                        _ => return None,
                    }
                }
            };
            clock = clock.checked_add(len)?;
        }
        if clock > start {
            out.push((client, start, clock));
        }
    }
    Some(())
}

// ---------------------------------------------------------------- histogram
fn hist() -> Histogram<u64> {
    // 1 µs … 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!({"count": 0, "p50_us": null, "p99_us": null, "max_us": null});
    }
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}

// ---------------------------------------------------------------- /proc
const CLK_TCK: f64 = 100.0;

/// (user, kernel) CPU seconds of a process.
fn proc_cpu(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let user: f64 = f.get(11)?.parse().ok()?;
    let sys: f64 = f.get(12)?.parse().ok()?;
    Some((user / CLK_TCK, sys / CLK_TCK))
}

/// Busy seconds summed over every core (`/proc/stat` `cpu` line: everything but
/// idle and iowait), as bench/src/load.rs counts them.
fn machine_busy() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let busy = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy as f64 / CLK_TCK)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------- state
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Connect,
    Run,
    Drain,
    Done,
}

struct Editor {
    doc: Doc,
    text: TextRef,
    client: u64,
    tx: mpsc::UnboundedSender<Message>,
    synced: bool,
    /// Full: integrates every update (its state vector says what it holds).
    /// Light: integrates only until the run starts (initial sync), then its
    /// document holds that state and its own inserts only, and it observes
    /// the others' inserts from the updates' struct headers (`observed`).
    full: bool,
    /// Light: per sender (editor index), the clock up to which every struct
    /// has reached this editor, as a state vector would say.
    observed: Vec<u64>,
    /// Light: ranges (sender, start, end) seen beyond `observed` (a gap
    /// before them), counted once the gap is filled.
    ahead: Vec<(usize, u64, u64)>,
}

impl Editor {
    /// A light editor saw the clocks [a, b) of sender `s`: true when what
    /// it holds of `s` grew.
    fn note(&mut self, s: usize, a: u64, b: u64) -> bool {
        let w0 = self.observed[s];
        if b <= w0 {
            return false;
        }
        if a > w0 {
            self.ahead.push((s, a, b));
            return false;
        }
        let mut w = b;
        while !self.ahead.is_empty() {
            let mut grew = false;
            self.ahead.retain(|&(t, a, b)| {
                if t != s || a > w {
                    return true;
                }
                if b > w {
                    w = b;
                    grew = true;
                }
                false
            });
            if !grew {
                break;
            }
        }
        self.observed[s] = w;
        true
    }
}

#[derive(Default)]
struct Events {
    closes: u64,
    errors: u64,
    close_codes: BTreeMap<String, u64>,
    denied: u64,
    bad_updates: u64,
}

struct Stats {
    phase: Phase,
    warm_end: Option<Instant>,
    t_end: Option<Instant>,
    /// Insert (intended) time of each op, per sender.
    ins: Vec<Vec<Instant>>,
    /// How many other editors hold each op, per sender.
    seen: Vec<Vec<u32>>,
    inflight: Vec<usize>,
    inflight_total: usize,
    /// Ops of each sender that each observer holds: have[observer][sender].
    have: Vec<Vec<u32>>,
    h_deliver: Histogram<u64>,
    h_all: Histogram<u64>,
    delivered_in_window: u64,
    deliveries_in_window: u64,
    inserted_in_window: u64,
    skipped: u64,
    events: Events,
}

impl Stats {
    fn in_window(&self, t: Instant) -> bool {
        matches!((self.warm_end, self.t_end), (Some(a), Some(b)) if t >= a && t < b)
    }
}

struct Bench {
    opts: Opts,
    hocuspocus: bool,
    /// varString(room): the Hocuspocus prefix.
    prefix: Vec<u8>,
    editors: Vec<RefCell<Editor>>,
    by_client: HashMap<u64, usize>,
    st: RefCell<Stats>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Bench {
    fn frame(&self, body: &[u8]) -> Message {
        let mut out = Vec::with_capacity(self.prefix.len() + body.len());
        if self.hocuspocus {
            out.extend_from_slice(&self.prefix);
        }
        out.extend_from_slice(body);
        Message::binary(out)
    }

    fn sync_message(&self, sub: u64, payload: &[u8]) -> Message {
        let mut b = Vec::with_capacity(payload.len() + 8);
        write_var(&mut b, MSG_SYNC);
        write_var(&mut b, sub);
        write_bytes(&mut b, payload);
        self.frame(&b)
    }

    /// Editor `s` inserts its next op; `at` is its (intended) insert time.
    fn insert(&self, s: usize, at: Instant) {
        let k = {
            let mut st = self.st.borrow_mut();
            let k = st.ins[s].len();
            st.ins[s].push(at);
            st.seen[s].push(0);
            st.inflight[s] += 1;
            st.inflight_total += 1;
            if st.in_window(at) {
                st.inserted_in_window += 1;
            }
            k
        };
        let ed = self.editors[s].borrow();
        let update = {
            let mut txn = ed.doc.transact_mut();
            let len = ed.text.len(&txn);
            let hi = if self.opts.span == 0 {
                len
            } else {
                len.min(self.opts.span)
            };
            // A light editor's text is its own inserts only: at its position 0
            // the insert would have no left origin, and a server integrating
            // it (Yjs conflict resolution) scans from the start of the room's
            // document up to the editor's first item, past everyone else's
            // items, work a full editor's insert at position 0 never causes.
            // So a light editor inserts after one of its own items (its first
            // insert, into an empty text, excepted); every insert it makes then
            // has its own item as left origin and the scan stops at the first
            // item of another editor, as for a full editor's insert.
            let lo = u32::from(!ed.full && hi > 0);
            let pos = rand::rng().random_range(lo..=hi);
            let c = CONTENT[(s + k) % CONTENT.len()];
            let chunk: String = std::iter::repeat_n(c as char, self.opts.chars as usize).collect();
            ed.text.insert(&mut txn, pos, &chunk);
            txn.encode_update_v1()
        };
        let _ = ed.tx.send(self.sync_message(SYNC_UPDATE, &update));
    }

    fn close(&self, code: String) {
        let mut st = self.st.borrow_mut();
        if st.phase == Phase::Done {
            return;
        }
        st.events.closes += 1;
        *st.events.close_codes.entry(code).or_default() += 1;
    }

    /// One batch of messages read from editor `i`'s socket.
    fn process(&self, i: usize, batch: &[Message]) {
        let mut updates: Vec<&[u8]> = Vec::new();
        let mut step1: Vec<&[u8]> = Vec::new();
        let mut got_step2 = false;
        let (my_client, light) = {
            let ed = self.editors[i].borrow();
            (
                ed.client,
                !ed.full && self.st.borrow().phase != Phase::Connect,
            )
        };
        for msg in batch {
            let data: &[u8] = match msg {
                Message::Binary(b) => b,
                Message::Close(f) => {
                    let code = f
                        .as_ref()
                        .map_or("none".to_string(), |f| u16::from(f.code).to_string());
                    self.close(code);
                    continue;
                }
                _ => continue,
            };
            let mut r = Reader::new(data);
            if self.hocuspocus && r.bytes().is_none() {
                continue;
            }
            let Some(mut kind) = r.var() else { continue };
            if self.hocuspocus {
                match kind {
                    HP_SYNC_STATUS => continue,
                    HP_SYNC_REPLY => kind = MSG_SYNC,
                    _ => {}
                }
            }
            match kind {
                MSG_SYNC => {
                    let (Some(sub), Some(payload)) = (r.var(), r.bytes()) else {
                        continue;
                    };
                    match sub {
                        SYNC_STEP1 => step1.push(payload),
                        SYNC_STEP2 => {
                            got_step2 = true;
                            updates.push(payload);
                        }
                        // Our own op relayed back is skipped: the document has it already.
                        SYNC_UPDATE if only_client(payload) != Some(my_client) => {
                            updates.push(payload)
                        }
                        _ => {}
                    }
                }
                // 0 = permission denied (y-websocket and Hocuspocus), 2 = authenticated (Hocuspocus).
                MSG_AUTH if r.var() == Some(0) => {
                    let mut st = self.st.borrow_mut();
                    st.events.denied += 1;
                    st.events.errors += 1;
                }
                MSG_AWARENESS | MSG_QUERY_AWARENESS => {}
                _ => {}
            }
        }
        if updates.is_empty() && step1.is_empty() && !got_step2 {
            return;
        }
        let mut replies = Vec::new();
        let mut bad = 0u64;
        // (sender, clock): what this editor now holds of each other editor.
        let held: Vec<(usize, u32)> = {
            let mut ed = self.editors[i].borrow_mut();
            if got_step2 {
                ed.synced = true;
            }
            let held = if updates.is_empty() {
                Vec::new()
            } else if light {
                let mut ranges = Vec::new();
                let mut grown = Vec::new();
                for u in &updates {
                    ranges.clear();
                    if update_ranges(u, &mut ranges).is_none() {
                        bad += 1;
                        continue;
                    }
                    for &(client, a, z) in &ranges {
                        let Some(&s) = self.by_client.get(&client) else {
                            continue;
                        };
                        if s != i && ed.note(s, a, z) {
                            grown.push(s);
                        }
                    }
                }
                grown.sort_unstable();
                grown.dedup();
                grown
                    .into_iter()
                    .map(|s| (s, u32::try_from(ed.observed[s]).unwrap_or(u32::MAX)))
                    .collect()
            } else {
                let mut txn = ed.doc.transact_mut();
                for u in &updates {
                    match Update::decode_v1(u) {
                        Ok(up) => {
                            if txn.apply_update(up).is_err() {
                                bad += 1;
                            }
                        }
                        Err(_) => bad += 1,
                    }
                }
                let sv = txn.state_vector();
                sv.iter()
                    .filter_map(|(client, clock)| {
                        let &s = self.by_client.get(&client.get())?;
                        (s != i).then_some((s, *clock))
                    })
                    .collect()
            };
            if !step1.is_empty() {
                let txn = ed.doc.transact();
                for p in &step1 {
                    let theirs = StateVector::decode_v1(p).unwrap_or_default();
                    replies.push(txn.encode_state_as_update_v1(&theirs));
                }
            }
            held
        };
        {
            let ed = self.editors[i].borrow();
            for diff in replies {
                let _ = ed.tx.send(self.sync_message(SYNC_STEP2, &diff));
            }
        }
        if held.is_empty() && bad == 0 {
            return;
        }
        let t = Instant::now();
        let e = self.editors.len() as u32;
        let l = self.opts.chars;
        let mut to_insert = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            st.events.bad_updates += bad;
            if st.phase == Phase::Connect {
                return;
            }
            let closed = self.opts.mode == "closed";
            for (s, clock) in held {
                let k1 = clock / l;
                let k0 = st.have[i][s];
                if k1 <= k0 {
                    continue;
                }
                st.have[i][s] = k1;
                let window_t = st.in_window(t);
                for k in k0 as usize..k1 as usize {
                    let Some(&at) = st.ins[s].get(k) else { break };
                    let at_in = st.in_window(at);
                    if at_in {
                        let _ = st.h_deliver.record(us(t.saturating_duration_since(at)));
                    }
                    if window_t {
                        st.deliveries_in_window += 1;
                    }
                    st.seen[s][k] += 1;
                    if st.seen[s][k] == e - 1 {
                        // Delivered to everyone.
                        st.inflight[s] -= 1;
                        st.inflight_total -= 1;
                        if window_t {
                            st.delivered_in_window += 1;
                        }
                        if at_in {
                            let _ = st.h_all.record(us(t.saturating_duration_since(at)));
                        }
                        if closed && st.phase == Phase::Run && st.t_end.is_some_and(|end| t < end) {
                            to_insert.push(s);
                        }
                    }
                }
            }
        }
        for s in to_insert {
            self.insert(s, Instant::now());
        }
    }
}

async fn reader(b: Rc<Bench>, i: usize, mut stream: SplitStream<Ws>) {
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH_MAX);
    loop {
        let first = stream.next().await;
        let mut ended = false;
        match first {
            Some(Ok(m)) => batch.push(m),
            Some(Err(_)) => {
                b.close("error".into());
                return;
            }
            None => {
                b.close("none".into());
                return;
            }
        }
        while batch.len() < BATCH_MAX {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                Some(Some(Err(_))) | Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let closed = batch.iter().any(|m| matches!(m, Message::Close(_)));
        b.process(i, &batch);
        batch.clear();
        if ended && !closed {
            b.close("error".into());
        }
        if ended || closed {
            return;
        }
    }
}

async fn writer(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(m) = rx.recv().await {
        let last = matches!(m, Message::Close(_));
        if sink.feed(m).await.is_err() {
            return;
        }
        let mut stop = last;
        while !stop {
            match rx.try_recv() {
                Ok(m) => {
                    stop = matches!(m, Message::Close(_));
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() || stop {
            return;
        }
    }
}

async fn connect(url: &str) -> Result<Ws> {
    let addr = url
        .strip_prefix("ws://")
        .context("only ws:// URLs (loopback)")?
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let tcp = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default();
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake {url}"))?;
    Ok(ws)
}

async fn wait_for(check: impl Fn() -> bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn emit(opts: &Opts, extra: serde_json::Value) -> Result<()> {
    let mut line = json!({
        "scenario": "yjs-room",
        "case": opts.case_name,
        "server": opts.server,
        "kind": opts.kind,
        "client": "rust",
        "editors": opts.n,
        "mode": opts.mode,
        "window": if opts.mode == "closed" { json!(opts.window) } else { json!(null) },
        "rate": if opts.mode == "rate" { json!(opts.rate) } else { json!(null) },
        "chars": opts.chars,
        "span": opts.span,
        "full_editors": opts.full_editors.min(opts.n),
    });
    let obj = line.as_object_mut().context("object")?;
    if let serde_json::Value::Object(m) = extra {
        obj.extend(m);
    }
    if !opts.target.is_empty() {
        obj.insert("target".into(), json!(opts.target));
    }
    let s = serde_json::to_string(&line)?;
    println!("{s}");
    if !opts.json.is_empty() {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.json)?;
        writeln!(f, "{s}")?;
    }
    Ok(())
}

async fn run(opts: Opts) -> Result<i32> {
    let e = opts.n;
    let full = opts.full_editors.min(e);
    let hocuspocus = opts.kind == "hocuspocus";
    let url = format!("{}/{}", opts.url.trim_end_matches('/'), opts.room);
    let mut prefix = Vec::new();
    write_bytes(&mut prefix, opts.room.as_bytes());

    // Connect every editor.
    let conns = futures_util::future::join_all((0..e).map(|_| connect(&url))).await;
    let mut editors = Vec::with_capacity(e);
    let mut halves = Vec::with_capacity(e);
    let mut by_client = HashMap::new();
    for (i, c) in conns.into_iter().enumerate() {
        let ws = c?;
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let client = doc.client_id().get();
        by_client.insert(client, i);
        editors.push(RefCell::new(Editor {
            doc,
            text,
            client,
            tx,
            synced: false,
            full: i < full,
            observed: if i < full { Vec::new() } else { vec![0; e] },
            ahead: Vec::new(),
        }));
        halves.push((sink, stream, rx));
    }
    if by_client.len() != e {
        bail!("two editors drew the same client id");
    }
    let st = Stats {
        phase: Phase::Connect,
        warm_end: None,
        t_end: None,
        ins: vec![Vec::new(); e],
        seen: vec![Vec::new(); e],
        inflight: vec![0; e],
        inflight_total: 0,
        have: vec![vec![0; e]; e],
        h_deliver: hist(),
        h_all: hist(),
        delivered_in_window: 0,
        deliveries_in_window: 0,
        inserted_in_window: 0,
        skipped: 0,
        events: Events::default(),
    };
    let b = Rc::new(Bench {
        opts: opts.clone(),
        hocuspocus,
        prefix,
        editors,
        by_client,
        st: RefCell::new(st),
    });
    let t0 = Instant::now();
    for (i, (sink, stream, rx)) in halves.into_iter().enumerate() {
        tokio::task::spawn_local(writer(sink, rx));
        tokio::task::spawn_local(reader(b.clone(), i, stream));
        // What the provider sends on open: (Hocuspocus: the token first) step 1, awareness.
        let ed = b.editors[i].borrow();
        if hocuspocus {
            let mut auth = Vec::new();
            write_var(&mut auth, MSG_AUTH);
            write_var(&mut auth, 0); // token
            write_bytes(&mut auth, b"");
            let _ = ed.tx.send(b.frame(&auth));
        }
        let sv = ed.doc.transact().state_vector().encode_v1();
        let _ = ed.tx.send(b.sync_message(SYNC_STEP1, &sv));
        let mut aw = Vec::new();
        write_var(&mut aw, 1);
        write_var(&mut aw, ed.client);
        write_var(&mut aw, 0); // clock
        write_bytes(&mut aw, b"{}");
        let mut m = Vec::new();
        write_var(&mut m, MSG_AWARENESS);
        write_bytes(&mut m, &aw);
        let _ = ed.tx.send(b.frame(&m));
    }

    let all_synced = {
        let b = b.clone();
        wait_for(
            move || b.editors.iter().all(|ed| ed.borrow().synced),
            Duration::from_secs_f64(opts.connect_timeout),
        )
        .await
    };
    let sync_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !all_synced {
        let n = b.editors.iter().filter(|ed| ed.borrow().synced).count();
        let st = b.st.borrow();
        emit(
            &opts,
            json!({
                "note": format!("n/a: only {n}/{e} editors synced within {} s", opts.connect_timeout),
                "closes": st.events.closes, "close_codes": st.events.close_codes,
            }),
        )?;
        return Ok(1);
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // awareness of every editor settles

    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(opts.warmup);
    let t_end = warm_end + Duration::from_secs_f64(opts.duration);
    {
        let mut st = b.st.borrow_mut();
        st.phase = Phase::Run;
        st.warm_end = Some(warm_end);
        st.t_end = Some(t_end);
    }
    // Window start measurements.
    let window0 = {
        let b = b.clone();
        let pid = opts.server_pid;
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(warm_end.into()).await;
            let _ = &b;
            (
                Instant::now(),
                machine_busy(),
                proc_cpu("self"),
                tokio::runtime::Handle::current()
                    .metrics()
                    .worker_total_busy_duration(0),
                if pid > 0 {
                    proc_cpu(&pid.to_string())
                } else {
                    None
                },
            )
        })
    };

    if opts.mode == "closed" {
        for _ in 0..opts.window {
            for s in 0..e {
                b.insert(s, Instant::now());
            }
        }
        tokio::time::sleep_until(t_end.into()).await;
    } else {
        let period = Duration::from_secs_f64(1.0 / opts.rate);
        let mut issued: u32 = 0;
        let max_inflight = 10_000;
        loop {
            let t = Instant::now();
            let stop_at = t.min(t_end);
            loop {
                let at = start + period * issued;
                if at > stop_at {
                    break;
                }
                let s = issued as usize % e;
                issued += 1;
                let full = b.st.borrow().inflight[s] >= max_inflight;
                if full {
                    b.st.borrow_mut().skipped += 1;
                    continue;
                }
                b.insert(s, at);
            }
            if t >= t_end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (win_start, machine0, cpu0, busy0, srv0) = window0.await?;
    let now = Instant::now();
    let window_s = now.duration_since(win_start).as_secs_f64();
    let machine1 = machine_busy();
    let cpu1 = proc_cpu("self");
    let busy1 = tokio::runtime::Handle::current()
        .metrics()
        .worker_total_busy_duration(0);
    let srv1 = if opts.server_pid > 0 {
        proc_cpu(&opts.server_pid.to_string())
    } else {
        None
    };
    b.st.borrow_mut().phase = Phase::Drain;
    {
        let b2 = b.clone();
        wait_for(
            move || b2.st.borrow().inflight_total == 0,
            Duration::from_secs_f64(opts.drain),
        )
        .await;
    }
    let undelivered = b.st.borrow().inflight_total;
    // Convergence: every full editor holds the same state vector and text,
    // and that state vector is exactly every insert made; every editor (light
    // ones from the struct headers) has observed every other editor's inserts.
    let (converged, observed_all) = {
        let b2 = b.clone();
        let same_sv = wait_for(
            move || {
                let sv0 = b2.editors[0].borrow().doc.transact().state_vector();
                b2.editors[..full]
                    .iter()
                    .all(|ed| ed.borrow().doc.transact().state_vector() == sv0)
            },
            Duration::from_secs(3),
        )
        .await;
        let same_text = same_sv && {
            let ed0 = b.editors[0].borrow();
            let text0 = ed0.text.get_string(&ed0.doc.transact());
            b.editors[..full].iter().all(|ed| {
                let ed = ed.borrow();
                ed.text.get_string(&ed.doc.transact()) == text0
            })
        };
        let st = b.st.borrow();
        let l = u64::from(opts.chars);
        let holds_all = {
            let sv0 = b.editors[0].borrow().doc.transact().state_vector();
            let sv0: HashMap<u64, u64> =
                sv0.iter().map(|(c, k)| (c.get(), u64::from(*k))).collect();
            let made = st.ins.iter().filter(|ins| !ins.is_empty()).count();
            sv0.len() == made
                && b.editors.iter().enumerate().all(|(s, ed)| {
                    let want = st.ins[s].len() as u64 * l;
                    sv0.get(&ed.borrow().client).copied().unwrap_or(0) == want
                })
        };
        let observed_all =
            (0..e).all(|i| (0..e).all(|s| s == i || st.have[i][s] as usize == st.ins[s].len()));
        (same_text && holds_all, observed_all)
    };
    let (doc_chars, doc_bytes) = {
        let ed0 = b.editors[0].borrow();
        let txn = ed0.doc.transact();
        (
            ed0.text.len(&txn),
            txn.encode_state_as_update_v1(&StateVector::default()).len(),
        )
    };

    let ok = {
        let st = b.st.borrow();
        let dur = opts.duration;
        let (srv_user, srv_sys) = match (srv0, srv1) {
            (Some(a), Some(z)) => (Some(z.0 - a.0), Some(z.1 - a.1)),
            _ => (None, None),
        };
        let srv_cpu = srv_user.zip(srv_sys).map(|(u, s)| u + s);
        let delivered = st.delivered_in_window as f64;
        let client_cpu = cpu0
            .zip(cpu1)
            .map(|(a, z)| 100.0 * ((z.0 - a.0) + (z.1 - a.1)) / window_s);
        // Other processes' CPU while the window measured (% of one core): the
        // machine's busy time minus this client's and the server's.
        let other_cpu = match (machine0, machine1, cpu0, cpu1) {
            (Some(m0), Some(m1), Some(c0), Some(c1)) => {
                let ours = (c1.0 - c0.0) + (c1.1 - c0.1) + srv_cpu.unwrap_or(0.0);
                Some((100.0 * ((m1 - m0) - ours) / window_s).max(0.0))
            }
            _ => None,
        };
        let client_busy = (busy1.saturating_sub(busy0)).as_secs_f64() / window_s;
        let per_update =
            |v: Option<f64>| v.filter(|_| delivered > 0.0).map(|v| v * 1e6 / delivered);
        let mut note = if opts.mode == "closed" {
            format!("closed loop, {} op(s) in flight per editor", opts.window)
        } else {
            format!("fixed rate {}/s", opts.rate)
        };
        if full < e {
            note.push_str(&format!(
                "; {full} full editors (integrate every update), {} light (observe update headers)",
                e - full
            ));
        }
        emit(
            &opts,
            json!({
                "duration_s": window_s,
                "warmup_s": opts.warmup,
                "sync_ms": sync_ms.round(),
                "updates_per_s": delivered / dur,
                "deliveries_per_s": st.deliveries_in_window as f64 / dur,
                "inserted_per_s": st.inserted_in_window as f64 / dur,
                "latency": summary(&st.h_deliver),
                "latency_all": summary(&st.h_all),
                "undelivered": undelivered,
                "skipped": st.skipped,
                "client_cpu_pct": client_cpu,
                "client_elu": client_busy,
            "other_cpu_pct": other_cpu,
                "server_cpu_pct": srv_cpu.map(|v| 100.0 * v / window_s),
                "server_cpu_user_pct": srv_user.map(|v| 100.0 * v / window_s),
                "server_cpu_us_per_update": per_update(srv_cpu),
                "server_user_us_per_update": per_update(srv_user),
                "server_rss_kib": if opts.server_pid > 0 { proc_rss_kib(opts.server_pid) } else { None },
                "closes": st.events.closes,
                "close_codes": st.events.close_codes,
                "connection_errors": st.events.errors,
                "bad_updates": st.events.bad_updates,
                "converged": converged,
                "observed_all": observed_all,
                "doc_chars": doc_chars,
                "doc_bytes": doc_bytes,
                "note": note,
            }),
        )?;
        converged
            && observed_all
            && undelivered == 0
            && st.events.closes == 0
            && st.events.bad_updates == 0
    };
    b.st.borrow_mut().phase = Phase::Done;
    for ed in &b.editors {
        let _ = ed.borrow().tx.send(Message::Close(None));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(if ok { 0 } else { 3 })
}

fn main() {
    let mut opts = Opts::parse();
    let fail = |msg: &str| -> ! {
        eprintln!("yjs-load: {msg}");
        std::process::exit(2)
    };
    if !["switchyard", "y-websocket", "hocuspocus"].contains(&opts.kind.as_str()) {
        fail(&format!("--kind {}?", opts.kind));
    }
    if !["closed", "rate"].contains(&opts.mode.as_str()) {
        fail(&format!("--mode {}?", opts.mode));
    }
    if opts.n < 2 {
        fail("-n must be at least 2");
    }
    if opts.chars == 0
        || (opts.mode == "closed" && opts.window == 0)
        || (opts.mode == "rate" && opts.rate <= 0.0)
    {
        fail("--chars, --window and --rate must be positive");
    }
    if opts.warmup + opts.duration > 15.0 {
        fail("--warmup + --duration must stay <= 15 s (a run <= 20 s)");
    }
    if opts.server.is_empty() {
        opts.server = opts.kind.clone();
    }
    if opts.case_name.is_empty() {
        opts.case_name = if opts.mode == "closed" {
            format!("yjs-{}e-w{}", opts.n, opts.window)
        } else {
            format!("yjs-{}e-rate{}", opts.n, opts.rate)
        };
    }
    // Hard stop, whatever happens.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(40));
        eprintln!("yjs-load: hard stop after 40 s");
        std::process::exit(4);
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    let code = match local.block_on(&rt, run(opts)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("yjs-load: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(update: &[u8]) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        update_ranges(update, &mut out).expect("readable");
        out.sort_unstable();
        out
    }

    #[test]
    fn update_ranges_reads_what_yrs_encodes() {
        let a = Doc::with_client_id(1);
        let b = Doc::with_client_id(2);
        let (ta, tb) = (a.get_or_insert_text("t"), b.get_or_insert_text("t"));
        let mut ups = Vec::new();
        for (k, s) in ["aaaaaaaa", "bbbbbbbb", "cccccccc"].iter().enumerate() {
            let mut txn = a.transact_mut();
            ta.insert(&mut txn, (k as u32 * 3) % (k as u32 * 8 + 1), s);
            ups.push(txn.encode_update_v1());
        }
        // One insert: exactly its op's clocks.
        assert_eq!(ranges(&ups[1]), vec![(1, 8, 16)]);
        // UTF-16 length, an insert into the middle of another client's item.
        {
            let mut txn = b.transact_mut();
            for u in &ups {
                txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
            }
        }
        let u = {
            let mut txn = b.transact_mut();
            tb.insert(&mut txn, 5, "é😀x");
            txn.encode_update_v1()
        };
        assert_eq!(ranges(&u), vec![(2, 0, 4)]);
        // A step 2 from nothing: every client from clock 0 (squashed items too).
        let diff = b
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(ranges(&diff), vec![(1, 0, 24), (2, 0, 4)]);
        // A diff against a state vector in the middle of an item.
        let mut sv = StateVector::default();
        sv.set_max(yrs::ClientID::new(1), 12);
        let diff = b.transact().encode_state_as_update_v1(&sv);
        assert_eq!(ranges(&diff), vec![(1, 12, 24), (2, 0, 4)]);
        // Merged updates with a gap: the skip is left out.
        let merged = yrs::merge_updates_v1([ups[0].as_slice(), ups[2].as_slice()]).unwrap();
        assert_eq!(ranges(&merged), vec![(1, 0, 8), (1, 16, 24)]);
    }

    #[test]
    fn light_watermark_waits_for_gaps() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let doc = Doc::new();
        let mut ed = Editor {
            text: doc.get_or_insert_text("t"),
            doc,
            client: 0,
            tx,
            synced: true,
            full: false,
            observed: vec![0; 2],
            ahead: Vec::new(),
        };
        assert!(!ed.note(1, 16, 24));
        assert!(!ed.note(1, 24, 32));
        assert_eq!(ed.observed[1], 0);
        assert!(ed.note(1, 0, 8));
        assert_eq!(ed.observed[1], 8);
        assert!(ed.note(1, 4, 16));
        assert_eq!(ed.observed[1], 32);
        assert!(ed.ahead.is_empty());
        assert!(!ed.note(1, 0, 32));
    }
}
