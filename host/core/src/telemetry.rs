//! OpenTelemetry tracing seam (DESIGN §3b "Tracing").
//!
//! The binary installs a tracer ([`install`]) when `[telemetry] otlp_endpoint`
//! is set; until then [`enabled`] is false and every helper here returns at
//! once: one relaxed atomic load per call site, no span, no allocation, no
//! header parsing. With a tracer installed:
//!
//! - a connection span (kind SERVER) per connection, child of a valid W3C
//!   `traceparent` (and `tracestate`) sent at connect ([`connection`]);
//! - `publish {channel}` (PRODUCER) per publish, child of the command's own
//!   `traceparent` or else of the connection span ([`publish_span`]);
//! - its context ([`TraceParent`]) travels with the message through the
//!   broker, and the delivering node records `deliver {channel}` (CONSUMER)
//!   once per message per node ([`deliver_span`]);
//! - `plugin {role}` around every plugin call ([`plugin_span`]), child of the
//!   context attached on the calling thread ([`Trace::attach`]).
//!
//! Sampling is decided once, where a trace begins (the connection span, or a
//! root plugin span) by the SDK's parent-based ratio sampler. Under a context
//! that is valid but not sampled nothing is recorded, so every helper checks
//! that first and returns before building a name, attributes or a span: on
//! an unsampled connection a publish costs a flag test, it carries no context
//! through the broker, and its deliveries and plugin calls build nothing.
//!
//! Span names and attributes follow the OpenTelemetry messaging semantic
//! conventions (`messaging.system`, `messaging.destination.name`,
//! `messaging.operation.name`, `messaging.operation.type`).

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, ContextGuard, KeyValue};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// `messaging.system` of every messaging span.
pub const MESSAGING_SYSTEM: &str = "switchyard";

/// Whether a tracer is installed: the one check every hot-path call site makes.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the process's tracer (once; later calls are ignored and return false).
pub fn install(tracer: BoxedTracer) -> bool {
    if TRACER.set(tracer).is_err() {
        return false;
    }
    ENABLED.store(true, Ordering::Relaxed);
    true
}

fn tracer() -> Option<&'static BoxedTracer> {
    if enabled() { TRACER.get() } else { None }
}

/// A W3C trace context as carried through the broker: trace id, parent span
/// id and flags (the `traceparent` header's content; `tracestate` stays on
/// the publishing node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id (never all zero).
    pub trace_id: [u8; 16],
    /// 8-byte parent span id (never all zero).
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_into(src: &[u8], out: &mut [u8]) -> Option<()> {
    if src.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

impl TraceParent {
    /// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase).
    /// Anything invalid (bad length or hex, version `ff`, an all-zero id, extra
    /// fields on version 00) is `None`: the caller ignores it.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']).as_bytes();
        if s.len() < TRACEPARENT_LEN {
            return None;
        }
        let mut version = [0u8; 1];
        hex_into(&s[0..2], &mut version)?;
        // Version 00 is exactly 55 characters; a later version may append
        // `-`-separated fields, which are ignored.
        if version[0] == 0xff
            || (version[0] == 0 && s.len() != TRACEPARENT_LEN)
            || (s.len() > TRACEPARENT_LEN && s[TRACEPARENT_LEN] != b'-')
            || s[2] != b'-'
            || s[35] != b'-'
            || s[52] != b'-'
        {
            return None;
        }
        let mut tp = TraceParent {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
        };
        hex_into(&s[3..35], &mut tp.trace_id)?;
        hex_into(&s[36..52], &mut tp.span_id)?;
        let mut flags = [0u8; 1];
        hex_into(&s[53..55], &mut flags)?;
        tp.flags = flags[0];
        if tp.trace_id == [0; 16] || tp.span_id == [0; 8] {
            return None;
        }
        Some(tp)
    }

    /// The `traceparent` header value (version 00).
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            self.flags
        )
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    fn of(sc: &SpanContext) -> Option<Self> {
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    fn remote(&self, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            state,
        )
    }
}

