//! Gateway configuration: TOML file, every key optional, `SWITCHYARD_SECTION__KEY`
//! environment overrides, unknown keys rejected with their path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors raised while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key is unknown or has the wrong type; `path` names it (e.g. `limits.foo`).
    #[error("{path}: {message}")]
    Key {
        /// Dotted path of the offending key.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("environment override {var}: {message}")]
    Env {
        /// Variable name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// Values are individually valid but inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener and node identity.
    pub server: ServerConfig,
    /// Per-connection limits.
    pub limits: Limits,
    /// Message broker (embedded memory broker or Redis).
    pub broker: BrokerConfig,
    /// WebAssembly plugins folder and sandbox defaults.
    pub plugins: PluginsConfig,
    /// Admin API.
    pub admin: AdminConfig,
    /// Diagnostics endpoints.
    pub diagnostics: DiagnosticsConfig,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry tracing (OTLP/HTTP export).
    pub telemetry: TelemetryConfig,
    /// Tenants by id. `default` always exists.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Links to other messaging systems (Kafka).
    pub bridges: BridgesConfig,
}

impl Default for Config {
    fn default() -> Self {
        let mut tenants = BTreeMap::new();
        tenants.insert("default".to_owned(), TenantConfig::default());
        Self {
            server: ServerConfig::default(),
            limits: Limits::default(),
            broker: BrokerConfig::default(),
            plugins: PluginsConfig::default(),
            admin: AdminConfig::default(),
            diagnostics: DiagnosticsConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            tenants,
            bridges: BridgesConfig::default(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Node id; default: hostname plus a random suffix.
    pub node_id: String,
    /// How long a graceful drain may take before remaining connections are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// On SIGTERM, readiness fails at once; the listener keeps answering (upgrades
    /// get 503) for this long so load balancers notice, then it closes.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// `reconnectIn` (milliseconds) announced to clients in `SERVER_SHUTDOWN`.
    #[serde(with = "humantime_serde")]
    pub reconnect_in: Duration,
    /// Name of the cookie carrying the node id on upgrade responses (sticky sessions); empty = none.
    pub sticky_cookie: String,
    /// Response header carrying the node id on upgrade responses; empty = none.
    pub node_header: String,
    /// Host header → tenant id mapping, used when the path names no tenant.
    pub hosts: BTreeMap<String, String>,
    /// CIDRs (or addresses) of proxies whose `X-Forwarded-For` / `Forwarded` /
    /// `X-Real-IP` headers are believed; `[]` = none (the peer is the client).
    pub trusted_proxies: Vec<String>,
    /// `[server.tls]`: when set, `listen` serves TLS only (wss/https).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: both keys are required when the table is present. The
/// files are PEM and are read again on SIGHUP (new handshakes use the new
/// pair, open connections keep theirs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: String::new(),
            drain_timeout: Duration::from_secs(30),
            drain_grace: Duration::ZERO,
            reconnect_in: Duration::from_secs(2),
            sticky_cookie: "SWITCHYARD_NODE".to_owned(),
            node_header: "x-switchyard-node".to_owned(),
            hosts: BTreeMap::new(),
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted inbound message (bytes); larger closes with 1009.
    pub max_message_bytes: usize,
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A peer silent this long is terminated (zombie).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for the HTTP upgrade request to arrive.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Outbound queue length per connection before a slow-consumer close (4008).
    pub send_queue_messages: usize,
    /// Outbound queue bytes per connection (besides `send_queue_messages`);
    /// over either = slow consumer (4008).
    pub send_queue_bytes: usize,
    /// Publish token-bucket refill rate per connection (messages per second).
    pub publish_rate: u32,
    /// Publish token-bucket capacity per connection.
    pub publish_burst: u32,
    /// Rejections (rate limited) within `abuse_window` before closing with 4029.
    pub rate_limit_strikes: u32,
    /// Malformed or unknown frames within `abuse_window` before closing with 1008.
    pub protocol_strikes: u32,
    /// Window over which strikes are counted.
    #[serde(with = "humantime_serde")]
    pub abuse_window: Duration,
    /// Channels one connection may hold at once.
    pub max_subscriptions: usize,
    /// Connections a node accepts before answering 503 (overload).
    pub max_connections: usize,
    /// Open connections (WebSocket, y-websocket, fallback sessions) one client
    /// address may hold; over it → HTTP 429 before the upgrade. `0` = off.
    pub max_connections_per_ip: usize,
    /// New connections per second one client address may open (token bucket,
    /// burst twice the rate); over it → HTTP 429. `0` = off.
    pub handshakes_per_ip_per_sec: u32,
    /// Grace period for a close handshake before the TCP connection is cut.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// TCP keepalive on accepted sockets: idle time before the first probe
    /// (`"0s"` = off), so half-open peers (SSE, long-poll, WebSocket) are found.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Interval between TCP keepalive probes.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_interval: Duration,
    /// WebSocket read buffer per connection (bytes). It is allocated and
    /// zero-filled up front, so it dominates memory per idle connection:
    /// 1 KiB measured 7.4 KiB RSS per idle connection against 11.4 KiB at 4 KiB.
    pub read_buffer_bytes: usize,
    /// WebSocket write batch per connection (bytes): the frames the writer
    /// takes from the outbox are copied into one buffer and leave in one
    /// `write()` per this many bytes, not one per frame. The buffer keeps the
    /// capacity of the largest batch (at most this plus one frame).
    pub write_buffer_bytes: usize,
    /// `msgId` dedupe window per channel (entries).
    pub dedupe_window: usize,
    /// Largest state of one document channel (bytes); a patch that would make
    /// it larger is refused with `invalid` and the document stays as it was.
    pub document_max_bytes: usize,
    /// Patches kept per document for resume by version (older resumes get a snapshot).
    pub document_log_size: usize,
    /// Document replicas one node holds in memory; idle ones are evicted
    /// first, and beyond it opening another answers `unavailable`.
    pub documents_max_open: usize,
    /// A document replica without local subscribers leaves memory after this
    /// long (it reloads from the broker's snapshot and log on next use).
    #[serde(with = "humantime_serde")]
    pub document_idle_timeout: Duration,
    /// Channels with more subscribers than this (cluster-wide, as far as a
    /// node knows) send no presence events (`join` / `leave`).
    pub presence_events_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 65536,
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            send_queue_messages: 1024,
            send_queue_bytes: 4 << 20,
            publish_rate: 100,
            publish_burst: 200,
            rate_limit_strikes: 50,
            protocol_strikes: 20,
            abuse_window: Duration::from_secs(10),
            max_subscriptions: 1024,
            max_connections: 100_000,
            max_connections_per_ip: 0,
            handshakes_per_ip_per_sec: 0,
            close_timeout: Duration::from_secs(3),
            tcp_keepalive: Duration::from_secs(300),
            tcp_keepalive_interval: Duration::from_secs(60),
            read_buffer_bytes: 1024,
            write_buffer_bytes: 16 * 1024,
            dedupe_window: 1024,
            document_max_bytes: 1 << 20,
            document_log_size: 1000,
            documents_max_open: 10_000,
            document_idle_timeout: Duration::from_secs(60),
            presence_events_max: crate::hub::PRESENCE_EVENTS_MAX,
        }
    }
}

/// Broker kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In-process broker (single node).
    Memory,
    /// Redis pub/sub + streams (multi node).
    Redis,
    /// NATS subjects + JetStream (multi node).
    Nats,
}

/// `[broker]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory`, `redis` or `nats`.
    pub kind: BrokerKind,
    /// Redis servers; several = consistent-hash shards.
    pub redis_urls: Vec<String>,
    /// NATS servers (one cluster; the client fails over between them). JetStream must be on.
    pub nats_urls: Vec<String>,
    /// JetStream replicas of the streams and KV buckets the NATS broker creates (1, 3 or 5).
    pub nats_replicas: usize,
    /// Time-to-live of presence and client-directory entries (refreshed by heartbeats).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            redis_urls: vec!["redis://127.0.0.1:6379".to_owned()],
            nats_urls: vec!["nats://127.0.0.1:4222".to_owned()],
            nats_replicas: 1,
            presence_ttl: Duration::from_secs(30),
        }
    }
}

