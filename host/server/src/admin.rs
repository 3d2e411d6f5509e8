//! The admin API (`/admin/*`) and the live dashboard (`GET /admin/`).
//!
//! Everything but the dashboard's static files needs `Authorization: Bearer
//! <[admin] token>`; an empty token turns the whole of `/admin` off (404).
//!
//! - `GET /admin/plugins`: the plugin runtime's status ([`crate::AdminSource`]).
//! - `GET /admin/connections?tenant=&channel=&client=&limit=`: the sessions of
//!   this node (every transport), oldest first, at most `limit` (default 100,
//!   at most 10000).
//! - `POST /admin/connections/{session}/close` with `{"code":4003,"reason":"…"}`
//!   → 204; the connection is closed with that code (1000, 1001 or 4000–4999).
//! - `POST /admin/drain` → 202; the process drains as on SIGTERM.
//! - `GET /admin/stats`: per-tenant connections, subscriptions, messages in/out
//!   per second, plugin calls and failures; node totals and delivery latency.
//! - `POST /admin/record` with `{"tenant","role","calls":N}` → 202 and the
//!   recording's status (its `file` under `plugins.record_dir`); `GET
//!   /admin/record` lists running and recent recordings (docs/plugins.md,
//!   "Record and replay").
//!
//! The [`Registry`] is filled at connect and emptied at disconnect; nothing
//! here runs per message. Channels, queue lengths and message counts are read
//! when a listing or stats are asked for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::backpressure::Outbox;
use switchyard_core::hub::SessionId;
use switchyard_core::protocol::CloseCode;
use switchyard_core::refusal::Refusal;
use switchyard_core::session::{Handler, Session};

use crate::Server;
use crate::response::{Resp, json_error, json_ok, with_type};

/// The dashboard page and its script and style, served from the binary.
const PAGE_HTML: &str = include_str!("admin/dashboard.html");
const PAGE_JS: &str = include_str!("admin/dashboard.js");
const PAGE_CSS: &str = include_str!("admin/dashboard.css");

/// Default and largest `limit` of `/admin/connections`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
/// Longest close reason (a WebSocket close frame holds 123 bytes of it).
const MAX_REASON: usize = 123;

/// Why an admin request failed: the one place that maps to HTTP statuses.
#[derive(Debug)]
pub(crate) enum AdminError {
    /// `[admin] token` is empty.
    Off,
    /// No or wrong bearer token.
    Unauthorized,
    /// Bad query or body.
    BadRequest(String),
    /// No such session or path.
    NotFound(String),
    /// The path exists with other methods.
    MethodNotAllowed(&'static str),
    /// The body is over the limit.
    TooBig,
    /// The resource is busy (a recording of that tenant role runs).
    Conflict(String),
    /// The server could not do it (a recording file could not be created).
    Failed(String),
}

impl AdminError {
    /// Which refusal this is ([`switchyard_core::refusal`] maps it to the outside).
    fn refusal(&self) -> Refusal {
        match self {
            AdminError::Off | AdminError::NotFound(_) => Refusal::NotFound,
            AdminError::Unauthorized => Refusal::Unauthorized,
            AdminError::BadRequest(_) => Refusal::BadRequest,
            AdminError::MethodNotAllowed(_) => Refusal::MethodNotAllowed,
            AdminError::TooBig => Refusal::TooBig,
            AdminError::Conflict(_) => Refusal::Conflict,
            AdminError::Failed(_) => Refusal::Internal,
        }
    }

    fn status(&self) -> StatusCode {
        crate::response::status_of(self.refusal())
    }

    /// The admin API's `error` name: the refusal's, except `admin_off` (the
    /// API is not configured) and `failed` (kept from admin API v1).
    fn code(&self) -> &'static str {
        match self {
            AdminError::Off => "admin_off",
            AdminError::Failed(_) => "failed",
            other => other.refusal().name(),
        }
    }

