//! HTTP API: `POST /api/publish` and `POST /api/send`, authenticated by a
//! tenant's bearer API key.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchyard_core::Node;
use switchyard_core::broker::BrokerError;
use switchyard_core::policy::Principal;
use switchyard_core::publish;
use switchyard_core::tenant::Tenant;

use crate::handshake::bearer_token;
use crate::response::{Resp, json_error, json_ok};

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
        Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("invalid JSON body: {e}"),
        ))
    })
}

/// `POST /api/publish` → `{"seq":…}`.
pub async fn publish(node: &Arc<Node>, headers: &HeaderMap, body: Bytes) -> Resp {
    let Some(tenant) = tenant_for_key(node, headers) else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key",
        );
    };
    let req: PublishBody = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if let Some(m) = &req.msg_id
        && (m.is_empty() || m.len() > switchyard_core::protocol::MAX_MSG_ID_LEN)
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "msgId must be 1-128 characters",
        );
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
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_error(status, e.code().as_str(), &e.to_string())
        }
    }
}

/// `POST /api/send` → 202 once queued for the node holding the client, 404 when none does.
pub async fn send(node: &Arc<Node>, headers: &HeaderMap, body: Bytes) -> Resp {
    let Some(tenant) = tenant_for_key(node, headers) else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key",
        );
    };
    let req: SendBody = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.client.is_empty() || req.client.len() > 128 {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "client must be 1-128 characters",
        );
    }
    match node
        .broker
        .send_direct(&tenant.id, &req.client, Arc::from(req.data))
        .await
    {
        Ok(()) => json_ok(StatusCode::ACCEPTED, &serde_json::json!({"queued": true})),
        Err(BrokerError::NotFound) => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no node holds that client",
        ),
        Err(BrokerError::Unavailable(m)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m)
        }
        Err(BrokerError::Internal(m)) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &m)
        }
    }
}
