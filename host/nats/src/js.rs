//! A thin JetStream API client over core NATS requests: stream management,
//! publish with expectations (compare-and-append), message reads. Every call
//! is bounded by [`CALL_TIMEOUT`] and fails fast while disconnected, mapping
//! failures onto [`BrokerError`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::{Client, connection::State};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use switchyard_core::broker::BrokerError;

/// How long one JetStream call may take before it counts as `unavailable`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// JetStream API error codes the broker acts on.
pub mod code {
    /// `Nats-Expected-Last-Subject-Sequence` did not match: another writer won.
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// The stream does not exist.
    pub const STREAM_NOT_FOUND: u64 = 10059;
    /// No message matched a read.
    pub const NO_MESSAGE: u64 = 10037;
    /// JetStream is not enabled on the server or account.
    pub const NOT_ENABLED: u64 = 10076;
    /// JetStream is not enabled for the account.
    pub const NOT_ENABLED_ACCOUNT: u64 = 10039;
    /// The consumer does not exist.
    pub const CONSUMER_NOT_FOUND: u64 = 10014;
}

/// A JetStream API failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsError {
    /// The API answered with an error.
    Api {
        /// JetStream `err_code`.
        code: u64,
        /// Its description.
        description: String,
    },
    /// No answer (disconnected, timed out, no responders).
    Unavailable(String),
    /// A malformed answer.
    Bad(String),
    /// Nobody listens on the subject (no stream, or JetStream is not ready).
    NoResponders,
}

impl JsError {
    /// The API error code, if the API answered.
    pub fn code(&self) -> Option<u64> {
        match self {
            JsError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<JsError> for BrokerError {
    fn from(e: JsError) -> Self {
        match e {
            JsError::Unavailable(m) => BrokerError::Unavailable(format!("nats: {m}")),
            JsError::Api { code, description }
                if code == code::NOT_ENABLED || code == code::NOT_ENABLED_ACCOUNT =>
            {
                BrokerError::Unavailable(format!("nats: {description}"))
            }
            JsError::Api { code, description } => {
                BrokerError::Internal(format!("nats: {description} ({code})"))
            }
            JsError::Bad(m) => BrokerError::Internal(format!("nats: {m}")),
            JsError::NoResponders => {
                BrokerError::Unavailable("nats: jetstream does not answer".into())
            }
        }
    }
}

/// A stored message as read back from a stream.
#[derive(Debug, Clone, Default)]
pub struct StoredMsg {
    /// Stream sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// Headers (first value of each).
    pub headers: HashMap<String, String>,
    /// Payload.
    pub payload: Bytes,
}

impl StoredMsg {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// A header parsed as an integer.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.trim().parse().ok())
    }
}

/// Parses `NATS/1.0\r\nName: value\r\n…` header blocks.
pub fn parse_headers(raw: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = HashMap::new();
    for line in text.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            out.entry(k.trim().to_owned())
                .or_insert_with(|| v.trim().to_owned());
        }
    }
    out
}

/// Headers of a received message as a plain map.
pub fn header_map(h: Option<&HeaderMap>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(h) = h {
        for (k, vs) in h.iter() {
            if let Some(v) = vs.first() {
                out.insert(k.to_string(), v.as_str().to_owned());
            }
        }
    }
    out
}

/// Outcome of a JetStream publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// Stream sequence (of the original message for a duplicate).
    pub seq: u64,
    /// The `Nats-Msg-Id` was seen within the duplicate window.
    pub duplicate: bool,
}

/// JetStream over one client.
#[derive(Clone)]
pub struct Js {
    /// The NATS connection.
    pub client: Client,
}

impl std::fmt::Debug for Js {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Js").finish_non_exhaustive()
    }
}

fn api_result(v: Value) -> Result<Value, JsError> {
    if let Some(e) = v.get("error") {
        return Err(JsError::Api {
            code: e["err_code"].as_u64().unwrap_or(0),
            description: e["description"].as_str().unwrap_or("error").to_owned(),
        });
    }
    Ok(v)
}

