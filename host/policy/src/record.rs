//! Recording policy calls (`POST /admin/record`) for `switchyard replay`.
//!
//! Rules:
//! - **Off costs one relaxed atomic load per call** ([`RecordTap::begin`]);
//!   nothing else on the call path knows about recording.
//! - **Bounded**: a recording asks for at most `plugins.record_max_calls`
//!   calls and its file holds at most `plugins.record_max_bytes` bytes; the
//!   line that would go over ends the recording (`stopped: byte limit`).
//!   Lines go to a writer thread through a queue of [`QUEUE`] lines; a full
//!   queue drops the line (counted), never slowing the call.
//! - **Redacted as shadow records are** ([`crate::shadow`]): the connect
//!   token, credential headers and query parameters, cookies and every
//!   principal's claims are written as `"[redacted]"`. Payloads are kept whole
//!   (as JSON text) so a replay hands the plugin the same bytes.
//! - **What a call read** is written beside its inputs and decision: each
//!   clock value (host `now-ms`, `monotonic-ns`, WASI wall and monotonic
//!   clocks), the first read of each key-value key, each `take-tokens`
//!   answer. A replay answers from these ([`ReplayCtl`]).
//!
//! The format (JSON lines, version [`VERSION`]) is documented in
//! docs/plugins.md ("Record and replay").

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use switchyard_core::policy::{
    ConnectRequest, Denial, Principal, RateDecision, RateKey, Route, RouteTarget,
};

use crate::engine::hex;
use crate::shadow::{REDACTED, connect_input, principal_input};

/// `format` of a recording's header line.
pub const FORMAT: &str = "switchyard-record";
/// Version of the recording format this build writes and reads.
pub const VERSION: u64 = 1;
/// Lines waiting for a recording's writer thread at most.
pub const QUEUE: usize = 1024;
/// Finished recordings listed by `GET /admin/record`.
pub const KEEP_FINISHED: usize = 20;

/// A clock a plugin can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// `host.now-ms`.
    NowMs,
    /// `host.monotonic-ns` and `wasi:clocks/monotonic-clock.now` (one clock).
    MonotonicNs,
    /// `wasi:clocks/wall-clock.now`, nanoseconds since the epoch.
    WallNs,
}

impl Clock {
    const ALL: [Clock; 3] = [Clock::NowMs, Clock::MonotonicNs, Clock::WallNs];

    fn as_str(self) -> &'static str {
        match self {
            Clock::NowMs => "now_ms",
            Clock::MonotonicNs => "monotonic_ns",
            Clock::WallNs => "wall_ns",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one plugin call read from the host (filled while recording).
#[derive(Debug, Default)]
pub(crate) struct Capture {
    pub clock: Vec<(Clock, u64)>,
    pub wall_ns: Vec<u64>,
    /// The first read of each key, in order.
    pub kv: Vec<(String, Option<Vec<u8>>)>,
    pub tokens: Vec<Result<u64, u64>>,
    /// The call failed (trap, timeout, bad return, not made): `on_error` decided.
    pub error: Option<String>,
}

impl Capture {
    pub(crate) fn kv_read(&mut self, key: &str, value: Option<&[u8]>) {
        if !self.kv.iter().any(|(k, _)| k == key) {
            self.kv.push((key.to_owned(), value.map(<[u8]>::to_vec)));
        }
    }
}

/// The WASI wall clock of one store: real, captured while recording, or the
/// recording's values in a replay.
#[derive(Debug)]
pub(crate) struct WallClock {
    replay: Option<Arc<ReplayCtl>>,
    capturing: AtomicBool,
    reads: Mutex<Vec<u64>>,
}

impl WallClock {
    pub(crate) fn new(replay: Option<Arc<ReplayCtl>>) -> Self {
        Self {
            replay,
            capturing: AtomicBool::new(false),
            reads: Mutex::new(Vec::new()),
        }
    }

    fn now_ns(&self) -> u64 {
        if let Some(r) = &self.replay {
            return r.clock(Clock::WallNs);
        }
        let v = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        if self.capturing.load(Ordering::Relaxed) {
            self.reads.lock().push(v);
        }
        v
    }

    /// Turns capturing on or off; returns (and clears) what was captured.
    pub(crate) fn capture(&self, on: bool) -> Vec<u64> {
        self.capturing.store(on, Ordering::Relaxed);
        std::mem::take(&mut *self.reads.lock())
    }
}

/// [`WallClock`] as WASI's wall clock.
pub(crate) struct StoreWallClock(pub Arc<WallClock>);

impl wasmtime_wasi::HostWallClock for StoreWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.now_ns())
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn monotonic_ns() -> u64 {
    u64::try_from(crate::host_api::process_start().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Recording

/// Why a recording was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Bad request (unknown role, merge, calls out of range): HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such tenant, or the role is not served by a plugin: HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// That tenant role is being recorded already: HTTP 409.
    #[error("{0}")]
    Busy(String),
    /// The file could not be created: HTTP 500.
    #[error("{0}")]
    Io(String),
}

/// The recording switch of one tenant role, kept across reloads.
#[derive(Debug, Default)]
pub(crate) struct RecordTap {
    armed: AtomicBool,
    current: Mutex<Option<Arc<Session>>>,
}

impl RecordTap {
    /// A ticket for this call when a recording wants it: one relaxed load
    /// when nothing is being recorded.
    #[inline]
    pub(crate) fn begin(&self) -> Option<Ticket> {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        self.claim()
    }

    #[cold]
    fn claim(&self) -> Option<Ticket> {
        let mut cur = self.current.lock();
        let session = cur.clone()?;
        let seq = session.claimed.fetch_add(1, Ordering::Relaxed) + 1;
        if seq >= session.status.calls {
            self.armed.store(false, Ordering::Relaxed);
            cur.take();
        }
        drop(cur);
        (seq <= session.status.calls).then(|| Ticket {
            session,
            seq,
            start_ms: wall_ms(),
            start_mono: monotonic_ns(),
            capture: Capture::default(),
        })
    }

    /// Whether a recording is running.
    pub(crate) fn busy(&self) -> bool {
        self.current.lock().is_some()
    }

    fn stop(&self, session: &Arc<Session>) {
        let mut cur = self.current.lock();
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            self.armed.store(false, Ordering::Relaxed);
            cur.take();
        }
    }
}

/// What `GET /admin/record` shows of one recording.
#[derive(Debug)]
pub(crate) struct RecordStatus {
    pub tenant: String,
    pub role: &'static str,
    pub plugin: String,
    pub file: PathBuf,
    pub calls: u64,
    pub started_at: String,
    recorded: AtomicU64,
    dropped: AtomicU64,
    bytes: AtomicU64,
    state: Mutex<String>,
    ended: parking_lot::Condvar,
}

impl RecordStatus {
    pub(crate) fn json(&self) -> Value {
        json!({
            "tenant": self.tenant,
            "role": self.role,
            "plugin": self.plugin,
            "file": self.file.display().to_string(),
            "calls": self.calls,
            "recorded": self.recorded.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "started_at": self.started_at,
            "state": self.state.lock().clone(),
        })
    }

