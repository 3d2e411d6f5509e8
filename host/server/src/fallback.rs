//! Fallback transports for clients that cannot hold a WebSocket: Server-Sent
//! Events and long-polling. Both run the same [`Session`] as WebSocket: same
//! commands, replies, recovery, limits and backpressure.
//!
//! - SSE: `GET /sse[/{tenant}]?channels=a:1,b:2` streams every server frame as
//!   `data: <json>`; `since=a:1@<epoch>:<seq>,…` recovers. Commands go to
//!   `POST /sse/session/{session}` (202; replies arrive on the stream).
//! - Long-poll: `POST /poll[/{tenant}]` opens a session (`{"session":…,"frames":[welcome]}`);
//!   `GET /poll/session/{session}?wait=25` returns queued frames (waiting up to
//!   `wait` seconds for one); `POST /poll/session/{session}` sends a command;
//!   `DELETE /poll/session/{session}` closes. A session not polled for
//!   `limits.idle_timeout` is closed.
//!
//! Every `POST`/`DELETE` to a session must carry the session's CSRF token
//! (`"csrf"` in the SSE `welcome` and the long-poll open reply) as the header
//! `X-Switchyard-CSRF` — a non-simple header, so a foreign page cannot send it
//! without a CORS preflight — and any session request with an `Origin` must come
//! from an allowed one; otherwise 403 and nothing is run. A tenant's
//! `fallbacks` list enables the transports (a disabled one answers 404).
//!
//! A close is delivered as `{"type":"close","code":…,"reason":…}` (SSE: event
//! `close`), after which the session is gone (404).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use switchyard_core::backpressure::{CloseRequest, Outbox};
use switchyard_core::config::FallbackKind;
use switchyard_core::protocol::{CloseCode, Command, CommandId, StreamPosition};
use switchyard_core::refusal::Refusal;
use switchyard_core::session::{Handler, Session};
use switchyard_core::tenant::Tenant;
use tokio::sync::mpsc;

use crate::Server;
use crate::connection::{self, Admitted, Drain, Open, admit, refuse};
use crate::handshake::{self, HandshakeError};
use crate::response::{Resp, json_ok, json_refusal, with_type};

/// Commands a fallback session may have waiting.
const COMMAND_QUEUE: usize = 64;
/// Most channels a `channels=` list subscribes (the rest are ignored).
const INITIAL_CHANNELS: usize = 64;
/// Longest long-poll wait.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// A fallback session reachable by its name.
pub(crate) struct Fallback {
    /// Bound to the session: every POST/DELETE must echo it as `X-Switchyard-CSRF`.
    csrf: String,
    tenant: Arc<Tenant>,
    commands: mpsc::Sender<Bytes>,
    outbox: Arc<Outbox>,
    poll: tokio::sync::Mutex<()>,
    last_poll: parking_lot::Mutex<tokio::time::Instant>,
    closed: parking_lot::Mutex<Option<CloseRequest>>,
    /// Publish-to-deliver and outbound size histograms of this transport.
    deliveries: switchyard_core::metrics::DeliveryMetrics,
}

fn close_frame(c: CloseRequest, outbox: &Outbox) -> String {
    let reason = outbox.close_reason();
    let reason = serde_json::Value::from(reason.as_deref().unwrap_or(c.code.reason()));
    format!(
        "{{\"type\":\"close\",\"code\":{},\"reason\":{reason}}}",
        c.code.code()
    )
}

