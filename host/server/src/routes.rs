//! Request routing: one place that maps method + path to a handler.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::Server;
use crate::response::{Resp, json_refusal, status_of, text};
use crate::{api, cors, fallback, upgrade};
use switchyard_core::refusal::Refusal;

/// Dispatches one request (fallback paths get CORS headers for their origin).
pub async fn route(server: &Arc<Server>, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    match cors::fallback_origin(&req) {
        Some(origin) if cors::is_preflight(&req) => cors::preflight(&origin),
        Some(origin) => cors::allow(dispatch(server, req, remote).await, &origin),
        None => dispatch(server, req, remote).await,
    }
}

async fn dispatch(server: &Arc<Server>, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    let path = req.uri().path().to_owned();
    let node = server.node();
    match (req.method(), path.as_str()) {
        (_, "/ws") => upgrade::session(server, req, remote, None).await,
        (_, p) if p.starts_with("/ws/") => {
            let tenant = p["/ws/".len()..].trim_end_matches('/').to_owned();
            upgrade::session(server, req, remote, Some(tenant)).await
        }
        (_, p) if p.starts_with("/yjs/") => {
            // /yjs/{tenant}/{room}: the room may contain '/'.
            let rest = &p["/yjs/".len()..];
            match rest.split_once('/') {
                Some((tenant, room)) if !tenant.is_empty() && !room.is_empty() => {
                    let (tenant, room) =
                        (tenant.to_owned(), crate::handshake::percent_decode(room));
                    upgrade::yjs(server, req, remote, tenant, room).await
                }
                _ => text(status_of(Refusal::NotFound), "use /yjs/{tenant}/{room}\n"),
            }
        }
        (_, "/connection/websocket") => {
            crate::centrifuge::connection(server, req, remote, None).await
        }
        (_, p) if p.starts_with("/connection/websocket/") => {
            let tenant = p["/connection/websocket/".len()..]
                .trim_end_matches('/')
                .to_owned();
            crate::centrifuge::connection(server, req, remote, Some(tenant)).await
        }
        (&Method::GET, "/sse") => fallback::sse(server, req, remote, None).await,
        (&Method::POST, "/poll") => fallback::poll_open(server, req, remote, None).await,
        (_, p) if p.starts_with("/sse/session/") || p.starts_with("/poll/session/") => {
            let id = p.rsplit('/').next().unwrap_or("").to_owned();
            fallback::session_request(server, req, &id).await
        }
        (&Method::GET, p) if p.starts_with("/sse/") => {
            let tenant = p["/sse/".len()..].trim_end_matches('/').to_owned();
            fallback::sse(server, req, remote, Some(tenant)).await
        }
        (&Method::POST, p) if p.starts_with("/poll/") => {
            let tenant = p["/poll/".len()..].trim_end_matches('/').to_owned();
            fallback::poll_open(server, req, remote, Some(tenant)).await
        }
        (_, "/echo") => {
            if node.config.diagnostics.echo {
                upgrade::echo(server, req).await
            } else {
                text(
                    status_of(Refusal::NotFound),
                    "echo is disabled ([diagnostics] echo = false)\n",
                )
            }
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if node.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if node.broker.health() != switchyard_core::broker::BrokerHealth::Up {
                text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, node.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::POST, "/api/publish") | (&Method::POST, "/api/send") => {
            let (parts, body) = req.into_parts();
            let limit = node.limits().max_message_bytes + 1024;
            let body = match Limited::new(body, limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return json_refusal(
                        Refusal::TooBig,
                        "request body exceeds limits.max_message_bytes",
                    );
                }
            };
            if path == "/api/publish" {
                api::publish(node, &parts.headers, body).await
            } else {
                api::send(node, &parts.headers, body).await
            }
        }
        (m, p) if p.starts_with("/api/documents/") => {
            let channel = crate::handshake::percent_decode(&p["/api/documents/".len()..]);
            match *m {
                Method::GET => api::document_get(node, req.headers(), &channel).await,
                Method::POST => {
                    let (parts, body) = req.into_parts();
                    // A delta may be base64 in JSON: room for a patch of max_message_bytes.
                    let limit = node.limits().max_message_bytes * 4 / 3 + 1024;
                    let body = match Limited::new(body, limit).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => {
                            return json_refusal(
                                Refusal::TooBig,
                                "request body exceeds limits.max_message_bytes",
                            );
                        }
                    };
                    api::document_patch(node, &parts.headers, &channel, body).await
                }
                _ => text(status_of(Refusal::MethodNotAllowed), "method not allowed\n"),
            }
        }
        (_, p) if p == "/admin" || p.starts_with("/admin/") => {
            crate::admin::handle(server, req, remote).await
        }
        (_, "/api/publish" | "/api/send" | "/healthz" | "/readyz" | "/metrics") => {
            text(status_of(Refusal::MethodNotAllowed), "method not allowed\n")
        }
        _ => text(
            status_of(Refusal::NotFound),
            Bytes::from_static(b"not found\n"),
        ),
    }
}