    /// Waits up to `limit` for the writer to end; the final state.
    #[cfg(test)]
    fn wait_ended(&self, limit: Duration) -> String {
        let mut st = self.state.lock();
        if *st == "recording" {
            let _ = self.ended.wait_for(&mut st, limit);
        }
        st.clone()
    }

    pub(crate) fn finished(&self) -> bool {
        *self.state.lock() != "recording"
    }
}

/// One running recording: the queue to its writer thread.
#[derive(Debug)]
struct Session {
    tx: SyncSender<Value>,
    claimed: AtomicU64,
    status: Arc<RecordStatus>,
}

/// What starting a recording needs.
pub(crate) struct RecordRequest<'a> {
    pub tenant: &'a str,
    pub role: &'static str,
    pub plugin: &'a str,
    pub plugin_hash: String,
    pub config_json: &'a str,
    pub on_error: &'static str,
    pub call_timeout: Duration,
    pub memory_limit: usize,
    pub calls: u64,
    pub dir: &'a Path,
    pub max_bytes: u64,
}

/// Starts recording the next `req.calls` calls through `tap` into a new
/// file under `req.dir`; the header line is written before this returns.
pub(crate) fn start(
    tap: &Arc<RecordTap>,
    req: &RecordRequest<'_>,
) -> Result<Arc<RecordStatus>, RecordError> {
    if tap.busy() {
        return Err(RecordError::Busy(format!(
            "tenant {}'s {} role is being recorded already",
            req.tenant, req.role
        )));
    }
    let now = SystemTime::now();
    let started_at = humantime::format_rfc3339_millis(now).to_string();
    let stamp = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    std::fs::create_dir_all(req.dir).map_err(|e| {
        RecordError::Io(format!(
            "cannot create plugins.record_dir {}: {e}",
            req.dir.display()
        ))
    })?;
    let name = format!(
        "{}-{}-{}{:03}.jsonl",
        safe(req.tenant),
        req.role,
        stamp.as_secs(),
        stamp.subsec_millis()
    );
    let path = req.dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| RecordError::Io(format!("cannot create {}: {e}", path.display())))?;
    let config: Value = serde_json::from_str(req.config_json).unwrap_or(Value::Null);
    let header = json!({
        "format": FORMAT,
        "version": VERSION,
        "tenant": req.tenant,
        "role": req.role,
        "plugin": req.plugin,
        "plugin_hash": req.plugin_hash,
        "config": config,
        "on_error": req.on_error,
        "call_timeout_ms": u64::try_from(req.call_timeout.as_millis()).unwrap_or(u64::MAX),
        "memory_limit": req.memory_limit,
        "calls": req.calls,
        "started_at": started_at,
        "redacted": ["token", "credential headers and query parameters", "cookies", "claims"],
    });
    let mut head = header.to_string();
    head.push('\n');
    let status = Arc::new(RecordStatus {
        tenant: req.tenant.to_owned(),
        role: req.role,
        plugin: req.plugin.to_owned(),
        file: path.clone(),
        calls: req.calls,
        started_at,
        recorded: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        bytes: AtomicU64::new(head.len() as u64),
        state: Mutex::new("recording".to_owned()),
        ended: parking_lot::Condvar::new(),
    });
    let mut out = std::io::BufWriter::new(file);
    out.write_all(head.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| RecordError::Io(format!("cannot write {}: {e}", path.display())))?;
    let (tx, rx) = sync_channel(QUEUE);
    let session = Arc::new(Session {
        tx,
        claimed: AtomicU64::new(0),
        status: status.clone(),
    });
    let weak = Arc::downgrade(tap);
    let w = Writer {
        out,
        status: status.clone(),
        max_bytes: req.max_bytes,
        tap: weak,
        session: Arc::downgrade(&session),
    };
    std::thread::Builder::new()
        .name(format!("record-{}-{}", req.tenant, req.role))
        .spawn(move || w.run(&rx))
        .map_err(|e| RecordError::Io(format!("cannot start the writer thread: {e}")))?;
    *tap.current.lock() = Some(session);
    tap.armed.store(true, Ordering::Relaxed);
    tracing::info!(tenant = req.tenant, role = req.role, plugin = req.plugin, calls = req.calls, file = %path.display(), "recording plugin calls");
    Ok(status)
}

struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    status: Arc<RecordStatus>,
    max_bytes: u64,
    tap: Weak<RecordTap>,
    session: Weak<Session>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Value>) {
        let mut stopped = None;
        while let Ok(line) = rx.recv() {
            if stopped.is_some() {
                continue;
            }
            let mut text = line.to_string();
            text.push('\n');
            let bytes = self.status.bytes.load(Ordering::Relaxed) + text.len() as u64;
            if bytes > self.max_bytes {
                stopped = Some(format!(
                    "stopped: byte limit (plugins.record_max_bytes = {})",
                    self.max_bytes
                ));
                self.stop_taking();
                continue;
            }
            if let Err(e) = self
                .out
                .write_all(text.as_bytes())
                .and_then(|()| self.out.flush())
            {
                stopped = Some(format!("stopped: cannot write: {e}"));
                self.stop_taking();
                continue;
            }
            self.status.bytes.store(bytes, Ordering::Relaxed);
            self.status.recorded.fetch_add(1, Ordering::Relaxed);
        }
        let state = stopped.unwrap_or_else(|| "done".to_owned());
        tracing::info!(
            tenant = %self.status.tenant,
            role = self.status.role,
            recorded = self.status.recorded.load(Ordering::Relaxed),
            file = %self.status.file.display(),
            "recording {state}"
        );
        *self.status.state.lock() = state;
        self.status.ended.notify_all();
    }

    fn stop_taking(&self) {
        if let (Some(tap), Some(s)) = (self.tap.upgrade(), self.session.upgrade()) {
            tap.stop(&s);
        }
    }
}

/// A claimed place in a recording: filled during the call, written by
/// [`Ticket::finish`].
pub(crate) struct Ticket {
    session: Arc<Session>,
    seq: u64,
    start_ms: u64,
    start_mono: u64,
    pub capture: Capture,
}

