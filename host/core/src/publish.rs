//! The publish pipeline shared by WebSocket sessions and the HTTP API:
//! authorize → rate-limit policy → route → broker, per destination channel.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::broker::BrokerError;
use crate::broker::PublishMeta;
use crate::channel::{self, ChannelKey};
use crate::hub::SessionId;
use crate::node::Node;
use crate::policy::Principal;
use crate::policy::{Denial, PublishRequest, RateDecision, RateKey, Route};
use crate::protocol::ErrorCode;
use crate::refusal::Refusal;
use crate::telemetry::{self, Trace};
use crate::tenant::Tenant;

/// Most channels a router may fan one publish out to.
pub const MAX_ROUTES: usize = 16;
/// Longest delay a rate-limit policy may impose on one publish.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Why a publish failed; each maps to a protocol error code and HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Invalid channel name (from the client or a router).
    #[error("{0}")]
    BadChannel(String),
    /// Refused by a policy.
    #[error("{0}")]
    Denied(Denial),
    /// Over the channel's shared budget (`channel_limits`). Unlike a refusal
    /// of the client's own rate, it is no strike against the client: the
    /// budget is spent by all publishers together.
    #[error("channel publish rate exceeded: retry after {0} ms")]
    ChannelLimited(u64),
    /// Not a publishable channel (a document channel takes binary patches).
    #[error("{0}")]
    Invalid(String),
    /// The broker failed.
    #[error("{0}")]
    Broker(#[from] BrokerError),
}

impl PublishError {
    /// Which refusal this is ([`crate::refusal`] maps it to the outside).
    pub fn refusal(&self) -> Refusal {
        match self {
            PublishError::BadChannel(_) => Refusal::BadChannel,
            PublishError::Invalid(_) => Refusal::Invalid,
            PublishError::ChannelLimited(_) => Refusal::RateLimited,
            PublishError::Denied(d) => Refusal::from(d),
            PublishError::Broker(e) => Refusal::from(e),
        }
    }

    /// Protocol error code.
    pub fn code(&self) -> ErrorCode {
        self.refusal().error_code()
    }

    /// HTTP status for the HTTP API.
    pub fn http_status(&self) -> u16 {
        self.refusal().http_status()
    }
}

/// One accepted destination.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Channel published on.
    pub channel: String,
    /// Seq assigned.
    pub seq: u64,
    /// A repeated `msgId`: acknowledged, not delivered again.
    pub duplicate: bool,
}

/// Who is publishing: a connected client, or the server side (HTTP API key,
/// a bridge), which is routed like any other but not subject to the client
/// rate-limit and publish-authorization policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    /// A client session.
    Client,
    /// A trusted server-side caller.
    Server,
    /// A bridge from another messaging system: trusted like the server, and
    /// its publications are not handed to the publish taps (no loops).
    Bridge,
}

/// Runs the pipeline. An empty result means the router dropped the message.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    node: &Node,
    tenant: &Tenant,
    principal: &Principal,
    client: &str,
    channel: &str,
    data: Box<RawValue>,
    msg_id: Option<&str>,
    by: Publisher,
) -> Result<Vec<Accepted>, PublishError> {
    publish_traced(
        node,
        tenant,
        principal,
        client,
        channel,
        data,
        msg_id,
        by,
        &Trace::NONE,
    )
    .await
}

/// [`publish`] under a trace: with tracing on, records `publish {channel}`
/// (PRODUCER) as a child of `parent` (a new trace when empty); the policy
/// calls are its children and every message published carries its context.
#[allow(clippy::too_many_arguments)]
pub async fn publish_traced(
    node: &Node,
    tenant: &Tenant,
    principal: &Principal,
    client: &str,
    channel: &str,
    data: Box<RawValue>,
    msg_id: Option<&str>,
    by: Publisher,
    parent: &Trace,
) -> Result<Vec<Accepted>, PublishError> {
    publish_from(
        node, tenant, principal, client, channel, data, msg_id, by, parent, None,
    )
    .await
}

