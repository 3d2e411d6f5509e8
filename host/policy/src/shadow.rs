//! Shadow runs: a second plugin of the same role (`shadow = "<plugin>"`) gets
//! the inputs of a sample (`shadow_sample`) of the serving plugin's calls, off
//! the hot path; its decisions are compared with the serving ones and never
//! take effect.
//!
//! Rules:
//! - **The serving call is never slowed.** It is made and answered first; then
//!   a copy of its inputs and decision is offered to the shadow's queue of
//!   [`QUEUE`] jobs. A full queue drops the job (counted `dropped`).
//! - **Shadow calls run on their own thread** (one per shadowed tenant role,
//!   not an async worker), under the shadow's own deadline and memory cap,
//!   with instances from a budget of their own ([`MAX_INSTANCES`]), never
//!   the tenant's. A
//!   trap, timeout or bad return is verdict `error`; it reaches nothing else.
//! - **Role-aware comparison**: auth — the same principal (id and claims), or
//!   the same kind of denial; router — the same targets and payloads, or the
//!   same kind of denial; rate limit — the same kind of decision (allow,
//!   reject, delay; wait times follow the clock and are not compared).
//! - **State is the shadow's own**: its key-value store and token buckets are
//!   keyed by plugin, so a shadow rate limiter counts in its own buckets; a
//!   shadowed merge document is a second document of the shadow plugin, opened
//!   from the same snapshot and given the same updates in the same order, so
//!   the comparison is of merge outputs (the update each `apply` broadcasts,
//!   or the same kind of refusal).
//! - **Merge documents are sampled whole**: `shadow_sample` decides at open
//!   whether a document is shadowed; a shadowed one offers every update. A
//!   document whose update could not be queued is out of step and is not
//!   compared again until it is reopened; at most [`MAX_DOCUMENTS`] shadow
//!   documents are open per tenant (more are `dropped`), and one whose serving
//!   document closed is released within [`PRUNE_EVERY`].
//! - The last [`KEEP_DIFFS`] differing inputs are kept per tenant role, with
//!   tokens, credentials headers and claims redacted and payloads cut at
//!   [`KEEP_DATA_BYTES`].

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchyard_core::policy::{
    AuthPolicy, ConnectRequest, Denial, MergeDocument, MergeError, MergePolicy, Principal,
    PublishRequest, RateDecision, RateKey, RateLimitPolicy, Route, RouterPolicy, Stamp,
};

/// Jobs waiting for the shadow thread at most.
pub const QUEUE: usize = 1024;
/// Differing inputs kept per tenant role.
pub const KEEP_DIFFS: usize = 20;
/// Payload bytes kept in a differing input.
pub const KEEP_DATA_BYTES: usize = 1024;
/// Shadow merge documents open at once per tenant (each pins an instance).
pub const MAX_DOCUMENTS: usize = 64;
/// Live instances a shadow may hold (its own budget, apart from the tenant's
/// `max_instances`): its twins and a pool's idle instances.
pub const MAX_INSTANCES: u32 = MAX_DOCUMENTS as u32 + 16;
/// How often the shadow thread releases documents whose serving one closed.
pub const PRUNE_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// Set by a plugin call on this thread that failed (trap, timeout, bad
    /// return, not made): how the shadow thread tells an error from an answer.
    static CALL_FAILED: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread's plugin call as failed (see [`CALL_FAILED`]).
pub(crate) fn note_failure() {
    CALL_FAILED.with(|c| c.set(true));
}

pub(crate) fn take_failure() -> bool {
    CALL_FAILED.with(|c| c.replace(false))
}

/// The shadow's verdict on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Same,
    Differ,
    Error,
}

/// Counts and the last differences of one tenant role's shadow.
#[derive(Debug)]
pub(crate) struct ShadowStats {
    pub tenant: String,
    pub role: &'static str,
    pub serving: String,
    pub shadow: String,
    pub sample: f64,
    calls: AtomicU64,
    dropped: AtomicU64,
    same: Counter,
    differ: Counter,
    error: Counter,
    dropped_metric: Counter,
    diffs: Mutex<VecDeque<Value>>,
}

/// The metric counters of one shadow, resolved once.
pub(crate) struct ShadowCounters {
    pub same: Counter,
    pub differ: Counter,
    pub error: Counter,
    pub dropped: Counter,
}

