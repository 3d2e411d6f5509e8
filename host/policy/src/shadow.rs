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
//!   not an async worker), under the shadow's own deadline and memory cap. A
//!   trap, timeout or bad return is verdict `error`; it reaches nothing else.
//! - **Role-aware comparison**: auth — the same principal (id and claims), or
//!   the same kind of denial; router — the same targets and payloads, or the
//!   same kind of denial; rate limit — the same kind of decision (allow,
//!   reject, delay; wait times follow the clock and are not compared).
//! - **State is the shadow's own**: its key-value store and token buckets are
//!   keyed by plugin, so a shadow rate limiter counts in its own buckets.
//!   Merge documents are not shadowed.
//! - The last [`KEEP_DIFFS`] differing inputs are kept per tenant role, with
//!   tokens, credentials headers and claims redacted and payloads cut at
//!   [`KEEP_DATA_BYTES`].

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchyard_core::policy::{
    AuthPolicy, ConnectRequest, Denial, Principal, PublishRequest, RateDecision, RateKey,
    RateLimitPolicy, Route, RouterPolicy,
};

/// Jobs waiting for the shadow thread at most.
pub const QUEUE: usize = 1024;
/// Differing inputs kept per tenant role.
pub const KEEP_DIFFS: usize = 20;
/// Payload bytes kept in a differing input.
pub const KEEP_DATA_BYTES: usize = 1024;

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
        if !self.sampled() {
            return;
        }
        match self.tx.try_send(job()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.stats.dropped_metric.inc();
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
    while let Ok(job) = rx.recv() {
        take_failure();
        let (verdict, diff) = judge(policy, job);
        stats.record(verdict, || diff);
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

// The role-aware comparison, shared with `switchyard replay` ([`crate::replay`]).

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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::policy::RouteTarget;

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
        let (tx, rx) = sync_channel(QUEUE);
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

    #[test]
    fn sampling_follows_the_ratio() {
        let t = |s: f64| (s.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u64 + 1;
        let n = 100_000;
        let hits = (0..n).filter(|_| u64::from(next_random()) < t(0.1)).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| u64::from(next_random()) < t(1.0)));
    }
}
