//! Native stand-in for the gateway's `host` interface (only on non-wasm
//! targets), so plugin logic can be unit-tested with `cargo test`.
//!
//! State is per thread (each `#[test]` runs on its own thread): config, a
//! key-value map, an optional frozen clock and the captured log.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::LogLevel;

#[derive(Default)]
struct State {
    config: String,
    kv: HashMap<String, Vec<u8>>,
    /// Token buckets: tokens, and when they were counted (monotonic ns).
    buckets: HashMap<String, (f64, u64)>,
    now_ms: Option<u64>,
    logs: Vec<(LogLevel, String)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Sets the JSON text returned by [`crate::host::config_json`].
pub fn set_config(json: &str) {
    STATE.with_borrow_mut(|s| s.config = json.to_owned());
}

/// Freezes the clock at `ms` (wall clock; the monotonic clock follows it).
/// `None` returns to the real clock.
pub fn set_now_ms(ms: Option<u64>) {
    STATE.with_borrow_mut(|s| s.now_ms = ms);
}

/// Messages logged so far on this thread.
pub fn logs() -> Vec<(LogLevel, String)> {
    STATE.with_borrow(|s| s.logs.clone())
}

/// Clears config, key-value store, clock and log.
pub fn reset() {
    STATE.with_borrow_mut(|s| *s = State::default());
}

/// The stand-in implementations behind [`crate::host`].
pub(crate) mod native {
    use super::STATE;
    use crate::LogLevel;

    pub fn log(level: LogLevel, message: &str) {
        STATE.with_borrow_mut(|s| s.logs.push((level, message.to_owned())));
    }

    pub fn now_ms() -> u64 {
        STATE.with_borrow(|s| s.now_ms).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    }

    pub fn monotonic_ns() -> u64 {
        now_ms().saturating_mul(1_000_000)
    }

    pub fn config() -> String {
        STATE.with_borrow(|s| s.config.clone())
    }

    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        STATE.with_borrow(|s| s.kv.get(key).cloned())
    }

    pub fn kv_set(key: &str, value: &[u8]) -> Result<(), String> {
        STATE.with_borrow_mut(|s| s.kv.insert(key.to_owned(), value.to_vec()));
        Ok(())
    }

    pub fn kv_delete(key: &str) {
        STATE.with_borrow_mut(|s| s.kv.remove(key));
    }

    /// Same rules as the gateway's bucket table (`host/policy/src/buckets.rs`),
    /// on this thread's clock.
    pub fn take_tokens(
        key: &str,
        rate: f64,
        burst: f64,
        cost: f64,
        max_wait_ms: u64,
    ) -> Result<u64, u64> {
        const REFUSED_MS: u64 = 1000;
        const MAX_WAIT_MS: u64 = 3_600_000;
        let sane = rate.is_finite()
            && rate > 0.0
            && burst.is_finite()
            && burst >= 1.0
            && cost.is_finite()
            && cost >= 0.0;
        if !sane {
            return Err(REFUSED_MS);
        }
        let now = monotonic_ns();
        STATE.with_borrow_mut(|s| {
            let (tokens, at) = s.buckets.entry(key.to_owned()).or_insert((burst, now));
            let elapsed_s = now.saturating_sub(*at) as f64 / 1e9;
            *tokens = (*tokens + elapsed_s * rate).min(burst);
            *at = (*at).max(now);
            let short = cost - *tokens;
            let wait_ms = if short <= 0.0 {
                0
            } else {
                (short / rate * 1000.0)
                    .ceil()
                    .clamp(1.0, MAX_WAIT_MS as f64) as u64
            };
            if wait_ms > max_wait_ms {
                return Err(wait_ms);
            }
            *tokens -= cost;
            Ok(wait_ms)
        })
    }
}

// ---------------------------------------------------------------------------
// Recordings as test input

/// Version of the gateway's recording format read here (docs/plugins.md,
/// "Record and replay").
pub const RECORDING_VERSION: u64 = 1;

