//! `[telemetry]`: the OpenTelemetry tracer provider (OTLP/HTTP protobuf to
//! `{otlp_endpoint}/v1/traces`), installed into
//! [`switchyard_core::telemetry`] when an endpoint is set.
//!
//! Spans go through a batch span processor: a bounded queue
//! (`queue_spans`) drained by its own thread every `export_interval`. The hot
//! path only enqueues; a full queue drops new spans (the SDK counts them and
//! logs the count) and a failed or slow export is logged, never waited on.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use switchyard_core::config::TelemetryConfig;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The running provider: flushes and stops on [`Telemetry::shutdown`].
pub struct Telemetry(SdkTracerProvider);

impl Telemetry {
    /// Builds and installs the provider; `None` when `otlp_endpoint` is empty
    /// (tracing off: nothing is recorded or sent). Call outside the async
    /// runtime (the blocking HTTP client has its own).
    pub fn start(cfg: &TelemetryConfig) -> anyhow::Result<Option<Self>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.traces_url())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .context("building the OTLP span exporter")?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.queue_spans)
            .with_max_export_batch_size(cfg.queue_spans.min(512))
            .with_scheduled_delay(cfg.export_interval)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer =
            opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer("switchyard")));
        opentelemetry::global::set_tracer_provider(provider.clone());
        switchyard_core::telemetry::install(tracer);
        tracing::info!(
            endpoint = %cfg.traces_url(),
            service = %cfg.service_name,
            sample_ratio = cfg.sample_ratio,
            "tracing: exporting spans over OTLP/HTTP"
        );
        Ok(Some(Self(provider)))
    }

    /// Exports what is queued and stops the exporter thread.
    pub fn shutdown(self) {
        if let Err(e) = self.0.shutdown() {
            tracing::warn!("tracing: shutdown: {e}");
        }
    }
}
