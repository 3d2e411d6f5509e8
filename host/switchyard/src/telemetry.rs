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
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use switchyard_core::config::TelemetryConfig;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Labels of `switchyard_trace_spans`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `exported` or `failed` (the batch's export failed or timed out: dropped).
    pub outcome: &'static str,
}

/// Counts the spans of each export by its result.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    exported: Counter,
    failed: Counter,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => self.exported.inc_by(n),
            Err(_) => self.failed.inc_by(n),
        };
        r
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The running provider: flushes and stops on [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
    spans: Family<OutcomeLabel, Counter>,
}

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
        let spans = Family::<OutcomeLabel, Counter>::default();
        // One statement each: get_or_create's read guard lives to the statement's end.
        let exported = spans
            .get_or_create(&OutcomeLabel {
                outcome: "exported",
            })
            .clone();
        let failed = spans
            .get_or_create(&OutcomeLabel { outcome: "failed" })
            .clone();
        let exporter = Counting {
            inner: exporter,
            exported,
            failed,
        };
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
        Ok(Some(Self { provider, spans }))
    }

    /// Registers `switchyard_trace_spans_total{outcome}` on the node's `/metrics`.
    pub fn register(&self, metrics: &switchyard_core::metrics::Metrics) {
        metrics.register(
            "switchyard_trace_spans",
            "Spans handed to the OTLP exporter, by outcome (exported, failed)",
            self.spans.clone(),
        );
    }

    /// Exports what is queued and stops the exporter thread.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("tracing: shutdown: {e}");
        }
    }
}
