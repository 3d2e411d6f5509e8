//! Response helpers.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

/// Response type of every route.
pub type Resp = Response<Full<Bytes>>;

/// Plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// JSON response.
pub fn json_ok(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// JSON error `{"error": code, "message": …}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_ok(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