/// Opens a session for a fallback transport and spawns the task that owns
/// it, which runs `initial` (the subscriptions the open request named) first.
fn open(
    server: &Arc<Server>,
    admitted: Admitted,
    transport: &'static str,
    initial: Vec<Command>,
) -> (String, Arc<Fallback>) {
    let node = server.node().clone();
    let counted = Open::new(server);
    counted.started(transport);
    let csrf = uuid::Uuid::new_v4().simple().to_string();
    let tenant = admitted.tenant.clone();
    let label = tenant.metric_label();
    let slot = admitted.slot; // the address's connection slot, held by the session task
    let session = Session::open_with(
        node.clone(),
        admitted.tenant,
        Arc::from(admitted.client_id.as_str()),
        admitted.principal,
        Some(&csrf),
    )
    .text_only()
    .traced(admitted.trace);
    let name = session.name().to_owned();
    let listed = server
        .registry
        .register(&session, transport, admitted.remote);
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let handle = Arc::new(Fallback {
        csrf,
        tenant,
        commands: tx,
        outbox: session.outbox().clone(),
        poll: tokio::sync::Mutex::new(()),
        last_poll: parking_lot::Mutex::new(tokio::time::Instant::now()),
        closed: parking_lot::Mutex::new(None),
        deliveries: node.metrics.deliveries(transport, Some(label.as_str())),
    });
    server.fallbacks.insert(name.clone(), handle.clone());
    let (server, name2) = (server.clone(), name.clone());
    let idle = node.limits().idle_timeout;
    let expire = transport == "poll";
    let h = handle.clone();
    connection::spawn(transport, async move {
        let _slot = slot;
        let mut session = session;
        let mut rx = rx;
        for cmd in initial {
            if let Err(code) = session.command(cmd).await {
                h.outbox.close(code, true);
            }
        }
        loop {
            let idle_deadline = *h.last_poll.lock() + idle;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(text) => {
                        if let Err(code) = session.on_text(text).await {
                            h.outbox.close(code, true);
                        }
                    }
                    None => break,
                },
                () = h.outbox.closed() => break,
                () = tokio::time::sleep_until(idle_deadline), if expire => {
                    if *h.last_poll.lock() + idle <= tokio::time::Instant::now() {
                        h.outbox.close(CloseCode::GoingAway, false);
                        break;
                    }
                }
            }
        }
        session.close().await;
        drop(listed);
        counted.closed(
            h.closed
                .lock()
                .map_or(CloseCode::Normal.code(), |c| c.code.code()),
        );
        if !node.is_draining() {
            // Keep the handle briefly so a last poll can read the close.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        server.fallbacks.remove(&name2);
    });
    (name, handle)
}

/// The subscriptions an open request names: `channels=a,b` (at most
/// [`INITIAL_CHANNELS`]), each recovering from its `since=a@<epoch>:<seq>`
/// position when one is given, with ids `init-0`, `init-1`, … (as the
/// replies show them). Names are checked by the session, as for any
/// `subscribe`: a bad one gets its `error` reply.
fn initial_subscriptions(query: &str) -> Vec<Command> {
    let channels = handshake::query_param(query, "channels").unwrap_or_default();
    let since = handshake::query_param(query, "since").unwrap_or_default();
    channels
        .split(',')
        .filter(|c| !c.is_empty())
        .take(INITIAL_CHANNELS)
        .enumerate()
        .map(|(i, ch)| {
            let since = since.split(',').find_map(|s| {
                let (c, rest) = s.split_once('@')?;
                let (epoch, seq) = rest.rsplit_once(':')?;
                if c != ch {
                    return None;
                }
                Some(StreamPosition {
                    epoch: epoch.to_owned(),
                    seq: seq.parse().ok()?,
                })
            });
            Command::Subscribe {
                id: init_id(i),
                channel: ch.to_owned(),
                since,
                state_vector: None,
                presence: false,
            }
        })
        .collect()
}

/// `"init-{i}"` as a command id.
fn init_id(i: usize) -> Option<CommandId> {
    serde_json::value::RawValue::from_string(format!("\"init-{i}\"")).ok()
}

fn sse_event(out: &mut BytesMut, json: &[u8]) {
    out.extend_from_slice(b"data: ");
    for &b in json {
        match b {
            // Raw newlines may appear inside client JSON whitespace: continue the data line.
            b'\n' => out.extend_from_slice(b"\ndata: "),
            b'\r' => {}
            _ => out.extend_from_slice(&[b]),
        }
    }
    out.extend_from_slice(b"\n\n");
}

/// Node state (draining, capacity) and admission, as for a WebSocket upgrade.
fn admit_fallback(
    server: &Server,
    req: &Request<Incoming>,
    remote: SocketAddr,
    path_tenant: Option<&str>,
) -> Result<Admitted, HandshakeError> {
    connection::accepting(server)?;
    admit(server, req, remote, path_tenant)
}

/// Admits the client, opens its session and subscribes the `channels=` it named.
async fn start(
    server: &Arc<Server>,
    req: &Request<Incoming>,
    remote: SocketAddr,
    path_tenant: Option<String>,
    transport: &'static str,
) -> Result<(String, Arc<Fallback>), Box<Resp>> {
    let admitted = admit_fallback(server, req, remote, path_tenant.as_deref())
        .map_err(|e| Box::new(refuse(server, e)))?;
    let kind = if transport == "sse" {
        FallbackKind::Sse
    } else {
        FallbackKind::Poll
    };
    if !admitted.tenant.config().fallbacks.contains(&kind) {
        return Err(Box::new(json_refusal(
            Refusal::NotFound,
            &format!("{transport} is not enabled for this tenant (tenants.<id>.fallbacks)"),
        )));
    }
    let initial = initial_subscriptions(req.uri().query().unwrap_or(""));
    Ok(open(server, admitted, transport, initial))
}

