//! Switchyard's HTTP side: the hyper server, WebSocket upgrade and transport,
//! the HTTP API, metrics, health, admin and graceful drain.

pub mod admin;
pub mod api;
pub mod centrifuge;
pub mod client_ip;
pub(crate) mod connection;
pub mod cors;
pub mod echo;
pub mod fallback;
pub mod handshake;
pub mod response;
pub mod routes;
pub mod tls;
pub mod upgrade;
pub mod websocket;
pub mod yjs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot_shim::Mutex;
use switchyard_core::Node;
use switchyard_core::backpressure::Outbox;
use switchyard_core::protocol::{CloseCode, encode};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod parking_lot_shim {
    pub use std::sync::Mutex;
}

/// What the plugin runtime answers on `/admin/plugins` and `/admin/shadow`.
pub trait AdminSource: Send + Sync {
    /// JSON list of plugins with name, role, hash, loaded-at, status, last error.
    fn plugins(&self) -> serde_json::Value;

    /// `GET /admin/shadow`: shadowed tenant roles with their counts and last
    /// differences, and promoted shadows. Default: none.
    fn shadow(&self) -> serde_json::Value {
        serde_json::json!({"shadows": [], "promoted": []})
    }

    /// `POST /admin/shadow/promote`: `tenant`'s shadow for `role` serves from
    /// now on; returns the plugin now serving. Default: nothing to promote.
    fn promote(&self, tenant: &str, role: &str) -> Result<String, PromoteRefused> {
        let _ = (tenant, role);
        Err(PromoteRefused::NotFound("no plugin runtime".into()))
    }

    /// `POST /admin/record`: records `tenant`'s next `calls` calls of `role`;
    /// returns the recording's status. Default: no plugin runtime.
    fn record(
        &self,
        tenant: &str,
        role: &str,
        calls: u64,
    ) -> Result<serde_json::Value, RecordRefused> {
        let _ = (tenant, role, calls);
        Err(RecordRefused::NotFound("no plugin runtime".into()))
    }

    /// `GET /admin/record`: running and recent recordings. Default: none.
    fn recordings(&self) -> serde_json::Value {
        serde_json::json!({"recordings": []})
    }
}

/// Why `POST /admin/record` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordRefused {
    /// Malformed request (unknown role, merge, calls out of range): 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such tenant, or the role is not served by a plugin: 404.
    #[error("{0}")]
    NotFound(String),
    /// That tenant role is being recorded already: 409.
    #[error("{0}")]
    Busy(String),
    /// The recording file could not be created: 500.
    #[error("{0}")]
    Failed(String),
}

/// Why `POST /admin/shadow/promote` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteRefused {
    /// Malformed request (unknown role): 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such tenant, or no shadow running for the role: 404.
    #[error("{0}")]
    NotFound(String),
}

/// The server of one node.
pub struct Server {
    node: Arc<Node>,
    admin: Option<Arc<dyn AdminSource>>,
    open: AtomicUsize,
    echo_conns: Mutex<HashMap<u64, Arc<Outbox>>>,
    pub(crate) fallbacks: dashmap::DashMap<String, Arc<fallback::Fallback>>,
    stop: watch::Sender<bool>,
    tls: Option<Arc<tls::Tls>>,
    /// Per-address connection and handshake limits.
    pub(crate) per_ip: client_ip::PerIp,
    /// `server.trusted_proxies`, parsed.
    pub(crate) proxies: Vec<client_ip::Cidr>,
    /// Every session on this node, for `/admin/connections` and `/admin/stats`.
    pub(crate) registry: Arc<admin::Registry>,
    /// Signalled by `POST /admin/drain` ([`Server::drain_requested`]).
    drain_request: tokio::sync::Notify,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node", &self.node.id)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `node`.
    pub fn new(node: Arc<Node>, admin: Option<Arc<dyn AdminSource>>) -> Arc<Self> {
        Self::with_tls(node, admin, None)
    }