/// `[bridges]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BridgesConfig {
    /// `[[bridges.kafka]]`: Kafka topics ↔ channels of one tenant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<KafkaBridgeConfig>,
}

/// `[[bridges.kafka]]`: consumes topics into channels of `tenant` and produces
/// the tenant's publishes on matching channels to topics, at least once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaBridgeConfig {
    /// Name in logs and metric labels (default `kafka-<index>`).
    pub name: String,
    /// Bootstrap servers (`host:port`).
    pub brokers: Vec<String>,
    /// The tenant whose channels it reads and writes.
    pub tenant: String,
    /// Consumer group: the nodes of one cluster share it, so each record is
    /// published by one node.
    pub group: String,
    /// Topics consumed into channels.
    pub consume: Vec<KafkaConsumeConfig>,
    /// Channels produced to topics.
    pub produce: Vec<KafkaProduceConfig>,
    /// Most consumed records published but not yet accepted by the broker.
    pub max_in_flight: usize,
    /// Extra librdkafka client properties (`"socket.timeout.ms" = "10000"`);
    /// the ones the bridge sets itself for its guarantees are refused.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaBridgeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            brokers: vec!["127.0.0.1:9092".to_owned()],
            tenant: "default".to_owned(),
            group: "switchyard".to_owned(),
            consume: Vec::new(),
            produce: Vec::new(),
            max_in_flight: 256,
            options: BTreeMap::new(),
        }
    }
}