/// `GET /sse[/{tenant}]`.
pub async fn sse(
    server: &Arc<Server>,
    req: Request<Incoming>,
    remote: SocketAddr,
    path_tenant: Option<String>,
) -> Resp {
    let (name, handle) = match start(server, &req, remote, path_tenant, "sse").await {
        Ok(started) => started,
        Err(resp) => return *resp,
    };
    let heartbeat = server.node().limits().heartbeat_interval;
    let metrics = server.node().metrics.clone();
    struct State {
        handle: Arc<Fallback>,
        drain: Drain,
        tick: tokio::time::Interval,
        done: bool,
    }
    impl Drop for State {
        fn drop(&mut self) {
            // The client went away (or the stream ended): end the session.
            self.handle.outbox.close(CloseCode::Normal, false);
        }
    }
    let mut tick = tokio::time::interval(heartbeat);
    tick.reset();
    let state = State {
        drain: Drain::new(handle.deliveries.clone()),
        handle,
        tick,
        done: false,
    };
    let body = stream::unfold(state, move |mut st| {
        let metrics = metrics.clone();
        async move {
            if st.done {
                return None;
            }
            loop {
                let close = st.drain.take(&st.handle.outbox);
                let mut out = BytesMut::new();
                for frame in st.drain.frames() {
                    sse_event(&mut out, frame.bytes());
                }
                // Handed to hyper for the socket: as written as SSE gets.
                st.drain.written(&metrics);
                if let Some(c) = close {
                    *st.handle.closed.lock() = Some(c);
                    out.extend_from_slice(b"event: close\n");
                    sse_event(&mut out, close_frame(c, &st.handle.outbox).as_bytes());
                    st.done = true;
                }
                if !out.is_empty() {
                    return Some((Ok::<_, Infallible>(BodyFrame::data(out.freeze())), st));
                }
                tokio::select! {
                    () = st.handle.outbox.ready() => {}
                    _ = st.tick.tick() => {
                        return Some((Ok(BodyFrame::data(Bytes::from_static(b": heartbeat\n\n"))), st));
                    }
                }
            }
        }
    });
    let mut r = Response::new(StreamBody::new(body).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        h.insert("x-switchyard-session", v);
    }
    r
}

/// `POST /poll[/{tenant}]`: opens a long-poll session.
pub async fn poll_open(
    server: &Arc<Server>,
    req: Request<Incoming>,
    remote: SocketAddr,
    path_tenant: Option<String>,
) -> Resp {
    let (name, handle) = match start(server, &req, remote, path_tenant, "poll").await {
        Ok(started) => started,
        Err(resp) => return *resp,
    };
    let frames = collect(&handle, Duration::ZERO, &server.node().metrics).await;
    let interval = handle.tenant.config().poll_interval.as_millis();
    with_type(
        StatusCode::OK,
        "application/json",
        format!(
            "{{\"session\":\"{name}\",\"csrf\":\"{}\",\"pollInterval\":{interval},\"frames\":{frames}}}",
            handle.csrf
        ),
    )
}

