//! CORS for the fallback transports, so a browser page on an allowed origin can
//! use `/sse` and `/poll` on another origin. Opening a session already checks
//! `Origin` against the tenant's allow-list (403 before anything else); the
//! session endpoints are reached only through the unguessable session name, so
//! their responses name the caller's origin as allowed.

use http::{HeaderValue, Method, Request, StatusCode, header};

use crate::response::{Resp, full};

/// Whether `path` belongs to a fallback transport (`/sse…`, `/poll…`).
pub fn is_fallback_path(path: &str) -> bool {
    path == "/sse" || path == "/poll" || path.starts_with("/sse/") || path.starts_with("/poll/")
}

/// The request's `Origin` when it is a cross-origin fallback request.
pub fn fallback_origin<B>(req: &Request<B>) -> Option<HeaderValue> {
    if !is_fallback_path(req.uri().path()) {
        return None;
    }
    req.headers().get(header::ORIGIN).cloned()
}

/// Answer to a CORS preflight (`OPTIONS`) on a fallback path.
pub fn preflight(origin: &HeaderValue) -> Resp {
    let mut r = Resp::new(full(""));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "authorization, content-type, x-client-id, traceparent, tracestate, x-switchyard-csrf",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    r
}

/// Whether a request is a preflight.
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
}

/// Marks a fallback response readable by `origin`. Refusals (401, 403) are
/// readable too, so a client can tell "refused" (stop) from "unreachable" (retry).
pub fn allow(mut r: Resp, origin: &HeaderValue) -> Resp {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-switchyard-session, x-switchyard-node"),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
    r
}