    fn message(&self) -> String {
        match self {
            AdminError::Off => "admin API is off ([admin] token is empty)".to_owned(),
            AdminError::Unauthorized => {
                "missing or bad admin token (Authorization: Bearer <[admin] token>)".to_owned()
            }
            AdminError::BadRequest(m)
            | AdminError::NotFound(m)
            | AdminError::Conflict(m)
            | AdminError::Failed(m) => m.clone(),
            AdminError::MethodNotAllowed(allowed) => format!("use {allowed}"),
            AdminError::TooBig => "request body over 4096 bytes".to_owned(),
        }
    }

    /// `{"error": code, "message": …}` with the status.
    pub(crate) fn response(&self) -> Resp {
        json_error(self.status(), self.code(), &self.message())
    }
}

/// One session known to the admin API.
struct Entry {
    id: SessionId,
    name: Arc<str>,
    client: Arc<str>,
    principal: Arc<str>,
    tenant: Arc<str>,
    transport: &'static str,
    remote: String,
    connected_at: SystemTime,
    outbox: Arc<Outbox>,
}

/// Every session of this node, by session name (the `welcome`'s `session`).
pub(crate) struct Registry {
    conns: DashMap<Arc<str>, Arc<Entry>>,
    /// Messages (in, out) of the tenant's closed connections; also held while
    /// stats sum the open ones, so a closing connection is counted once.
    retired: Mutex<HashMap<Arc<str>, (u64, u64)>>,
    samples: Mutex<VecDeque<Sample>>,
    started: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            conns: DashMap::new(),
            retired: Mutex::new(HashMap::new()),
            samples: Mutex::new(VecDeque::new()),
            started: Instant::now(),
        }
    }
}

/// Keeps a session listed; dropping it (at disconnect) removes it.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    name: Arc<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut retired = self.registry.retired.lock();
        if let Some((_, e)) = self.registry.conns.remove(&self.name) {
            let t = retired.entry(e.tenant.clone()).or_default();
            t.0 += e.outbox.received();
            t.1 += e.outbox.sent();
        }
    }
}

impl Registry {
    /// Lists `session` (transport `websocket`, `sse`, `poll` or `yjs`) until
    /// the returned guard is dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        session: &Session,
        transport: &'static str,
        remote: String,
    ) -> Registration {
        let name: Arc<str> = Arc::from(session.name());
        let entry = Entry {
            id: session.id(),
            name: name.clone(),
            client: session.client().clone(),
            principal: session.principal_id().clone(),
            tenant: session.tenant().id.clone(),
            transport,
            remote,
            connected_at: SystemTime::now(),
            outbox: session.outbox().clone(),
        };
        self.conns.insert(name.clone(), Arc::new(entry));
        Registration {
            registry: self.clone(),
            name,
        }
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.conns.iter().map(|e| e.value().clone()).collect()
    }
}

