//! The WIT types of `switchyard:gateway/types`, with convenience constructors.

use crate::bindings::switchyard::gateway::types as bindings;
pub use crate::bindings::switchyard::gateway::types::{
    Denial, Header, LogLevel, MergeError, Principal, PublishRequest, RateDecision, RateKey, Route,
    RouteTarget,
};

impl Principal {
    /// A principal with an id and its claims (a JSON object text).
    pub fn new(id: impl Into<String>, claims_json: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            claims_json: claims_json.into(),
        }
    }

    /// The anonymous principal (empty id, no claims), as the built-in auth policy decides.
    pub fn anonymous() -> Self {
        Self::new("", "{}")
    }

    /// Whether this is the anonymous principal.
    pub fn is_anonymous(&self) -> bool {
        self.id.is_empty()
    }
}

impl Default for Principal {
    fn default() -> Self {
        Self::anonymous()
    }
}

/// A connection attempt, as the auth role sees it (before the upgrade).
///
/// In a component each part is fetched from the gateway when asked for (a
/// token check reads only [`token`](Self::token)). In native unit tests it is
/// built from [`RequestParts`].
pub struct ConnectRequest<'a> {
    src: Src<'a>,
}

enum Src<'a> {
    Host(&'a bindings::ConnectRequest),
    Parts(RequestParts),
}

/// The parts of a [`ConnectRequest`], for building one in tests.
///
/// ```
/// use switchyard_sdk::{ConnectRequest, RequestParts};
/// let req = ConnectRequest::new(RequestParts {
///     query: "room=1&token=abc".into(),
///     headers: vec![("origin".into(), "https://app.test".into())],
///     ..Default::default()
/// });
/// assert_eq!(req.query_param("token").as_deref(), Some("abc"));
/// assert_eq!(req.header("origin").as_deref(), Some("https://app.test"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParts {
    /// Tenant id resolved from the path or Host.
    pub tenant: String,
    /// Request path, e.g. `/ws/acme`.
    pub path: String,
    /// Raw query string without `?`.
    pub query: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Peer `ip:port`.
    pub remote_addr: String,
    /// `X-Client-Id` / `client_id`, or a generated UUID.
    pub client_id: String,
    /// Bearer token from `Authorization` or the `token` query parameter.
    pub token: Option<String>,
}

impl ConnectRequest<'static> {
    /// A request made of `parts` (for tests).
    pub fn new(parts: RequestParts) -> Self {
        Self {
            src: Src::Parts(parts),
        }
    }
}

impl<'a> ConnectRequest<'a> {
    /// The request the gateway lent to this `authenticate` call (used by the export macro).
    #[doc(hidden)]
    pub fn from_host(req: &'a bindings::ConnectRequest) -> Self {
        Self {
            src: Src::Host(req),
        }
    }

    /// Tenant id resolved from the path or Host.
    pub fn tenant(&self) -> String {
        match &self.src {
            Src::Host(r) => r.tenant(),
            Src::Parts(p) => p.tenant.clone(),
        }
    }

    /// Request path, e.g. `/ws/acme`.
    pub fn path(&self) -> String {
        match &self.src {
            Src::Host(r) => r.path(),
            Src::Parts(p) => p.path.clone(),
        }
    }

    /// Raw query string without `?`.
    pub fn query(&self) -> String {
        match &self.src {
            Src::Host(r) => r.query(),
            Src::Parts(p) => p.query.clone(),
        }
    }

    /// First value of a header by its lower-case name.
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.src {
            Src::Host(r) => r.header(name),
            Src::Parts(p) => p
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone()),
        }
    }

    /// Every header (at most 64), names lower-case.
    pub fn headers(&self) -> Vec<Header> {
        match &self.src {
            Src::Host(r) => r.headers(),
            Src::Parts(p) => p
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }

    /// Peer `ip:port`.
    pub fn remote_addr(&self) -> String {
        match &self.src {
            Src::Host(r) => r.remote_addr(),
            Src::Parts(p) => p.remote_addr.clone(),
        }
    }

    /// `X-Client-Id` / `client_id`, or a generated UUID.
    pub fn client_id(&self) -> String {
        match &self.src {
            Src::Host(r) => r.client_id(),
            Src::Parts(p) => p.client_id.clone(),
        }
    }

    /// Bearer token from `Authorization` or the `token` query parameter.
    pub fn token(&self) -> Option<String> {
        match &self.src {
            Src::Host(r) => r.token(),
            Src::Parts(p) => p.token.clone(),
        }
    }

    /// First value of a query-string parameter, undecoded (`a=1&b=2`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query().split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.to_owned())
        })
    }
}

impl std::fmt::Debug for ConnectRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.src {
            Src::Host(_) => f.write_str("ConnectRequest(lent by the gateway)"),
            Src::Parts(p) => f.debug_tuple("ConnectRequest").field(p).finish(),
        }
    }
}

impl PublishRequest {
    /// A publish on `channel` with a JSON payload, from the anonymous principal.
    pub fn new(channel: impl Into<String>, data_json: impl Into<String>) -> Self {
        Self {
            principal: Principal::anonymous(),
            client_id: String::new(),
            channel: channel.into(),
            data_json: data_json.into(),
        }
    }
}

impl RouteTarget {
    /// Publish the original payload on `channel`.
    pub fn channel(channel: impl Into<String>) -> Self {
        Self {
            channel: channel.into(),
            data_json: None,
        }
    }

    /// Publish a rewritten payload (JSON text) on `channel`.
    pub fn with_data(channel: impl Into<String>, data_json: impl Into<String>) -> Self {
        Self {
            channel: channel.into(),
            data_json: Some(data_json.into()),
        }
    }
}

impl Route {
    /// Drop the message (route it nowhere).
    pub fn dropped() -> Self {
        Route::To(Vec::new())
    }

    /// Whether this route drops the message.
    pub fn is_drop(&self) -> bool {
        matches!(self, Route::To(t) if t.is_empty())
    }
}

impl RateKey {
    /// A key for a principal, a client and a channel.
    pub fn new(
        principal: impl Into<String>,
        client_id: impl Into<String>,
        channel: impl Into<String>,
    ) -> Self {
        Self {
            principal: principal.into(),
            client_id: client_id.into(),
            channel: channel.into(),
        }
    }
}

impl Denial {
    /// Missing or bad credentials (HTTP 401 at connect).
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Denial::Unauthorized(reason.into())
    }

    /// Not allowed (HTTP 403 at connect, `forbidden` for a command).
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Denial::Forbidden(reason.into())
    }
}

impl MergeError {
    /// The update or snapshot is malformed.
    pub fn invalid(reason: impl std::fmt::Display) -> Self {
        MergeError::Invalid(reason.to_string())
    }
}
