//! WebSocket upgrade validation (RFC 6455 §4.2): method, Upgrade/Connection
//! headers, version 13, key, subprotocol negotiation, Origin and client id.
//! Pure functions over request parts, so they are tested without sockets.

use base64::Engine as _;
use http::{HeaderMap, Method, StatusCode, header};
use sha1::{Digest, Sha1};
use switchyard_core::protocol::SUBPROTOCOL;
use switchyard_core::refusal::Refusal;

/// Why an upgrade request is refused. Each maps to an HTTP status with a reason body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not GET.
    #[error("WebSocket upgrade requires GET")]
    Method,
    /// Missing `Connection: upgrade` / `Upgrade: websocket`.
    #[error("expected Upgrade: websocket and Connection: upgrade headers")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 base64 bytes.
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
    /// Only unknown subprotocols were offered.
    #[error("no supported subprotocol offered (supported: switchyard.v1)")]
    Subprotocol,
    /// `Origin` not on the tenant's allow-list.
    #[error("origin not allowed")]
    Origin,
    /// Path names a tenant that does not exist.
    #[error("unknown tenant")]
    UnknownTenant,
    /// Bad `X-Client-Id` / `client_id`.
    #[error("client id must be 1-128 visible ASCII characters")]
    ClientId,
    /// Over a per-address limit (`max_connections_per_ip`, `handshakes_per_ip_per_sec`).
    #[error("too many connections from this address")]
    PerIp(crate::client_ip::Refusal),
    /// Auth policy refused the credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Auth policy refused the principal.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Auth policy rate-limited the connect.
    #[error("too many connection attempts")]
    RateLimited,
    /// Node is at its connection limit.
    #[error("server at capacity, try later")]
    Overloaded,
    /// Node is draining.
    #[error("server is shutting down")]
    Draining,
}

impl HandshakeError {
    /// Which refusal this is ([`switchyard_core::refusal`] maps it to the outside).
    pub fn refusal(&self) -> Refusal {
        match self {
            HandshakeError::Method => Refusal::MethodNotAllowed,
            HandshakeError::NotUpgrade | HandshakeError::Version => Refusal::UpgradeRequired,
            HandshakeError::Key | HandshakeError::Subprotocol | HandshakeError::ClientId => {
                Refusal::BadRequest
            }
            HandshakeError::Origin | HandshakeError::Forbidden(_) => Refusal::Forbidden,
            HandshakeError::UnknownTenant => Refusal::NotFound,
            HandshakeError::Unauthorized(_) => Refusal::Unauthorized,
            HandshakeError::RateLimited | HandshakeError::PerIp(_) => Refusal::RateLimited,
            HandshakeError::Overloaded | HandshakeError::Draining => Refusal::Unavailable,
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        crate::response::status_of(self.refusal())
    }

    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Method => "method",
            HandshakeError::NotUpgrade => "not_upgrade",
            HandshakeError::Version => "version",
            HandshakeError::Key => "key",
            HandshakeError::Subprotocol => "subprotocol",
            HandshakeError::Origin => "origin",
            HandshakeError::UnknownTenant => "unknown_tenant",
            HandshakeError::ClientId => "client_id",
            HandshakeError::Unauthorized(_) => "unauthorized",
            HandshakeError::Forbidden(_) => "forbidden",
            HandshakeError::RateLimited => "rate_limited",
            HandshakeError::PerIp(crate::client_ip::Refusal::Connections) => "per_ip_connections",
            HandshakeError::PerIp(crate::client_ip::Refusal::Handshakes) => "per_ip_handshakes",
            HandshakeError::Overloaded => "overloaded",
            HandshakeError::Draining => "draining",
        }
    }
}

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// Negotiated subprotocol, if the client offered any.
    pub subprotocol: Option<&'static str>,
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Validates the upgrade headers and negotiates the subprotocol.
pub fn validate(method: &Method, headers: &HeaderMap) -> Result<Upgrade, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::Method);
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(HandshakeError::NotUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        != Some("13")
    {
        return Err(HandshakeError::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or(HandshakeError::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    let mut offered = false;
    let mut chosen = None;
    for v in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(s) = v.to_str() else { continue };
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered = true;
            if p == SUBPROTOCOL {
                chosen = Some(SUBPROTOCOL);
            }
        }
    }
    if offered && chosen.is_none() {
        return Err(HandshakeError::Subprotocol);
    }
    Ok(Upgrade {
        accept: accept_key(key.as_bytes()),
        subprotocol: chosen,
    })
}

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Decodes `%XX` and `+` in a query component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// First value of a query parameter, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Whether a client id is acceptable.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Bearer token from `Authorization`, else the `token` query parameter.
pub fn bearer_token(headers: &HeaderMap, query: &str) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        })
        .filter(|t| !t.is_empty())
        .or_else(|| query_param(query, "token").filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn rfc_example_accept_key() {
        let up = validate(&Method::GET, &good()).expect("valid");
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.subprotocol, None);
    }

    #[test]
    fn refuses_bad_requests() {
        assert_eq!(
            validate(&Method::POST, &good()),
            Err(HandshakeError::Method)
        );
        let mut h = good();
        h.remove(header::UPGRADE);
        assert_eq!(validate(&Method::GET, &h), Err(HandshakeError::NotUpgrade));
        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(validate(&Method::GET, &h), Err(HandshakeError::Version));
        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert_eq!(validate(&Method::GET, &h), Err(HandshakeError::Key));
        assert_eq!(
            HandshakeError::Version.status(),
            StatusCode::UPGRADE_REQUIRED
        );
    }

    #[test]
    fn negotiates_subprotocol() {
        let mut h = good();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, switchyard.v1"),
        );
        assert_eq!(
            validate(&Method::GET, &h).expect("ok").subprotocol,
            Some("switchyard.v1")
        );
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        assert_eq!(validate(&Method::GET, &h), Err(HandshakeError::Subprotocol));
    }

    #[test]
    fn query_and_tokens() {
        assert_eq!(
            query_param("a=1&token=x%20y+z&b", "token").as_deref(),
            Some("x y z")
        );
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&h, "token=q").as_deref(), Some("abc"));
        assert_eq!(
            bearer_token(&HeaderMap::new(), "token=q").as_deref(),
            Some("q")
        );
        assert!(valid_client_id("user-1"));
        assert!(!valid_client_id("a b"));
        assert!(!valid_client_id(""));
    }
}
