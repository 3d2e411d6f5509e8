//! A test OTLP/HTTP trace receiver: a small hyper server on a free loopback
//! port that decodes real OTLP protobuf (`ExportTraceServiceRequest`, via
//! `opentelemetry-proto`) posted to `/v1/traces` and keeps every span.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// `SpanKind` values of OTLP.
pub mod kind {
    /// Internal.
    pub const INTERNAL: i32 = 1;
    /// Server.
    pub const SERVER: i32 = 2;
    /// Producer.
    pub const PRODUCER: i32 = 4;
    /// Consumer.
    pub const CONSUMER: i32 = 5;
}

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of its resource.
    pub service: String,
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Span id, lowercase hex.
    pub span_id: String,
    /// Parent span id, lowercase hex (`""` = root).
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// OTLP span kind ([`kind`]).
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: HashMap<String, String>,
    /// Links: (trace id, span id).
    pub links: Vec<(String, String)>,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status: i32,
}

impl Span {
    /// An attribute's text (`""` when absent).
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

#[derive(Default)]
struct State {
    spans: Vec<Span>,
    requests: usize,
    bad: usize,
}

/// The running receiver (stops with the test process).
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Starts on a free loopback port, on its own thread and runtime.
    pub fn start() -> Receiver {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        Receiver { addr, state }
    }

    /// The base URL to use as `telemetry.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.state.lock().expect("state").spans.clone()
    }

    /// Export requests received (any path, decoded or not).
    pub fn requests(&self) -> usize {
        self.state.lock().expect("state").requests
    }

    /// Requests that were not valid OTLP protobuf on `/v1/traces`.
    pub fn bad_requests(&self) -> usize {
        self.state.lock().expect("state").bad
    }

    /// Polls until `found` picks something out of the spans, or `limit` passes.
    pub async fn wait_for<T>(&self, limit: Duration, found: impl Fn(&[Span]) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if let Some(t) = found(&spans) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for spans; received {}:\n{:#?}",
                spans.len(),
                spans
                    .iter()
                    .map(|s| format!(
                        "{} {} {}<-{}",
                        s.name, s.trace_id, s.span_id, s.parent_span_id
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path_ok = req.method() == hyper::Method::POST && req.uri().path() == "/v1/traces";
    let protobuf = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let decoded = ExportTraceServiceRequest::decode(body.as_ref());
    let mut st = state.lock().expect("state");
    st.requests += 1;
    let export = match decoded {
        Ok(e) if path_ok && protobuf => e,
        _ => {
            st.bad += 1;
            let mut r = Response::new(Full::new(Bytes::from_static(b"bad request")));
            *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return Ok(r);
        }
    };
    for rs in export.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                st.spans.push(Span {
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    attributes: attrs(&s.attributes),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    status: s.status.as_ref().map_or(0, |x| x.code),
                });
            }
        }
    }
    drop(st);
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    let mut r = Response::new(Full::new(Bytes::from(reply)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(r)
}