/// One `consume` entry: a topic and the channel its records go to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConsumeConfig {
    /// Topic name.
    pub topic: String,
    /// Channel template; `{key}` is replaced by the record key.
    pub channel: String,
}

/// One `produce` entry: channels matching a pattern go to a topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaProduceConfig {
    /// Channel pattern (`*` wildcard); the first matching entry applies.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Topic name.
    pub topic: String,
}

/// librdkafka properties a bridge sets itself (its delivery guarantees
/// depend on them), refused in `options`.
pub const KAFKA_RESERVED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
    "statistics.interval.ms",
];

/// Whether `t` is a Kafka topic name: 1-249 of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn valid_kafka_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaBridgeConfig {
    fn check(&self, tenants: &BTreeMap<String, TenantConfig>) -> Result<(), ConfigError> {
        let at = format!("bridges.kafka {:?}", self.name);
        let bad = |m: String| Err(ConfigError::Invalid(format!("{at}: {m}")));
        if !crate::channel::valid_tenant(&self.name) {
            return bad("name must be 1-64 characters of [A-Za-z0-9_-]".into());
        }
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return bad("brokers must name at least one host:port".into());
        }
        if !tenants.contains_key(&self.tenant) {
            return bad(format!("unknown tenant {:?}", self.tenant));
        }
        if self.group.is_empty() || self.group.len() > 255 {
            return bad("group must be 1-255 characters".into());
        }
        if self.consume.is_empty() && self.produce.is_empty() {
            return bad("nothing to do: give consume or produce entries".into());
        }
        if !(1..=100_000).contains(&self.max_in_flight) {
            return bad("max_in_flight must be between 1 and 100000".into());
        }
        for c in &self.consume {
            if !valid_kafka_topic(&c.topic) {
                return bad(format!(
                    "consume topic {:?} is not a Kafka topic name",
                    c.topic
                ));
            }
            if let Err(e) = crate::channel::validate(&c.channel.replace("{key}", "k")) {
                return bad(format!("consume channel {:?}: {e}", c.channel));
            }
        }
        if let Some(t) = self.consume.iter().enumerate().find_map(|(i, c)| {
            self.consume[..i]
                .iter()
                .any(|o| o.topic == c.topic)
                .then_some(&c.topic)
        }) {
            return bad(format!("topic {t:?} is consumed twice"));
        }
        for p in &self.produce {
            if p.pattern.is_empty() || p.pattern.len() > 256 {
                return bad(format!(
                    "produce match {:?} must be 1-256 characters",
                    p.pattern
                ));
            }
            if !valid_kafka_topic(&p.topic) {
                return bad(format!(
                    "produce topic {:?} is not a Kafka topic name",
                    p.topic
                ));
            }
        }
        if let Some(k) = self
            .options
            .keys()
            .find(|k| KAFKA_RESERVED_OPTIONS.contains(&k.as_str()))
        {
            return bad(format!("options may not set {k:?}: the bridge sets it"));
        }
        Ok(())
    }
}

/// `[plugins]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Watched folder of `*.wasm` components; plugin name = file stem.
    pub dir: PathBuf,
    /// Folder for compiled-code cache (by content hash); empty = `<dir>/.cache`.
    pub cache_dir: PathBuf,
    /// Default per-call CPU deadline.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Default per-instance memory cap (bytes).
    pub memory_limit: usize,
    /// Key-value entries one plugin may keep per tenant.
    pub kv_max_entries: usize,
    /// Whether the folder is watched for changes.
    pub watch: bool,
    /// Per tenant: plugin calls run off the event loop at once (calls of a
    /// plugin found slow); one more is refused as busy and `on_error` decides.
    pub max_concurrent_calls: u32,
    /// Per tenant: live plugin instances (pooled idle ones and open merge
    /// documents included) out of the process-wide pool of 1000.
    pub max_instances: u32,
    /// Folder of `POST /admin/record` recordings (JSON lines, created on first use).
    pub record_dir: PathBuf,
    /// Most calls one recording may ask for.
    pub record_max_calls: u64,
    /// Largest recording file (bytes); the line that would go over ends it.
    pub record_max_bytes: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("plugins"),
            cache_dir: PathBuf::new(),
            call_timeout: Duration::from_millis(10),
            memory_limit: 64 << 20,
            kv_max_entries: 100_000,
            watch: true,
            max_concurrent_calls: 4,
            max_instances: 250,
            record_dir: PathBuf::from("recordings"),
            record_max_calls: 10_000,
            record_max_bytes: 64 << 20,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; empty = admin API off.
    pub token: String,
}