impl Ticket {
    /// Queues the call's line; a full queue drops it (counted).
    pub(crate) fn finish(self, plugin: &str, call: &str, input: Value, decision: Value) {
        let c = &self.capture;
        let mut clock = Map::new();
        for k in Clock::ALL {
            let mut v: Vec<u64> = c
                .clock
                .iter()
                .filter(|(kind, _)| *kind == k)
                .map(|(_, v)| *v)
                .collect();
            if k == Clock::WallNs {
                v.extend(&c.wall_ns);
            }
            if !v.is_empty() {
                clock.insert(k.as_str().to_owned(), json!(v));
            }
        }
        let kv: Vec<Value> =
            c.kv.iter()
                .map(|(k, v)| json!({"key": k, "value": v.as_deref().map(hex)}))
                .collect();
        let tokens: Vec<Value> = c
            .tokens
            .iter()
            .map(|t| match t {
                Ok(w) => json!({"ok": w}),
                Err(r) => json!({"err": r}),
            })
            .collect();
        let line = json!({
            "seq": self.seq,
            "plugin": plugin,
            "call": call,
            "start": {"now_ms": self.start_ms, "monotonic_ns": self.start_mono},
            "input": input,
            "decision": decision,
            "failed": c.error,
            "clock": clock,
            "kv": kv,
            "tokens": tokens,
        });
        match self.session.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.session.status.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Inputs and decisions as written

/// The call names (as in shadow records).
pub(crate) const AUTHENTICATE: &str = "authenticate";
pub(crate) const SUBSCRIBE: &str = "authorize-subscribe";
pub(crate) const PUBLISH: &str = "authorize-publish";
pub(crate) const ROUTE: &str = "route";
pub(crate) const CHECK: &str = "check";

pub(crate) fn connect_json(req: &ConnectRequest) -> Value {
    let mut v = connect_input(req);
    if let Some(m) = v.as_object_mut() {
        m.remove("call");
    }
    v
}

pub(crate) fn subscribe_json(who: &Principal, channel: &str) -> Value {
    json!({"principal": principal_input(who), "channel": channel})
}

pub(crate) fn publish_json(who: &Principal, channel: &str, data: &RawValue) -> Value {
    json!({"principal": principal_input(who), "channel": channel, "data": data.get()})
}

pub(crate) fn route_json(who: &Principal, client: &str, channel: &str, data: &RawValue) -> Value {
    json!({"principal": principal_input(who), "client": client, "channel": channel, "data": data.get()})
}

pub(crate) fn check_json(key: &RateKey<'_>, cost: u32) -> Value {
    json!({"principal": key.principal, "client": key.client, "channel": key.channel, "cost": cost})
}

fn denial_json(d: &Denial) -> Value {
    let (kind, message) = match d {
        Denial::Unauthorized(m) => ("unauthorized", m.as_str()),
        Denial::Forbidden(m) => ("forbidden", m.as_str()),
        Denial::RateLimited { retry_after_ms } => {
            return json!({"denied": {"kind": "rate_limited", "retry_after_ms": retry_after_ms}});
        }
        Denial::Failed(m) => ("failed", m.as_str()),
        Denial::Other(m) => ("other", m.as_str()),
    };
    json!({"denied": {"kind": kind, "message": message}})
}

pub(crate) fn principal_decision(r: &Result<Principal, Denial>) -> Value {
    match r {
        Ok(p) => json!({"principal": principal_input(p)}),
        Err(d) => denial_json(d),
    }
}

pub(crate) fn unit_decision(r: &Result<(), Denial>) -> Value {
    match r {
        Ok(()) => json!({"allowed": true}),
        Err(d) => denial_json(d),
    }
}

pub(crate) fn route_decision(r: &Result<Route, Denial>) -> Value {
    match r {
        Ok(Route::Direct) => json!({"route": "direct"}),
        Ok(Route::To(t)) => json!({"route": t
            .iter()
            .map(|t| json!({"channel": t.channel, "data": t.data.as_ref().map(|d| d.get())}))
            .collect::<Vec<_>>()}),
        Err(d) => denial_json(d),
    }
}

pub(crate) fn rate_decision(d: &RateDecision) -> Value {
    match d {
        RateDecision::Allow => json!({"rate": "allow"}),
        RateDecision::Reject { retry_after_ms } => {
            json!({"rate": "reject", "retry_after_ms": retry_after_ms})
        }
        RateDecision::Delay { ms } => json!({"rate": "delay", "ms": ms}),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Reading a recording

/// Why a recording cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct FormatError {
    /// 1-based line of the file.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The header line of a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Tenant recorded.
    pub tenant: String,
    /// Role recorded (`auth`, `router`, `rate_limit`).
    pub role: String,
    /// Serving plugin at the start.
    pub plugin: String,
    /// The plugin's config at the start, as JSON text.
    pub config_json: String,
    /// `on_error` of the policy (`deny` or `allow`).
    pub on_error: String,
    /// Call deadline in force (ms).
    pub call_timeout_ms: u64,
    /// Memory cap in force (bytes).
    pub memory_limit: usize,
}

/// One recorded call, decoded.
#[derive(Debug, Clone)]
pub(crate) struct RecordedCall {
    pub seq: u64,
    pub call: String,
    pub input: Value,
    pub decision: Value,
    pub start_ms: u64,
    pub start_mono: u64,
    pub clock: [Vec<u64>; 3],
    pub kv: Vec<(String, Option<Vec<u8>>)>,
    pub tokens: Vec<Result<u64, u64>>,
}

/// A whole recording.
#[derive(Debug, Clone)]
pub(crate) struct Recording {
    pub header: Header,
    pub calls: Vec<RecordedCall>,
}

fn bad(line: usize, message: impl Into<String>) -> FormatError {
    FormatError {
        line,
        message: message.into(),
    }
}

fn u64_at(v: &Value, k: &str, line: usize) -> Result<u64, FormatError> {
    v.get(k).and_then(Value::as_u64).ok_or_else(|| {
        bad(
            line,
            format!("`{k}` is missing or not a non-negative integer"),
        )
    })
}

fn str_at<'a>(v: &'a Value, k: &str, line: usize) -> Result<&'a str, FormatError> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(line, format!("`{k}` is missing or not a string")))
}

impl Recording {
    /// Parses a recording; every problem names its line.
    pub(crate) fn parse(text: &str) -> Result<Recording, FormatError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.trim().is_empty());
        let (n, first) = lines
            .next()
            .ok_or_else(|| bad(1, "empty file (expected a header line)"))?;
        let h: Value = serde_json::from_str(first)
            .map_err(|e| bad(n, format!("the header is not JSON: {e}")))?;
        if h.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(bad(
                n,
                format!("not a Switchyard recording (the header's `format` is not {FORMAT:?})"),
            ));
        }
        let version = u64_at(&h, "version", n)?;
        if version != VERSION {
            return Err(bad(
                n,
                format!("format version {version}; this build reads version {VERSION}"),
            ));
        }
        let role = str_at(&h, "role", n)?.to_owned();
        if !["auth", "router", "rate_limit"].contains(&role.as_str()) {
            return Err(bad(n, format!("unknown role {role:?}")));
        }
        let config = h.get("config").cloned().unwrap_or(Value::Null);
        let header = Header {
            tenant: str_at(&h, "tenant", n)?.to_owned(),
            role,
            plugin: str_at(&h, "plugin", n)?.to_owned(),
            config_json: if config.is_null() {
                "{}".to_owned()
            } else {
                config.to_string()
            },
            on_error: h
                .get("on_error")
                .and_then(Value::as_str)
                .unwrap_or("deny")
                .to_owned(),
            call_timeout_ms: h
                .get("call_timeout_ms")
                .and_then(Value::as_u64)
                .unwrap_or(10),
            memory_limit: h
                .get("memory_limit")
                .and_then(Value::as_u64)
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(64 << 20),
        };
        let mut calls = Vec::new();
        for (n, l) in lines {
            let v: Value = serde_json::from_str(l).map_err(|e| bad(n, format!("not JSON: {e}")))?;
            calls.push(RecordedCall::parse(&v, &header.role, n)?);
        }
        Ok(Recording { header, calls })
    }
}