/// Takes what is queued (waiting up to `wait` for something) as a JSON array.
async fn collect(
    handle: &Fallback,
    wait: Duration,
    metrics: &switchyard_core::metrics::Metrics,
) -> String {
    // Per poll response: its first delivery, then one in 8.
    let mut drain = Drain::new(handle.deliveries.clone());
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let close = drain.take(&handle.outbox);
        if !drain.is_empty() || close.is_some() || tokio::time::Instant::now() >= deadline {
            let mut out = String::from("[");
            for (i, frame) in drain.frames().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(frame.as_str());
            }
            // The response body: as written as long-poll gets.
            drain.written(metrics);
            if let Some(c) = close {
                *handle.closed.lock() = Some(c);
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&close_frame(c, &handle.outbox));
                handle.outbox.close(c.code, false);
            }
            out.push(']');
            return out;
        }
        tokio::select! {
            () = handle.outbox.ready() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `/sse/session/{id}` and `/poll/session/{id}`: commands, polls, close.
pub async fn session_request(server: &Arc<Server>, req: Request<Incoming>, id: &str) -> Resp {
    let Some(handle) = server.fallbacks.get(id).map(|h| h.value().clone()) else {
        return json_refusal(Refusal::NotFound, "no such session");
    };
    // A page on a foreign origin must not read or drive a session whose name it learnt.
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !origin
            .to_str()
            .is_ok_and(|o| handle.tenant.origin_allowed(o))
    {
        return json_refusal(Refusal::Forbidden, "origin not allowed");
    }
    if matches!(*req.method(), http::Method::POST | http::Method::DELETE) {
        let given = req
            .headers()
            .get("x-switchyard-csrf")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !switchyard_core::tenant::constant_time_eq(given, handle.csrf.as_bytes()) {
            return json_refusal(
                Refusal::Forbidden,
                "missing or wrong X-Switchyard-CSRF (the token of the session's welcome / open reply)",
            );
        }
    }
    match *req.method() {
        http::Method::GET => {
            let Ok(_guard) = handle.poll.try_lock() else {
                return json_refusal(Refusal::Conflict, "another poll is waiting");
            };
            *handle.last_poll.lock() = tokio::time::Instant::now();
            if let Some(c) = *handle.closed.lock() {
                return with_type(
                    StatusCode::GONE,
                    "application/json",
                    format!("[{}]", close_frame(c, &handle.outbox)),
                );
            }
            let wait = handshake::query_param(req.uri().query().unwrap_or(""), "wait")
                .and_then(|w| w.parse::<u64>().ok())
                .map_or(Duration::from_secs(25), Duration::from_secs)
                .min(MAX_WAIT);
            let frames = collect(&handle, wait, &server.node().metrics).await;
            *handle.last_poll.lock() = tokio::time::Instant::now();
            with_type(StatusCode::OK, "application/json", frames)
        }
        http::Method::POST => {
            let limit = server.node().limits().max_message_bytes;
            let body = match http_body_util::Limited::new(req.into_body(), limit)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return json_refusal(
                        Refusal::TooBig,
                        "command exceeds limits.max_message_bytes",
                    );
                }
            };
            *handle.last_poll.lock() = tokio::time::Instant::now();
            match handle.commands.try_send(body) {
                Ok(()) => json_ok(StatusCode::ACCEPTED, &serde_json::json!({"queued": true})),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    json_refusal(Refusal::RateLimited, "too many commands in flight")
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    json_refusal(Refusal::NotFound, "session closed")
                }
            }
        }
        http::Method::DELETE => {
            handle.outbox.close(CloseCode::Normal, false);
            *handle.closed.lock() = Some(CloseRequest {
                code: CloseCode::Normal,
                flush: false,
            });
            json_ok(StatusCode::OK, &serde_json::json!({"closed": true}))
        }
        _ => json_refusal(Refusal::MethodNotAllowed, "use GET, POST or DELETE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscribe as (id, channel, since).
    type Sub = (String, String, Option<(String, u64)>);

    fn subscribes(cmds: &[Command]) -> Vec<Sub> {
        cmds.iter()
            .map(|c| match c {
                Command::Subscribe {
                    id,
                    channel,
                    since,
                    state_vector: None,
                    presence: false,
                } => (
                    id.as_ref().map(|i| i.get().to_owned()).unwrap_or_default(),
                    channel.clone(),
                    since.as_ref().map(|p| (p.epoch.clone(), p.seq)),
                ),
                other => panic!("not a plain subscribe: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn channels_become_typed_subscribes_with_their_positions() {
        let cmds = initial_subscriptions("channels=a,b:x,c&since=b:x@e1:7,a@e0:bad,c@e2");
        assert_eq!(
            subscribes(&cmds),
            [
                ("\"init-0\"".into(), "a".into(), None),
                ("\"init-1\"".into(), "b:x".into(), Some(("e1".into(), 7))),
                ("\"init-2\"".into(), "c".into(), None),
            ]
        );
    }

    #[test]
    fn no_channels_no_commands_and_the_list_is_capped() {
        assert!(initial_subscriptions("").is_empty());
        assert!(initial_subscriptions("channels=,,").is_empty());
        let many = (0..100)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let cmds = initial_subscriptions(&format!("channels={many}"));
        assert_eq!(cmds.len(), INITIAL_CHANNELS);
    }

    #[test]
    fn a_name_the_session_will_refuse_is_passed_on_unchanged() {
        // The session answers it with an `error` reply, as for a client's own subscribe.
        let cmds = initial_subscriptions("channels=bad%20name");
        assert_eq!(subscribes(&cmds)[0].1, "bad name");
    }
}