/// Whether the request carries the admin token (constant-time compare).
fn authorize(server: &Server, headers: &HeaderMap) -> Result<(), AdminError> {
    let token = &server.node().config.admin.token;
    if token.is_empty() {
        return Err(AdminError::Off);
    }
    let given = crate::handshake::bearer_token(headers, "").unwrap_or_default();
    if switchyard_core::tenant::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// Every `/admin` request.
pub(crate) async fn handle(
    server: &Arc<Server>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Resp {
    match route(server, req, remote).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Resp {
    let mut r = with_type(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    r
}

async fn route(
    server: &Arc<Server>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Resp, AdminError> {
    if server.node().config.admin.token.is_empty() {
        return Err(AdminError::Off);
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // The dashboard's files load without the token; every data call needs it.
    let page = match path.as_str() {
        "/admin" | "/admin/" | "/admin/index.html" => Some(("text/html; charset=utf-8", PAGE_HTML)),
        "/admin/dashboard.js" => Some(("text/javascript; charset=utf-8", PAGE_JS)),
        "/admin/dashboard.css" => Some(("text/css; charset=utf-8", PAGE_CSS)),
        _ => None,
    };
    if let Some((content_type, body)) = page {
        return match method {
            Method::GET | Method::HEAD => Ok(asset(content_type, body)),
            _ => Err(AdminError::MethodNotAllowed("GET")),
        };
    }
    authorize(server, req.headers())?;
    let who = crate::client_ip::real_ip(remote.ip(), req.headers(), &server.proxies);
    match (method, path.as_str()) {
        (Method::GET, "/admin/plugins") => {
            let plugins = server
                .admin()
                .map_or_else(|| Value::Array(Vec::new()), |a| a.plugins());
            Ok(json_ok(StatusCode::OK, &json!({ "plugins": plugins })))
        }
        (Method::GET, "/admin/connections") => {
            let v = connections(server, req.uri().query().unwrap_or(""))?;
            Ok(json_ok(StatusCode::OK, &v))
        }
        (Method::GET, "/admin/stats") => Ok(json_ok(StatusCode::OK, &stats(server))),
        (Method::GET, "/admin/shadow") => {
            let v = server
                .admin()
                .map_or_else(|| json!({"shadows": [], "promoted": []}), |a| a.shadow());
            Ok(json_ok(StatusCode::OK, &v))
        }
        (Method::POST, "/admin/shadow/promote") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Promote {
                tenant: String,
                role: String,
            }
            let body = read_body(req).await?;
            let p: Promote = serde_json::from_slice(&body).map_err(|e| {
                AdminError::BadRequest(format!("expected {{\"tenant\",\"role\"}}: {e}"))
            })?;
            let admin = server
                .admin()
                .ok_or_else(|| AdminError::NotFound("no plugin runtime".into()))?;
            let serving = admin.promote(&p.tenant, &p.role).map_err(|e| match e {
                crate::PromoteRefused::BadRequest(m) => AdminError::BadRequest(m),
                crate::PromoteRefused::NotFound(m) => AdminError::NotFound(m),
            })?;
            tracing::info!(
                target: "switchyard::admin",
                who = %who,
                peer = %remote,
                action = "promote",
                tenant = %p.tenant,
                role = %p.role,
                plugin = %serving,
                "admin action: shadow promoted to serving"
            );
            Ok(json_ok(
                StatusCode::OK,
                &json!({"tenant": p.tenant, "role": p.role, "plugin": serving}),
            ))
        }
        (Method::GET, "/admin/record") => {
            let v = server
                .admin()
                .map_or_else(|| json!({"recordings": []}), |a| a.recordings());
            Ok(json_ok(StatusCode::OK, &v))
        }
        (Method::POST, "/admin/record") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Record {
                tenant: String,
                role: String,
                calls: u64,
            }
            let body = read_body(req).await?;
            let r: Record = serde_json::from_slice(&body).map_err(|e| {
                AdminError::BadRequest(format!("expected {{\"tenant\",\"role\",\"calls\"}}: {e}"))
            })?;
            let admin = server
                .admin()
                .ok_or_else(|| AdminError::NotFound("no plugin runtime".into()))?;
            let status = admin
                .record(&r.tenant, &r.role, r.calls)
                .map_err(|e| match e {
                    crate::RecordRefused::BadRequest(m) => AdminError::BadRequest(m),
                    crate::RecordRefused::NotFound(m) => AdminError::NotFound(m),
                    crate::RecordRefused::Busy(m) => AdminError::Conflict(m),
                    crate::RecordRefused::Failed(m) => AdminError::Failed(m),
                })?;
            tracing::info!(
                target: "switchyard::admin",
                who = %who,
                peer = %remote,
                action = "record",
                tenant = %r.tenant,
                role = %r.role,
                calls = r.calls,
                file = %status["file"].as_str().unwrap_or(""),
                "admin action: record plugin calls"
            );
            Ok(json_ok(StatusCode::ACCEPTED, &status))
        }
        (_, "/admin/record") => Err(AdminError::MethodNotAllowed("GET, POST")),
        (_, "/admin/shadow") => Err(AdminError::MethodNotAllowed("GET")),
        (_, "/admin/shadow/promote") => Err(AdminError::MethodNotAllowed("POST")),
        (Method::POST, "/admin/drain") => {
            tracing::info!(
                target: "switchyard::admin",
                who = %who,
                peer = %remote,
                action = "drain",
                connections = server.open_connections(),
                "admin action: drain the node"
            );
            server.request_drain();
            Ok(json_ok(StatusCode::ACCEPTED, &json!({ "draining": true })))
        }
        (Method::POST, p) if p.starts_with("/admin/connections/") && p.ends_with("/close") => {
            let session = p["/admin/connections/".len()..p.len() - "/close".len()].to_owned();
            let body = read_body(req).await?;
            close(server, &session, &body, who, remote)?;
            let mut r = json_ok(StatusCode::NO_CONTENT, &Value::Null);
            *r.body_mut() = crate::response::full(Bytes::new());
            r.headers_mut().remove(header::CONTENT_TYPE);
            Ok(r)
        }
        (_, "/admin/plugins" | "/admin/connections" | "/admin/stats") => {
            Err(AdminError::MethodNotAllowed("GET"))
        }
        (_, "/admin/drain") => Err(AdminError::MethodNotAllowed("POST")),
        (_, p) if p.starts_with("/admin/connections/") && p.ends_with("/close") => {
            Err(AdminError::MethodNotAllowed("POST"))
        }
        (_, p) => Err(AdminError::NotFound(format!("no admin endpoint {p}"))),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| AdminError::TooBig)
}

/// `GET /admin/connections`.
fn connections(server: &Server, query: &str) -> Result<Value, AdminError> {
    let (mut tenant, mut channel, mut client, mut limit) = (None, None, None, DEFAULT_LIMIT);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (
            crate::handshake::percent_decode(k),
            crate::handshake::percent_decode(v),
        );
        let v = (!v.is_empty()).then_some(v);
        match k.as_str() {
            "tenant" => tenant = v,
            "channel" => channel = v,
            "client" => client = v,
            "limit" => {
                let Some(v) = v else { continue };
                limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(AdminError::BadRequest(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}, got {v:?}"
                        )));
                    }
                };
            }
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter {other:?} (use tenant, channel, client, limit)"
                )));
            }
        }
    }
    // Channels per session, read from the hub now (never kept per message).
    let mut channels: HashMap<SessionId, Vec<Arc<str>>> = HashMap::new();
    server.node().hub.for_each_subscription(|key, session| {
        if tenant.as_deref().is_none_or(|t| *key.tenant == *t) {
            channels
                .entry(session)
                .or_default()
                .push(key.channel.clone());
        }
    });
    let mut matched: Vec<Arc<Entry>> = server
        .registry
        .entries()
        .into_iter()
        .filter(|e| tenant.as_deref().is_none_or(|t| *e.tenant == *t))
        .filter(|e| client.as_deref().is_none_or(|c| *e.client == *c))
        .filter(|e| {
            channel.as_deref().is_none_or(|c| {
                channels
                    .get(&e.id)
                    .is_some_and(|l| l.iter().any(|x| **x == *c))
            })
        })
        .collect();
    matched.sort_by(|a, b| {
        a.connected_at
            .cmp(&b.connected_at)
            .then_with(|| a.name.cmp(&b.name))
    });
    let total = matched.len();
    let list: Vec<Value> = matched
        .iter()
        .take(limit)
        .map(|e| {
            let mut chans: Vec<&str> = channels
                .get(&e.id)
                .map(|l| l.iter().map(|c| &**c).collect())
                .unwrap_or_default();
            chans.sort_unstable();
            json!({
                "session": &*e.name,
                "client": &*e.client,
                "principal": &*e.principal,
                "tenant": &*e.tenant,
                "transport": e.transport,
                "remote": e.remote,
                "connected_at": rfc3339_millis(e.connected_at),
                "channels": chans,
                "queued": e.outbox.len(),
            })
        })
        .collect();
    Ok(json!({
        "connections": list,
        "total": total,
        "truncated": total > limit,
    }))
}

