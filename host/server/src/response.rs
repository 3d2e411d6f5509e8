//! Response helpers.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use switchyard_core::refusal::Refusal;

/// Body of every response: a full buffer, or a stream (SSE).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Response type of every route.
pub type Resp = Response<Body>;

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// Response with a body and content type.
pub fn with_type(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// JSON response.
pub fn json_ok(status: StatusCode, v: &serde_json::Value) -> Resp {
    with_type(status, "application/json", v.to_string())
}

/// The HTTP status of a refusal ([`Refusal::http_status`]).
pub fn status_of(r: Refusal) -> StatusCode {
    StatusCode::from_u16(r.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A refusal as an HTTP JSON error: its status and `{"error": name, "message": …}`.
pub fn json_refusal(r: Refusal, message: &str) -> Resp {
    json_error(status_of(r), r.name(), message)
}

/// JSON error `{"error": code, "message": …}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_ok(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