impl ShadowStats {
    pub(crate) fn new(
        tenant: &str,
        role: &'static str,
        serving: &str,
        shadow: &str,
        sample: f64,
        counters: ShadowCounters,
    ) -> Self {
        Self {
            tenant: tenant.to_owned(),
            role,
            serving: serving.to_owned(),
            shadow: shadow.to_owned(),
            sample,
            calls: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            same: counters.same,
            differ: counters.differ,
            error: counters.error,
            dropped_metric: counters.dropped,
            diffs: Mutex::new(VecDeque::new()),
        }
    }

    fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped_metric.inc();
    }

    fn record(&self, verdict: Verdict, diff: impl FnOnce() -> Value) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Verdict::Same => self.same.inc(),
            Verdict::Differ => self.differ.inc(),
            Verdict::Error => self.error.inc(),
        };
        if verdict != Verdict::Same {
            let mut d = self.diffs.lock();
            if d.len() == KEEP_DIFFS {
                d.pop_front();
            }
            d.push_back(diff());
        }
    }

    /// One entry of `GET /admin/shadow`.
    pub(crate) fn json(&self) -> Value {
        json!({
            "tenant": self.tenant,
            "role": self.role,
            "plugin": self.serving,
            "shadow": self.shadow,
            "sample": self.sample,
            "calls": self.calls.load(Ordering::Relaxed),
            "same": self.same.get(),
            "differ": self.differ.get(),
            "errors": self.error.get(),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "last_differences": self.diffs.lock().iter().cloned().collect::<Vec<_>>(),
        })
    }
}

/// The shadow plugin, as the role's policy trait.
pub(crate) enum ShadowPolicy {
    Auth(Arc<dyn AuthPolicy>),
    Router(Arc<dyn RouterPolicy>),
    RateLimit(Arc<dyn RateLimitPolicy>),
    Merge(Arc<dyn MergePolicy>),
}

/// One serving call, copied for the shadow.
enum Job {
    Authenticate {
        req: Arc<ConnectRequest>,
        serving: Result<Principal, Denial>,
    },
    Subscribe {
        who: Principal,
        channel: String,
        serving: Result<(), Denial>,
    },
    Publish {
        who: Principal,
        channel: String,
        data: Box<RawValue>,
        serving: Result<(), Denial>,
    },
    Route {
        who: Principal,
        client: String,
        channel: String,
        data: Box<RawValue>,
        serving: Result<Route, Denial>,
    },
    Rate {
        principal: String,
        client: String,
        channel: String,
        cost: u32,
        serving: RateDecision,
    },
    /// A serving document opened from `snapshot`; `alive` lasts as long as it.
    Open {
        doc: u64,
        alive: Weak<()>,
        snapshot: Vec<u8>,
    },
    Apply {
        doc: u64,
        update: Vec<u8>,
        lamport: u64,
        client_id: String,
        serving: Result<Option<Vec<u8>>, MergeError>,
    },
}

/// The serving side of a shadow: samples calls and queues them.
pub(crate) struct Lane {
    tx: SyncSender<Job>,
    stats: Arc<ShadowStats>,
    /// `sample` as a threshold on a 32-bit random number.
    threshold: u64,
}

impl Lane {
    /// Starts the shadow's thread; it ends when the lane is dropped.
    pub(crate) fn start(policy: ShadowPolicy, stats: Arc<ShadowStats>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let threshold = (stats.sample.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u64 + 1;
        let worker = stats.clone();
        std::thread::Builder::new()
            .name(format!("shadow-{}-{}", stats.tenant, stats.role))
            .spawn(move || run(&policy, &rx, &worker))?;
        Ok(Self {
            tx,
            stats,
            threshold,
        })
    }

    fn sampled(&self) -> bool {
        u64::from(next_random()) < self.threshold
    }

    /// Makes the serving call, then offers a job built from its answer by
    /// `job` (only when sampled). A serving call that failed is not offered:
    /// what it returns is its `on_error` fallback, no decision of the plugin
    /// to compare the shadow's with.
    fn serve<T>(&self, call: impl FnOnce() -> T, job: impl FnOnce(&T) -> Job) -> T {
        take_failure(); // a failure left by an earlier call on this thread
        let r = call();
        if !take_failure() {
            self.offer(|| job(&r));
        }
        r
    }

    /// Offers a job built by `job` (only when sampled); a full queue drops it.
    fn offer(&self, job: impl FnOnce() -> Job) {
        if self.sampled() {
            self.send(job());
        }
    }

    /// Queues `job` whatever the sample; a full queue drops it (counted).
    /// Returns whether it was queued.
    fn send(&self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.count_dropped();
                false
            }
        }
    }
}