/// Why a recording cannot be used as test input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    /// The file cannot be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The text is not a recording of this format version.
    #[error("line {line}: {message}")]
    Format {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One policy call recorded by the gateway (`POST /admin/record`): its
/// inputs, the decision the serving plugin made, and what it read (config,
/// clock, key-value store), so a production incident becomes a unit test.
///
/// ```
/// use switchyard_sdk::{Denial, PublishRequest, Route, RouteTarget, Router};
/// use switchyard_sdk::testing::parse_recording;
///
/// /// The plugin under test: puts every publish on `audit:<channel>`.
/// struct Audit;
/// impl Router for Audit {
///     fn route(req: &PublishRequest) -> Result<Route, Denial> {
///         Ok(Route::To(vec![RouteTarget {
///             channel: format!("audit:{}", req.channel),
///             data_json: None,
///         }]))
///     }
/// }
///
/// // Normally `load_recording("incident.jsonl")`, the file the gateway wrote.
/// let calls = parse_recording(concat!(
///     r#"{"format":"switchyard-record","version":1,"tenant":"acme","role":"router","plugin":"audit","config":{}}"#, "\n",
///     r#"{"seq":1,"call":"route","start":{"now_ms":1700000000000,"monotonic_ns":5},"#,
///     r#""input":{"principal":{"id":"u1","claims":"[redacted]"},"client":"c1","channel":"orders","data":"{\"n\":1}"},"#,
///     r#""decision":{"route":[{"channel":"audit:orders","data":null}]},"clock":{},"kv":[],"tokens":[]}"#, "\n",
/// ))
/// .unwrap();
/// for call in &calls {
///     call.prepare(); // config, key-value reads and clock as recorded
///     let req = call.publish_request().expect("a route call");
///     let got = Audit::route(&req);
///     assert!(call.route_matches(&got), "call {} now decides {got:?}", call.seq);
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    /// Order in the recording.
    pub seq: u64,
    /// `authenticate`, `authorize-subscribe`, `authorize-publish`, `route` or `check`.
    pub call: String,
    /// The inputs as recorded (token, credential headers and claims redacted).
    pub input: serde_json::Value,
    /// The recorded decision.
    pub decision: serde_json::Value,
    /// The plugin's config (JSON text) when recording.
    pub config: String,
    /// The wall clock the call saw first (ms), else when it started.
    pub now_ms: u64,
    /// The first read of each key-value key: the value then, `None` = absent.
    pub kv: Vec<(String, Option<Vec<u8>>)>,
}

/// Reads a recording file written by the gateway: the recorded calls, in order.
pub fn load_recording(
    path: impl AsRef<std::path::Path>,
) -> Result<Vec<RecordedCall>, RecordingError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| RecordingError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse_recording(&text)
}

/// [`load_recording`] of text.
pub fn parse_recording(text: &str) -> Result<Vec<RecordedCall>, RecordingError> {
    use serde_json::Value;
    let bad = |line: usize, message: String| RecordingError::Format { line, message };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let (n, first) = lines
        .next()
        .ok_or_else(|| bad(1, "empty file (expected a header line)".into()))?;
    let h: Value =
        serde_json::from_str(first).map_err(|e| bad(n, format!("the header is not JSON: {e}")))?;
    if h.get("format").and_then(Value::as_str) != Some("switchyard-record") {
        return Err(bad(n, "not a Switchyard recording".into()));
    }
    let version = h.get("version").and_then(Value::as_u64);
    if version != Some(RECORDING_VERSION) {
        return Err(bad(
            n,
            format!("format version {version:?}; this SDK reads {RECORDING_VERSION}"),
        ));
    }
    let config = match h.get("config") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(c) => c.to_string(),
    };
    let mut out = Vec::new();
    for (n, l) in lines {
        let v: Value = serde_json::from_str(l).map_err(|e| bad(n, format!("not JSON: {e}")))?;
        let field = |k: &str| {
            v.get(k)
                .cloned()
                .ok_or_else(|| bad(n, format!("`{k}` is missing")))
        };
        let start_ms = v
            .pointer("/start/now_ms")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(n, "`start.now_ms` is missing".into()))?;
        let now_ms = v
            .pointer("/clock/now_ms/0")
            .and_then(Value::as_u64)
            .unwrap_or(start_ms);
        let mut kv = Vec::new();
        for e in v.get("kv").and_then(Value::as_array).into_iter().flatten() {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(n, "a kv entry has no `key`".into()))?;
            let value = match e.get("value").and_then(Value::as_str) {
                None => None,
                Some(h) => Some(
                    unhex(h).ok_or_else(|| bad(n, format!("kv value of {key:?} is not hex")))?,
                ),
            };
            kv.push((key.to_owned(), value));
        }
        out.push(RecordedCall {
            seq: field("seq")?
                .as_u64()
                .ok_or_else(|| bad(n, "`seq` is not an integer".into()))?,
            call: field("call")?
                .as_str()
                .ok_or_else(|| bad(n, "`call` is not a string".into()))?
                .to_owned(),
            input: field("input")?,
            decision: field("decision")?,
            config: config.clone(),
            now_ms,
            kv,
        });
    }
    Ok(out)
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

