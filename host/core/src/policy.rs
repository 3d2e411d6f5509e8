//! The policy seam: one trait per role, every phase defaulting to the built-in
//! behaviour (allow, no limit, direct route, last-writer-wins). WebAssembly
//! plugins implement these traits in `switchyard-policy`; the WIT interfaces in
//! `wit/` mirror the types here.
//!
//! Calls are synchronous and bounded (plugins run under a CPU deadline), so they
//! run inline on the connection's task without per-call allocation of a runtime.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::document::lww::LwwDocument;

/// Everything the auth policy may look at when a connection arrives.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// Tenant resolved from the path or Host.
    pub tenant: String,
    /// Request path, e.g. `/ws/acme`.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// Request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Peer address `ip:port`.
    pub remote_addr: String,
    /// Client id (from `X-Client-Id` / `client_id`, or generated).
    pub client_id: String,
    /// Bearer token from `Authorization` or the `token` query parameter.
    pub token: Option<String>,
}

impl ConnectRequest {
    /// First header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Who a connection is, as decided by the auth policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// Principal id (e.g. JWT `sub`); empty for anonymous.
    pub id: String,
    /// Claims as a JSON object text (`{}` when none).
    pub claims: Arc<str>,
}

impl Principal {
    /// The anonymous principal of the built-in auth policy.
    pub fn anonymous() -> Self {
        Self {
            id: String::new(),
            claims: Arc::from("{}"),
        }
    }
}

/// A named refusal from a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No or bad credentials (HTTP 401 / close 4001).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Credentials fine, action not allowed (HTTP 403 / `forbidden`).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Over a limit.
    #[error("rate limited: retry after {retry_after_ms} ms")]
    RateLimited {
        /// Suggested wait.
        retry_after_ms: u64,
    },
    /// The policy failed (trap, timeout, bad return) and `on_error = deny`.
    #[error("policy failed: {0}")]
    Failed(String),
    /// Any other refusal.
    #[error("{0}")]
    Other(String),
}

/// Authentication of connections and authorization of subscribe/publish.
pub trait AuthPolicy: Send + Sync {
    /// Decides who a connecting client is. Default: anonymous, allowed. The
    /// request is shared (`Arc`) so a plugin can read it during the call
    /// without a copy.
    fn authenticate(&self, req: &Arc<ConnectRequest>) -> Result<Principal, Denial> {
        let _ = req;
        Ok(Principal::anonymous())
    }

    /// May `principal` subscribe to `channel`? Default: yes.
    fn authorize_subscribe(&self, principal: &Principal, channel: &str) -> Result<(), Denial> {
        let _ = (principal, channel);
        Ok(())
    }

    /// May `principal` publish `data` on `channel`? Default: yes.
    fn authorize_publish(
        &self,
        principal: &Principal,
        channel: &str,
        data: &RawValue,
    ) -> Result<(), Denial> {
        let _ = (principal, channel, data);
        Ok(())
    }
}

/// An inbound publish as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct PublishRequest<'a> {
    /// Publisher.
    pub principal: &'a Principal,
    /// Client id of the publisher (`""` for the HTTP API).
    pub client: &'a str,
    /// Requested channel.
    pub channel: &'a str,
    /// Payload.
    pub data: &'a RawValue,
}

/// One destination chosen by a router.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    /// Channel to publish on.
    pub channel: String,
    /// Rewritten payload, or `None` to keep the original.
    pub data: Option<Box<RawValue>>,
}

/// What a router decided.
#[derive(Debug, Clone)]
pub enum Route {
    /// Publish unchanged on the requested channel.
    Direct,
    /// Publish on these channels instead (empty = drop).
    To(Vec<RouteTarget>),
}

/// Maps an inbound publish to channels.
pub trait RouterPolicy: Send + Sync {
    /// Default: the requested channel, unchanged.
    fn route(&self, req: &PublishRequest<'_>) -> Result<Route, Denial> {
        let _ = req;
        Ok(Route::Direct)
    }
}

/// What a rate limiter keys on.
#[derive(Debug, Clone, Copy)]
pub struct RateKey<'a> {
    /// Principal id (may be empty).
    pub principal: &'a str,
    /// Client id.
    pub client: &'a str,
    /// Channel.
    pub channel: &'a str,
}

/// Rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Allow,
    /// Refuse; the client may retry after this long.
    Reject {
        /// Suggested wait.
        retry_after_ms: u64,
    },
    /// Go ahead after waiting this long (bounded by the host).
    Delay {
        /// Wait before proceeding.
        ms: u64,
    },
}