/// xorshift32 per thread: sampling needs speed, not quality.
fn next_random() -> u32 {
    thread_local! {
        static STATE: Cell<u32> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.set(x);
        x
    })
}

fn seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.subsec_nanos());
    let addr = &t as *const u32 as usize as u32;
    (t ^ addr.rotate_left(16)) | 1
}

fn run(policy: &ShadowPolicy, rx: &Receiver<Job>, stats: &ShadowStats) {
    let mut docs = Documents::default();
    loop {
        let job = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                docs.prune();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        take_failure();
        let judged = match policy {
            ShadowPolicy::Merge(p) => {
                docs.prune_if_due();
                judge_merge(p.as_ref(), &mut docs, job, stats)
            }
            _ => Some(judge(policy, job)),
        };
        if let Some((verdict, diff)) = judged {
            stats.record(verdict, || diff);
        }
    }
}

/// Runs the shadow on a job: the verdict, and the difference as shown.
fn judge(policy: &ShadowPolicy, job: Job) -> (Verdict, Value) {
    let (input, serving, shadow, same) = match (policy, job) {
        (ShadowPolicy::Auth(p), Job::Authenticate { req, serving }) => {
            let shadow = p.authenticate(&req);
            let same = same_principal(&serving, &shadow);
            (
                connect_input(&req),
                principal_result(&serving),
                principal_result(&shadow),
                same,
            )
        }
        (
            ShadowPolicy::Auth(p),
            Job::Subscribe {
                who,
                channel,
                serving,
            },
        ) => {
            let shadow = p.authorize_subscribe(&who, &channel);
            (
                json!({"call": "authorize-subscribe", "principal": principal_input(&who), "channel": channel}),
                unit_result(&serving),
                unit_result(&shadow),
                same_unit(&serving, &shadow),
            )
        }
        (
            ShadowPolicy::Auth(p),
            Job::Publish {
                who,
                channel,
                data,
                serving,
            },
        ) => {
            let shadow = p.authorize_publish(&who, &channel, &data);
            (
                json!({"call": "authorize-publish", "principal": principal_input(&who), "channel": channel, "data": cut(data.get())}),
                unit_result(&serving),
                unit_result(&shadow),
                same_unit(&serving, &shadow),
            )
        }
        (
            ShadowPolicy::Router(p),
            Job::Route {
                who,
                client,
                channel,
                data,
                serving,
            },
        ) => {
            let shadow = p.route(&PublishRequest {
                principal: &who,
                client: &client,
                channel: &channel,
                data: &data,
            });
            let same = same_routing(&serving, &shadow);
            (
                json!({"call": "route", "principal": principal_input(&who), "client": client, "channel": channel, "data": cut(data.get())}),
                route_result(&serving),
                route_result(&shadow),
                same,
            )
        }
        (
            ShadowPolicy::RateLimit(p),
            Job::Rate {
                principal,
                client,
                channel,
                cost,
                serving,
            },
        ) => {
            let shadow = p.check(
                &RateKey {
                    principal: &principal,
                    client: &client,
                    channel: &channel,
                },
                cost,
            );
            (
                json!({"call": "check", "principal": principal, "client": client, "channel": channel, "cost": cost}),
                json!(format!("{serving:?}")),
                json!(format!("{shadow:?}")),
                same_rate(&serving, &shadow),
            )
        }
        _ => unreachable!("a lane only carries its own role's jobs"),
    };
    compared(input, serving, shadow, same)
}

/// The verdict on a shadow call just made (a failure it noted makes it
/// `error`), and the difference as shown.
fn compared(input: Value, serving: Value, shadow: Value, same: bool) -> (Verdict, Value) {
    let verdict = if take_failure() {
        Verdict::Error
    } else if same {
        Verdict::Same
    } else {
        Verdict::Differ
    };
    let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let diff = json!({
        "at": at,
        "verdict": match verdict { Verdict::Error => "error", _ => "differ" },
        "input": input,
        "serving": serving,
        "shadow": shadow,
    });
    (verdict, diff)
}

/// The shadow thread's merge documents, by the serving document's number.
#[derive(Default)]
struct Documents {
    open: HashMap<u64, Twin>,
    /// When [`Documents::prune`] last ran.
    pruned: Option<std::time::Instant>,
}

