//! The upgrade endpoints: `/ws[/{tenant}]` (protocol sessions) and `/echo`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchyard_core::session::{Handler, Session};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

use crate::Server;
use crate::connection::{self, Open, admit, refuse};
use crate::echo::Echo;
use crate::handshake::{self, HandshakeError, Upgrade};
use crate::response::{Resp, status_of, text};
use crate::websocket::{self, TransportLimits};
use switchyard_core::refusal::Refusal;

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
    connection::accepting(server)?;
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
    let admitted = match admit(server, &req, remote, path_tenant.as_deref()) {
        Ok(a) => a,
        Err(e) => return refuse(server, e),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = switching(&up, server);
    let server = server.clone();
    let span = tracing::info_span!(
        "ws.connection",
        tenant = %admitted.tenant.id,
        client = %admitted.client_id,
        peer = %admitted.ip,
        traceparent = %admitted.traceparent,
    );
    let open = Open::new(&server);
    let config = ws_config(&server);
    let limits = transport_limits(&server);
    connection::spawn(
        "ws",
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let mut ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            let metrics = node.metrics.clone();
            open.started("ws");
            let _slot = admitted.slot; // this address's connection slot, held until the end
            let mut session = Session::open(
                node,
                admitted.tenant,
                Arc::from(admitted.client_id.as_str()),
                admitted.principal,
            )
            .traced(admitted.trace);
            let _listed = server
                .registry
                .register(&session, "websocket", admitted.remote);
            tracing::debug!(session = session.name(), "connected");
            let ended = websocket::drive(&mut ws, &mut session, limits, &metrics).await;
            session.close().await;
            open.closed(ended.code());
            tracing::debug!(?ended, "disconnected");
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
    let open = Open::new(&server);
    let config = ws_config(&server);
    let mut limits = transport_limits(&server);
    // y-websocket clients drop a connection silent for 30 s (pings are invisible to them).
    limits.heartbeat_interval = limits
        .heartbeat_interval
        .min(std::time::Duration::from_secs(10));
    let span =
        tracing::info_span!("yjs.connection", tenant = %tenant, room = %room, peer = %remote);
    connection::spawn(
        "yjs",
        async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            let metrics = node.metrics.clone();
            open.started("yjs");
            let admitted = match admitted {
                Ok(a) => a,
                Err(reason) => {
                    crate::yjs::refuse(&mut ws, &reason).await;
                    open.closed(4001);
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
            let _slot = admitted.slot;
            let _listed = server.registry.register(&session, "yjs", admitted.remote);
            let mut handler = crate::yjs::YjsSession::new(session, &room);
            let ended = websocket::drive(&mut ws, &mut handler, limits, &metrics).await;
            handler.leave().await;
            handler.into_session().close().await;
            open.closed(ended.code());
        }
        .instrument(span),
    );
    response
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
    let open = Open::new(&server);
    let config = ws_config(&server);
    let limits = transport_limits(&server);
    connection::spawn("echo", async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let node = server.node().clone();
        open.started("echo");
        let echo = Echo::new(node.limits().send_queue_messages);
        let id = node.next_session_id();
        server.track_echo(id, Some(echo.outbox().clone()));
        let ended = websocket::drive(&mut ws, echo, limits, &node.metrics).await;
        server.track_echo(id, None);
        open.closed(ended.code());
    });
    response
}