/// [`publish_traced`] by the connection `skip` on this node, when it asked
/// not to get its own message back (`"skipSelf":true`): every channel the
/// message goes to (routes too) delivers it to everyone but that session.
#[allow(clippy::too_many_arguments)]
pub async fn publish_from(
    node: &Node,
    tenant: &Tenant,
    principal: &Principal,
    client: &str,
    channel: &str,
    data: Box<RawValue>,
    msg_id: Option<&str>,
    by: Publisher,
    parent: &Trace,
    skip: Option<SessionId>,
) -> Result<Vec<Accepted>, PublishError> {
    // Empty when tracing is off (one flag test); the parent itself when the
    // parent is not sampled (nothing to record).
    let span = telemetry::publish_span(parent, &tenant.id, channel);
    let r = run(
        node, tenant, principal, client, channel, data, msg_id, by, &span, skip,
    )
    .await;
    if span.is_some() && !span.unsampled() {
        match &r {
            Ok(accepted) => span.set_attribute(opentelemetry::KeyValue::new(
                "switchyard.routes",
                i64::try_from(accepted.len()).unwrap_or(i64::MAX),
            )),
            Err(e) => span.fail(e.to_string()),
        }
        span.end();
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn run(
    node: &Node,
    tenant: &Tenant,
    principal: &Principal,
    client: &str,
    channel: &str,
    data: Box<RawValue>,
    msg_id: Option<&str>,
    by: Publisher,
    span: &Trace,
    skip: Option<SessionId>,
) -> Result<Vec<Accepted>, PublishError> {
    let trusted = by != Publisher::Client;
    channel::validate(channel).map_err(|e| PublishError::BadChannel(e.to_string()))?;
    if tenant.is_document(channel) {
        return Err(PublishError::Invalid(format!(
            "{channel} is a document channel: send a binary StatePatch (or POST /api/documents)"
        )));
    }
    let (targets, original, delay) = {
        // Plugin calls below are children of the publish span.
        let _cx = span.attach();
        let policies = tenant.policies();
        let key = RateKey {
            principal: &principal.id,
            client,
            channel,
        };
        // Authorize first: a client without permission must not drain the
        // buckets of the rightful publishers.
        if !trusted {
            policies
                .auth
                .authorize_publish(principal, channel, &data)
                .map_err(PublishError::Denied)?;
        }
        let decision = if trusted {
            RateDecision::Allow
        } else {
            policies.rate_limit.check(&key, 1)
        };
        let delay = match decision {
            RateDecision::Allow => None,
            RateDecision::Reject { retry_after_ms } => {
                return Err(PublishError::Denied(Denial::RateLimited { retry_after_ms }));
            }
            RateDecision::Delay { ms } => Some(Duration::from_millis(ms).min(MAX_DELAY)),
        };
        let route = policies
            .router
            .route(&PublishRequest {
                principal,
                client,
                channel,
                data: &data,
            })
            .map_err(PublishError::Denied)?;
        match route {
            Route::Direct => (Vec::new(), true, delay),
            Route::To(targets) => {
                if targets.len() > MAX_ROUTES {
                    return Err(PublishError::Denied(Denial::Failed(format!(
                        "router returned {} routes (at most {MAX_ROUTES})",
                        targets.len()
                    ))));
                }
                for t in &targets {
                    channel::validate(&t.channel).map_err(|e| {
                        PublishError::Denied(Denial::Failed(format!(
                            "router returned channel {:?}: {e}",
                            t.channel
                        )))
                    })?;
                    if tenant.is_document(&t.channel) {
                        return Err(PublishError::Invalid(format!(
                            "router returned document channel {:?}",
                            t.channel
                        )));
                    }
                }
                (targets, false, delay)
            }
        }
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let data: Arc<RawValue> = Arc::from(data);
    let trace = span.traceparent();
    let mut out = Vec::with_capacity(targets.len().max(1));
    if original {
        let key = ChannelKey::new(tenant.id.clone(), channel);
        let opts = tenant.publish_options(channel);
        let meta = PublishMeta {
            msg_id,
            trace,
            skip,
        };
        let tapped = tapped(node, by).then(|| data.clone());
        let p = node.broker.publish(&key, data, &opts, meta).await?;
        if let Some(retry_after_ms) = p.limited {
            return Err(PublishError::ChannelLimited(retry_after_ms));
        }
        node.metrics.publishes.inc();
        if let Some(data) = &tapped {
            tap(node, tenant, channel, &p, data);
        }
        out.push(Accepted {
            channel: channel.to_owned(),
            seq: p.seq,
            duplicate: p.duplicate,
        });
        return Ok(out);
    }
    for t in targets {
        let payload = match t.data {
            Some(d) => Arc::from(d),
            None => data.clone(),
        };
        let key = ChannelKey::new(tenant.id.clone(), t.channel.as_str());
        let opts = tenant.publish_options(&t.channel);
        let meta = PublishMeta {
            msg_id,
            trace,
            skip,
        };
        let tapped = tapped(node, by).then(|| payload.clone());
        let p = node.broker.publish(&key, payload, &opts, meta).await?;
        if let Some(retry_after_ms) = p.limited {
            return Err(PublishError::ChannelLimited(retry_after_ms));
        }
        node.metrics.publishes.inc();
        if let Some(data) = &tapped {
            tap(node, tenant, &t.channel, &p, data);
        }
        out.push(Accepted {
            channel: t.channel,
            seq: p.seq,
            duplicate: p.duplicate,
        });
    }
    Ok(out)
}

/// Whether the node's taps see what `by` publishes (no taps: no data kept).
fn tapped(node: &Node, by: Publisher) -> bool {
    by != Publisher::Bridge && !node.publish_taps().is_empty()
}

/// Hands an accepted, first-seen publication to the node's taps.
fn tap(
    node: &Node,
    tenant: &Tenant,
    channel: &str,
    p: &crate::broker::Published,
    data: &Arc<RawValue>,
) {
    if p.duplicate {
        return;
    }
    let publication = crate::bridge::Accepted {
        tenant: &tenant.id,
        channel,
        seq: p.seq,
        data,
    };
    for t in node.publish_taps() {
        t.accepted(publication);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::Config;
    use crate::policy::{AuthPolicy, PolicySet, RateLimitPolicy};

    struct DenyAll;
    impl AuthPolicy for DenyAll {
        fn authorize_publish(&self, _: &Principal, _: &str, _: &RawValue) -> Result<(), Denial> {
            Err(Denial::Forbidden("no".into()))
        }
    }

    #[derive(Default)]
    struct Counting(AtomicUsize);
    impl RateLimitPolicy for Counting {
        fn check(&self, _: &RateKey<'_>, _: u32) -> RateDecision {
            self.0.fetch_add(1, Ordering::SeqCst);
            RateDecision::Allow
        }
    }

    #[tokio::test]
    async fn a_channel_limit_is_shared_by_every_publisher() {
        let cfg = "[[tenants.default.channel_limits]]\nmatch = \"lim:*\"\nrate = 1\nburst = 3\n";
        let node = Node::with_memory_broker(Arc::new(Config::from_toml(cfg).expect("cfg")));
        let tenant = node.tenants.get("default").expect("tenant");
        let mut outcomes = Vec::new();
        for (i, client) in ["a", "b", "c", "a", "b"].iter().enumerate() {
            let data = RawValue::from_string(i.to_string()).expect("raw");
            let r = publish(
                &node,
                &tenant,
                &Principal::anonymous(),
                client,
                "lim:1",
                data,
                None,
                Publisher::Client,
            )
            .await;
            outcomes.push(match r {
                Ok(_) => "ok",
                Err(PublishError::ChannelLimited(_)) => "limited",
                Err(e) => panic!("{e}"),
            });
        }
        assert_eq!(outcomes, ["ok", "ok", "ok", "limited", "limited"]);
        // Another channel has its own bucket; an unmatched one has none.
        for ch in ["lim:2", "free:1", "free:1", "free:1", "free:1"] {
            let data = RawValue::from_string("1".into()).expect("raw");
            let r = publish(
                &node,
                &tenant,
                &Principal::anonymous(),
                "a",
                ch,
                data,
                None,
                Publisher::Server,
            )
            .await;
            assert!(r.is_ok(), "{ch}");
        }
    }

    #[derive(Default)]
    struct Seen(parking_lot::Mutex<Vec<(String, u64, String)>>);
    impl crate::bridge::PublishTap for Seen {
        fn accepted(&self, p: crate::bridge::Accepted<'_>) {
            self.0
                .lock()
                .push((p.channel.to_owned(), p.seq, p.data.get().to_owned()));
        }
    }

    #[tokio::test]
    async fn taps_see_each_first_publication_but_not_a_bridges_own() {
        let node = Node::with_memory_broker(Arc::new(Config::from_toml("").expect("cfg")));
        let tenant = node.tenants.get("default").expect("tenant");
        let seen = Arc::new(Seen::default());
        assert!(node.set_publish_taps(vec![seen.clone()]));
        assert!(!node.set_publish_taps(Vec::new()), "installed once");
        let p = Principal::anonymous();
        for (data, msg_id, by) in [
            ("1", Some("m1"), Publisher::Client),
            ("1", Some("m1"), Publisher::Client), // a repeat: acked, not tapped
            ("2", None, Publisher::Server),
            ("3", None, Publisher::Bridge),
        ] {
            let data = RawValue::from_string(data.into()).expect("raw");
            publish(&node, &tenant, &p, "c", "room:1", data, msg_id, by)
                .await
                .expect("published");
        }
        let seen = seen.0.lock().clone();
        assert_eq!(
            seen,
            [
                ("room:1".to_owned(), 1, "1".to_owned()),
                ("room:1".to_owned(), 2, "2".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_publisher_does_not_spend_the_rate_limit() {
        let node = Node::with_memory_broker(Arc::new(Config::from_toml("").expect("cfg")));
        let tenant = node.tenants.get("default").expect("tenant");
        let limiter = Arc::new(Counting::default());
        tenant.set_policies(PolicySet {
            auth: Arc::new(DenyAll),
            rate_limit: limiter.clone(),
            ..PolicySet::default()
        });
        let data = RawValue::from_string("1".into()).expect("raw");
        let r = publish(
            &node,
            &tenant,
            &Principal::anonymous(),
            "c",
            "room:1",
            data,
            None,
            Publisher::Client,
        )
        .await;
        assert!(matches!(r, Err(PublishError::Denied(Denial::Forbidden(_)))));
        assert_eq!(
            limiter.0.load(Ordering::SeqCst),
            0,
            "the bucket was not touched"
        );
    }
}