impl RecordedCall {
    fn text(&self, k: &str) -> Option<String> {
        self.input.get(k)?.as_str().map(str::to_owned)
    }

    /// Sets this thread's stand-in host as the call found it: the recorded
    /// config, the key-value values it read, the clock frozen at [`Self::now_ms`].
    pub fn prepare(&self) {
        set_config(&self.config);
        set_now_ms(Some(self.now_ms));
        STATE.with_borrow_mut(|s| {
            for (k, v) in &self.kv {
                match v {
                    Some(v) => s.kv.insert(k.clone(), v.clone()),
                    None => s.kv.remove(k),
                };
            }
        });
    }

    /// The principal of an authorize or route call (redacted claims: `{}`).
    pub fn principal(&self) -> Option<crate::Principal> {
        let p = self.input.get("principal")?;
        let id = p.get("id")?.as_str()?;
        let claims = match p.get("claims")?.as_str()? {
            "[redacted]" => "{}",
            c => c,
        };
        Some(crate::Principal::new(id, claims))
    }

    /// The channel of an authorize, route or check call.
    pub fn channel(&self) -> Option<String> {
        self.text("channel")
    }

    /// The payload (JSON text, as published) of an authorize-publish or route call.
    pub fn data_json(&self) -> Option<String> {
        self.text("data")
    }

    /// The request of a `route` call.
    pub fn publish_request(&self) -> Option<crate::PublishRequest> {
        (self.call == "route").then_some(())?;
        Some(crate::PublishRequest {
            principal: self.principal()?,
            client_id: self.text("client")?,
            channel: self.channel()?,
            data_json: self.data_json()?,
        })
    }

    /// The key and cost of a `check` call.
    pub fn rate_key(&self) -> Option<(crate::RateKey, u32)> {
        (self.call == "check").then_some(())?;
        let cost = u32::try_from(self.input.get("cost")?.as_u64()?).ok()?;
        Some((
            crate::RateKey {
                principal: self.text("principal")?,
                client_id: self.text("client")?,
                channel: self.channel()?,
            },
            cost,
        ))
    }