struct Twin {
    doc: Box<dyn MergeDocument>,
    /// Dead once the serving document is dropped.
    alive: Weak<()>,
}

impl Documents {
    /// Releases the documents whose serving document closed.
    fn prune(&mut self) {
        self.open.retain(|_, d| d.alive.strong_count() > 0);
        self.pruned = Some(std::time::Instant::now());
    }

    /// [`prune`](Self::prune)s when the last one is [`PRUNE_EVERY`] old, so
    /// twins are released while jobs keep the thread from idling too.
    fn prune_if_due(&mut self) {
        if !self.open.is_empty() && self.pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.prune();
        }
    }
}

/// Runs a merge job on the shadow's own document: `None` when there is
/// nothing to compare (the document is not open in the shadow).
fn judge_merge(
    policy: &dyn MergePolicy,
    docs: &mut Documents,
    job: Job,
    stats: &ShadowStats,
) -> Option<(Verdict, Value)> {
    match job {
        Job::Open {
            doc,
            alive,
            snapshot,
        } => {
            docs.prune();
            if docs.open.len() >= MAX_DOCUMENTS {
                stats.count_dropped();
                return None;
            }
            let r = policy.open(&snapshot);
            let shadow = match &r {
                Ok(_) => json!("opened"),
                Err(e) => json!({"error": e.to_string()}),
            };
            let same = r.is_ok();
            let judged = compared(
                json!({"call": "open", "document": doc, "snapshot": shown_bytes(&snapshot)}),
                json!("opened"),
                shadow,
                same,
            );
            if let Ok(d) = r
                && judged.0 != Verdict::Error
            {
                docs.open.insert(doc, Twin { doc: d, alive });
            }
            Some(judged)
        }
        Job::Apply {
            doc,
            update,
            lamport,
            client_id,
            serving,
        } => {
            let d = docs.open.get_mut(&doc)?;
            let stamp = Stamp {
                lamport,
                client_id: &client_id,
            };
            let r = d.doc.apply(&update, &stamp);
            let judged = compared(
                json!({"call": "apply", "document": doc, "update": shown_bytes(&update), "lamport": lamport, "client_id": client_id}),
                merge_result(&serving),
                merge_result(&r),
                same_merge(&serving, &r),
            );
            // A failed call took the shadow's state with it: out of step.
            if judged.0 == Verdict::Error
                || matches!(r, Err(MergeError::Failed(_) | MergeError::Lost(_)))
            {
                docs.open.remove(&doc);
            }
            Some(judged)
        }
        _ => unreachable!("a merge lane only carries merge jobs"),
    }
}

// The role-aware comparison, shared with `switchyard replay` ([`crate::replay`]).

/// Merge: the same update to broadcast (or both none), or the same kind of
/// refusal.
pub(crate) fn same_merge(
    a: &Result<Option<Vec<u8>>, MergeError>,
    b: &Result<Option<Vec<u8>>, MergeError>,
) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(x), Err(y)) => std::mem::discriminant(x) == std::mem::discriminant(y),
        _ => false,
    }
}

pub(crate) fn same_denial(a: &Denial, b: &Denial) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Auth: the same principal (id and claims), or the same kind of denial.
pub(crate) fn same_principal(a: &Result<Principal, Denial>, b: &Result<Principal, Denial>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => same_denial(a, b),
        _ => false,
    }
}

/// Router: the same targets and payloads, or the same kind of denial.
pub(crate) fn same_routing(a: &Result<Route, Denial>, b: &Result<Route, Denial>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => same_route(a, b),
        (Err(a), Err(b)) => same_denial(a, b),
        _ => false,
    }
}

/// Rate limit: the same kind of decision (wait times follow the clock).
pub(crate) fn same_rate(a: &RateDecision, b: &RateDecision) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

pub(crate) fn same_unit(a: &Result<(), Denial>, b: &Result<(), Denial>) -> bool {
    match (a, b) {
        (Ok(()), Ok(())) => true,
        (Err(x), Err(y)) => same_denial(x, y),
        _ => false,
    }
}

fn same_route(a: &Route, b: &Route) -> bool {
    match (a, b) {
        (Route::Direct, Route::Direct) => true,
        (Route::To(x), Route::To(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| {
                    p.channel == q.channel
                        && p.data.as_ref().map(|d| d.get()) == q.data.as_ref().map(|d| d.get())
                })
        }
        _ => false,
    }
}