/// `[diagnostics]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Serve `GET /echo` through the normal connection machinery.
    pub echo: bool,
}

/// `[telemetry]`: OpenTelemetry traces exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Collector base URL, e.g. `http://127.0.0.1:4318` (spans go to
    /// `{otlp_endpoint}/v1/traces`); empty = tracing off.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces sampled, 0.0-1.0 (a parent's decision is followed).
    pub sample_ratio: f64,
    /// How often the batch exporter sends what it has.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
    /// Spans waiting for export at most; beyond it new spans are dropped (counted).
    pub queue_spans: usize,
    /// Tenants with their own `tenant` label value in the per-tenant metric
    /// families (`switchyard_tenant_*`); every other tenant is counted as
    /// `other`. `["*"]` (default) = every configured tenant, up to
    /// [`MAX_TENANT_LABELS`] in id order.
    pub tenant_labels: Vec<String>,
}

/// Most tenants with their own metric label under `tenant_labels = ["*"]`.
pub const MAX_TENANT_LABELS: usize = 100;

impl TelemetryConfig {
    /// The metric label of tenant `id` among `tenants` (configured ids, sorted).
    pub fn tenant_label<'a>(
        &self,
        id: &'a str,
        tenants: &BTreeMap<String, TenantConfig>,
    ) -> &'a str {
        let own = if self.tenant_labels.iter().any(|t| t == "*") {
            tenants.keys().take(MAX_TENANT_LABELS).any(|t| t == id)
        } else {
            self.tenant_labels.iter().any(|t| t == id)
        };
        if own { id } else { "other" }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "switchyard".into(),
            sample_ratio: 1.0,
            export_interval: Duration::from_secs(5),
            queue_spans: 2048,
            tenant_labels: vec!["*".into()],
        }
    }
}

impl TelemetryConfig {
    /// Whether spans are recorded and exported.
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("telemetry.{m}")));
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return bad("sample_ratio must be between 0.0 and 1.0");
        }
        if self.service_name.trim().is_empty() {
            return bad("service_name must not be empty");
        }
        if self.export_interval.is_zero() || self.queue_spans == 0 {
            return bad("export_interval must be positive and queue_spans at least 1");
        }
        let e = &self.otlp_endpoint;
        if e.is_empty() {
            return Ok(());
        }
        if e.starts_with("https://") {
            return bad(
                "otlp_endpoint: https is not supported by this build's exporter; send to a collector over http (e.g. a local agent)",
            );
        }
        let host = e.strip_prefix("http://").unwrap_or("");
        let authority = host.split('/').next().unwrap_or("");
        if authority.is_empty()
            || e.chars().any(|c| c.is_whitespace() || c.is_control())
            || authority.contains(['@', '?', '#'])
        {
            return bad(&format!(
                "otlp_endpoint must be an http:// URL such as \"http://127.0.0.1:4318\" (got {e:?})"
            ));
        }
        Ok(())
    }

    /// The OTLP/HTTP traces URL: `{otlp_endpoint}/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.otlp_endpoint.trim_end_matches('/'))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info,switchyard=debug` (RUST_LOG wins when set).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// `[tenants.<id>]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Allowed `Origin` values (`*` = any). Requests without `Origin` are always allowed.
    pub origins: Vec<String>,
    /// Bearer keys accepted by the HTTP API.
    pub api_keys: Vec<String>,
    /// Messages kept per channel for recovery.
    pub history_size: usize,
    /// How long history is kept.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Fallback transports this tenant offers (`"sse"`, `"poll"`); a disabled
    /// one answers 404. `[]` = WebSocket only.
    pub fallbacks: Vec<FallbackKind>,
    /// How long a long-poll client should wait between polls that return
    /// nothing (sent as `pollInterval` ms in the open reply).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Per-channel publish limits for all publishers together.
    pub channel_limits: Vec<ChannelLimitConfig>,
    /// Channel patterns that are document channels (`["doc:*"]`): shared
    /// state resolved by the merge policy (`docs/protocol.md`).
    pub documents: Vec<String>,
    /// Policies by role.
    pub policies: PoliciesConfig,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            origins: vec!["*".to_owned()],
            api_keys: Vec::new(),
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            documents: Vec::new(),
            channel_limits: Vec::new(),
            fallbacks: vec![FallbackKind::Sse, FallbackKind::Poll],
            poll_interval: Duration::from_secs(3),
            policies: PoliciesConfig::default(),
        }
    }
}