    /// The request of an `authenticate` call (the token, when there was one,
    /// reads `"[redacted]"`).
    pub fn connect_request(&self) -> Option<crate::ConnectRequest<'static>> {
        (self.call == "authenticate").then_some(())?;
        let headers = self
            .input
            .get("headers")?
            .as_array()?
            .iter()
            .filter_map(|h| {
                Some((
                    h.get(0)?.as_str()?.to_owned(),
                    h.get(1)?.as_str()?.to_owned(),
                ))
            })
            .collect();
        Some(crate::ConnectRequest::new(crate::RequestParts {
            tenant: self.text("tenant")?,
            path: self.text("path")?,
            query: self.text("query")?,
            headers,
            remote_addr: self.text("remote_addr")?,
            client_id: self.text("client_id")?,
            token: self.text("token"),
        }))
    }

    fn denial_kind(&self) -> Option<&str> {
        self.decision.get("denied")?.get("kind")?.as_str()
    }

    fn same_denial(&self, d: &crate::Denial) -> bool {
        use crate::Denial;
        let kind = match d {
            Denial::Unauthorized(_) => "unauthorized",
            Denial::Forbidden(_) => "forbidden",
            Denial::RateLimited(_) => "rate_limited",
            Denial::Other(_) => "other",
        };
        self.denial_kind() == Some(kind)
    }

    /// Whether `got` is the recorded decision of a `route` call, by the
    /// gateway's rule: the same targets and payloads, or the same kind of denial.
    pub fn route_matches(&self, got: &Result<crate::Route, crate::Denial>) -> bool {
        use crate::Route;
        match (got, self.decision.get("route")) {
            (Err(d), _) => self.same_denial(d),
            (Ok(Route::Direct), Some(r)) => r.as_str() == Some("direct"),
            (Ok(Route::To(t)), Some(serde_json::Value::Array(want))) => {
                t.len() == want.len()
                    && t.iter().zip(want).all(|(g, w)| {
                        w.get("channel").and_then(|c| c.as_str()) == Some(g.channel.as_str())
                            && w.get("data").and_then(|d| d.as_str()) == g.data_json.as_deref()
                    })
            }
            _ => false,
        }
    }

    /// Whether `got` is the recorded decision of an `authorize-*` call.
    pub fn allowed_matches(&self, got: &Result<(), crate::Denial>) -> bool {
        match got {
            Ok(()) => self.decision.get("allowed").and_then(|a| a.as_bool()) == Some(true),
            Err(d) => self.same_denial(d),
        }
    }

    /// Whether `got` is the recorded decision of an `authenticate` call (the
    /// same principal id, claims being redacted; or the same kind of denial).
    pub fn principal_matches(&self, got: &Result<crate::Principal, crate::Denial>) -> bool {
        match got {
            Ok(p) => {
                self.decision
                    .pointer("/principal/id")
                    .and_then(|i| i.as_str())
                    == Some(p.id.as_str())
            }
            Err(d) => self.same_denial(d),
        }
    }

    /// Whether `got` is the recorded decision of a `check` call: the same kind
    /// (allow, reject, delay); wait times are not compared.
    pub fn rate_matches(&self, got: &crate::RateDecision) -> bool {
        use crate::RateDecision;
        let kind = match got {
            RateDecision::Allow => "allow",
            RateDecision::Reject(_) => "reject",
            RateDecision::Delay(_) => "delay",
        };
        self.decision.get("rate").and_then(|r| r.as_str()) == Some(kind)
    }
}

#[cfg(test)]
mod recording_tests {
    use super::*;

    const REC: &str = concat!(
        r#"{"format":"switchyard-record","version":1,"tenant":"t","role":"rate_limit","plugin":"p","config":{"limit":3}}"#,
        "\n",
        r#"{"seq":1,"call":"check","start":{"now_ms":42,"monotonic_ns":1},"input":{"principal":"alice","client":"c","channel":"x","cost":1},"#,
        r#""decision":{"rate":"reject","retry_after_ms":1000},"clock":{"now_ms":[50]},"kv":[{"key":"alice","value":"03000000"},{"key":"bob","value":null}],"tokens":[]}"#,
        "\n"
    );

    #[test]
    fn a_recording_prepares_the_stand_in_host() {
        reset();
        crate::host::kv_set("bob", b"x").unwrap();
        let calls = parse_recording(REC).expect("parses");
        assert_eq!(calls.len(), 1);
        let c = &calls[0];
        c.prepare();
        assert_eq!(crate::host::now_ms(), 50);
        assert_eq!(crate::host::kv_get("alice"), Some(vec![3, 0, 0, 0]));
        assert_eq!(crate::host::kv_get("bob"), None);
        assert_eq!(crate::host::config_json(), r#"{"limit":3}"#);
        let (key, cost) = c.rate_key().expect("check call");
        assert_eq!((key.principal.as_str(), cost), ("alice", 1));
        assert!(c.rate_matches(&crate::RateDecision::Reject(5)));
        assert!(!c.rate_matches(&crate::RateDecision::Allow));
        assert!(c.publish_request().is_none());
    }

    #[test]
    fn bad_recordings_are_refused_with_their_line() {
        assert!(matches!(
            parse_recording(""),
            Err(RecordingError::Format { line: 1, .. })
        ));
        let v2 = REC.replacen("\"version\":1", "\"version\":2", 1);
        assert!(
            parse_recording(&v2)
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        let broken = format!("{}oops\n", REC);
        assert!(matches!(
            parse_recording(&broken),
            Err(RecordingError::Format { line: 3, .. })
        ));
        assert!(matches!(
            load_recording("/nonexistent/rec.jsonl"),
            Err(RecordingError::Io { .. })
        ));
    }
}