impl RecordedCall {
    fn parse(v: &Value, role: &str, n: usize) -> Result<Self, FormatError> {
        let call = str_at(v, "call", n)?.to_owned();
        let fits = match role {
            "auth" => [AUTHENTICATE, SUBSCRIBE, PUBLISH].contains(&call.as_str()),
            "router" => call == ROUTE,
            _ => call == CHECK,
        };
        if !fits {
            return Err(bad(n, format!("call {call:?} is not a {role} call")));
        }
        let start = v.get("start").ok_or_else(|| bad(n, "`start` is missing"))?;
        let mut clock: [Vec<u64>; 3] = Default::default();
        if let Some(c) = v.get("clock").and_then(Value::as_object) {
            for k in Clock::ALL {
                if let Some(vals) = c.get(k.as_str()) {
                    clock[k.index()] = vals
                        .as_array()
                        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| {
                            bad(
                                n,
                                format!("`clock.{}` is not a list of integers", k.as_str()),
                            )
                        })?;
                }
            }
        }
        let mut kv = Vec::new();
        for e in v.get("kv").and_then(Value::as_array).into_iter().flatten() {
            let key = str_at(e, "key", n)?.to_owned();
            let value = match e.get("value") {
                None | Some(Value::Null) => None,
                Some(Value::String(h)) => Some(
                    unhex(h).ok_or_else(|| bad(n, format!("kv value of {key:?} is not hex")))?,
                ),
                Some(_) => return Err(bad(n, format!("kv value of {key:?} is not hex or null"))),
            };
            kv.push((key, value));
        }
        let mut tokens = Vec::new();
        for t in v
            .get("tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            tokens.push(
                match (
                    t.get("ok").and_then(Value::as_u64),
                    t.get("err").and_then(Value::as_u64),
                ) {
                    (Some(w), None) => Ok(w),
                    (None, Some(r)) => Err(r),
                    _ => return Err(bad(n, "a `tokens` entry is not {\"ok\":n} or {\"err\":n}")),
                },
            );
        }
        let rc = RecordedCall {
            seq: u64_at(v, "seq", n)?,
            input: v
                .get("input")
                .cloned()
                .ok_or_else(|| bad(n, "`input` is missing"))?,
            decision: v
                .get("decision")
                .cloned()
                .ok_or_else(|| bad(n, "`decision` is missing"))?,
            start_ms: u64_at(start, "now_ms", n)?,
            start_mono: u64_at(start, "monotonic_ns", n)?,
            call,
            clock,
            kv,
            tokens,
        };
        // Inputs and decision must decode now, so a replay never fails halfway.
        rc.check(n)?;
        Ok(rc)
    }

    fn check(&self, n: usize) -> Result<(), FormatError> {
        let e = |m: String| bad(n, m);
        match self.call.as_str() {
            AUTHENTICATE => {
                self.connect_request().map_err(e)?;
                let _ = decode_principal_result(&self.decision).map_err(e)?;
            }
            SUBSCRIBE | PUBLISH => {
                self.principal().map_err(e)?;
                self.text("channel").map_err(e)?;
                if self.call == PUBLISH {
                    self.data().map_err(e)?;
                }
                let _ = decode_unit(&self.decision).map_err(e)?;
            }
            ROUTE => {
                self.principal().map_err(e)?;
                self.text("client").map_err(e)?;
                self.text("channel").map_err(e)?;
                self.data().map_err(e)?;
                let _ = decode_route(&self.decision).map_err(e)?;
            }
            _ => {
                self.text("principal").map_err(e)?;
                self.text("client").map_err(e)?;
                self.text("channel").map_err(e)?;
                self.cost().map_err(e)?;
                decode_rate(&self.decision).map_err(e)?;
            }
        }
        Ok(())
    }

    pub(crate) fn text(&self, k: &str) -> Result<String, String> {
        self.input
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("input `{k}` is missing or not a string"))
    }

    pub(crate) fn cost(&self) -> Result<u32, String> {
        self.input
            .get("cost")
            .and_then(Value::as_u64)
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| "input `cost` is missing or not a 32-bit integer".to_owned())
    }

    /// The payload: JSON text, handed to the plugin as it was.
    pub(crate) fn data(&self) -> Result<Box<RawValue>, String> {
        let t = self.text("data")?;
        RawValue::from_string(t).map_err(|e| format!("input `data` is not JSON text: {e}"))
    }

    /// The principal; redacted claims become `{}`.
    pub(crate) fn principal(&self) -> Result<Principal, String> {
        let p = self
            .input
            .get("principal")
            .ok_or_else(|| "input `principal` is missing".to_owned())?;
        let (id, claims) = decode_principal(p)?;
        Ok(Principal {
            id,
            claims: if &*claims == REDACTED {
                Arc::from("{}")
            } else {
                claims
            },
        })
    }

    pub(crate) fn connect_request(&self) -> Result<ConnectRequest, String> {
        let i = &self.input;
        let s = |k: &str| {
            i.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("input `{k}` is missing or not a string"))
        };
        let headers = i
            .get("headers")
            .and_then(Value::as_array)
            .ok_or_else(|| "input `headers` is missing or not a list".to_owned())?
            .iter()
            .map(|h| match h.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
                _ => Err("a header is not [name, value]".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ConnectRequest {
            tenant: s("tenant")?,
            path: s("path")?,
            query: s("query")?,
            headers,
            remote_addr: s("remote_addr")?,
            client_id: s("client_id")?,
            token: i.get("token").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

fn decode_principal(p: &Value) -> Result<(String, Arc<str>), String> {
    let id = p
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| "principal `id` is missing".to_owned())?;
    let claims = match p.get("claims") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(_)) => p["claims"].to_string(),
        _ => "{}".to_owned(),
    };
    Ok((id.to_owned(), Arc::from(claims)))
}