/// `(rate, burst)` identity of a channel limit (a changed entry restarts its bucket).
pub type ChannelLimitKey = (u32, u32);

/// `[[tenants.<id>.channel_limits]]`: one publish budget shared by every
/// publisher of each matching channel (cluster-wide with a shared broker).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelLimitConfig {
    /// Channel pattern (`*` wildcard); the first matching entry applies.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Messages per second per channel.
    pub rate: u32,
    /// Bucket capacity (default: the rate).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A fallback transport.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FallbackKind {
    /// Server-Sent Events (`/sse`).
    Sse,
    /// Long-polling (`/poll`).
    Poll,
}

/// `[tenants.<id>.policies]`: one optional plugin per role.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Authentication and authorization.
    pub auth: Option<PolicyConfig>,
    /// Publish routing.
    pub router: Option<PolicyConfig>,
    /// Rate limiting.
    pub rate_limit: Option<PolicyConfig>,
    /// State merge (conflict resolution).
    pub merge: Option<PolicyConfig>,
}

/// What a failing plugin call decides.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Treat a failure as a denial.
    Deny,
    /// Treat a failure as the built-in default.
    Allow,
}

/// One role's plugin mapping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// File stem in `plugins.dir`.
    pub plugin: String,
    /// Failure decision; default `deny`.
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
    /// Handed to the plugin as JSON.
    #[serde(default = "empty_table")]
    pub config: toml::Value,
    /// Per-call CPU deadline override.
    #[serde(default, with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    /// Memory cap override (bytes).
    #[serde(default)]
    pub memory_limit: Option<usize>,
    /// A second plugin of the same role run on the same inputs off the hot
    /// path; its decisions are compared with the serving one's and never
    /// take effect.
    #[serde(default)]
    pub shadow: Option<String>,
    /// Share of calls the shadow also gets, 0.0-1.0.
    #[serde(default = "default_shadow_sample")]
    pub shadow_sample: f64,
}

fn default_shadow_sample() -> f64 {
    1.0
}

fn default_on_error() -> OnError {
    OnError::Deny
}

fn empty_table() -> toml::Value {
    toml::Value::Table(toml::map::Map::new())
}

impl PolicyConfig {
    /// The plugin config as JSON text.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl Config {
    /// Reads a file, applies environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text and applies `SWITCHYARD_*` overrides from `env`.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SWITCHYARD_") && k.contains("__"))
            .collect();
        overrides.sort();
        for (var, raw) in overrides {
            apply_env(&mut value, &var, &raw)?;
        }
        let de = toml::Value::Table(value);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Key {
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        cfg.finish()?;
        Ok(cfg)
    }