fn cut(s: &str) -> String {
    if s.len() <= KEEP_DATA_BYTES {
        return s.to_owned();
    }
    let mut end = KEEP_DATA_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(crate) const REDACTED: &str = "[redacted]";

/// A connect request as shown: credentials and cookies redacted.
pub(crate) fn connect_input(r: &ConnectRequest) -> Value {
    let secret = |name: &str| {
        matches!(
            name,
            "authorization" | "cookie" | "proxy-authorization" | "x-api-key"
        ) || name.contains("token")
    };
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(k, v)| json!([k, if secret(k) { REDACTED } else { v.as_str() }]))
        .collect();
    let query: Vec<String> = r
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, _)) if secret(&k.to_ascii_lowercase()) => format!("{k}={REDACTED}"),
            _ => p.to_owned(),
        })
        .collect();
    json!({
        "call": "authenticate",
        "tenant": r.tenant,
        "path": r.path,
        "query": query.join("&"),
        "headers": headers,
        "remote_addr": r.remote_addr,
        "client_id": r.client_id,
        "token": r.token.as_ref().map(|_| REDACTED),
    })
}

pub(crate) fn principal_input(p: &Principal) -> Value {
    json!({"id": p.id, "claims": REDACTED})
}

fn denial(d: &Denial) -> Value {
    json!({"denied": d.to_string()})
}

fn principal_result(r: &Result<Principal, Denial>) -> Value {
    match r {
        Ok(p) => json!({"principal": p.id, "claims": REDACTED}),
        Err(d) => denial(d),
    }
}

fn unit_result(r: &Result<(), Denial>) -> Value {
    match r {
        Ok(()) => json!("allowed"),
        Err(d) => denial(d),
    }
}

/// Bytes as shown: UTF-8 text cut at [`KEEP_DATA_BYTES`], else their size
/// and the hex of the first [`KEEP_DATA_BYTES`]` / 2`.
fn shown_bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(t) => json!(cut(t)),
        Err(_) => {
            let head = &b[..b.len().min(KEEP_DATA_BYTES / 2)];
            json!({"bytes": b.len(), "hex": crate::engine::hex(head)})
        }
    }
}

fn merge_result(r: &Result<Option<Vec<u8>>, MergeError>) -> Value {
    match r {
        Ok(Some(u)) => json!({"broadcast": shown_bytes(u)}),
        Ok(None) => json!("unchanged"),
        Err(e) => json!({"refused": e.to_string()}),
    }
}

fn route_result(r: &Result<Route, Denial>) -> Value {
    match r {
        Ok(Route::Direct) => json!("direct"),
        Ok(Route::To(t)) => Value::Array(
            t.iter()
                .map(|t| json!({"channel": t.channel, "data": t.data.as_ref().map(|d| cut(d.get()))}))
                .collect(),
        ),
        Err(d) => denial(d),
    }
}

/// Auth role served by one plugin and shadowed by another.
pub(crate) struct ShadowedAuth {
    pub serving: Arc<dyn AuthPolicy>,
    pub lane: Lane,
}

impl AuthPolicy for ShadowedAuth {
    fn authenticate(&self, req: &Arc<ConnectRequest>) -> Result<Principal, Denial> {
        self.lane.serve(
            || self.serving.authenticate(req),
            |r| Job::Authenticate {
                req: req.clone(),
                serving: r.clone(),
            },
        )
    }

    fn authorize_subscribe(&self, principal: &Principal, channel: &str) -> Result<(), Denial> {
        self.lane.serve(
            || self.serving.authorize_subscribe(principal, channel),
            |r| Job::Subscribe {
                who: principal.clone(),
                channel: channel.to_owned(),
                serving: r.clone(),
            },
        )
    }

    fn authorize_publish(
        &self,
        principal: &Principal,
        channel: &str,
        data: &RawValue,
    ) -> Result<(), Denial> {
        self.lane.serve(
            || self.serving.authorize_publish(principal, channel, data),
            |r| Job::Publish {
                who: principal.clone(),
                channel: channel.to_owned(),
                data: data.to_owned(),
                serving: r.clone(),
            },
        )
    }
}

/// Router role served by one plugin and shadowed by another.
pub(crate) struct ShadowedRouter {
    pub serving: Arc<dyn RouterPolicy>,
    pub lane: Lane,
}

