//! Per-channel stream positions: the last `epoch` and `seq` seen, the point a
//! reconnect resumes from (`subscribe` with `since`), and the check that drops
//! duplicates and notices gaps in live delivery.

use std::collections::{BTreeSet, HashMap};

/// Where a channel's stream stands: its epoch and the last seq delivered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The channel's history epoch (changes when history was lost).
    pub epoch: String,
    /// The last seq delivered to the app (or the channel's latest seq at
    /// subscribe time).
    pub seq: u64,
}

/// What to do with an incoming `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The next message (or the first one seen): deliver it.
    Deliver,
    /// Already delivered (seq not above the last one): drop it.
    Duplicate,
    /// Messages are missing: drop it and resubscribe from the last position.
    Gap,
    /// The channel's history was lost (new epoch): deliver it, and tell the app.
    Epoch,
}

/// Last known position of every subscribed channel.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    map: HashMap<String, Position>,
    /// Seqs of this connection's own `skipSelf` publishes (from their acks):
    /// the gateway never sends them here, so they are not a gap, and a
    /// replay of one is dropped.
    skipped: HashMap<String, BTreeSet<u64>>,
}

/// Own skipped seqs remembered per channel at most.
const SKIPPED_MAX: usize = 4096;

impl Positions {
    pub(crate) fn get(&self, channel: &str) -> Option<&Position> {
        self.map.get(channel)
    }

    pub(crate) fn remove(&mut self, channel: &str) {
        self.map.remove(channel);
        self.skipped.remove(channel);
    }

    /// A `skipSelf` publish to `channel` was acked with `seq`: the position
    /// moves over it (and over earlier skipped ones it now reaches).
    pub(crate) fn on_skipped(&mut self, channel: &str, seq: u64) {
        let set = self.skipped.entry(channel.to_owned()).or_default();
        if set.len() >= SKIPPED_MAX {
            set.pop_first();
        }
        set.insert(seq);
        if let Some(p) = self.map.get_mut(channel) {
            while set.contains(&(p.seq + 1)) {
                p.seq += 1;
            }
            let below = p.seq;
            set.retain(|s| *s > below);
        }
    }

    /// Applies a `subscribed` reply; returns `(recovered, resumed)`. With
    /// `recovered` under the same epoch the position stays (the missed
    /// messages follow in order); otherwise it jumps to the latest seq.
    pub(crate) fn on_subscribed(
        &mut self,
        channel: &str,
        epoch: &str,
        seq: u64,
        recovered: bool,
    ) -> (bool, bool) {
        let prev = self.map.get(channel);
        let resumed = prev.is_some();
        let recovered = recovered && prev.is_some_and(|p| p.epoch == epoch);
        if !recovered {
            self.map.insert(
                channel.to_owned(),
                Position {
                    epoch: epoch.to_owned(),
                    seq,
                },
            );
        }
        (recovered, resumed)
    }

    /// Applies a `message` and says what to do with it.
    pub(crate) fn on_message(&mut self, channel: &str, epoch: &str, seq: u64) -> Verdict {
        let Some(prev) = self.map.get_mut(channel) else {
            self.map.insert(
                channel.to_owned(),
                Position {
                    epoch: epoch.to_owned(),
                    seq,
                },
            );
            return Verdict::Deliver;
        };
        if prev.epoch != epoch {
            *prev = Position {
                epoch: epoch.to_owned(),
                seq,
            };
            self.skipped.remove(channel);
            return Verdict::Epoch;
        }
        if seq <= prev.seq {
            return Verdict::Duplicate;
        }
        let skipped = self.skipped.get_mut(channel);
        if let Some(set) = &skipped
            && set.contains(&seq)
        {
            // our own skipSelf message, replayed by a recovery
            return Verdict::Duplicate;
        }
        if seq > prev.seq + 1 {
            let missing = seq - prev.seq - 1;
            let covered = skipped.as_ref().is_some_and(|set| {
                missing <= set.len() as u64 && (prev.seq + 1..seq).all(|s| set.contains(&s))
            });
            if !covered {
                return Verdict::Gap;
            }
        }
        prev.seq = seq;
        if let Some(set) = skipped {
            set.retain(|s| *s > seq);
            while set.remove(&(prev.seq + 1)) {
                prev.seq += 1;
            }
        }
        Verdict::Deliver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut p = Positions::default();
        assert_eq!(p.on_subscribed("c:1", "e1", 3, false), (false, false));
        assert_eq!(p.on_message("c:1", "e1", 4), Verdict::Deliver);
        assert_eq!(p.on_message("c:1", "e1", 4), Verdict::Duplicate);
        assert_eq!(p.on_message("c:1", "e1", 2), Verdict::Duplicate);
        assert_eq!(p.on_message("c:1", "e1", 6), Verdict::Gap);
        assert_eq!(p.get("c:1").map(|p| p.seq), Some(4), "a gap does not move");
        assert_eq!(p.on_message("c:1", "e1", 5), Verdict::Deliver);
        assert_eq!(p.on_message("c:1", "e2", 1), Verdict::Epoch);
        assert_eq!(
            p.get("c:1"),
            Some(&Position {
                epoch: "e2".into(),
                seq: 1
            })
        );
    }

    #[test]
    fn own_skipped_messages_are_not_gaps() {
        let mut p = Positions::default();
        p.on_subscribed("c:1", "e1", 3, false);
        // ack of our skipSelf publish (seq 4) before the next message
        p.on_skipped("c:1", 4);
        assert_eq!(p.get("c:1").map(|p| p.seq), Some(4));
        assert_eq!(p.on_message("c:1", "e1", 5), Verdict::Deliver);
        // the next message (7) arrives before the ack of our 6
        assert_eq!(p.on_message("c:1", "e1", 7), Verdict::Gap);
        p.on_skipped("c:1", 6);
        assert_eq!(p.get("c:1").map(|p| p.seq), Some(6));
        assert_eq!(p.on_message("c:1", "e1", 7), Verdict::Deliver);
        // a skipped seq ahead: a later message past it is in order
        p.on_skipped("c:1", 8);
        assert_eq!(p.on_message("c:1", "e1", 9), Verdict::Deliver);
        // a replay of our own skipped message is dropped
        p.on_skipped("c:1", 11);
        assert_eq!(p.on_message("c:1", "e1", 11), Verdict::Duplicate);
        assert_eq!(p.on_message("c:1", "e1", 10), Verdict::Deliver);
        assert_eq!(p.get("c:1").map(|p| p.seq), Some(11));
        assert_eq!(
            p.on_message("c:1", "e1", 13),
            Verdict::Gap,
            "a real gap still is one"
        );
    }

    #[test]
    fn recovery_keeps_the_position_only_under_the_same_epoch() {
        let mut p = Positions::default();
        p.on_subscribed("c:1", "e1", 10, false);
        // recovered: the missed 11.. follow, the position stays at 10
        assert_eq!(p.on_subscribed("c:1", "e1", 14, true), (true, true));
        assert_eq!(p.get("c:1").map(|p| p.seq), Some(10));
        // a server claiming recovery under another epoch is not believed
        assert_eq!(p.on_subscribed("c:1", "e9", 2, true), (false, true));
        assert_eq!(p.get("c:1").map(|p| p.seq), Some(2));
        // not recovered: jump to the latest seq
        assert_eq!(p.on_subscribed("c:1", "e9", 7, false), (false, true));
        assert_eq!(p.on_message("c:1", "e9", 8), Verdict::Deliver);
        p.remove("c:1");
        assert!(p.get("c:1").is_none());
    }
}
