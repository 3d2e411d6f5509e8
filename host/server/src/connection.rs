//! What every transport shares about a connection, so that WebSocket,
//! y-websocket, Centrifuge, SSE and long-poll are thin adapters over it:
//!
//! - **admission**: [`accepting`] (the node is not draining, and below
//!   `limits.max_connections`), then [`admit`] (tenant, Origin, client id,
//!   the per-address slot, the auth policy); [`refuse`] answers a refusal
//!   over HTTP;
//! - **the open-connection guard** [`Open`]: counts the connection for the
//!   cap and the drain wait from the moment a transport commits to it until
//!   it is dropped, on every exit path, and records how it ended;
//! - **the drain step** [`Drain`]: take everything queued in the session's
//!   [`Outbox`], hand the frames to the transport to encode, and once they
//!   are written run their `on_written` hooks, count them and sample their
//!   delivery latency.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, header};
use switchyard_core::backpressure::{CloseRequest, Outbox, Outgoing, WrittenHook};
use switchyard_core::metrics::{DeliveryMetrics, DeliverySample, Metrics, TransportLabel};
use switchyard_core::policy::{ConnectRequest, Denial};
use switchyard_core::protocol::Frame;

use crate::Server;
use crate::handshake::{self, HandshakeError};
use crate::response::{Resp, text};

/// The node takes new connections: not draining, and below
/// `limits.max_connections` (counted by [`Open`]).
pub(crate) fn accepting(server: &Server) -> Result<(), HandshakeError> {
    if server.node().is_draining() {
        return Err(HandshakeError::Draining);
    }
    if server.open_connections() >= server.node().limits().max_connections {
        return Err(HandshakeError::Overloaded);
    }
    Ok(())
}

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

/// Tenant resolution, Origin allow-list, client id, the per-address slot and
/// the auth policy: the checks every transport (WebSocket, y-websocket,
/// Centrifuge, SSE, long-poll) runs before a session, after [`accepting`].
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

/// The HTTP answer to a refused admission (status from [`HandshakeError::status`],
/// the `switchyard_handshake_rejections_total{reason}` count).
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

/// One connection as [`Server::open_connections`] counts it (the
/// `max_connections` cap, the wait of a graceful drain). Taken when a
/// transport commits to a client — before a WebSocket upgrade completes, so
/// the cap holds for upgrades in flight — and released when dropped, whatever
/// path the connection's task leaves by.
pub(crate) struct Open {
    server: Arc<Server>,
}

impl Open {
    /// Counts a connection as open.
    pub(crate) fn new(server: &Arc<Server>) -> Self {
        server.conn_opened();
        Open {
            server: server.clone(),
        }
    }

    /// The connection is up (upgraded, or its fallback session created):
    /// counted in `switchyard_connections_opened_total{transport}`.
    pub(crate) fn started(&self, transport: &'static str) {
        self.server
            .node()
            .metrics
            .connections_opened
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    /// Ends the connection with `code`, counted in
    /// `switchyard_connections_closed_total{code}`. Dropping an [`Open`]
    /// without this counts no close (an upgrade that never completed).
    pub(crate) fn closed(self, code: u16) {
        self.server.node().metrics.closed(code);
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.server.conn_closed();
    }
}

/// The drain step every transport runs on its connection's [`Outbox`]:
/// [`Drain::take`] what is queued, encode [`Drain::frames`], and once they
/// are written (flushed to the socket, or handed to hyper as a body chunk)
/// call [`Drain::written`]. Keeps its buffers across batches.
pub(crate) struct Drain {
    batch: VecDeque<Outgoing>,
    hooks: Vec<WrittenHook>,
    /// Frames taken since the last [`Drain::written`] / [`Drain::discard`].
    taken: u64,
    sample: DeliverySample,
    deliveries: DeliveryMetrics,
}

impl Drain {
    /// A drain recording into `deliveries` (the transport's and tenant's series).
    pub(crate) fn new(deliveries: DeliveryMetrics) -> Self {
        Drain {
            batch: VecDeque::new(),
            hooks: Vec::new(),
            taken: 0,
            sample: DeliverySample::default(),
            deliveries,
        }
    }

    /// Takes everything queued in `outbox`: its frames (for [`Drain::frames`])
    /// and, once the session is closing, the close to send after them.
    pub(crate) fn take(&mut self, outbox: &Outbox) -> Option<CloseRequest> {
        let close = outbox.take(&mut self.batch);
        self.taken = self.batch.len() as u64;
        close
    }