impl RouterPolicy for ShadowedRouter {
    fn route(&self, req: &PublishRequest<'_>) -> Result<Route, Denial> {
        self.lane.serve(
            || self.serving.route(req),
            |r| Job::Route {
                who: req.principal.clone(),
                client: req.client.to_owned(),
                channel: req.channel.to_owned(),
                data: req.data.to_owned(),
                serving: r.clone(),
            },
        )
    }
}

/// Rate-limit role served by one plugin and shadowed by another.
pub(crate) struct ShadowedRateLimit {
    pub serving: Arc<dyn RateLimitPolicy>,
    pub lane: Lane,
}

impl RateLimitPolicy for ShadowedRateLimit {
    fn check(&self, key: &RateKey<'_>, cost: u32) -> RateDecision {
        self.lane.serve(
            || self.serving.check(key, cost),
            |r| Job::Rate {
                principal: key.principal.to_owned(),
                client: key.client.to_owned(),
                channel: key.channel.to_owned(),
                cost,
                serving: *r,
            },
        )
    }
}

/// Merge role served by one plugin and shadowed by another: every sampled
/// document has a twin in the shadow plugin.
pub(crate) struct ShadowedMerge {
    serving: Arc<dyn MergePolicy>,
    lane: Arc<Lane>,
    next_doc: AtomicU64,
}

impl ShadowedMerge {
    pub(crate) fn new(serving: Arc<dyn MergePolicy>, lane: Lane) -> Self {
        Self {
            serving,
            lane: Arc::new(lane),
            next_doc: AtomicU64::new(1),
        }
    }
}

impl MergePolicy for ShadowedMerge {
    fn open(&self, snapshot: &[u8]) -> Result<Box<dyn MergeDocument>, MergeError> {
        take_failure();
        let serving = self.serving.open(snapshot)?;
        // A failed open answered by the fallback (on_error = allow) has no
        // plugin document to twin.
        if take_failure() || !self.lane.sampled() {
            return Ok(serving);
        }
        let doc = self.next_doc.fetch_add(1, Ordering::Relaxed);
        let alive = Arc::new(());
        let job = Job::Open {
            doc,
            alive: Arc::downgrade(&alive),
            snapshot: snapshot.to_vec(),
        };
        if !self.lane.send(job) {
            return Ok(serving);
        }
        Ok(Box::new(ShadowedDocument {
            serving,
            lane: self.lane.clone(),
            doc,
            alive: Some(alive),
        }))
    }
}

/// A serving document whose updates are offered to its shadow twin.
struct ShadowedDocument {
    serving: Box<dyn MergeDocument>,
    lane: Arc<Lane>,
    doc: u64,
    /// `None` once the twin is out of step (it is released, not compared).
    alive: Option<Arc<()>>,
}

impl MergeDocument for ShadowedDocument {
    fn apply(&mut self, update: &[u8], stamp: &Stamp<'_>) -> Result<Option<Vec<u8>>, MergeError> {
        take_failure();
        let r = self.serving.apply(update, stamp);
        // A failed serving call is not compared; the gateway drops this
        // document and reopens it, twin and all.
        let failed = take_failure();
        if self.alive.is_some() {
            let queued = !failed
                && self.lane.send(Job::Apply {
                    doc: self.doc,
                    update: update.to_vec(),
                    lamport: stamp.lamport,
                    client_id: stamp.client_id.to_owned(),
                    serving: r.clone(),
                });
            if !queued {
                self.alive = None;
            }
        }
        r
    }

    fn snapshot(&self) -> Result<Vec<u8>, MergeError> {
        self.serving.snapshot()
    }

    fn size(&self) -> Option<usize> {
        self.serving.size()
    }

    fn state_vector(&self) -> Result<Option<Vec<u8>>, MergeError> {
        self.serving.state_vector()
    }