/// Per-tenant rate limiting beyond the per-connection token bucket.
pub trait RateLimitPolicy: Send + Sync {
    /// Default: allow.
    fn check(&self, key: &RateKey<'_>, cost: u32) -> RateDecision {
        let _ = (key, cost);
        RateDecision::Allow
    }
}

/// Why a merge failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The update conflicts and cannot be applied.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The update or snapshot is malformed.
    #[error("invalid update: {0}")]
    Invalid(String),
    /// The plugin failed.
    #[error("merge failed: {0}")]
    Failed(String),
    /// The document's state was lost before this call (an earlier call
    /// failed and took the instance with it); nothing was tried. The gateway
    /// rebuilds the document and tries again.
    #[error("document lost: {0}")]
    Lost(String),
}

/// Who made a change and when: the stamp the gateway gave an accepted patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// Lamport timestamp (rises with every change the document log accepts).
    pub lamport: u64,
    /// Client id of the connection that made the change (`""` = server side).
    pub client_id: &'a str,
}

/// A live document kept by a merge policy between calls (one per document
/// channel and node). The gateway serializes calls on one document.
pub trait MergeDocument: Send {
    /// Applies an incoming update made by `stamp`; returns the update to
    /// broadcast (`None` = nothing changed, nothing is broadcast). On `Err`
    /// the document must be unchanged; after [`MergeError::Failed`] the
    /// gateway drops it and reopens from the last good snapshot and log (and
    /// refuses the update); after [`MergeError::Lost`] it does the same and
    /// applies the update on the reopened document.
    fn apply(&mut self, update: &[u8], stamp: &Stamp<'_>) -> Result<Option<Vec<u8>>, MergeError>;
    /// Full state, for snapshot-on-subscribe and compaction.
    fn snapshot(&self) -> Result<Vec<u8>, MergeError>;
    /// Size of the state in bytes when the policy knows it cheaply; `None`
    /// makes the gateway estimate it (last snapshot + updates since) and take
    /// a snapshot to check when the estimate nears `document_max_bytes`.
    fn size(&self) -> Option<usize> {
        None
    }
    /// The document's state vector (CRDT catch-up), or `None` when the
    /// policy has none.
    fn state_vector(&self) -> Result<Option<Vec<u8>>, MergeError> {
        Ok(None)
    }
    /// What a client with `state_vector` is missing (a `DIFF` frame), or
    /// `None` when the policy has no state vectors (the client gets a snapshot).
    fn diff(&self, state_vector: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        let _ = state_vector;
        Ok(None)
    }
}

/// Conflict resolution for state sync.
pub trait MergePolicy: Send + Sync {
    /// Opens a document from a snapshot (empty = new document). Default: the
    /// built-in last-writer-wins map ([`crate::document::lww`]).
    fn open(&self, snapshot: &[u8]) -> Result<Box<dyn MergeDocument>, MergeError> {
        LwwDocument::from_snapshot(snapshot).map(|d| Box::new(d) as Box<dyn MergeDocument>)
    }
}

/// Built-in defaults for every role.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltIn;

impl AuthPolicy for BuiltIn {}
impl RouterPolicy for BuiltIn {}
impl RateLimitPolicy for BuiltIn {}
impl MergePolicy for BuiltIn {}

/// The policies a tenant runs, one per role. Swapped atomically on reload.
#[derive(Clone)]
pub struct PolicySet {
    /// Auth role.
    pub auth: Arc<dyn AuthPolicy>,
    /// Router role.
    pub router: Arc<dyn RouterPolicy>,
    /// Rate-limit role.
    pub rate_limit: Arc<dyn RateLimitPolicy>,
    /// Merge role.
    pub merge: Arc<dyn MergePolicy>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicySet")
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        let b = Arc::new(BuiltIn);
        Self {
            auth: b.clone(),
            router: b.clone(),
            rate_limit: b.clone(),
            merge: b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_allow() {
        let p = PolicySet::default();
        let req = Arc::new(ConnectRequest::default());
        let who = p.auth.authenticate(&req).expect("anon");
        assert_eq!(who, Principal::anonymous());
        let data = RawValue::from_string("1".into()).expect("raw");
        assert!(p.auth.authorize_publish(&who, "a:b", &data).is_ok());
        let r = p
            .router
            .route(&PublishRequest {
                principal: &who,
                client: "c",
                channel: "a:b",
                data: &data,
            })
            .expect("route");
        assert!(matches!(r, Route::Direct));
        let key = RateKey {
            principal: "",
            client: "c",
            channel: "a:b",
        };
        assert_eq!(p.rate_limit.check(&key, 1), RateDecision::Allow);
    }
}