#[derive(Deserialize)]
struct CloseBody {
    code: Option<u16>,
    reason: Option<String>,
}

/// `POST /admin/connections/{session}/close`.
fn close(
    server: &Server,
    session: &str,
    body: &[u8],
    who: std::net::IpAddr,
    peer: SocketAddr,
) -> Result<(), AdminError> {
    let session = crate::handshake::percent_decode(session);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::BadRequest(
            "send {\"code\":4000-4999|1000|1001,\"reason\":\"…\"}".to_owned(),
        ));
    }
    let req: CloseBody = serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))?;
    let code = match req.code {
        Some(c @ (1000 | 1001 | 4000..=4999)) => c,
        Some(c) => {
            return Err(AdminError::BadRequest(format!(
                "code {c} is not allowed: use 1000, 1001 or an application code 4000-4999"
            )));
        }
        None => return Err(AdminError::BadRequest("code is required".to_owned())),
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "closed by administrator".to_owned());
    if reason.len() > MAX_REASON {
        return Err(AdminError::BadRequest(format!(
            "reason is {} bytes; at most {MAX_REASON} fit in a close frame",
            reason.len()
        )));
    }
    let Some(entry) = server
        .registry
        .conns
        .get(session.as_str())
        .map(|e| e.clone())
    else {
        return Err(AdminError::NotFound(format!(
            "no session {session} on this node"
        )));
    };
    let close_code = CloseCode::from_code(code).unwrap_or(CloseCode::Application(code));
    tracing::info!(
        target: "switchyard::admin",
        who = %who,
        peer = %peer,
        action = "close",
        session = %entry.name,
        tenant = %entry.tenant,
        client = %entry.client,
        transport = entry.transport,
        code,
        reason = %reason,
        "admin action: close a connection"
    );
    entry.outbox.close_with_reason(close_code, false, &reason);
    Ok(())
}

