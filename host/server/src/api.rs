//! HTTP API: `POST /api/publish`, `POST /api/send` and
//! `GET`/`POST /api/documents/{channel}`, authenticated by a tenant's bearer API key.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchyard_core::Node;
use switchyard_core::broker::BrokerError;
use switchyard_core::channel::ChannelKey;
use switchyard_core::document::DocError;
use switchyard_core::policy::Principal;
use switchyard_core::publish;
use switchyard_core::refusal::Refusal;
use switchyard_core::tenant::Tenant;

use crate::handshake::bearer_token;
use crate::response::{Resp, json_error, json_ok, json_refusal, status_of};

/// Finds the tenant whose API key the request carries (Host mapping breaks ties).
fn tenant_for_key(node: &Node, headers: &HeaderMap) -> Option<Arc<Tenant>> {
    let key = bearer_token(headers, "")?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(t) = node.tenants.resolve(None, host)
        && t.api_key_valid(&key)
    {
        return Some(t);
    }
    let mut all = node.tenants.all();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all.into_iter().find(|t| t.api_key_valid(&key))
}

#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    #[serde(rename = "msgId")]
    msg_id: Option<String>,
}

#[derive(Deserialize)]
struct SendBody {
    client: String,
    data: Box<RawValue>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Box<Resp>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(json_refusal(
            Refusal::BadRequest,
            &format!("invalid JSON body: {e}"),
        ))
    })
}

/// `POST /api/publish` → `{"seq":…}`.
pub async fn publish(node: &Arc<Node>, headers: &HeaderMap, body: Bytes) -> Resp {
    let Some(tenant) = tenant_for_key(node, headers) else {
        return json_refusal(Refusal::Unauthorized, "missing or invalid API key");
    };
    let req: PublishBody = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if let Some(m) = &req.msg_id
        && (m.is_empty() || m.len() > switchyard_core::protocol::MAX_MSG_ID_LEN)
    {
        return json_refusal(Refusal::BadRequest, "msgId must be 1-128 characters");
    }
    let principal = Principal {
        id: String::new(),
        claims: Arc::from("{}"),
    };
    let result = publish::publish(
        node,
        &tenant,
        &principal,
        "",
        &req.channel,
        req.data,
        req.msg_id.as_deref(),
        publish::Publisher::Server,
    )
    .await;
    match result {
        Ok(acc) => {
            let mut v = serde_json::json!({
                "seq": acc.first().map(|a| a.seq),
                "channel": acc.first().map(|a| a.channel.clone()),
            });
            if acc.is_empty() {
                v["dropped"] = true.into();
            }
            if acc.first().is_some_and(|a| a.duplicate) {
                v["duplicate"] = true.into();
            }
            if acc.len() > 1 || acc.first().is_some_and(|a| a.channel != req.channel) {
                v["routes"] = acc
                    .iter()
                    .map(|a| serde_json::json!({"channel": a.channel, "seq": a.seq}))
                    .collect();
            }
            json_ok(StatusCode::OK, &v)
        }
        Err(e) => pipeline_refusal(e.refusal(), &e.to_string()),
    }
}

/// `POST /api/send` → 202 once queued for the node holding the client, 404 when none does.
pub async fn send(node: &Arc<Node>, headers: &HeaderMap, body: Bytes) -> Resp {
    let Some(tenant) = tenant_for_key(node, headers) else {
        return json_refusal(Refusal::Unauthorized, "missing or invalid API key");
    };
    let req: SendBody = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.client.is_empty() || req.client.len() > 128 {
        return json_refusal(Refusal::BadRequest, "client must be 1-128 characters");
    }
    match node
        .broker
        .send_direct(&tenant.id, &req.client, Arc::from(req.data))
        .await
    {
        Ok(()) => json_ok(StatusCode::ACCEPTED, &serde_json::json!({"queued": true})),
        Err(e) => {
            let message = match &e {
                BrokerError::NotFound => "no node holds that client",
                BrokerError::Unavailable(m) | BrokerError::Internal(m) => m.as_str(),
            };
            json_refusal(Refusal::from(&e), message)
        }
    }
}