fn decode_denial(d: &Value) -> Result<Denial, String> {
    let kind = d.get("kind").and_then(Value::as_str).unwrap_or("");
    let msg = || {
        d.get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    Ok(match kind {
        "unauthorized" => Denial::Unauthorized(msg()),
        "forbidden" => Denial::Forbidden(msg()),
        "rate_limited" => Denial::RateLimited {
            retry_after_ms: d.get("retry_after_ms").and_then(Value::as_u64).unwrap_or(0),
        },
        "failed" => Denial::Failed(msg()),
        "other" => Denial::Other(msg()),
        k => return Err(format!("unknown denial kind {k:?}")),
    })
}

fn denied(v: &Value) -> Option<Result<Denial, String>> {
    v.get("denied").map(decode_denial)
}

pub(crate) fn decode_principal_result(v: &Value) -> Result<Result<Principal, Denial>, String> {
    if let Some(d) = denied(v) {
        return d.map(Err);
    }
    let p = v
        .get("principal")
        .ok_or_else(|| "decision is neither `principal` nor `denied`".to_owned())?;
    let (id, claims) = decode_principal(p)?;
    Ok(Ok(Principal { id, claims }))
}

pub(crate) fn decode_unit(v: &Value) -> Result<Result<(), Denial>, String> {
    if let Some(d) = denied(v) {
        return d.map(Err);
    }
    match v.get("allowed") {
        Some(Value::Bool(true)) => Ok(Ok(())),
        _ => Err("decision is neither `allowed` nor `denied`".to_owned()),
    }
}

pub(crate) fn decode_route(v: &Value) -> Result<Result<Route, Denial>, String> {
    if let Some(d) = denied(v) {
        return d.map(Err);
    }
    match v.get("route") {
        Some(Value::String(s)) if s == "direct" => Ok(Ok(Route::Direct)),
        Some(Value::Array(ts)) => ts
            .iter()
            .map(|t| {
                let channel = t
                    .get("channel")
                    .and_then(Value::as_str)
                    .ok_or_else(|| "a route target has no `channel`".to_owned())?
                    .to_owned();
                let data = match t.get("data") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => {
                        Some(RawValue::from_string(s.clone()).map_err(|e| {
                            format!("a route target's `data` is not JSON text: {e}")
                        })?)
                    }
                    Some(_) => return Err("a route target's `data` is not a string".to_owned()),
                };
                Ok(RouteTarget { channel, data })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| Ok(Route::To(t))),
        _ => Err("decision is neither `route` nor `denied`".to_owned()),
    }
}

pub(crate) fn decode_rate(v: &Value) -> Result<RateDecision, String> {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    match v.get("rate").and_then(Value::as_str) {
        Some("allow") => Ok(RateDecision::Allow),
        Some("reject") => Ok(RateDecision::Reject {
            retry_after_ms: n("retry_after_ms"),
        }),
        Some("delay") => Ok(RateDecision::Delay { ms: n("ms") }),
        _ => Err("decision `rate` is not allow, reject or delay".to_owned()),
    }
}

// ---------------------------------------------------------------------------
// Replay

/// What the host answers during a replay: the current recorded call's clock
/// values (in order per clock, then the last again; a clock the call did not
/// read answers with the call's start), its `take-tokens` answers, and seeded
/// randomness.
#[derive(Debug)]
pub(crate) struct ReplayCtl {
    script: Mutex<Script>,
    seed: u64,
}

#[derive(Debug, Default)]
struct Script {
    clocks: [VecDeque<u64>; 3],
    last: [Option<u64>; 3],
    start_ms: u64,
    start_mono: u64,
    tokens: VecDeque<Result<u64, u64>>,
}

impl ReplayCtl {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            script: Mutex::new(Script::default()),
            seed,
        }
    }

    /// Answers the next calls from `c`.
    pub(crate) fn load(&self, c: &RecordedCall) {
        *self.script.lock() = Script {
            clocks: c.clock.clone().map(VecDeque::from),
            last: [None; 3],
            start_ms: c.start_ms,
            start_mono: c.start_mono,
            tokens: c.tokens.iter().copied().collect(),
        };
    }

    pub(crate) fn clock(&self, k: Clock) -> u64 {
        let mut s = self.script.lock();
        let i = k.index();
        if let Some(v) = s.clocks[i].pop_front() {
            s.last[i] = Some(v);
            return v;
        }
        s.last[i].unwrap_or(match k {
            Clock::NowMs => s.start_ms,
            Clock::MonotonicNs => s.start_mono,
            Clock::WallNs => s.start_ms.saturating_mul(1_000_000),
        })
    }

    pub(crate) fn tokens(&self) -> Option<Result<u64, u64>> {
        self.script.lock().tokens.pop_front()
    }

    /// The clock of token buckets past the recorded answers: the call's start.
    pub(crate) fn bucket_clock(&self) -> u64 {
        self.script.lock().start_mono
    }

    /// Seeds WASI's random interfaces with the replay seed.
    pub(crate) fn seed_random(&self, b: &mut wasmtime_wasi::WasiCtxBuilder) {
        use rand::SeedableRng as _;
        b.secure_random(rand::rngs::StdRng::seed_from_u64(self.seed));
        b.insecure_random(rand::rngs::StdRng::seed_from_u64(self.seed ^ 0x5eed));
        b.insecure_random_seed(u128::from(self.seed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> String {
        json!({"format": FORMAT, "version": VERSION, "tenant": "t", "role": "router",
               "plugin": "r", "config": {"a": 1}, "on_error": "deny"})
        .to_string()
    }

    fn route_line(seq: u64) -> String {
        let who = Principal {
            id: "u1".into(),
            claims: Arc::from(r#"{"secret":"sekrit"}"#),
        };
        let data = RawValue::from_string("{ \"x\" : 1.50 }".into()).unwrap();
        let decision = route_decision(&Ok(Route::To(vec![RouteTarget {
            channel: "a".into(),
            data: Some(RawValue::from_string("[1, 2]".into()).unwrap()),
        }])));
        json!({"seq": seq, "plugin": "r", "call": "route",
               "start": {"now_ms": 5, "monotonic_ns": 7},
               "input": route_json(&who, "c1", "room:1", &data), "decision": decision,
               "clock": {"now_ms": [10, 11]}, "kv": [{"key": "k", "value": "00ff"}, {"key": "m", "value": null}],
               "tokens": [{"ok": 0}, {"err": 1000}]})
        .to_string()
    }

    #[test]
    fn a_recording_round_trips_inputs_exactly_and_redacts_claims() {
        let text = format!("{}\n{}\n{}\n", header(), route_line(1), route_line(2));
        assert!(!text.contains("sekrit"), "{text}");
        let r = Recording::parse(&text).expect("parses");
        assert_eq!(r.header.role, "router");
        assert_eq!(r.header.config_json, r#"{"a":1}"#);
        assert_eq!(r.calls.len(), 2);
        let c = &r.calls[0];
        // The payload comes back byte for byte (whitespace, number format).
        assert_eq!(c.data().unwrap().get(), "{ \"x\" : 1.50 }");
        assert_eq!(&*c.principal().unwrap().claims, "{}");
        assert_eq!(
            c.kv,
            vec![("k".into(), Some(vec![0, 255])), ("m".into(), None)]
        );
        assert_eq!(c.tokens, vec![Ok(0), Err(1000)]);
        let Ok(Ok(Route::To(t))) = decode_route(&c.decision) else {
            panic!("route")
        };
        assert_eq!(t[0].data.as_ref().unwrap().get(), "[1, 2]");
    }

    #[test]
    fn bad_recordings_name_their_line() {
        let err = |t: &str| Recording::parse(t).unwrap_err().to_string();
        assert!(err("").contains("empty file"));
        assert!(err("{\"a\":1}").contains("not a Switchyard recording"));
        let v2 = header().replace("\"version\":1", "\"version\":2");
        assert!(err(&v2).contains("version 2"), "{}", err(&v2));
        let e = err(&format!("{}\n{}\nnot json\n", header(), route_line(1)));
        assert!(e.starts_with("line 3: not JSON"), "{e}");
        let wrong = route_line(1).replace("\"call\":\"route\"", "\"call\":\"check\"");
        assert!(err(&format!("{}\n{wrong}", header())).contains("not a router call"));
        let bad_data = route_line(1).replace("1.50 }", "1.50");
        assert!(err(&format!("{}\n{bad_data}", header())).contains("`data` is not JSON"));
    }

    #[test]
    fn connect_requests_are_written_without_credentials() {
        let req = ConnectRequest {
            tenant: "t".into(),
            path: "/ws/t".into(),
            query: "token=sekrit&room=1".into(),
            headers: vec![
                ("authorization".into(), "Bearer sekrit".into()),
                ("cookie".into(), "s=sekrit".into()),
                ("origin".into(), "https://a.test".into()),
            ],
            remote_addr: "127.0.0.1:1".into(),
            client_id: "c".into(),
            token: Some("sekrit".into()),
        };
        let v = connect_json(&req);
        assert!(!v.to_string().contains("sekrit"), "{v}");
        let p = Principal {
            id: "u".into(),
            claims: Arc::from(r#"{"k":"sekrit"}"#),
        };
        assert!(!principal_decision(&Ok(p)).to_string().contains("sekrit"));
        let c = RecordedCall {
            seq: 1,
            call: AUTHENTICATE.into(),
            input: v,
            decision: json!({"denied": {"kind": "unauthorized", "message": "no"}}),
            start_ms: 0,
            start_mono: 0,
            clock: Default::default(),
            kv: vec![],
            tokens: vec![],
        };
        let back = c.connect_request().expect("decodes");
        assert_eq!(back.token.as_deref(), Some(REDACTED));
        assert_eq!(back.header("origin"), Some("https://a.test"));
        assert!(c.check(1).is_ok());
    }

    #[test]
    fn replayed_clocks_answer_in_order_then_repeat() {
        let ctl = ReplayCtl::new(1);
        let mut c = Recording::parse(&format!("{}\n{}", header(), route_line(1)))
            .unwrap()
            .calls
            .remove(0);
        c.clock[Clock::MonotonicNs.index()] = vec![];
        ctl.load(&c);
        assert_eq!(ctl.clock(Clock::NowMs), 10);
        assert_eq!(ctl.clock(Clock::NowMs), 11);
        assert_eq!(ctl.clock(Clock::NowMs), 11);
        assert_eq!(ctl.clock(Clock::MonotonicNs), 7);
        assert_eq!(ctl.clock(Clock::WallNs), 5_000_000);
        assert_eq!(ctl.tokens(), Some(Ok(0)));
        assert_eq!(ctl.tokens(), Some(Err(1000)));
        assert_eq!(ctl.tokens(), None);
    }

    fn request<'a>(dir: &'a Path, calls: u64, max_bytes: u64) -> RecordRequest<'a> {
        RecordRequest {
            tenant: "t/1",
            role: "router",
            plugin: "r",
            plugin_hash: "00".into(),
            config_json: r#"{"k":1}"#,
            on_error: "deny",
            call_timeout: Duration::from_millis(10),
            memory_limit: 1 << 20,
            calls,
            dir,
            max_bytes,
        }
    }

    fn routed(t: Ticket, data: &str) {
        let who = Principal::anonymous();
        let data = RawValue::from_string(data.to_owned()).unwrap();
        let input = route_json(&who, "c", "room:1", &data);
        t.finish("r", ROUTE, input, route_decision(&Ok(Route::Direct)));
    }

    #[test]
    fn a_recording_takes_exactly_its_calls_then_costs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tap = Arc::new(RecordTap::default());
        assert!(tap.begin().is_none(), "off: no ticket");
        let status = start(&tap, &request(dir.path(), 2, 1 << 20)).expect("starts");
        assert!(matches!(
            start(&tap, &request(dir.path(), 2, 1 << 20)),
            Err(RecordError::Busy(_))
        ));
        let (a, b) = (tap.begin().expect("1"), tap.begin().expect("2"));
        assert!(tap.begin().is_none(), "a third call is not recorded");
        assert!(
            !tap.armed.load(Ordering::Relaxed),
            "disarmed after the last claim"
        );
        routed(a, "1");
        routed(b, "2");
        assert_eq!(status.wait_ended(Duration::from_secs(10)), "done");
        assert!(
            status
                .file
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("t_1-router-")
        );
        let text = std::fs::read_to_string(&status.file).unwrap();
        let r = Recording::parse(&text).expect("what was written parses");
        assert_eq!(r.calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(status.json()["recorded"], 2);
        assert_eq!(status.json()["bytes"], text.len());
        // Free again for the next recording.
        assert!(!tap.busy());
    }

    #[test]
    fn the_byte_limit_ends_a_recording() {
        let dir = tempfile::tempdir().unwrap();
        let tap = Arc::new(RecordTap::default());
        let status = start(&tap, &request(dir.path(), 5, 1500)).expect("starts");
        routed(tap.begin().expect("1"), "1");
        let big = format!("\"{}\"", "x".repeat(2000));
        routed(tap.begin().expect("2"), &big);
        let state = status.wait_ended(Duration::from_secs(10));
        assert!(state.starts_with("stopped: byte limit"), "{state}");
        assert!(tap.begin().is_none(), "no more calls are taken");
        let text = std::fs::read_to_string(&status.file).unwrap();
        assert!(text.len() <= 1500, "{}", text.len());
        assert_eq!(text.lines().count(), 2, "the header and the first call");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
