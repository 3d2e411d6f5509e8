//! The upgrade endpoints: `/ws[/{tenant}]` (protocol sessions) and `/echo`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchyard_core::policy::{ConnectRequest, Denial};
use switchyard_core::session::{Handler, Session};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

use crate::Server;
use crate::echo::Echo;
use crate::handshake::{self, HandshakeError, Upgrade};
use crate::response::{Resp, status_of, text};
use crate::websocket::{self, TransportLimits};
use switchyard_core::refusal::Refusal;

/// A client admitted by tenant, origin, per-address and auth checks.
pub(crate) struct Admitted {
    pub tenant: Arc<switchyard_core::tenant::Tenant>,
    pub client_id: String,
    pub principal: switchyard_core::policy::Principal,
    pub traceparent: String,
    /// The connection's span ([`switchyard_core::telemetry::connection`]):
    /// a valid `traceparent`/`tracestate` is its parent; empty while tracing is off.
    pub trace: switchyard_core::telemetry::Trace,
    /// The client's real address (see [`crate::client_ip`]).
    pub ip: std::net::IpAddr,
    /// The address as the auth policy and `/admin/connections` show it.
    pub remote: String,
    /// Its connection slot: keep it for the connection's life.
    pub slot: crate::client_ip::IpSlot,
}

/// Tenant resolution, Origin allow-list, client id and the auth policy: the
/// checks every transport (WebSocket, SSE, long-poll) runs before a session.
pub(crate) fn admit<B>(
    server: &Server,
    req: &Request<B>,
    remote: SocketAddr,
    path_tenant: Option<&str>,
) -> Result<Admitted, HandshakeError> {
    let node = server.node();
    let headers = req.headers();
    let ip = crate::client_ip::real_ip(remote.ip(), headers, &server.proxies);
    let slot = server
        .per_ip
        .admit(ip, std::time::Instant::now())
        .map_err(HandshakeError::PerIp)?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let tenant = node
        .tenants
        .resolve(path_tenant, host)
        .ok_or(HandshakeError::UnknownTenant)?;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| tenant.origin_allowed(o));
        if !ok {
            return Err(HandshakeError::Origin);
        }
    }
    let query = req.uri().query().unwrap_or("");
    let client_id = match headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| handshake::query_param(query, "client_id"))
    {
        Some(id) if handshake::valid_client_id(&id) => id,
        Some(_) => return Err(HandshakeError::ClientId),
        None => uuid::Uuid::new_v4().to_string(),
    };
    // Only a valid W3C traceparent reaches the log span.
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| switchyard_core::telemetry::TraceParent::parse(v).is_some())
        .unwrap_or("")
        .to_owned();
    let remote_addr = if ip == remote.ip() {
        remote.to_string()
    } else {
        ip.to_string()
    };
    let connect = Arc::new(ConnectRequest {
        tenant: tenant.id.to_string(),
        path: req.uri().path().to_owned(),
        query: query.to_owned(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        remote_addr: remote_addr.clone(),
        client_id: client_id.clone(),
        token: handshake::bearer_token(headers, query),
    });
    let trace = if switchyard_core::telemetry::enabled() {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        switchyard_core::telemetry::connection(
            transport_of(req.uri().path()),
            &tenant.id,
            &client_id,
            header("traceparent"),
            header("tracestate"),
        )
    } else {
        switchyard_core::telemetry::Trace::NONE
    };
    let verdict = {
        // The auth plugin's span is a child of the connection's.
        let _cx = trace.attach();
        tenant.policies().auth.authenticate(&connect)
    };
    if let Err(d) = &verdict
        && trace.is_some()
    {
        trace.fail(d.to_string());
    }
    let principal = match verdict {
        Ok(p) => p,
        Err(Denial::Forbidden(m)) => return Err(HandshakeError::Forbidden(m)),
        Err(Denial::RateLimited { .. }) => return Err(HandshakeError::RateLimited),
        Err(d) => return Err(HandshakeError::Unauthorized(d.to_string())),
    };
    Ok(Admitted {
        tenant,
        client_id,
        principal,
        traceparent,
        trace,
        ip,
        remote: remote_addr,
        slot,
    })
}