    /// Nothing was taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The frames taken, in order, for the transport to encode. Their
    /// `on_written` hooks wait for [`Drain::written`].
    pub(crate) fn frames(&mut self) -> impl Iterator<Item = Frame> + '_ {
        let (hooks, sample) = (&mut self.hooks, &mut self.sample);
        self.batch.drain(..).map(move |item| {
            if let Some(h) = item.on_written {
                hooks.push(h);
            }
            sample.offer(item.published_at, item.frame.bytes().len());
            item.frame
        })
    }

    /// The frames taken are written: runs their hooks, counts them in
    /// `switchyard_messages_out_total` and records the sampled deliveries.
    pub(crate) fn written(&mut self, metrics: &Metrics) {
        for h in self.hooks.drain(..) {
            h();
        }
        metrics.messages_out.inc_by(self.taken);
        self.taken = 0;
        self.sample.record(&self.deliveries);
    }

    /// Drops what was taken unwritten (a close that does not flush): no hook
    /// runs, nothing is counted.
    pub(crate) fn discard(&mut self) {
        self.batch.clear();
        self.hooks.clear();
        self.taken = 0;
    }
}

/// Spawns a connection's task. Logs at `trace` how many bytes the task's
/// future holds (`task_bytes`): the largest part of an idle connection's
/// memory (docs/benchmarks.md, "Idle memory"); a constant per build, read
/// with `RUST_LOG=switchyard_server::connection=trace`.
pub(crate) fn spawn<F>(transport: &'static str, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    tracing::trace!(
        transport,
        task_bytes = std::mem::size_of_val(&task),
        "connection task"
    );
    tokio::spawn(task);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use switchyard_core::protocol::CloseCode;

    use super::*;

    fn frame(text: &'static str) -> Frame {
        Frame::text(Bytes::from_static(text.as_bytes())).expect("utf-8")
    }

    fn hooked(outbox: &Outbox, ran: &Arc<AtomicUsize>, text: &'static str) {
        let ran = ran.clone();
        outbox
            .push(Outgoing {
                on_written: Some(Arc::new(move || {
                    ran.fetch_add(1, Ordering::Relaxed);
                })),
                ..Outgoing::frame(frame(text))
            })
            .expect("queued");
    }

    #[test]
    fn hooks_run_only_once_the_frames_are_written() {
        let metrics = Metrics::new();
        let outbox = Outbox::new(8);
        let ran = Arc::new(AtomicUsize::new(0));
        hooked(&outbox, &ran, "a");
        hooked(&outbox, &ran, "b");
        let mut drain = Drain::new(metrics.deliveries("ws", None));
        assert!(drain.take(&outbox).is_none());
        let frames: Vec<_> = drain.frames().map(|f| f.bytes().clone()).collect();
        assert_eq!(frames, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert_eq!(ran.load(Ordering::Relaxed), 0, "encoded, not yet written");
        drain.written(&metrics);
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.messages_out.get(), 2);
        assert!(drain.take(&outbox).is_none() && drain.is_empty());
    }

    #[test]
    fn frames_a_transport_skips_still_count_as_taken() {
        let metrics = Metrics::new();
        let outbox = Outbox::new(8);
        outbox.push_frame(frame("a")).expect("queued");
        outbox.push_frame(frame("b")).expect("queued");
        let mut drain = Drain::new(metrics.deliveries("ws", None));
        drain.take(&outbox);
        assert_eq!(drain.frames().skip(1).count(), 1);
        drain.written(&metrics);
        assert_eq!(metrics.messages_out.get(), 2);
    }

    #[test]
    fn a_discarded_batch_runs_no_hook_and_counts_nothing() {
        let metrics = Metrics::new();
        let outbox = Outbox::new(8);
        let ran = Arc::new(AtomicUsize::new(0));
        hooked(&outbox, &ran, "a");
        let mut drain = Drain::new(metrics.deliveries("ws", None));
        drain.take(&outbox);
        drain.frames().for_each(drop);
        drain.discard();
        drain.written(&metrics);
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.messages_out.get(), 0);
    }

    #[test]
    fn a_flushing_close_comes_after_the_frames_queued_before_it() {
        let metrics = Metrics::new();
        let outbox = Outbox::new(8);
        outbox.push_frame(frame("last")).expect("queued");
        outbox.close(CloseCode::Normal, true);
        let mut drain = Drain::new(metrics.deliveries("sse", None));
        assert!(drain.take(&outbox).is_none(), "the frames first");
        assert_eq!(drain.frames().count(), 1);
        drain.written(&metrics);
        let close = drain.take(&outbox).expect("then the close");
        assert_eq!(close.code, CloseCode::Normal);
        assert!(drain.is_empty());
    }
}
