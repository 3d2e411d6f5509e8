//! The seam between the publish pipeline and bridges to other messaging
//! systems (the Kafka bridge in `switchyard-kafka`).
//!
//! Inbound, a bridge publishes through [`crate::publish::publish`] as
//! [`crate::publish::Publisher::Bridge`] like any server-side caller (the
//! router applies). Outbound, it registers a [`PublishTap`] on the node.

use std::sync::Arc;

use serde_json::value::RawValue;

/// One publication the node accepted, as a tap sees it.
#[derive(Debug, Clone, Copy)]
pub struct Accepted<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// Channel it was published on (after routing: one call per destination).
    pub channel: &'a str,
    /// Seq the broker assigned.
    pub seq: u64,
    /// The message's JSON, shared with every subscriber.
    pub data: &'a Arc<RawValue>,
}

/// Sees every publication accepted on this node.
pub trait PublishTap: Send + Sync + 'static {
    /// Runs once per channel a publish from a client or the HTTP API was
    /// accepted on, on the node that accepted it, right after the broker
    /// sequenced it — so once cluster-wide, not once per node that delivers
    /// it. Not for a repeated `msgId` (already seen) nor for what a bridge
    /// itself published (no loops). It runs on the publisher's task: it must
    /// not block or wait, only queue (bounded) and count what it drops.
    fn accepted(&self, publication: Accepted<'_>);
}