/// The `switchyard.transport` of a connection span, from its path.
fn transport_of(path: &str) -> &'static str {
    match path.trim_start_matches('/').split('/').next() {
        Some("ws") => "websocket",
        Some("yjs") => "yjs",
        Some("connection") => "centrifuge",
        Some("sse") => "sse",
        Some("poll") => "poll",
        _ => "http",
    }
}

pub(crate) fn refuse(server: &Server, e: HandshakeError) -> Resp {
    server.node().metrics.rejected(e.reason());
    let mut r = text(e.status(), format!("{e}\n"));
    match e {
        HandshakeError::Version => {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        HandshakeError::NotUpgrade => {
            r.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        _ => {}
    }
    r
}

pub(crate) fn ws_config(server: &Server) -> WebSocketConfig {
    let l = server.node().limits();
    WebSocketConfig::default()
        .read_buffer_size(l.read_buffer_bytes.max(256))
        .write_buffer_size(l.write_buffer_bytes)
        .max_message_size(Some(l.max_message_bytes))
        .max_frame_size(Some(l.max_message_bytes))
}

pub(crate) fn transport_limits(server: &Server) -> TransportLimits {
    let l = server.node().limits();
    TransportLimits {
        heartbeat_interval: l.heartbeat_interval,
        idle_timeout: l.idle_timeout,
        close_timeout: l.close_timeout,
    }
}

pub(crate) fn switching(up: &Upgrade, server: &Server) -> Resp {
    let mut r = Response::new(crate::response::full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&up.accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = up.subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    let cfg = &server.node().config.server;
    let node = &server.node().id;
    if !cfg.node_header.is_empty()
        && let (Ok(name), Ok(v)) = (
            header::HeaderName::from_bytes(cfg.node_header.as_bytes()),
            HeaderValue::from_str(node),
        )
    {
        h.insert(name, v);
    }
    if !cfg.sticky_cookie.is_empty()
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{}={node}; Path=/; HttpOnly; SameSite=Lax",
            cfg.sticky_cookie
        ))
    {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

pub(crate) fn precheck(
    server: &Server,
    req: &Request<Incoming>,
) -> Result<Upgrade, HandshakeError> {
    let up = handshake::validate(req.method(), req.headers())?;
    if server.node().is_draining() {
        return Err(HandshakeError::Draining);
    }
    if server.open_connections() >= server.node().limits().max_connections {
        return Err(HandshakeError::Overloaded);
    }
    Ok(up)
}

/// `/ws` and `/ws/{tenant}`.
pub async fn session(
    server: &Arc<Server>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    path_tenant: Option<String>,
) -> Resp {
    let up = match precheck(server, &req) {
        Ok(u) => u,
        Err(e) => return refuse(server, e),
    };
    let node = server.node().clone();
    let Admitted {
        tenant,
        client_id,
        principal,
        traceparent,
        trace,
        ip,
        remote: remote_addr,
        slot,
    } = match admit(server, &req, remote, path_tenant.as_deref()) {
        Ok(a) => a,
        Err(e) => return refuse(server, e),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = switching(&up, server);
    let server = server.clone();
    let span = tracing::info_span!(
        "ws.connection",
        tenant = %tenant.id,
        client = %client_id,
        peer = %ip,
        traceparent = %traceparent,
    );
    server.conn_opened();
    let config = ws_config(&server);
    let limits = transport_limits(&server);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    server.conn_closed();
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            let metrics = node.metrics.clone();
            metrics
                .connections_opened
                .get_or_create(&switchyard_core::metrics::TransportLabel { transport: "ws" })
                .inc();
            let _slot = slot; // this address's connection slot, held until the end
            let session =
                Session::open(node, tenant, Arc::from(client_id.as_str()), principal).traced(trace);
            let _listed = server.registry.register(&session, "websocket", remote_addr);
            tracing::debug!(session = session.name(), "connected");
            let (ended, session) = drive_owned(ws, session, limits, &metrics).await;
            session.close().await;
            metrics.closed(ended.code());
            tracing::debug!(?ended, "disconnected");
            server.conn_closed();
        }
        .instrument(span),
    );
    response
}

/// `/yjs/{tenant}/{room}`: a y-websocket connection on document channel
/// `yjs:{room}` ([`crate::yjs`]). A client the auth policy refuses is
/// upgraded anyway and told "permission denied" (the auth message
/// y-websocket clients understand), then closed with 4001: over HTTP they
/// would only retry forever.
pub async fn yjs(
    server: &Arc<Server>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    tenant: String,
    room: String,
) -> Resp {
    let up = match precheck(server, &req) {
        Ok(u) => u,
        Err(e) => return refuse(server, e),
    };
    if switchyard_core::channel::validate(&crate::yjs::doc_channel(&room)).is_err() {
        return text(status_of(Refusal::BadRequest), "bad room name\n");
    }
    let admitted = match admit(server, &req, remote, Some(&tenant)) {
        Ok(a) => Ok(a),
        Err(HandshakeError::Unauthorized(m) | HandshakeError::Forbidden(m)) => Err(m),
        Err(e) => return refuse(server, e),
    };
    let node = server.node().clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = switching(&up, server);
    let server = server.clone();
    server.conn_opened();
    let config = ws_config(&server);
    let mut limits = transport_limits(&server);
    // y-websocket clients drop a connection silent for 30 s (pings are invisible to them).
    limits.heartbeat_interval = limits
        .heartbeat_interval
        .min(std::time::Duration::from_secs(10));
    let span =
        tracing::info_span!("yjs.connection", tenant = %tenant, room = %room, peer = %remote);
    tokio::spawn(
        async move {
            let Ok(upgraded) = on_upgrade.await else {
                server.conn_closed();
                return;
            };
            let mut ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            let metrics = node.metrics.clone();
            metrics
                .connections_opened
                .get_or_create(&switchyard_core::metrics::TransportLabel { transport: "yjs" })
                .inc();
            let admitted = match admitted {
                Ok(a) => a,
                Err(reason) => {
                    crate::yjs::refuse(&mut ws, &reason).await;
                    metrics.closed(4001);
                    server.conn_closed();
                    return;
                }
            };
            let session = Session::open(
                node,
                admitted.tenant,
                Arc::from(admitted.client_id.as_str()),
                admitted.principal,
            )
            .traced(admitted.trace);
            let _listed = server.registry.register(&session, "yjs", admitted.remote);
            let handler = crate::yjs::YjsSession::new(session, &room);
            let (ended, mut handler) = drive_owned(ws, handler, limits, &metrics).await;
            handler.leave().await;
            handler.into_session().close().await;
            metrics.closed(ended.code());
            server.conn_closed();
        }
        .instrument(span),
    );
    response
}

/// Runs the transport and hands the handler back for teardown.
async fn drive_owned<H: Handler>(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    handler: H,
    limits: TransportLimits,
    metrics: &switchyard_core::metrics::Metrics,
) -> (websocket::Ended, H) {
    let mut handler = handler;
    let ended = websocket::drive(ws, &mut handler, limits, metrics).await;
    (ended, handler)
}

/// `/echo` (diagnostics).
pub async fn echo(server: &Arc<Server>, mut req: Request<Incoming>) -> Resp {
    let up = match precheck(server, &req) {
        Ok(u) => u,
        Err(e) => return refuse(server, e),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = switching(&up, server);
    let server = server.clone();
    server.conn_opened();
    let config = ws_config(&server);
    let limits = transport_limits(&server);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            server.conn_closed();
            return;
        };
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let node = server.node().clone();
        node.metrics
            .connections_opened
            .get_or_create(&switchyard_core::metrics::TransportLabel { transport: "echo" })
            .inc();
        let echo = Echo::new(node.limits().send_queue_messages);
        let id = node.next_session_id();
        server.track_echo(id, Some(echo.outbox().clone()));
        let (ended, _echo) = drive_owned(ws, echo, limits, &node.metrics).await;
        server.track_echo(id, None);
        node.metrics.closed(ended.code());
        server.conn_closed();
    });
    response
}
