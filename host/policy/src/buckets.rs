//! Token buckets a plugin takes from through `host.take-tokens`: one table per
//! plugin+tenant (kept with its key-value store), shared by every instance, so
//! a take is atomic across the instances serving concurrent calls (a
//! `kv-get` + `kv-set` pair is not). Bounded: at most `max_entries` buckets;
//! when the table is full, buckets that have refilled completely (and so hold
//! nothing worth remembering) are dropped first.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::kv::MAX_KEY_BYTES;

/// Retry-after answered when a take cannot be served (full table, bad arguments).
pub const REFUSED_RETRY_MS: u64 = 1000;

/// Largest wait a take reports or grants (ms).
pub const MAX_WAIT_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ns: u64,
    /// When the bucket is full again if nothing is taken (for eviction).
    full_at_ns: u64,
}

/// What a take decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Taken; the caller proceeds after waiting this long (0 = now). The tokens
    /// of a wait are spent in advance.
    Granted { wait_ms: u64 },
    /// Not taken: the tokens are this far off (ms), beyond the caller's wait.
    Refused { retry_after_ms: u64 },
}

/// The bucket table of one plugin+tenant.
#[derive(Debug)]
pub struct Buckets {
    map: Mutex<HashMap<String, Bucket>>,
    max_entries: usize,
}

impl Buckets {
    /// An empty table holding at most `max_entries` buckets.
    pub fn new(max_entries: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    /// Takes `cost` tokens from bucket `key` (refilling at `rate` per second up
    /// to `burst`; a new bucket starts full) at monotonic time `now_ns`. When
    /// short, the tokens are granted in advance if they come within
    /// `max_wait_ms`, else refused. Arguments that make no sense (rate not
    /// positive, burst below 1, negative cost, key too long) are refused.
    pub fn take(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
        cost: f64,
        max_wait_ms: u64,
        now_ns: u64,
    ) -> Take {
        let sane = rate.is_finite()
            && rate > 0.0
            && burst.is_finite()
            && burst >= 1.0
            && cost.is_finite()
            && cost >= 0.0
            && key.len() <= MAX_KEY_BYTES;
        if !sane {
            return Take::Refused {
                retry_after_ms: REFUSED_RETRY_MS,
            };
        }
        let mut map = self.map.lock();
        if !map.contains_key(key) {
            if map.len() >= self.max_entries {
                map.retain(|_, b| b.full_at_ns > now_ns);
                if map.len() >= self.max_entries {
                    return Take::Refused {
                        retry_after_ms: REFUSED_RETRY_MS,
                    };
                }
            }
            let full = Bucket {
                tokens: burst,
                at_ns: now_ns,
                full_at_ns: now_ns,
            };
            map.insert(key.to_owned(), full);
        }
        // Looked up again rather than through `entry`, which needs an owned key
        // (an allocation) on every take.
        let Some(b) = map.get_mut(key) else {
            return Take::Refused {
                retry_after_ms: REFUSED_RETRY_MS,
            };
        };
        let elapsed_s = now_ns.saturating_sub(b.at_ns) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed_s * rate).min(burst);
        b.at_ns = b.at_ns.max(now_ns);
        let short = cost - b.tokens;
        let wait_ms = if short <= 0.0 {
            0
        } else {
            (short / rate * 1000.0)
                .ceil()
                .clamp(1.0, MAX_WAIT_MS as f64) as u64
        };
        if wait_ms > max_wait_ms {
            return Take::Refused {
                retry_after_ms: wait_ms,
            };
        }
        b.tokens -= cost;
        let refill_s = (burst - b.tokens) / rate;
        b.full_at_ns = b.at_ns.saturating_add((refill_s * 1e9) as u64);
        Take::Granted { wait_ms }
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MS: u64 = 1_000_000;

    fn granted(wait_ms: u64) -> Take {
        Take::Granted { wait_ms }
    }

    fn refused(retry_after_ms: u64) -> Take {
        Take::Refused { retry_after_ms }
    }

    #[test]
    fn burst_then_rate_then_refill_to_burst() {
        let b = Buckets::new(10);
        for _ in 0..3 {
            assert_eq!(b.take("a", 2.0, 3.0, 1.0, 0, 1000 * MS), granted(0));
        }
        assert_eq!(b.take("a", 2.0, 3.0, 1.0, 0, 1000 * MS), refused(500));
        assert_eq!(b.take("b", 2.0, 3.0, 1.0, 0, 1000 * MS), granted(0));
        assert_eq!(b.take("a", 2.0, 3.0, 1.0, 0, 1250 * MS), refused(250));
        assert_eq!(b.take("a", 2.0, 3.0, 1.0, 0, 1500 * MS), granted(0));
        // A long pause refills up to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(b.take("a", 2.0, 3.0, 1.0, 0, 100_000 * MS), granted(0));
        }
        assert!(matches!(
            b.take("a", 2.0, 3.0, 1.0, 0, 100_000 * MS),
            Take::Refused { .. }
        ));
    }

    #[test]
    fn waits_within_max_are_granted_in_advance() {
        let b = Buckets::new(10);
        assert_eq!(b.take("k", 10.0, 10.0, 10.0, 200, 0), granted(0));
        assert_eq!(b.take("k", 10.0, 10.0, 1.0, 200, 0), granted(100));
        assert_eq!(b.take("k", 10.0, 10.0, 1.0, 200, 0), granted(200));
        assert_eq!(b.take("k", 10.0, 10.0, 1.0, 200, 0), refused(300));
    }

    #[test]
    fn bounded_and_hostile_arguments_refused() {
        let b = Buckets::new(2);
        assert_eq!(b.take("a", 1.0, 1.0, 1.0, 0, 0), granted(0));
        assert_eq!(b.take("b", 1.0, 1.0, 1.0, 0, 0), granted(0));
        // Full of buckets that still remember something.
        assert_eq!(b.take("c", 1.0, 1.0, 1.0, 0, 0), refused(REFUSED_RETRY_MS));
        // Two seconds later both refilled: they are dropped to make room.
        assert_eq!(b.take("c", 1.0, 1.0, 1.0, 0, 2000 * MS), granted(0));
        assert_eq!(b.len(), 1);
        for (rate, burst, cost) in [
            (0.0, 1.0, 1.0),
            (f64::NAN, 1.0, 1.0),
            (1.0, 0.5, 1.0),
            (1.0, f64::INFINITY, 1.0),
            (1.0, 1.0, -1.0),
        ] {
            assert_eq!(
                b.take("x", rate, burst, cost, 0, 0),
                refused(REFUSED_RETRY_MS)
            );
        }
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            b.take(&long, 1.0, 1.0, 1.0, 0, 0),
            refused(REFUSED_RETRY_MS)
        );
        // A cost beyond any wait is capped, not overflowed.
        assert_eq!(b.take("y", 1e-9, 1.0, 1e12, 0, 0), refused(MAX_WAIT_MS));
    }

    #[test]
    fn concurrent_takes_never_overspend() {
        let b = Arc::new(Buckets::new(10));
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| b.take("shared", 1e-6, 100.0, 1.0, 0, 0) == granted(0))
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(taken, 100);
    }
}
