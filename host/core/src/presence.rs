//! Presence events (`subscribe` with `"presence":true` → `join` / `leave`).
//!
//! Membership is per client and node: a client joins a channel on a node with
//! its first subscription there and leaves with its last one (unsubscribe or
//! disconnect). Three sources feed the [`Hub`]'s watchers:
//!
//! - **Local** changes, seen by the hub itself under the channel's lock, are
//!   sent at once.
//! - **Deltas** from other nodes: a broker that spans nodes (Redis, NATS)
//!   publishes, right after it wrote a channel's presence entries, the
//!   [`Delta`] between what it held and what it now holds, on the channel's
//!   live feed; every node watching the channel hands it to
//!   [`Hub::presence_remote`].
//! - **Reconciliation** ([`spawn_reconciler`]): for each channel with local
//!   watchers, every [`Broker::presence_reconcile_interval`] the node reads the
//!   channel's presence list and diffs it against what it knows
//!   ([`Hub::presence_reconcile`]). Entries of a node that died expire in the
//!   broker after `presence_ttl`, so the next read after that yields their
//!   `leave`; a lost delta is repaired the same way.
//!
//! Bounded: a channel with more than `limits.presence_events_max` subscribers
//! (local sessions plus other nodes' clients) sends no events, holds no
//! per-member state for them and its nodes publish no deltas.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::hub::Hub;

/// The change of one node's members in one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The node whose members changed.
    #[serde(rename = "n")]
    pub node: String,
    /// Clients that joined: client → principal.
    #[serde(rename = "j", default, skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<(String, String)>,
    /// Clients that left.
    #[serde(rename = "l", default, skip_serializing_if = "Vec::is_empty")]
    pub leaves: Vec<String>,
}

impl Delta {
    /// What turns `before` (client → principal, `None` = unknown: everything
    /// in `now` counts as joined) into `now`.
    pub fn between(
        node: &str,
        before: Option<&HashMap<String, String>>,
        now: &HashMap<String, String>,
    ) -> Delta {
        let joins = now
            .iter()
            .filter(|(c, p)| before.is_none_or(|b| b.get(*c) != Some(*p)))
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect();
        let leaves = before
            .map(|b| {
                b.keys()
                    .filter(|c| !now.contains_key(*c))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Delta {
            node: node.to_owned(),
            joins,
            leaves,
        }
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// Changes it carries.
    pub fn len(&self) -> usize {
        self.joins.len() + self.leaves.len()
    }

    /// JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses [`Delta::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Delta> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Runs presence reconciliation for `hub`'s watched channels against
/// `broker` until either is dropped: every `every`, and at once for a channel
/// that just got its first watcher (so it learns the other nodes' members).
pub fn spawn_reconciler(hub: &Arc<Hub>, broker: &Arc<dyn Broker>, every: Duration) {
    let (hub, broker): (Weak<Hub>, Weak<dyn Broker>) =
        (Arc::downgrade(hub), Arc::downgrade(broker));
    let every = every.max(Duration::from_millis(50));
    tokio::spawn(async move {
        let mut next = tokio::time::Instant::now() + every;
        loop {
            let wanted = {
                let Some(h) = hub.upgrade() else { return };
                let notified = h.presence_wanted().notified();
                tokio::select! {
                    () = tokio::time::sleep_until(next) => false,
                    () = notified => true,
                }
            };
            let (Some(h), Some(b)) = (hub.upgrade(), broker.upgrade()) else {
                return;
            };
            let all = !wanted || tokio::time::Instant::now() >= next;
            if all {
                next = tokio::time::Instant::now() + every;
            }
            for key in h.presence_watched(!all) {
                let started = Instant::now();
                if let Ok(list) = b.presence(&key).await {
                    h.presence_reconcile(&key, &list, started);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn delta_between_and_round_trip() {
        let before = map(&[("a", "pa"), ("b", "pb")]);
        let now = map(&[("b", "pb"), ("c", "pc")]);
        let d = Delta::between("n1", Some(&before), &now);
        assert_eq!(d.joins, vec![("c".to_owned(), "pc".to_owned())]);
        assert_eq!(d.leaves, vec!["a".to_owned()]);
        assert_eq!(Delta::decode(d.encode().as_bytes()), Some(d));
        let all = Delta::between("n1", None, &now);
        assert_eq!(all.joins.len(), 2);
        assert!(all.leaves.is_empty());
        assert!(Delta::between("n1", Some(&now), &now).is_empty());
        assert_eq!(Delta::decode(b"{oops"), None);
        assert_eq!(Delta::decode(br#"{"j":[]}"#), None, "node is required");
    }
}