/// Parses a `tracestate` header; an invalid or oversized one is dropped
/// (the `traceparent` still counts, as W3C Trace Context says).
/// Whether `cx`'s span is valid and not sampled (a child would be dropped).
fn unsampled(cx: &Context) -> bool {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid() && !sc.is_sampled()
}

fn trace_state(s: Option<&str>) -> TraceState {
    match s {
        Some(s) if !s.trim().is_empty() && s.len() <= 512 => {
            TraceState::from_str(s.trim()).unwrap_or_default()
        }
        _ => TraceState::default(),
    }
}

/// A trace context held by a connection or a publish: empty (the default,
/// and always when telemetry is off) or an OpenTelemetry context whose
/// active span is the parent of what comes next. Cloning is a few `Arc`
/// clones; dropping the last clone of a span's context ends that span.
#[derive(Clone, Default)]
pub struct Trace(Option<Context>);

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.traceparent() {
            Some(tp) => write!(f, "Trace({})", tp.header()),
            None => f.write_str("Trace(none)"),
        }
    }
}

impl Trace {
    /// The empty trace.
    pub const NONE: Trace = Trace(None);

    /// A remote parent (a publish command's `traceparent`); empty when off.
    pub fn remote(tp: TraceParent) -> Trace {
        if !enabled() {
            return Trace::NONE;
        }
        Trace(Some(
            Context::new().with_remote_span_context(tp.remote(TraceState::default())),
        ))
    }

    /// Whether this holds a context.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Whether this trace's span is valid but not sampled: nothing under it
    /// will be recorded.
    pub fn unsampled(&self) -> bool {
        self.0.as_ref().is_some_and(unsampled)
    }

    /// The context of this trace's span, to carry with a message: `None`
    /// when empty or not sampled (a receiver would record nothing under it).
    pub fn traceparent(&self) -> Option<TraceParent> {
        self.0
            .as_ref()
            .and_then(|cx| TraceParent::of(cx.span().span_context()))
            .filter(TraceParent::sampled)
    }

    /// Makes this the current context on this thread until the guard drops
    /// (plugin calls made meanwhile become its children). Not across `.await`.
    pub fn attach(&self) -> Option<ContextGuard> {
        self.0.as_ref().map(|cx| cx.clone().attach())
    }

    /// Records an error status on this trace's span (a no-op when empty).
    pub fn fail(&self, message: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(message));
        }
    }

    /// Adds an attribute to this trace's span (a no-op when empty).
    pub fn set_attribute(&self, kv: KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(kv);
        }
    }

    /// Ends this trace's span now (it also ends when the last clone drops).
    pub fn end(&self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }

    fn parent(&self) -> Cow<'_, Context> {
        match &self.0 {
            Some(cx) => Cow::Borrowed(cx),
            None => Cow::Owned(Context::new()),
        }
    }
}