    fn diff(&self, state_vector: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        self.serving.diff(state_vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::policy::{BuiltIn, RouteTarget};

    fn target(ch: &str, data: Option<&str>) -> RouteTarget {
        RouteTarget {
            channel: ch.into(),
            data: data.map(|d| RawValue::from_string(d.into()).unwrap()),
        }
    }

    #[test]
    fn routes_compare_by_targets_and_payloads() {
        assert!(same_route(&Route::Direct, &Route::Direct));
        let a = Route::To(vec![target("a:1", Some("{\"v\":1}"))]);
        let b = Route::To(vec![target("a:1", Some("{\"v\":2}"))]);
        assert!(same_route(&a, &a.clone()));
        assert!(!same_route(&a, &b));
        assert!(!same_route(&a, &Route::Direct));
        assert!(!same_route(&Route::To(vec![]), &a));
    }

    #[test]
    fn denials_compare_by_kind_not_wording() {
        assert!(same_denial(
            &Denial::Forbidden("no".into()),
            &Denial::Forbidden("not allowed".into())
        ));
        assert!(!same_denial(
            &Denial::Forbidden("no".into()),
            &Denial::Unauthorized("no".into())
        ));
    }

    #[test]
    fn credentials_are_redacted_from_shown_inputs() {
        let req = ConnectRequest {
            tenant: "t".into(),
            path: "/ws/t".into(),
            query: "token=sekrit&room=1".into(),
            headers: vec![
                ("authorization".into(), "Bearer sekrit".into()),
                ("cookie".into(), "s=sekrit".into()),
                ("origin".into(), "https://a.test".into()),
            ],
            token: Some("sekrit".into()),
            ..ConnectRequest::default()
        };
        let shown = connect_input(&req).to_string();
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(
            shown.contains("room=1") && shown.contains("https://a.test"),
            "{shown}"
        );
        let p = Principal {
            id: "u1".into(),
            claims: Arc::from(r#"{"secret":"sekrit"}"#),
        };
        assert!(!principal_input(&p).to_string().contains("sekrit"));
        assert!(!principal_result(&Ok(p)).to_string().contains("sekrit"));
    }

    #[test]
    fn payloads_are_cut_on_a_char_boundary() {
        let long = "é".repeat(KEEP_DATA_BYTES);
        let c = cut(&long);
        assert!(c.len() <= KEEP_DATA_BYTES + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }

    /// A lane with no thread behind it: every call sampled, jobs left in `rx`.
    fn bare_lane() -> (Lane, Receiver<Job>) {
        lane_of(QUEUE)
    }

    fn lane_of(queue: usize) -> (Lane, Receiver<Job>) {
        let (tx, rx) = sync_channel(queue);
        let counters = ShadowCounters {
            same: Counter::default(),
            differ: Counter::default(),
            error: Counter::default(),
            dropped: Counter::default(),
        };
        let stats = Arc::new(ShadowStats::new("t", "rate_limit", "a", "b", 1.0, counters));
        let lane = Lane {
            tx,
            stats,
            threshold: u64::MAX,
        };
        (lane, rx)
    }

    fn rate_job(serving: &RateDecision) -> Job {
        Job::Rate {
            principal: "u".into(),
            client: "c".into(),
            channel: "a:1".into(),
            cost: 1,
            serving: *serving,
        }
    }

    #[test]
    fn a_failed_serving_call_is_not_offered() {
        let (lane, rx) = bare_lane();
        let r = lane.serve(
            || {
                note_failure();
                RateDecision::Allow
            },
            rate_job,
        );
        assert_eq!(r, RateDecision::Allow, "the serving answer is returned");
        assert!(
            rx.try_recv().is_err(),
            "a fallback is no decision to compare"
        );
        assert!(!take_failure(), "the failure mark is consumed");
    }

    #[test]
    fn an_answered_serving_call_is_offered_despite_an_earlier_failure() {
        let (lane, rx) = bare_lane();
        note_failure(); // left behind by an unrelated call on this thread
        lane.serve(|| RateDecision::Allow, rate_job);
        assert!(matches!(rx.try_recv(), Ok(Job::Rate { .. })));
    }

    fn stamp() -> Stamp<'static> {
        Stamp {
            lamport: 1,
            client_id: "c1",
        }
    }

    #[test]
    fn a_shadowed_document_offers_its_open_and_every_update() {
        let (lane, rx) = bare_lane();
        let merge = ShadowedMerge::new(Arc::new(BuiltIn), lane);
        let mut doc = merge.open(b"").expect("open");
        assert!(matches!(rx.try_recv(), Ok(Job::Open { doc: 1, .. })));
        let r = doc.apply(br#"{"x":1}"#, &stamp()).expect("apply");
        match rx.try_recv() {
            Ok(Job::Apply {
                doc: 1,
                update,
                serving,
                client_id,
                ..
            }) => {
                assert_eq!(update, br#"{"x":1}"#);
                assert_eq!(serving, Ok(r), "the serving output goes with it");
                assert_eq!(client_id, "c1");
            }
            _ => panic!("no apply job"),
        }
    }

    #[test]
    fn a_twin_that_missed_an_update_is_not_compared_again() {
        let (lane, rx) = lane_of(1);
        let merge = ShadowedMerge::new(Arc::new(BuiltIn), lane);
        let mut doc = merge.open(b"").expect("open");
        // The queue holds the open; the first update is dropped.
        doc.apply(br#"{"x":1}"#, &stamp()).expect("apply");
        assert!(matches!(rx.try_recv(), Ok(Job::Open { .. })));
        doc.apply(br#"{"x":2}"#, &stamp()).expect("serving goes on");
        assert!(rx.try_recv().is_err(), "an out-of-step twin gets nothing");
        assert_eq!(merge.lane.stats.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_twin_compares_merge_outputs_and_is_released_with_its_document() {
        let (lane, _rx) = bare_lane();
        let stats = lane.stats.clone();
        let mut docs = Documents::default();
        let alive = Arc::new(());
        let open = Job::Open {
            doc: 7,
            alive: Arc::downgrade(&alive),
            snapshot: Vec::new(),
        };
        let judged = judge_merge(&BuiltIn, &mut docs, open, &stats).expect("judged");
        assert_eq!(judged.0, Verdict::Same);
        let apply = |update: &[u8], serving| Job::Apply {
            doc: 7,
            update: update.to_vec(),
            lamport: 1,
            client_id: "c1".into(),
            serving,
        };
        // What the built-in LWW map broadcasts for this patch: the same.
        let mut reference = BuiltIn.open(b"").expect("open");
        let out = reference.apply(br#"{"x":1}"#, &stamp());
        let same = judge_merge(&BuiltIn, &mut docs, apply(br#"{"x":1}"#, out), &stats);
        assert_eq!(same.expect("judged").0, Verdict::Same);
        let other = Ok(Some(b"something else".to_vec()));
        let (v, diff) =
            judge_merge(&BuiltIn, &mut docs, apply(br#"{"y":2}"#, other), &stats).expect("judged");
        assert_eq!(v, Verdict::Differ);
        assert_eq!(diff["input"]["call"], "apply", "{diff}");
        assert_eq!(diff["serving"]["broadcast"], "something else", "{diff}");
        let refused = judge_merge(
            &BuiltIn,
            &mut docs,
            apply(b"not json", Err(MergeError::Invalid("bad".into()))),
            &stats,
        );
        assert_eq!(refused.expect("judged").0, Verdict::Same, "both refuse");
        drop(alive);
        docs.prune_if_due();
        assert_eq!(
            docs.open.len(),
            1,
            "not due yet: the open pruned a moment ago"
        );
        docs.pruned = docs.pruned.and_then(|t| t.checked_sub(PRUNE_EVERY));
        docs.prune_if_due();
        let none = judge_merge(&BuiltIn, &mut docs, apply(br#"{"z":3}"#, Ok(None)), &stats);
        assert!(none.is_none(), "a closed document's twin is released");
    }

    #[test]
    fn merge_outputs_compare_by_bytes_and_refusals_by_kind() {
        let ok = |b: &[u8]| Ok(Some(b.to_vec()));
        assert!(same_merge(&ok(b"a"), &ok(b"a")));
        assert!(!same_merge(&ok(b"a"), &ok(b"b")));
        assert!(!same_merge(&ok(b"a"), &Ok(None)));
        assert!(same_merge(
            &Err(MergeError::Conflict("x".into())),
            &Err(MergeError::Conflict("y".into()))
        ));
        assert!(!same_merge(
            &Err(MergeError::Conflict("x".into())),
            &Err(MergeError::Invalid("x".into()))
        ));
    }

    #[test]
    fn binary_bytes_are_shown_as_size_and_hex() {
        assert_eq!(shown_bytes(b"text"), json!("text"));
        let b = vec![0xffu8; KEEP_DATA_BYTES * 2];
        let v = shown_bytes(&b);
        assert_eq!(v["bytes"], KEEP_DATA_BYTES * 2);
        assert_eq!(v["hex"].as_str().map(str::len), Some(KEEP_DATA_BYTES));
    }

    #[test]
    fn sampling_follows_the_ratio() {
        let t = |s: f64| (s.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u64 + 1;
        let n = 100_000;
        let hits = (0..n).filter(|_| u64::from(next_random()) < t(0.1)).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| u64::from(next_random()) < t(1.0)));
    }
}
