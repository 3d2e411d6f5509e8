//! One trait per policy role. Every method defaults to the gateway's built-in
//! behaviour, so a plugin overrides only what it changes.

use serde_json::{Map, Value};

use crate::{
    ConnectRequest, Denial, MergeError, Principal, PublishRequest, RateDecision, RateKey, Route,
};

/// Authentication of connections and authorization of subscribe and publish
/// (world `auth-plugin`; export with [`crate::export_auth!`]).
pub trait Auth {
    /// Decides who a connecting client is. Default: anonymous, allowed.
    fn authenticate(req: &ConnectRequest) -> Result<Principal, Denial> {
        let _ = req;
        Ok(Principal::anonymous())
    }

    /// May `who` subscribe to `channel`? Default: yes.
    fn authorize_subscribe(who: &Principal, channel: &str) -> Result<(), Denial> {
        let _ = (who, channel);
        Ok(())
    }

    /// May `who` publish `data_json` on `channel`? Default: yes.
    fn authorize_publish(who: &Principal, channel: &str, data_json: &str) -> Result<(), Denial> {
        let _ = (who, channel, data_json);
        Ok(())
    }
}

/// Maps an inbound publish to zero or more channels, rewriting or dropping it
/// (world `router-plugin`; export with [`crate::export_router!`]).
///
/// ```
/// use switchyard_sdk::{Denial, PublishRequest, Route, RouteTarget, Router};
///
/// /// Copies every `chat:*` message to `chat:all`; drops `spam:*`.
/// struct Chat;
///
/// impl Router for Chat {
///     fn route(req: &PublishRequest) -> Result<Route, Denial> {
///         if req.channel.starts_with("spam:") {
///             return Ok(Route::dropped());
///         }
///         if req.channel.starts_with("chat:") {
///             return Ok(Route::To(vec![
///                 RouteTarget::channel(req.channel.clone()),
///                 RouteTarget::channel("chat:all"),
///             ]));
///         }
///         Ok(Route::Direct)
///     }
/// }
///
/// switchyard_sdk::export_router!(Chat);
/// # fn main() {
/// assert!(Chat::route(&PublishRequest::new("spam:x", "1")).unwrap().is_drop());
/// assert!(matches!(Chat::route(&PublishRequest::new("news", "1")).unwrap(), Route::Direct));
/// # }
/// ```
pub trait Router {
    /// Default: the requested channel, unchanged.
    fn route(req: &PublishRequest) -> Result<Route, Denial> {
        let _ = req;
        Ok(Route::Direct)
    }
}

/// Decides allow / reject / delay for a key and a cost (world
/// `rate-limit-plugin`; export with [`crate::export_rate_limit!`]).
pub trait RateLimit {
    /// Default: allow.
    fn check(key: &RateKey, cost: u32) -> RateDecision {
        let _ = (key, cost);
        RateDecision::Allow
    }
}

/// A live document of the merge role, one per channel, kept between calls
/// (world `merge-plugin`, resource `document`; export with [`crate::export_merge!`]).
///
/// The export glue never broadcasts an empty update: `Ok(Some(vec![]))` from
/// [`Document::apply`] is turned into `Ok(None)`.
pub trait Document: Sized + 'static {
    /// Opens a document from a snapshot (empty = new document).
    fn open(snapshot: &[u8]) -> Result<Self, MergeError>;
    /// Applies an incoming update; returns the update to broadcast, or `None`
    /// when nothing changed.
    fn apply(&mut self, update: &[u8]) -> Result<Option<Vec<u8>>, MergeError>;
    /// Full state, for snapshot-on-subscribe.
    fn snapshot(&self) -> Vec<u8>;
    /// Compact summary of what this document has. Default: empty (no summary).
    fn state_vector(&self) -> Vec<u8> {
        Vec::new()
    }
    /// What a peer with `state_vector` is missing. Default: the full snapshot.
    fn diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, MergeError> {
        let _ = state_vector;
        Ok(self.snapshot())
    }
}

/// The built-in last-writer-wins document: a JSON object; an update is a JSON
/// object whose keys replace the document's (`null` deletes a key). The update
/// broadcast is the part that changed something.
///
/// ```
/// use switchyard_sdk::{Document, LastWriterWins};
///
/// let mut doc = LastWriterWins::open(br#"{"a":1}"#).unwrap();
/// assert_eq!(doc.apply(br#"{"a":1}"#).unwrap(), None, "no change, no broadcast");
/// let out = doc.apply(br#"{"a":2,"b":null}"#).unwrap().unwrap();
/// assert_eq!(out, br#"{"a":2}"#);
/// assert_eq!(doc.snapshot(), br#"{"a":2}"#);
/// ```
#[derive(Debug, Default, Clone)]
pub struct LastWriterWins {
    state: Map<String, Value>,
}

impl Document for LastWriterWins {
    fn open(snapshot: &[u8]) -> Result<Self, MergeError> {
        if snapshot.is_empty() {
            return Ok(Self::default());
        }
        match serde_json::from_slice(snapshot) {
            Ok(Value::Object(state)) => Ok(Self { state }),
            Ok(_) => Err(MergeError::invalid("snapshot must be a JSON object")),
            Err(e) => Err(MergeError::invalid(e)),
        }
    }

    fn apply(&mut self, update: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        let patch = match serde_json::from_slice(update) {
            Ok(Value::Object(patch)) => patch,
            Ok(_) => return Err(MergeError::invalid("update must be a JSON object")),
            Err(e) => return Err(MergeError::invalid(e)),
        };
        let mut changed = Map::new();
        for (k, v) in patch {
            let differs = match (&v, self.state.get(&k)) {
                (Value::Null, None) => false,
                (Value::Null, Some(_)) => {
                    self.state.remove(&k);
                    true
                }
                (v, Some(old)) if old == v => false,
                (v, _) => {
                    self.state.insert(k.clone(), v.clone());
                    true
                }
            };
            if differs {
                changed.insert(k, v);
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        serde_json::to_vec(&changed)
            .map(Some)
            .map_err(|e| MergeError::Other(e.to_string()))
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state).unwrap_or_else(|_| b"{}".to_vec())
    }
}