/// `2026-12-02T00:40:00.123Z` (UTC).
fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days.cast_signed() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

// ---------------------------------------------------------------- stats

/// Counter values at one instant, for per-second rates.
struct Sample {
    at: Instant,
    values: HashMap<String, f64>,
}

/// Keep samples this long; rates are taken over at least [`RATE_WINDOW`].
const SAMPLE_KEEP: Duration = Duration::from_secs(30);
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl Registry {
    /// Stores `values` (unless the newest sample is very recent) and returns
    /// the base sample to take rates against: the newest one at least
    /// [`RATE_WINDOW`] old, else the oldest. `None` = no earlier sample.
    fn sample(&self, values: &HashMap<String, f64>) -> Option<(f64, HashMap<String, f64>)> {
        let now = Instant::now();
        let mut s = self.samples.lock();
        while s.len() > 1 && s.front().is_some_and(|f| now - f.at > SAMPLE_KEEP) {
            s.pop_front();
        }
        let base = s
            .iter()
            .rev()
            .find(|x| now - x.at >= RATE_WINDOW)
            .or_else(|| s.front())
            .filter(|x| now - x.at >= Duration::from_millis(100))
            .map(|x| ((now - x.at).as_secs_f64(), x.values.clone()));
        if s.back()
            .is_none_or(|b| now - b.at >= Duration::from_millis(250))
        {
            s.push_back(Sample {
                at: now,
                values: values.clone(),
            });
            if s.len() > 256 {
                s.pop_front();
            }
        }
        base
    }
}

/// One sample of a text exposition: name, labels, value.
struct Series<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Series<'_> {
    fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the samples of a Prometheus/OpenMetrics text exposition.
fn parse_exposition(text: &str) -> Vec<Series<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Series<'_>> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line.find(' ').is_none_or(|sp| open < sp) => {
            let (labels, used) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, &line[open + 1 + used..])
        }
        _ => {
            let (n, r) = line.split_once(' ')?;
            (n, Vec::new(), r)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Series {
        name,
        labels,
        value,
    })
}