    /// Parses TOML text without environment overrides.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    fn finish(&mut self) -> Result<(), ConfigError> {
        self.tenants.entry("default".to_owned()).or_default();
        if self.server.node_id.is_empty() {
            self.server.node_id = default_node_id();
        }
        if self.plugins.cache_dir.as_os_str().is_empty() {
            self.plugins.cache_dir = self.plugins.dir.join(".cache");
        }
        let l = &self.limits;
        if l.max_message_bytes < 128 {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be at least 128".into(),
            ));
        }
        if l.send_queue_messages == 0 {
            return Err(ConfigError::Invalid(
                "limits.send_queue_messages must be at least 1".into(),
            ));
        }
        if l.send_queue_bytes < l.max_message_bytes {
            return Err(ConfigError::Invalid(
                "limits.send_queue_bytes must be at least limits.max_message_bytes".into(),
            ));
        }
        if l.heartbeat_interval.is_zero() || l.idle_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "limits.heartbeat_interval and limits.idle_timeout must be positive".into(),
            ));
        }
        if l.publish_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits.publish_burst must be at least 1".into(),
            ));
        }
        if l.document_max_bytes < 2 || l.document_log_size == 0 || l.documents_max_open == 0 {
            return Err(ConfigError::Invalid(
                "limits.document_max_bytes must be at least 2, limits.document_log_size and limits.documents_max_open at least 1".into(),
            ));
        }
        if self.plugins.record_max_calls == 0 || self.plugins.record_max_bytes == 0 {
            return Err(ConfigError::Invalid(
                "plugins.record_max_calls and plugins.record_max_bytes must be at least 1".into(),
            ));
        }
        if self.plugins.max_concurrent_calls == 0 || self.plugins.max_instances == 0 {
            return Err(ConfigError::Invalid(
                "plugins.max_concurrent_calls and plugins.max_instances must be at least 1".into(),
            ));
        }
        self.telemetry.check()?;
        if self.broker.kind == BrokerKind::Redis && self.broker.redis_urls.is_empty() {
            return Err(ConfigError::Invalid(
                "broker.redis_urls must name at least one server when broker.kind = \"redis\""
                    .into(),
            ));
        }
        if self.broker.kind == BrokerKind::Nats && self.broker.nats_urls.is_empty() {
            return Err(ConfigError::Invalid(
                "broker.nats_urls must name at least one server when broker.kind = \"nats\"".into(),
            ));
        }
        if !(1..=5).contains(&self.broker.nats_replicas) {
            return Err(ConfigError::Invalid(
                "broker.nats_replicas must be between 1 and 5".into(),
            ));
        }
        for (id, t) in &self.tenants {
            if !crate::channel::valid_tenant(id) {
                return Err(ConfigError::Invalid(format!(
                    "tenants.{id}: tenant ids are 1-64 characters of [A-Za-z0-9_-]"
                )));
            }
            let p = &t.policies;
            for (role, policy) in [
                ("auth", &p.auth),
                ("router", &p.router),
                ("rate_limit", &p.rate_limit),
                ("merge", &p.merge),
            ] {
                let Some(policy) = policy else { continue };
                if !(0.0..=1.0).contains(&policy.shadow_sample) {
                    return Err(ConfigError::Invalid(format!(
                        "tenants.{id}.policies.{role}.shadow_sample must be between 0.0 and 1.0"
                    )));
                }
                if policy.shadow.as_deref() == Some(policy.plugin.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "tenants.{id}.policies.{role}.shadow names the serving plugin itself"
                    )));
                }
            }
            for (i, l) in t.channel_limits.iter().enumerate() {
                if l.rate == 0 || l.burst == Some(0) || l.pattern.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "tenants.{id}.channel_limits[{i}]: match must be non-empty, rate and burst at least 1"
                    )));
                }
            }
            for p in &t.documents {
                if p.is_empty() || p.len() > 256 {
                    return Err(ConfigError::Invalid(format!(
                        "tenants.{id}.documents: patterns are 1-256 characters, got {p:?}"
                    )));
                }
            }
            if t.history_size > 1_000_000 {
                return Err(ConfigError::Invalid(format!(
                    "tenants.{id}.history_size must be at most 1000000"
                )));
            }
        }
        if let Some(tls) = &self.server.tls {
            for (name, p) in [("cert", &tls.cert), ("key", &tls.key)] {
                if p.as_os_str().is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "server.tls.{name} must name a PEM file"
                    )));
                }
            }
        }
        for p in &self.server.trusted_proxies {
            let (addr, prefix) = p.split_once('/').unwrap_or((p, "128"));
            let ok = addr.trim().parse::<std::net::IpAddr>().is_ok()
                && prefix.trim().parse::<u8>().is_ok_and(|n| n <= 128);
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "server.trusted_proxies: {p:?} is not an address or CIDR"
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.bridges.kafka.iter_mut().enumerate() {
            if b.name.is_empty() {
                b.name = format!("kafka-{i}");
            }
            if !names.insert(b.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "bridges.kafka: two bridges are named {:?}",
                    b.name
                )));
            }
        }
        for b in &self.bridges.kafka {
            b.check(&self.tenants)?;
        }
        for (host, tenant) in &self.server.hosts {
            if !self.tenants.contains_key(tenant) {
                return Err(ConfigError::Invalid(format!(
                    "server.hosts.{host}: unknown tenant {tenant:?}"
                )));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{:06x}", suffix & 0xff_ffff)
}

/// Applies `SWITCHYARD_A__B__C=value` as `a.b.c = value` (value parsed as TOML, else a string).
fn apply_env(root: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let rest = &var["SWITCHYARD_".len()..];
    let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: "empty path segment".into(),
        });
    }
    let value = parse_env_value(raw);
    let (last, dirs) = parts.split_last().ok_or_else(|| ConfigError::Env {
        var: var.to_owned(),
        message: "no key".into(),
    })?;
    let mut table = root;
    for d in dirs {
        let entry = table
            .entry(d.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_owned(),
            message: format!("{d} is not a table"),
        })?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configs_load() {
        for (name, text) in [
            (
                "full.toml",
                include_str!("../../../examples/configs/full.toml"),
            ),
            (
                "demo.toml",
                include_str!("../../../examples/configs/demo.toml"),
            ),
        ] {
            let c = Config::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.limits.document_max_bytes, 1 << 20, "{name}");
        }
        let demo =
            Config::from_toml(include_str!("../../../examples/configs/demo.toml")).expect("demo");
        assert_eq!(demo.tenants["demo"].documents, ["doc:*"]);
    }

    #[test]
    fn the_configuration_docs_show_full_toml_as_it_is() {
        let docs = include_str!("../../../docs/configuration.md");
        let full = include_str!("../../../examples/configs/full.toml");
        assert!(
            docs.contains(full.trim_end()),
            "docs/configuration.md \"Full example\" differs from examples/configs/full.toml"
        );
    }

    #[test]
    fn document_limits_are_checked() {
        for bad in [
            "[limits]\ndocument_log_size = 0\n",
            "[limits]\ndocuments_max_open = 0\n",
            "[tenants.default]\ndocuments = [\"\"]\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_config_has_defaults() {
        let c = Config::from_toml("").expect("defaults");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_message_bytes, 65536);
        assert!(c.tenants.contains_key("default"));
        assert_eq!(c.broker.kind, BrokerKind::Memory);
    }

    #[test]
    fn a_kafka_bridge_takes_the_design_keys() {
        let c = Config::from_toml(
            "[tenants.acme]\n[[bridges.kafka]]\nbrokers = [\"10.0.0.1:9092\"]\ntenant = \"acme\"\n\
             group = \"g\"\nconsume = [{ topic = \"orders\", channel = \"orders:{key}\" }]\n\
             produce = [{ match = \"audit:*\", topic = \"audit\" }]\n",
        )
        .expect("bridge");
        let b = &c.bridges.kafka[0];
        assert_eq!(b.name, "kafka-0", "named by its index");
        assert_eq!((b.tenant.as_str(), b.group.as_str()), ("acme", "g"));
        assert_eq!(b.consume[0].channel, "orders:{key}");
        assert_eq!(b.produce[0].pattern, "audit:*");
        assert_eq!(b.max_in_flight, 256);
    }

    #[test]
    fn a_kafka_bridge_is_refused_when_inconsistent() {
        let base = "[[bridges.kafka]]\n";
        for (bad, why) in [
            (
                "tenant = \"nope\"\nproduce = [{ match = \"a:*\", topic = \"t\" }]\n",
                "unknown tenant",
            ),
            (
                "brokers = []\nproduce = [{ match = \"a:*\", topic = \"t\" }]\n",
                "brokers",
            ),
            (
                "max_in_flight = 0\nproduce = [{ match = \"a:*\", topic = \"t\" }]\n",
                "max_in_flight",
            ),
            ("", "nothing to do"),
            (
                "consume = [{ topic = \"a b\", channel = \"x:{key}\" }]\n",
                "not a Kafka topic",
            ),
            (
                "consume = [{ topic = \"t\", channel = \"x {key}\" }]\n",
                "consume channel",
            ),
            (
                "consume = [{ topic = \"t\", channel = \"a:{key}\" }, { topic = \"t\", channel = \"b:{key}\" }]\n",
                "consumed twice",
            ),
            (
                "produce = [{ match = \"\", topic = \"t\" }]\n",
                "produce match",
            ),
            (
                "options = { \"group.id\" = \"x\" }\nproduce = [{ match = \"a:*\", topic = \"t\" }]\n",
                "the bridge sets it",
            ),
            (
                "name = \"a b\"\nproduce = [{ match = \"a:*\", topic = \"t\" }]\n",
                "name must be",
            ),
        ] {
            let e = Config::from_toml(&format!("{base}{bad}"))
                .expect_err(bad)
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let twice =
            "[[bridges.kafka]]\nname = \"a\"\nproduce = [{ match = \"a:*\", topic = \"t\" }]\n";
        let e = Config::from_toml(&format!("{twice}{twice}")).expect_err("same name");
        assert!(e.to_string().contains("two bridges"), "{e}");
    }

    #[test]
    fn nats_broker_keys() {
        let c = Config::from_toml(
            "[broker]\nkind = \"nats\"\nnats_urls = [\"nats://10.0.0.1:4222\"]\nnats_replicas = 3\n",
        )
        .expect("nats");
        assert_eq!(c.broker.kind, BrokerKind::Nats);
        assert_eq!(c.broker.nats_urls, ["nats://10.0.0.1:4222"]);
        assert_eq!(c.broker.nats_replicas, 3);
        assert_eq!(
            Config::from_toml("").expect("defaults").broker.nats_urls,
            ["nats://127.0.0.1:4222"]
        );
        for bad in [
            "[broker]\nkind = \"nats\"\nnats_urls = []\n",
            "[broker]\nnats_replicas = 0\n",
            "[broker]\nnats_replicas = 6\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err = Config::from_toml("[limits]\nmax_mesage_bytes = 5\n").unwrap_err();
        let s = err.to_string();
        assert!(s.contains("limits.max_mesage_bytes"), "{s}");
        let err = Config::from_toml("[tenants.acme.policies.auth]\nplugin='x'\nbogus=1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenants.acme.policies.auth.bogus"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let env = vec![
            ("SWITCHYARD_LIMITS__PUBLISH_RATE".to_owned(), "7".to_owned()),
            (
                "SWITCHYARD_SERVER__LISTEN".to_owned(),
                "127.0.0.1:9999".to_owned(),
            ),
            (
                "SWITCHYARD_LIMITS__IDLE_TIMEOUT".to_owned(),
                "5s".to_owned(),
            ),
        ];
        let c = Config::from_toml_with_env("[limits]\npublish_rate = 1\n", env).expect("ok");
        assert_eq!(c.limits.publish_rate, 7);
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn policy_config_is_json() {
        let c = Config::from_toml(
            "[tenants.acme.policies.auth]\nplugin = \"jwt-auth\"\nconfig = { hs256_secret = \"s\", audience = \"acme\" }\n",
        )
        .expect("ok");
        let p = c.tenants["acme"].policies.auth.as_ref().expect("auth");
        assert_eq!(p.on_error, OnError::Deny);
        let v: serde_json::Value = serde_json::from_str(&p.config_json()).expect("json");
        assert_eq!(v["audience"], "acme");
    }

    #[test]
    fn server_tls_needs_both_files() {
        let c = Config::from_toml("[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").expect("ok");
        let tls = c.server.tls.as_ref().expect("tls");
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.key, PathBuf::from("k.pem"));
        assert!(Config::from_toml(&c.to_toml()).is_ok());
        assert!(Config::from_toml("").expect("ok").server.tls.is_none());
        let err = Config::from_toml("[server.tls]\ncert = \"c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls") && err.contains("key"), "{err}");
        let err = Config::from_toml("[server.tls]\nkey = \"k.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls") && err.contains("cert"), "{err}");
        let err = Config::from_toml("[server.tls]\ncert = \"c\"\nkey = \"k\"\nca = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls.ca"), "{err}");
        let err = Config::from_toml("[server.tls]\ncert = \"\"\nkey = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls.cert"), "{err}");
        let env = vec![
            (
                "SWITCHYARD_SERVER__TLS__CERT".to_owned(),
                "/e/c.pem".to_owned(),
            ),
            (
                "SWITCHYARD_SERVER__TLS__KEY".to_owned(),
                "/e/k.pem".to_owned(),
            ),
        ];
        let c = Config::from_toml_with_env("", env).expect("env");
        assert_eq!(c.server.tls.expect("tls").key, PathBuf::from("/e/k.pem"));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_toml("[limits]\nsend_queue_messages = 0\n").is_err());
        assert!(Config::from_toml("[server.hosts]\n\"a.test\" = \"nope\"\n").is_err());
        assert!(Config::from_toml("[limits]\nidle_timeout = \"soon\"\n").is_err());
    }

    #[test]
    fn telemetry_keys() {
        let c = Config::from_toml("").expect("defaults");
        assert!(!c.telemetry.enabled());
        assert_eq!(c.telemetry.service_name, "switchyard");
        assert!((c.telemetry.sample_ratio - 1.0).abs() < f64::EPSILON);
        let c = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.01\nexport_interval = \"100ms\"\n",
        )
        .expect("valid");
        assert_eq!(c.telemetry.traces_url(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.telemetry.export_interval, Duration::from_millis(100));
        for bad in [
            "sample_ratio = 1.5",
            "sample_ratio = -0.1",
            "otlp_endpoint = \"127.0.0.1:4318\"",
            "otlp_endpoint = \"ftp://x\"",
            "otlp_endpoint = \"http://\"",
            "otlp_endpoint = \"https://collector:4318\"",
            "service_name = \"\"",
            "colour = \"blue\"",
        ] {
            let err = Config::from_toml(&format!("[telemetry]\n{bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("telemetry"), "{bad}: {err}");
        }
    }
}
