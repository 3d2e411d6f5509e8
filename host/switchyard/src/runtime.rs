//! Wiring: logging, file limits, broker, plugins, bridges, server, signals, drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use switchyard_core::config::{BrokerKind, LogFormat};
use switchyard_core::hub::Hub;
use switchyard_core::metrics::Metrics;
use switchyard_core::{Config, Node};
use switchyard_policy::{PluginHost, PromoteError, RecordError};
use switchyard_server::{AdminSource, PromoteRefused, RecordRefused, Server};
use tokio::signal::unix::{SignalKind, signal};

struct PluginAdmin(Arc<PluginHost>);

impl AdminSource for PluginAdmin {
    fn plugins(&self) -> serde_json::Value {
        self.0.status_json()
    }

    fn shadow(&self) -> serde_json::Value {
        self.0.shadow_json()
    }

    fn promote(&self, tenant: &str, role: &str) -> Result<String, PromoteRefused> {
        self.0.promote(tenant, role).map_err(|e| match e {
            PromoteError::BadRequest(m) => PromoteRefused::BadRequest(m),
            PromoteError::NotFound(m) => PromoteRefused::NotFound(m),
        })
    }

    fn record(
        &self,
        tenant: &str,
        role: &str,
        calls: u64,
    ) -> Result<serde_json::Value, RecordRefused> {
        self.0.record(tenant, role, calls).map_err(|e| match e {
            RecordError::BadRequest(m) => RecordRefused::BadRequest(m),
            RecordError::NotFound(m) => RecordRefused::NotFound(m),
            RecordError::Busy(m) => RecordRefused::Busy(m),
            RecordError::Io(m) => RecordRefused::Failed(m),
        })
    }

    fn recordings(&self) -> serde_json::Value {
        self.0.recordings_json()
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Raises the soft open-file limit to the hard limit; logs both.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    #[allow(unsafe_code)]
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 {
        tracing::warn!("getrlimit(RLIMIT_NOFILE) failed");
        return;
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    #[allow(unsafe_code)]
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if set == 0 {
        tracing::info!(
            soft_before = before,
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            "open-file limit"
        );
    } else {
        tracing::warn!(
            soft = before,
            hard = lim.rlim_max,
            "could not raise the open-file limit"
        );
    }
}

/// Runs the gateway until drained.
pub fn serve(cfg: Config, config_path: Option<PathBuf>) -> ExitCode {
    init_logging(&cfg);
    raise_nofile();
    // Before the async runtime: the exporter's blocking HTTP client has its own.
    let telemetry = match crate::telemetry::Telemetry::start(&cfg.telemetry) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(run(cfg, config_path, telemetry.as_ref())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    drop(rt);
    if let Some(t) = telemetry {
        t.shutdown();
    }
    code
}

async fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    telemetry: Option<&crate::telemetry::Telemetry>,
) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives once we answer requests must drain, not kill.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let cfg = Arc::new(cfg);
    // ring serves the listener's TLS and the Redis client's rediss:// alike.
    switchyard_server::tls::install_crypto_provider();
    let tls = match &cfg.server.tls {
        Some(t) => Some(switchyard_server::tls::Tls::load(t)?),
        None => None,
    };
    let node = match cfg.broker.kind {
        BrokerKind::Memory => Node::with_memory_broker(cfg.clone()),
        BrokerKind::Redis | BrokerKind::Nats => {
            let metrics = Arc::new(Metrics::new());
            let hub = Arc::new(Hub::new(
                cfg.server.node_id.as_str(),
                cfg.limits.send_queue_messages,
                metrics,
            ));
            let broker = if cfg.broker.kind == BrokerKind::Nats {
                switchyard_nats::connect(&cfg, hub.clone())
                    .await
                    .context("connecting the nats broker")?
            } else {
                switchyard_redis::connect(&cfg, hub.clone())
                    .await
                    .context("connecting the redis broker")?
            };
            Node::new(cfg.clone(), hub, broker)
        }
    };
    if let Some(t) = telemetry {
        t.register(&node.metrics);
    }
    let plugins = PluginHost::start(node.clone())
        .await
        .context("starting the plugin runtime")?;
    // After the plugins: a bridged record is routed by the tenant's router.
    let bridges = switchyard_kafka::start(&node).context("starting the kafka bridges")?;
    let server = Server::with_tls(
        node.clone(),
        Some(Arc::new(PluginAdmin(plugins.clone()))),
        tls,
    );
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        node = %node.id,
        broker = node.broker.kind(),
        tls = server.tls().is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "switchyard listening"
    );
    let accept = {
        let server = server.clone();
        tokio::spawn(async move { server.run(listener).await })
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = server.drain_requested() => break, // POST /admin/drain
            _ = hup.recv() => {
                reload(&node, &plugins, config_path.as_deref()).await;
                reload_tls(&server);
            }
        }
    }
    tracing::info!(
        connections = server.open_connections(),
        timeout = ?cfg.server.drain_timeout,
        "draining"
    );
    let left = server.drain().await;
    accept.abort();
    // Consumers commit what the broker accepted and leave their groups;
    // producers flush what drained connections published.
    bridges.stop().await;
    if left > 0 {
        tracing::warn!(left, "drain timeout reached; closing remaining connections");
    } else {
        tracing::info!("drained");
    }
    Ok(())
}

async fn reload(node: &Arc<Node>, plugins: &Arc<PluginHost>, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::info!("SIGHUP: no config file to reload");
        return;
    };
    match Config::load(Some(path)) {
        Ok(cfg) => {
            node.tenants.reload(&cfg);
            match plugins.reload(&cfg).await {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "SIGHUP: tenant policies reloaded")
                }
                Err(e) => tracing::error!("SIGHUP: plugin mapping not applied: {e:#}"),
            }
        }
        Err(e) => {
            tracing::error!(file = %path.display(), "SIGHUP: config rejected, keeping the old one: {e}")
        }
    }
}

/// SIGHUP: re-reads `[server.tls]` cert and key (the paths given at start).
/// New handshakes use the new pair; open connections keep theirs; a pair
/// that does not load leaves the old one serving.
fn reload_tls(server: &Server) {
    let Some(tls) = server.tls() else { return };
    match tls.reload() {
        Ok(()) => {
            tracing::info!(cert = %tls.cert_path().display(), "SIGHUP: TLS certificate reloaded")
        }
        Err(e) => tracing::error!("SIGHUP: {e}; keeping the old certificate"),
    }
}