/// `k="v",…}` → the pairs and the bytes used up to and including `}`.
fn parse_labels(s: &str) -> Option<(Vec<(&str, String)>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        if *b.get(i)? == b'}' {
            return Some((out, i + 1));
        }
        let eq = i + s[i..].find('=')?;
        let key = &s[i..eq];
        if b.get(eq + 1) != Some(&b'"') {
            return None;
        }
        let mut v = String::new();
        let mut j = eq + 2;
        loop {
            match *b.get(j)? {
                b'\\' => {
                    match *b.get(j + 1)? {
                        b'n' => v.push('\n'),
                        c => v.push(char::from(c)),
                    }
                    j += 2;
                }
                b'"' => break,
                _ => {
                    let ch = s[j..].chars().next()?;
                    v.push(ch);
                    j += ch.len_utf8();
                }
            }
        }
        out.push((key, v));
        i = j + 1;
    }
}

/// Outcomes of `switchyard_plugin_calls_total` that count as failures.
fn is_failure(outcome: &str) -> bool {
    matches!(
        outcome,
        "error" | "timeout" | "trap" | "busy" | "cooling_down"
    )
}

/// Quantile `q` of cumulative histogram buckets `(le, count)` sorted by `le`
/// (linear inside a bucket, as Prometheus' `histogram_quantile`).
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut prev_le, mut prev_n) = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= target {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let span = n - prev_n;
            let frac = if span > 0.0 {
                (target - prev_n) / span
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * frac);
        }
        (prev_le, prev_n) = (le, n);
    }
    Some(prev_le)
}

#[derive(Default)]
struct TenantStats {
    connections: usize,
    transports: BTreeMap<&'static str, usize>,
    subscriptions: usize,
    messages_in: u64,
    messages_out: u64,
}

#[derive(Default, Clone)]
struct CallCounts {
    calls: f64,
    failures: f64,
    outcomes: BTreeMap<String, f64>,
}

fn key(parts: &[&str]) -> String {
    parts.join("\u{1f}")
}