/// The connection span (kind SERVER, `connect {transport}`) of a client that
/// connects with `traceparent`/`tracestate` headers: a valid `traceparent` is
/// its parent, an invalid one is ignored (a new trace begins). Empty when off.
pub fn connection(
    transport: &'static str,
    tenant: &str,
    client: &str,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Trace {
    let Some(tracer) = tracer() else {
        return Trace::NONE;
    };
    let parent = match traceparent.and_then(TraceParent::parse) {
        Some(tp) => Context::new().with_remote_span_context(tp.remote(trace_state(tracestate))),
        None => Context::new(),
    };
    if unsampled(&parent) {
        // The caller's trace is not sampled: nothing under it is recorded.
        return Trace(Some(parent));
    }
    let span = tracer
        .span_builder(format!("connect {transport}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("switchyard.transport", transport),
            KeyValue::new("switchyard.tenant", tenant.to_owned()),
            KeyValue::new("switchyard.client", client.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    Trace(Some(parent.with_span(span)))
}

/// `publish {channel}` (kind PRODUCER), child of `parent` (the command's
/// `traceparent`, else the connection's span; a new trace when empty).
/// Empty when off.
pub fn publish_span(parent: &Trace, tenant: &str, channel: &str) -> Trace {
    let Some(tracer) = tracer() else {
        return Trace::NONE;
    };
    if parent.unsampled() {
        // Children of an unsampled span are dropped: build none.
        return parent.clone();
    }
    let parent = parent.parent();
    let span = tracer
        .span_builder(format!("publish {channel}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", MESSAGING_SYSTEM),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", channel.to_owned()),
            KeyValue::new("switchyard.tenant", tenant.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    Trace(Some(parent.with_span(span)))
}

/// `deliver {channel}` (kind CONSUMER) for a message published under `tp`,
/// recorded once per message on the node that delivers it. Ends when dropped.
pub fn deliver_span(tp: TraceParent, tenant: &str, channel: &str, seq: u64) -> Option<BoxedSpan> {
    if !tp.sampled() {
        return None;
    }
    let tracer = tracer()?;
    let parent = Context::new().with_remote_span_context(tp.remote(TraceState::default()));
    Some(
        tracer
            .span_builder(format!("deliver {channel}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", MESSAGING_SYSTEM),
                KeyValue::new("messaging.operation.name", "deliver"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", channel.to_owned()),
                KeyValue::new("switchyard.tenant", tenant.to_owned()),
                KeyValue::new("switchyard.seq", i64::try_from(seq).unwrap_or(i64::MAX)),
            ])
            .start_with_context(tracer, &parent),
    )
}

/// A running `plugin {role}` span; [`PluginSpan::outcome`] ends it.
pub struct PluginSpan(BoxedSpan);

impl std::fmt::Debug for PluginSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginSpan")
    }
}

impl PluginSpan {
    /// Records `switchyard.outcome` (the plugin-call metric's outcome label)
    /// and ends the span.
    pub fn outcome(mut self, outcome: &'static str) {
        self.0
            .set_attribute(KeyValue::new("switchyard.outcome", outcome));
        if !matches!(outcome, "ok" | "denied") {
            self.0.set_status(Status::error(outcome));
        }
        self.0.end();
    }
}

/// `plugin {role}` (kind INTERNAL) around one plugin call, child of the
/// current context (see [`Trace::attach`]). `None` when off.
pub fn plugin_span(role: &'static str, plugin: &str, tenant: &str) -> Option<PluginSpan> {
    let tracer = tracer()?;
    if Context::map_current(unsampled) {
        return None;
    }
    let cx = Context::current();
    let span = tracer
        .span_builder(format!("plugin {role}"))
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("switchyard.plugin", plugin.to_owned()),
            KeyValue::new("switchyard.tenant", tenant.to_owned()),
            KeyValue::new("switchyard.role", role),
        ])
        .start_with_context(tracer, &cx);
    Some(PluginSpan(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_traceparents() {
        let tp = TraceParent::parse(TP).expect("valid");
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.span_id[7], 0xb7);
        assert!(tp.sampled());
        assert_eq!(tp.header(), TP);
        // A later version may carry more fields.
        let v1 = format!("01{}-extra", &TP[2..]);
        assert!(TraceParent::parse(&v1).is_some());
    }

    #[test]
    fn rejects_invalid_traceparents() {
        let bad = [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(TraceParent::parse(b), None, "{b:?}");
        }
        // Never a panic, whatever the bytes.
        for n in 0..80 {
            let s: String = (0..n).map(|i| ['-', 'a', '0', 'é'][i % 4]).collect();
            let _ = TraceParent::parse(&s);
        }
    }

    #[test]
    fn off_means_empty() {
        assert!(!enabled());
        assert!(!connection("ws", "t", "c", Some(TP), None).is_some());
        let tp = TraceParent::parse(TP).expect("valid");
        assert!(!Trace::remote(tp).is_some());
        assert!(!publish_span(&Trace::NONE, "t", "c").is_some());
        assert!(deliver_span(tp, "t", "c", 1).is_none());
        assert!(plugin_span("router", "p", "t").is_none());
        assert!(trace_state(Some("bad state ,,")).header().is_empty());
    }
}
