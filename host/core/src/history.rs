//! Bounded per-channel history serving recovery: a ring of the last `history_size`
//! messages, each kept at most `history_ttl`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

/// A published message as stored and delivered.
#[derive(Debug, Clone)]
pub struct Message {
    /// Per-channel sequence number (rises by one).
    pub seq: u64,
    /// Channel epoch.
    pub epoch: Arc<str>,
    /// Raw JSON payload.
    pub data: Arc<RawValue>,
    /// When the broker accepted it (for publish-to-deliver latency).
    pub published_at: Instant,
}

/// Result of a recovery lookup.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Latest seq at lookup time.
    pub seq: u64,
    /// Whether every message after `since` is in `messages`.
    pub recovered: bool,
    /// Messages with seq greater than `since.seq`, in order (empty unless recovered).
    pub messages: Vec<Message>,
}

/// Ring buffer with age limit.
#[derive(Debug)]
pub struct History {
    items: VecDeque<(Instant, Message)>,
    capacity: usize,
    ttl: Duration,
}

impl History {
    /// An empty history.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// Updates limits (config reload).
    pub fn set_limits(&mut self, capacity: usize, ttl: Duration) {
        self.capacity = capacity;
        self.ttl = ttl;
    }

    /// Appends, evicting the oldest beyond capacity or age.
    pub fn push(&mut self, now: Instant, msg: Message) {
        self.expire(now);
        if self.capacity == 0 {
            return;
        }
        while self.items.len() >= self.capacity {
            self.items.pop_front();
        }
        self.items.push_back((now, msg));
    }

    /// Drops entries older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.items.front() {
            if now.saturating_duration_since(*t) > self.ttl {
                self.items.pop_front();
            } else {
                break;
            }
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items.shrink_to_fit();
        }
    }

    /// Number of kept messages.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Everything after `since_seq`, if the history still covers it.
    ///
    /// `latest` is the channel's current seq. Returns `None` when messages after
    /// `since_seq` were lost (evicted) or `since_seq` is in the future.
    pub fn since(&mut self, now: Instant, since_seq: u64, latest: u64) -> Option<Vec<Message>> {
        self.expire(now);
        if since_seq > latest {
            return None;
        }
        if since_seq == latest {
            return Some(Vec::new());
        }
        let oldest = self.items.front().map(|(_, m)| m.seq)?;
        if since_seq + 1 < oldest {
            return None;
        }
        Some(
            self.items
                .iter()
                .filter(|(_, m)| m.seq > since_seq)
                .map(|(_, m)| m.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Message {
        Message {
            seq,
            epoch: "e".into(),
            data: Arc::from(RawValue::from_string(seq.to_string()).expect("raw")),
            published_at: Instant::now(),
        }
    }

    #[test]
    fn ring_keeps_last_n() {
        let now = Instant::now();
        let mut h = History::new(3, Duration::from_secs(60));
        for s in 1..=5 {
            h.push(now, msg(s));
        }
        assert_eq!(h.len(), 3);
        let got: Vec<u64> = h
            .since(now, 2, 5)
            .expect("covered")
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert!(h.since(now, 1, 5).is_none(), "seq 2 was evicted");
        assert_eq!(h.since(now, 5, 5).expect("nothing missed").len(), 0);
        assert!(h.since(now, 6, 5).is_none(), "future position");
    }

    #[test]
    fn ttl_expires() {
        let t0 = Instant::now();
        let mut h = History::new(10, Duration::from_secs(5));
        h.push(t0, msg(1));
        h.push(t0 + Duration::from_secs(4), msg(2));
        let later = t0 + Duration::from_secs(6);
        assert!(h.since(later, 0, 2).is_none());
        assert_eq!(h.since(later, 1, 2).expect("ok").len(), 1);
        assert!(h.since(t0 + Duration::from_secs(20), 1, 2).is_none());
    }

    #[test]
    fn zero_capacity_only_recovers_at_head() {
        let now = Instant::now();
        let mut h = History::new(0, Duration::from_secs(5));
        h.push(now, msg(1));
        assert!(h.is_empty());
        assert!(h.since(now, 0, 1).is_none());
        assert!(h.since(now, 1, 1).is_some());
    }
}