fn rate(values: &HashMap<String, f64>, base: Option<&(f64, HashMap<String, f64>)>, k: &str) -> f64 {
    let Some((dt, base)) = base else { return 0.0 };
    let now = values.get(k).copied().unwrap_or(0.0);
    let then = base.get(k).copied().unwrap_or(0.0);
    let r = (now - then) / dt;
    if r.is_finite() && r > 0.0 {
        (r * 100.0).round() / 100.0
    } else {
        0.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `GET /admin/stats`.
fn stats(server: &Server) -> Value {
    let node = server.node();
    let registry = &server.registry;
    let mut tenants: BTreeMap<Arc<str>, TenantStats> = node
        .tenants
        .all()
        .into_iter()
        .map(|t| (t.id.clone(), TenantStats::default()))
        .collect();
    {
        // Holding `retired` keeps a closing connection from being counted twice or not at all.
        let retired = registry.retired.lock();
        for e in registry.entries() {
            let t = tenants.entry(e.tenant.clone()).or_default();
            t.connections += 1;
            *t.transports.entry(e.transport).or_default() += 1;
            t.messages_in += e.outbox.received();
            t.messages_out += e.outbox.sent();
        }
        for (tenant, (i, o)) in retired.iter() {
            let t = tenants.entry(tenant.clone()).or_default();
            t.messages_in += i;
            t.messages_out += o;
        }
    }
    node.hub.for_each_subscription(|key, _| {
        tenants.entry(key.tenant.clone()).or_default().subscriptions += 1;
    });

    // Plugin calls and delivery latency, from the node's metric families.
    let text = node.metrics.encode();
    let series = parse_exposition(&text);
    let mut plugin_calls: BTreeMap<(String, String), CallCounts> = BTreeMap::new();
    let mut tenant_calls: BTreeMap<(String, String, String), CallCounts> = BTreeMap::new();
    let mut latency: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in &series {
        if s.name == "switchyard_plugin_calls_total" {
            let (Some(plugin), Some(role)) = (s.label("plugin"), s.label("role")) else {
                continue;
            };
            let outcome = s.label("outcome").unwrap_or("ok");
            let add = |c: &mut CallCounts| {
                c.calls += s.value;
                if is_failure(outcome) {
                    c.failures += s.value;
                }
                *c.outcomes.entry(outcome.to_owned()).or_default() += s.value;
            };
            add(plugin_calls
                .entry((plugin.to_owned(), role.to_owned()))
                .or_default());
            if let Some(t) = s.label("tenant") {
                add(tenant_calls
                    .entry((t.to_owned(), plugin.to_owned(), role.to_owned()))
                    .or_default());
            }
        } else if s.name == "switchyard_publish_to_deliver_seconds_bucket" {
            let Some(le) = s.label("le") else { continue };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            latency.entry(le.to_owned()).or_insert((bound, 0.0)).1 += s.value;
        }
    }
    // Which tenants use which plugin in which role.
    let mut bindings: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut users: HashMap<(String, String), usize> = HashMap::new();
    if let Some(Value::Array(list)) = server.admin().map(|a| a.plugins()) {
        for p in &list {
            let Some(name) = p["name"].as_str() else {
                continue;
            };
            for u in p["used_by"].as_array().into_iter().flatten() {
                if let (Some(t), Some(r)) = (u["tenant"].as_str(), u["role"].as_str()) {
                    bindings
                        .entry(t.to_owned())
                        .or_default()
                        .push((name.to_owned(), r.to_owned()));
                    *users.entry((name.to_owned(), r.to_owned())).or_default() += 1;
                }
            }
        }
    }

    let mut values: HashMap<String, f64> = HashMap::new();
    for (t, s) in &tenants {
        values.insert(key(&["in", t]), s.messages_in as f64);
        values.insert(key(&["out", t]), s.messages_out as f64);
    }
    for ((p, r), c) in &plugin_calls {
        values.insert(key(&["calls", p, r]), c.calls);
        values.insert(key(&["fail", p, r]), c.failures);
    }
    for ((t, p, r), c) in &tenant_calls {
        values.insert(key(&["tcalls", t, p, r]), c.calls);
        values.insert(key(&["tfail", t, p, r]), c.failures);
    }
    let mut buckets: Vec<(f64, f64, String)> = latency
        .iter()
        .map(|(le, (bound, n))| (*bound, *n, le.clone()))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, n, le) in &buckets {
        values.insert(key(&["lat", le]), *n);
    }
    let base = registry.sample(&values);
    let base = base.as_ref();

    // Delivery latency over the rate window, else since start.
    let window: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(bound, n, le)| {
            let then = base
                .and_then(|(_, b)| b.get(&key(&["lat", le])).copied())
                .unwrap_or(0.0);
            (*bound, (n - then).max(0.0))
        })
        .collect();
    let all: Vec<(f64, f64)> = buckets.iter().map(|(b, n, _)| (*b, *n)).collect();
    let windowed = base.is_some() && window.last().is_some_and(|l| l.1 > 0.0);
    let used = if windowed { &window } else { &all };
    let ms = |q: f64| quantile(used, q).map(|s| round3(s * 1000.0));
    let delivery_latency = json!({
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "count": used.last().map_or(0.0, |l| l.1),
        "over": if windowed { "window" } else { "uptime" },
    });

    let plugin_json = |p: &str, r: &str, c: &CallCounts, calls_key: &str, fail_key: &str| {
        json!({
            "plugin": p,
            "role": r,
            "calls": c.calls,
            "failures": c.failures,
            "outcomes": c.outcomes,
            "calls_per_sec": rate(&values, base, calls_key),
            "failures_per_sec": rate(&values, base, fail_key),
        })
    };
    let plugins: Vec<Value> = plugin_calls
        .iter()
        .map(|((p, r), c)| plugin_json(p, r, c, &key(&["calls", p, r]), &key(&["fail", p, r])))
        .collect();

    let mut node_in = 0.0;
    let mut node_out = 0.0;
    let mut node_transports: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut node_subs = 0;
    let tenants_json: serde_json::Map<String, Value> = tenants
        .iter()
        .map(|(t, s)| {
            let in_rate = rate(&values, base, &key(&["in", t]));
            let out_rate = rate(&values, base, &key(&["out", t]));
            node_in += in_rate;
            node_out += out_rate;
            node_subs += s.subscriptions;
            for (tr, n) in &s.transports {
                *node_transports.entry(tr).or_default() += n;
            }
            let mut list = Vec::new();
            let (mut calls, mut failures, mut calls_rate, mut fail_rate) = (0.0, 0.0, 0.0, 0.0);
            for (p, r) in bindings.get(&**t).into_iter().flatten() {
                let own = tenant_calls.get(&(t.to_string(), p.clone(), r.clone()));
                let (c, ck, fk) = match own {
                    Some(c) => (
                        c.clone(),
                        key(&["tcalls", t, p, r]),
                        key(&["tfail", t, p, r]),
                    ),
                    None => (
                        plugin_calls
                            .get(&(p.clone(), r.clone()))
                            .cloned()
                            .unwrap_or_default(),
                        key(&["calls", p, r]),
                        key(&["fail", p, r]),
                    ),
                };
                let mut v = plugin_json(p, r, &c, &ck, &fk);
                // Without a tenant label, a plugin serving several tenants has shared counts.
                v["shared"] = (own.is_none()
                    && users.get(&(p.clone(), r.clone())).copied().unwrap_or(0) > 1)
                    .into();
                calls += c.calls;
                failures += c.failures;
                calls_rate += v["calls_per_sec"].as_f64().unwrap_or(0.0);
                fail_rate += v["failures_per_sec"].as_f64().unwrap_or(0.0);
                list.push(v);
            }
            (
                t.to_string(),
                json!({
                    "connections": s.connections,
                    "transports": s.transports,
                    "subscriptions": s.subscriptions,
                    "messages_in": s.messages_in,
                    "messages_out": s.messages_out,
                    "messages_in_per_sec": in_rate,
                    "messages_out_per_sec": out_rate,
                    "plugin_calls": calls,
                    "plugin_failures": failures,
                    "plugin_calls_per_sec": round3(calls_rate),
                    "plugin_failures_per_sec": round3(fail_rate),
                    "plugins": list,
                }),
            )
        })
        .collect();
    json!({
        "node": {
            "id": &*node.id,
            "version": env!("CARGO_PKG_VERSION"),
            "broker": node.broker.kind(),
            "broker_up": node.broker.health() == switchyard_core::broker::BrokerHealth::Up,
            "draining": node.is_draining(),
            "uptime_seconds": registry.started.elapsed().as_secs(),
            "connections": registry.conns.len(),
            "open_sockets": server.open_connections(),
            "transports": node_transports,
            "subscriptions": node_subs,
            "messages_in_per_sec": round3(node_in),
            "messages_out_per_sec": round3(node_out),
            "delivery_latency": delivery_latency,
        },
        "tenants": tenants_json,
        "plugins": plugins,
        "window_seconds": base.map_or(0.0, |(dt, _)| round3(*dt)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition_lines() {
        let text = "# HELP x y\n\
            switchyard_plugin_calls_total{plugin=\"jwt-auth\",role=\"auth\",outcome=\"ok\"} 7\n\
            switchyard_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 3\n\
            plain 1.5\n\
            weird{v=\"a \\\"b\\\" c\"} 2\n";
        let s = parse_exposition(text);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].label("plugin"), Some("jwt-auth"));
        assert_eq!(s[0].label("outcome"), Some("ok"));
        assert!((s[0].value - 7.0).abs() < f64::EPSILON);
        assert_eq!(s[1].label("le"), Some("+Inf"));
        assert_eq!(s[2].name, "plain");
        assert_eq!(s[3].label("v"), Some("a \"b\" c"));
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let b = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        let p50 = quantile(&b, 0.5).expect("p50");
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        let p99 = quantile(&b, 0.99).expect("p99");
        assert!(p99 > 0.0019 && p99 <= 0.002, "{p99}");
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_170_800_123);
        assert_eq!(rfc3339_millis(t), "2026-12-02T00:20:00.123Z");
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn error_statuses() {
        assert_eq!(AdminError::Off.status(), StatusCode::NOT_FOUND);
        assert_eq!(AdminError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            AdminError::BadRequest(String::new()).status(),
            StatusCode::BAD_REQUEST
        );
        assert!(AdminError::Off.message().contains("admin API is off"));
    }
}