impl Js {
    /// Whether the connection is up (calls fail fast otherwise).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// A request with headers on `subject`, answered within [`CALL_TIMEOUT`].
    pub async fn request_raw(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<async_nats::Message, JsError> {
        if !self.connected() {
            return Err(JsError::Unavailable("disconnected".into()));
        }
        let fut = async {
            match headers {
                Some(h) => self.client.request_with_headers(subject, h, payload).await,
                None => self.client.request(subject, payload).await,
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                Err(JsError::NoResponders)
            }
            Ok(Err(e)) => Err(JsError::Unavailable(e.to_string())),
            Err(_) => Err(JsError::Unavailable("no answer in time".into())),
        }
    }

    /// Calls `$JS.API.<api>` with a JSON body.
    pub async fn api(&self, api: &str, body: &Value) -> Result<Value, JsError> {
        let payload = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let m = self
            .request_raw(format!("$JS.API.{api}"), None, payload)
            .await?;
        let v: Value = serde_json::from_slice(&m.payload)
            .map_err(|_| JsError::Bad(format!("{api}: answer is not JSON")))?;
        api_result(v)
    }

    /// Publishes into a stream and waits for its acknowledgement.
    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PubAck, JsError> {
        let m = match self.request_raw(subject, Some(headers), payload).await {
            Err(JsError::NoResponders) => {
                return Err(JsError::Api {
                    code: code::STREAM_NOT_FOUND,
                    description: "no stream captures the subject".into(),
                });
            }
            r => r?,
        };
        let v: Value = serde_json::from_slice(&m.payload)
            .map_err(|_| JsError::Bad("publish ack is not JSON".into()))?;
        let v = api_result(v)?;
        Ok(PubAck {
            seq: v["seq"]
                .as_u64()
                .ok_or_else(|| JsError::Bad("publish ack without seq".into()))?,
            duplicate: v["duplicate"].as_bool().unwrap_or(false),
        })
    }

    /// Creates a stream, or updates it when its config differs.
    pub async fn ensure_stream(&self, config: &Value) -> Result<(), JsError> {
        let name = config["name"].as_str().unwrap_or_default().to_owned();
        match self.api(&format!("STREAM.CREATE.{name}"), config).await {
            Ok(_) => Ok(()),
            // Exists (with another config): bring it to ours.
            Err(JsError::Api { code: 10058, .. }) => self
                .api(&format!("STREAM.UPDATE.{name}"), config)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    }

    /// One stored message: `Ok(None)` when none matches.
    pub async fn get(&self, stream: &str, query: Value) -> Result<Option<StoredMsg>, JsError> {
        match self.api(&format!("STREAM.MSG.GET.{stream}"), &query).await {
            Ok(v) => {
                let m = &v["message"];
                let b64 = base64::engine::general_purpose::STANDARD;
                let headers = m["hdrs"]
                    .as_str()
                    .and_then(|h| b64.decode(h).ok())
                    .map(|h| parse_headers(&h))
                    .unwrap_or_default();
                let payload = m["data"]
                    .as_str()
                    .and_then(|d| b64.decode(d).ok())
                    .unwrap_or_default();
                Ok(Some(StoredMsg {
                    seq: m["seq"]
                        .as_u64()
                        .ok_or_else(|| JsError::Bad("message without seq".into()))?,
                    subject: m["subject"].as_str().unwrap_or_default().to_owned(),
                    headers,
                    payload: Bytes::from(payload),
                }))
            }
            Err(JsError::Api {
                code: code::NO_MESSAGE,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The last message on `subject`.
    pub async fn last(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, JsError> {
        self.get(stream, json!({ "last_by_subj": subject })).await
    }

    /// The message at stream sequence `seq`.
    pub async fn at(&self, stream: &str, seq: u64) -> Result<Option<StoredMsg>, JsError> {
        self.get(stream, json!({ "seq": seq })).await
    }

    /// Every message on subjects matching `filter` (the latest per key of a
    /// KV bucket), oldest first, at most `limit`.
    pub async fn scan(
        &self,
        stream: &str,
        filter: &str,
        limit: usize,
    ) -> Result<Vec<StoredMsg>, JsError> {
        let mut out = Vec::new();
        let mut seq = 1u64;
        while out.len() < limit {
            match self
                .get(stream, json!({ "seq": seq, "next_by_subj": filter }))
                .await?
            {
                Some(m) => {
                    seq = m.seq + 1;
                    out.push(m);
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Removes messages of `subject` but the last `keep`.
    pub async fn purge_keep(&self, stream: &str, subject: &str, keep: u64) -> Result<(), JsError> {
        self.api(
            &format!("STREAM.PURGE.{stream}"),
            &json!({ "filter": subject, "keep": keep }),
        )
        .await
        .map(|_| ())
    }
}

/// Nanoseconds, as JetStream configs want durations.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2)
}

/// Config of a KV bucket (the stream behind it), as `nats kv add` makes it.
pub fn kv_config(bucket: &str, ttl: Duration, memory: bool, replicas: usize) -> Value {
    json!({
        "name": crate::names::kv_stream(bucket),
        "subjects": [format!("$KV.{bucket}.>")],
        "retention": "limits",
        "storage": if memory { "memory" } else { "file" },
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "max_age": nanos(ttl),
        "max_msgs": -1,
        "max_bytes": -1,
        "max_msg_size": -1,
        "max_consumers": -1,
        "discard": "new",
        "duplicate_window": nanos(ttl.min(Duration::from_secs(120))),
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "deny_purge": false,
        "allow_direct": true,
    })
}

/// Streams this process made sure of, by name: remade on first use after a
/// server lost them.
#[derive(Debug, Default)]
pub struct Ensured {
    done: parking_lot::Mutex<HashMap<String, Arc<str>>>,
}

impl Ensured {
    /// Whether `name` was ensured with exactly this config.
    pub fn is(&self, name: &str, config: &str) -> bool {
        self.done.lock().get(name).is_some_and(|c| **c == *config)
    }

    /// Records `name` as ensured with `config`.
    pub fn set(&self, name: &str, config: &str) {
        self.done.lock().insert(name.to_owned(), Arc::from(config));
    }

    /// Forgets `name` (it was found missing).
    pub fn forget(&self, name: &str) {
        self.done.lock().remove(name);
    }

    /// Forgets everything (after a reconnect the server may be a new one).
    pub fn clear(&self) {
        self.done.lock().clear();
    }
}

impl Js {
    /// [`Js::ensure_stream`] once per config.
    pub async fn ensure_once(&self, ensured: &Ensured, config: &Value) -> Result<(), JsError> {
        let name = config["name"].as_str().unwrap_or_default();
        let text = config.to_string();
        if ensured.is(name, &text) {
            return Ok(());
        }
        self.ensure_stream(config).await?;
        ensured.set(name, &text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_blocks() {
        let h = parse_headers(b"NATS/1.0\r\nSy-Seq: 42\r\nSy-Epoch:  e1 \r\nSy-Seq: 7\r\n\r\n");
        assert_eq!(
            h.get("Sy-Seq").map(String::as_str),
            Some("42"),
            "first value wins"
        );
        assert_eq!(h.get("Sy-Epoch").map(String::as_str), Some("e1"));
        assert!(parse_headers(b"").is_empty());
        assert!(parse_headers(&[0xff, 0xfe]).is_empty());
    }

    #[test]
    fn api_errors_map_to_broker_errors() {
        let e = api_result(json!({"error": {"code": 400, "err_code": 10071, "description": "wrong last sequence: 3"}}))
            .unwrap_err();
        assert_eq!(e.code(), Some(code::WRONG_LAST_SEQUENCE));
        assert!(matches!(BrokerError::from(e), BrokerError::Internal(_)));
        let off = JsError::Api {
            code: code::NOT_ENABLED,
            description: "off".into(),
        };
        assert!(matches!(
            BrokerError::from(off),
            BrokerError::Unavailable(_)
        ));
        assert!(matches!(
            BrokerError::from(JsError::NoResponders),
            BrokerError::Unavailable(_)
        ));
        assert!(api_result(json!({"seq": 1})).is_ok());
    }

    #[test]
    fn kv_buckets_keep_one_value_per_key_for_the_ttl() {
        let c = kv_config("SY_DIR", Duration::from_secs(30), true, 3);
        assert_eq!(c["name"], "KV_SY_DIR");
        assert_eq!(c["subjects"][0], "$KV.SY_DIR.>");
        assert_eq!(c["max_msgs_per_subject"], 1);
        assert_eq!(c["max_age"], 30_000_000_000u64);
        assert_eq!(
            (c["storage"].clone(), c["num_replicas"].clone()),
            (json!("memory"), json!(3))
        );
    }
}
