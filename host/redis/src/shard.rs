//! One Redis server: a reconnecting command connection plus its pub/sub state.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use switchyard_core::broker::BrokerError;

use crate::subscriptions::Subscriptions;

/// How long one Redis command may take before it counts as `unavailable`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis server holding a share of the channels.
pub struct Shard {
    /// Position in `broker.redis_urls`.
    pub index: usize,
    /// Address for logs (no credentials).
    pub addr: String,
    /// Client used to open dedicated connections (pub/sub, blocking reads).
    pub client: redis::Client,
    conn: ConnectionManager,
    up: AtomicBool,
    up_gauge: Gauge,
    /// Channels this node subscribes to on this shard.
    pub subs: Subscriptions,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.index)
            .field("addr", &self.addr)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Connection settings for command connections.
pub fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

impl Shard {
    /// Opens (lazily) the shard at `url`.
    /// `up_gauge` counts shards whose pub/sub connection is established.
    pub fn new(index: usize, url: &str, up_gauge: Gauge) -> Result<Arc<Self>, RedisError> {
        let client = redis::Client::open(url)?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            manager_config(COMMAND_TIMEOUT),
        )?;
        Ok(Arc::new(Self {
            index,
            addr,
            client,
            conn,
            up: AtomicBool::new(false),
            up_gauge,
            subs: Subscriptions::default(),
        }))
    }

    /// A handle on the shared command connection.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Whether the pub/sub connection is established.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                self.up_gauge.inc();
            } else {
                self.up_gauge.dec();
            }
        }
    }

    /// Runs a command future with the command timeout, mapping failures.
    pub async fn run<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(broker_error(&self.addr, &e)),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "redis {} did not answer in time",
                self.addr
            ))),
        }
    }
}

/// Maps a Redis error: connection trouble is `Unavailable`, the rest `Internal`.
pub fn broker_error(addr: &str, e: &RedisError) -> BrokerError {
    let transient = matches!(
        e.code(),
        Some("LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
    );
    if transient
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        BrokerError::Unavailable(format!("redis {addr}: {e}"))
    } else {
        BrokerError::Internal(format!("redis {addr}: {e}"))
    }
}

/// Exponential backoff with jitter: 100 ms doubling up to 5 s, each delay drawn
/// from [d/2, d].
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.attempt.min(16)).min(5_000);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        Duration::from_millis(half + rand::rng().random_range(0..=half))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            (50..=100).contains(&(first.as_millis() as u64)),
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(5));
        }
        let late: Vec<_> = (0..20).map(|_| b.next_delay().as_millis()).collect();
        assert!(late.iter().all(|d| (2_500..=5_000).contains(d)), "{late:?}");
        assert!(late.iter().any(|d| *d != late[0]), "jitter varies delays");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    /// `broker.redis_urls` may be `rediss://` (TLS, rustls): the URL opens a
    /// shard whose connection info is TLS with host-name verification.
    #[tokio::test]
    async fn rediss_urls_open_tls_shards() {
        let shard = Shard::new(0, "rediss://cache.example.test:6380/0", Gauge::default())
            .expect("a rediss:// url opens");
        match shard.client.get_connection_info().addr() {
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                assert_eq!(
                    (host.as_str(), *port, *insecure),
                    ("cache.example.test", 6380, false)
                );
            }
            other => panic!("not a TLS address: {other:?}"),
        }
        let plain = redis::Client::open("redis://127.0.0.1:6379").expect("plain");
        assert!(matches!(
            plain.get_connection_info().addr(),
            redis::ConnectionAddr::Tcp(..)
        ));
    }

    /// A `rediss://` connection opens with a TLS ClientHello (no TLS Redis
    /// needed: a bare listener reads the first record, then hangs up).
    #[tokio::test]
    async fn rediss_connections_start_a_tls_handshake() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = redis::Client::open(format!("rediss://127.0.0.1:{port}/")).expect("open");
        let connecting =
            tokio::spawn(async move { client.get_multiplexed_async_connection().await });
        let (mut sock, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the client connects")
            .expect("accept");
        let mut head = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut head))
            .await
            .expect("the client speaks first")
            .expect("read");
        // A TLS record: content type 22 (handshake), protocol major version 3.
        assert_eq!(head[..2], [0x16, 0x03], "not a TLS ClientHello: {head:?}");
        drop(sock);
        let result = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .expect("the client gives up")
            .expect("join");
        assert!(result.is_err(), "no TLS server, no connection");
    }
}