    /// A server for `node` that, with `tls`, serves TLS only on its listener
    /// (every accepted connection handshakes before HTTP).
    pub fn with_tls(
        node: Arc<Node>,
        admin: Option<Arc<dyn AdminSource>>,
        tls: Option<Arc<tls::Tls>>,
    ) -> Arc<Self> {
        let (stop, _) = watch::channel(false);
        let l = node.limits();
        let per_ip = client_ip::PerIp::new(l.max_connections_per_ip, l.handshakes_per_ip_per_sec);
        let proxies = node
            .config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|p| match client_ip::Cidr::parse(p) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "server.trusted_proxies entry ignored");
                    None
                }
            })
            .collect();
        Arc::new(Self {
            per_ip,
            proxies,
            node,
            admin,
            open: AtomicUsize::new(0),
            echo_conns: Mutex::new(HashMap::new()),
            fallbacks: dashmap::DashMap::new(),
            stop,
            tls,
            registry: Arc::new(admin::Registry::default()),
            drain_request: tokio::sync::Notify::new(),
        })
    }

    /// The listener's TLS side, when `[server.tls]` is set.
    pub fn tls(&self) -> Option<&Arc<tls::Tls>> {
        self.tls.as_ref()
    }

    /// The node served.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Open WebSocket connections (sessions and echo).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Accepts connections until [`Server::stop_accepting`] is called.
    pub async fn run(self: &Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        set_keepalive(&stream, self.node.limits());
                        let this = self.clone();
                        tokio::spawn(async move { this.serve_connection(stream, remote).await });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => break,
            }
        }
        tracing::info!("listener closed");
    }

    async fn serve_connection(self: Arc<Self>, stream: tokio::net::TcpStream, remote: SocketAddr) {
        let Some(tls) = self.tls.clone() else {
            return self.serve_http(stream, remote).await;
        };
        let timeout = self.node.limits().handshake_timeout;
        match tls.accept(stream, timeout).await {
            Ok(stream) => self.serve_http(stream, remote).await,
            Err(e) => {
                self.node.metrics.rejected("tls");
                tracing::debug!(%remote, error = %e, "tls handshake refused");
            }
        }
    }

    async fn serve_http<IO>(self: Arc<Self>, stream: IO, remote: SocketAddr)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(stream);
        let this = self.clone();
        let svc = service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(routes::route(&this, req, remote).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.node.limits().handshake_timeout)
            .max_buf_size(64 * 1024);
        if let Err(e) = builder.serve_connection(io, svc).with_upgrades().await {
            tracing::debug!(%remote, error = %e, "http connection ended with error");
        }
    }

    /// Stops the accept loop (drain step 1).
    pub fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }

    /// Sends `SERVER_SHUTDOWN` to every client and closes it with 1001 once its
    /// queue is flushed (drain step 2).
    pub fn announce_shutdown(&self) {
        let reconnect_ms =
            u64::try_from(self.node.config.server.reconnect_in.as_millis()).unwrap_or(2000);
        let frame = encode::shutdown(reconnect_ms);
        self.node.hub.for_each_connection(|c| {
            let _ = c.outbox.push_frame(frame.clone());
            c.outbox.close(CloseCode::GoingAway, true);
        });
        if let Ok(echo) = self.echo_conns.lock() {
            for o in echo.values() {
                o.close(CloseCode::GoingAway, true);
            }
        }
    }

    /// Graceful drain: readiness fails, the listener stops, clients are told to
    /// reconnect elsewhere and closed with 1001; returns when all are gone or at
    /// `drain_timeout`. Returns the connections still open.
    pub async fn drain(&self) -> usize {
        self.node.start_drain();
        let grace = self.node.config.server.drain_grace;
        if !grace.is_zero() {
            tokio::time::sleep(grace).await;
        }
        self.stop_accepting();
        self.announce_shutdown();
        let deadline = tokio::time::Instant::now() + self.node.config.server.drain_timeout;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.node.broker.shutdown().await;
        self.open_connections()
    }

    /// Asks the process to drain as on SIGTERM (`POST /admin/drain`): readiness
    /// fails at once; whoever awaits [`Server::drain_requested`] runs [`Server::drain`].
    pub fn request_drain(&self) {
        self.node.start_drain();
        self.drain_request.notify_one();
    }

    /// Returns once [`Server::request_drain`] was called (a call made before
    /// anyone waited is kept).
    pub async fn drain_requested(&self) {
        self.drain_request.notified().await;
    }

    pub(crate) fn conn_opened(&self) -> usize {
        self.open.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn conn_closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn track_echo(&self, id: u64, outbox: Option<Arc<Outbox>>) {
        if let Ok(mut m) = self.echo_conns.lock() {
            match outbox {
                Some(o) => {
                    m.insert(id, o);
                }
                None => {
                    m.remove(&id);
                }
            }
        }
    }

    pub(crate) fn admin(&self) -> Option<&Arc<dyn AdminSource>> {
        self.admin.as_ref()
    }
}

/// TCP keepalive on an accepted socket (`limits.tcp_keepalive`, `"0s"` = off),
/// so a peer that vanished without a FIN is found even when nothing is sent;
/// and `TCP_USER_TIMEOUT` = `limits.idle_timeout`, so one found while data is
/// in flight is too: sent data unacknowledged for that long aborts the
/// connection. That is what expires an SSE stream (or a long-poll) to a peer
/// that is gone: keepalive probes are not sent while data waits for an
/// acknowledgement, and the stream's heartbeats keep data waiting.
fn set_keepalive(stream: &tokio::net::TcpStream, limits: &switchyard_core::config::Limits) {
    let sock = socket2::SockRef::from(stream);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(limits.idle_timeout)) {
        tracing::debug!(error = %e, "setting TCP_USER_TIMEOUT failed");
    }
    if limits.tcp_keepalive.is_zero() {
        return;
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(limits.tcp_keepalive)
        .with_interval(limits.tcp_keepalive_interval.max(Duration::from_secs(1)));
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "setting TCP keepalive failed");
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    /// An accepted socket carries keepalive and the user timeout from the limits.
    #[tokio::test]
    async fn accepted_sockets_get_keepalive_and_the_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let limits = switchyard_core::config::Limits {
            idle_timeout: Duration::from_secs(7),
            tcp_keepalive: Duration::from_secs(300),
            ..Default::default()
        };
        set_keepalive(&stream, &limits);
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(300));
        #[cfg(target_os = "linux")]
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(7))
        );
    }
}