fn unauthorized() -> Resp {
    json_refusal(Refusal::Unauthorized, "missing or invalid API key")
}

/// The tenant and document key of a `/api/documents/{channel}` request, or the
/// error response.
fn document_target(
    node: &Node,
    headers: &HeaderMap,
    channel: &str,
) -> Result<(Arc<Tenant>, ChannelKey), Box<Resp>> {
    let tenant = tenant_for_key(node, headers).ok_or_else(|| Box::new(unauthorized()))?;
    if let Err(e) = switchyard_core::channel::validate(channel) {
        return Err(Box::new(json_refusal(Refusal::BadChannel, &e.to_string())));
    }
    if !tenant.is_document(channel) {
        return Err(Box::new(json_refusal(
            Refusal::NotFound,
            &format!(
                "{channel} is not a document channel of tenant {}",
                tenant.id
            ),
        )));
    }
    let key = ChannelKey::new(tenant.id.clone(), channel);
    Ok((tenant, key))
}

fn doc_error(e: &DocError) -> Resp {
    pipeline_refusal(e.refusal(), &e.to_string())
}

/// A publish or document pipeline refusal: its HTTP status, with the
/// protocol's `error` code as the name (what a WebSocket client is told for
/// the same refusal, DESIGN §2).
fn pipeline_refusal(r: Refusal, message: &str) -> Resp {
    json_error(status_of(r), r.error_code().as_str(), message)
}

/// `GET /api/documents/{channel}` → `{"channel","version","epoch","state"}`:
/// `state` is the JSON object for a JSON (LWW) document, base64 otherwise.
pub async fn document_get(node: &Arc<Node>, headers: &HeaderMap, channel: &str) -> Resp {
    let (tenant, key) = match document_target(node, headers, channel) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    match node.documents.read(&tenant, &key).await {
        Ok(view) => {
            let state = match serde_json::from_slice::<serde_json::Value>(&view.snapshot) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ if view.snapshot.is_empty() => serde_json::json!({}),
                _ => serde_json::Value::String(BASE64.encode(&view.snapshot)),
            };
            json_ok(
                StatusCode::OK,
                &serde_json::json!({
                    "channel": channel,
                    "version": view.version,
                    "epoch": &*view.epoch,
                    "state": state,
                }),
            )
        }
        Err(e) => doc_error(&e),
    }
}

#[derive(Deserialize)]
struct PatchBody {
    delta: Box<RawValue>,
    #[serde(rename = "msgId")]
    msg_id: Option<String>,
}

/// `POST /api/documents/{channel}` with `{"delta":…,"msgId":…}` → `{"version":V}`.
/// A JSON delta is handed to the merge policy as its JSON text (LWW); a JSON
/// string is base64 of binary update bytes (e.g. a Yjs update).
pub async fn document_patch(
    node: &Arc<Node>,
    headers: &HeaderMap,
    channel: &str,
    body: Bytes,
) -> Resp {
    let (tenant, key) = match document_target(node, headers, channel) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let req: PatchBody = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if let Some(m) = &req.msg_id
        && (m.is_empty() || m.len() > switchyard_core::protocol::MAX_MSG_ID_LEN)
    {
        return json_refusal(Refusal::BadRequest, "msgId must be 1-128 characters");
    }
    let delta: Vec<u8> = match serde_json::from_str::<String>(req.delta.get()) {
        Ok(b64) => match BASE64.decode(b64.as_bytes()) {
            Ok(bytes) => bytes,
            Err(e) => {
                return json_refusal(
                    Refusal::Invalid,
                    &format!("a string delta must be base64: {e}"),
                );
            }
        },
        Err(_) => req.delta.get().as_bytes().to_vec(),
    };
    match node
        .documents
        .patch(&tenant, &key, &delta, req.msg_id.as_deref(), "")
        .await
    {
        Ok(p) => json_ok(
            StatusCode::OK,
            &serde_json::json!({"version": p.version, "applied": p.applied}),
        ),
        Err(e) => doc_error(&e),
    }
}
