//! Which offset of a partition may be committed while several of its records
//! are being published at once.
//!
//! The rule: the offset stored for commit is the lowest record still in
//! flight, or one past the highest record started when none is. So a commit
//! never passes a record the broker has not accepted: a crash or a rebalance
//! redelivers from there (at least once), never skips.

use std::collections::{BTreeMap, HashMap};

/// One partition: records started and not yet done, and the high mark.
#[derive(Debug, Default)]
struct Partition {
    /// In-flight offsets (a count: a rewound partition may start one twice).
    pending: BTreeMap<i64, u32>,
    /// One past the highest offset started.
    high: i64,
    /// What was last handed out for commit (never goes back).
    stored: i64,
}

impl Partition {
    fn storable(&self) -> i64 {
        self.pending
            .first_key_value()
            .map_or(self.high, |(&o, _)| o)
    }
}

/// The in-flight offsets of every partition a consumer reads.
#[derive(Debug, Default)]
pub struct Offsets {
    topics: HashMap<String, HashMap<i32, Partition>>,
}

impl Offsets {
    /// A record at `offset` is being published.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self.partition(topic, partition);
        *p.pending.entry(offset).or_insert(0) += 1;
        p.high = p.high.max(offset + 1);
    }

    /// The record at `offset` was accepted by the broker (or dropped for
    /// good). Returns the offset to store for commit when it moved forward.
    pub fn done(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.topics.get_mut(topic)?.get_mut(&partition)?;
        match p.pending.get_mut(&offset) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                p.pending.remove(&offset);
            }
            None => return None,
        }
        let next = p.storable();
        (next > p.stored).then(|| {
            p.stored = next;
            next
        })
    }

    /// Records in flight, all partitions together.
    pub fn in_flight(&self) -> usize {
        self.topics
            .values()
            .flat_map(HashMap::values)
            .map(|p| p.pending.values().map(|&n| n as usize).sum::<usize>())
            .sum()
    }

    fn partition(&mut self, topic: &str, partition: i32) -> &mut Partition {
        // Looked up by the borrowed name: no allocation for a known topic.
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_owned(), HashMap::new());
        }
        self.topics
            .get_mut(topic)
            .map(|t| t.entry(partition).or_default())
            .expect("inserted above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_completion_stores_one_past_each_record() {
        let mut o = Offsets::default();
        o.start("t", 0, 5);
        assert_eq!(o.done("t", 0, 5), Some(6));
        o.start("t", 0, 6);
        assert_eq!(o.done("t", 0, 6), Some(7));
    }

    #[test]
    fn a_commit_never_passes_a_record_still_in_flight() {
        let mut o = Offsets::default();
        for off in 0..3 {
            o.start("t", 0, off);
        }
        assert_eq!(o.done("t", 0, 1), None, "0 is still in flight");
        assert_eq!(o.done("t", 0, 2), None);
        assert_eq!(o.done("t", 0, 0), Some(3), "all three accepted");
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut o = Offsets::default();
        o.start("t", 0, 10);
        o.start("t", 1, 20);
        o.start("u", 0, 30);
        assert_eq!(o.done("t", 1, 20), Some(21));
        assert_eq!(o.done("u", 0, 30), Some(31));
        assert_eq!(o.in_flight(), 1);
        assert_eq!(o.done("t", 0, 10), Some(11));
    }

    #[test]
    fn a_rewound_partition_never_stores_an_offset_lower_than_before() {
        // Revoked and assigned again: the group redelivers from its commit
        // while a record of the first pass is still in flight.
        let mut o = Offsets::default();
        for off in 0..3 {
            o.start("t", 0, off);
        }
        assert_eq!(o.done("t", 0, 0), Some(1));
        o.start("t", 0, 1); // redelivered: 1 twice in flight
        assert_eq!(o.done("t", 0, 1), None);
        assert_eq!(o.done("t", 0, 2), None, "the second 1 is still pending");
        assert_eq!(o.done("t", 0, 1), Some(3));
        o.start("t", 0, 0); // an older redelivery: never stored backwards
        assert_eq!(o.done("t", 0, 0), None);
    }

    #[test]
    fn an_unknown_offset_stores_nothing() {
        let mut o = Offsets::default();
        assert_eq!(o.done("t", 0, 4), None);
        o.start("t", 0, 4);
        assert_eq!(o.done("t", 0, 3), None);
    }
}
