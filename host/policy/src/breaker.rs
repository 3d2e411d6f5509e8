//! The crash-loop breaker: a plugin that keeps failing is taken out of service
//! for a while, and its role's `on_error` decides meanwhile.
//!
//! Rule: [`TRIP_FAILURES`] traps or timeouts within [`TRIP_WINDOW`] open the
//! breaker for [`COOL_DOWN`]; while open no call reaches the plugin. After the
//! cool-down one call is let through (half-open): success closes the breaker,
//! another failure opens it for a new cool-down. Refusals and bad return values
//! are answers, not crashes, and do not count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failures within [`TRIP_WINDOW`] that open the breaker.
pub const TRIP_FAILURES: u32 = 5;
/// Window over which failures are counted.
pub const TRIP_WINDOW: Duration = Duration::from_secs(10);
/// How long an open breaker keeps the plugin out of service.
pub const COOL_DOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    failures: u32,
    window_start: Option<Instant>,
    open_until: Option<Instant>,
    trips: u64,
}

/// One plugin+tenant+role's breaker. A closed breaker costs a call one
/// relaxed atomic load: the lock is taken only to count a crash or while the
/// breaker is open.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
    /// Mirrors `state.open_until.is_some()`.
    tripped: AtomicBool,
}

impl Breaker {
    /// Whether the breaker is closed (no cool-down pending): the fast path.
    pub fn is_closed(&self) -> bool {
        !self.tripped.load(Ordering::Relaxed)
    }

    /// Whether calls may reach the plugin at `now` (closed, or half-open).
    pub fn allows(&self, now: Instant) -> bool {
        self.state.lock().open_until.is_none_or(|t| now >= t)
    }

    /// When the breaker is open, until when.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        self.state.lock().open_until.filter(|t| now < *t)
    }

    /// Times the breaker opened.
    pub fn trips(&self) -> u64 {
        self.state.lock().trips
    }

    /// The breaker as `GET /admin/plugins` shows it: `state` (`closed`,
    /// `open`, or `half_open` once the cool-down is over and no call has been
    /// tried yet), `retry_in_ms` while open, and `trips`.
    pub fn status_json(&self, now: Instant) -> serde_json::Value {
        let st = self.state.lock();
        let (state, retry_in_ms) = match st.open_until {
            None => ("closed", None),
            Some(t) if now < t => ("open", Some(t.duration_since(now).as_millis() as u64)),
            Some(_) => ("half_open", None),
        };
        serde_json::json!({"state": state, "retry_in_ms": retry_in_ms, "trips": st.trips})
    }

    /// Records a call that crashed (trap, timeout). Returns true when this
    /// failure opened the breaker.
    pub fn failure(&self, now: Instant) -> bool {
        let mut st = self.state.lock();
        let half_open = st.open_until.is_some_and(|t| now >= t);
        if !half_open {
            match st.window_start {
                Some(s) if now.saturating_duration_since(s) <= TRIP_WINDOW => st.failures += 1,
                _ => {
                    st.window_start = Some(now);
                    st.failures = 1;
                }
            }
        }
        if half_open || st.failures >= TRIP_FAILURES {
            st.open_until = Some(now + COOL_DOWN);
            self.tripped.store(true, Ordering::Relaxed);
            st.failures = 0;
            st.window_start = None;
            st.trips += 1;
            return true;
        }
        false
    }

    /// Records a call that completed: closes a half-open breaker.
    pub fn success(&self, now: Instant) {
        let mut st = self.state.lock();
        if st.open_until.is_some_and(|t| now >= t) {
            st.open_until = None;
            self.tripped.store(false, Ordering::Relaxed);
            st.failures = 0;
            st.window_start = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_within_the_window_open_it() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(!b.failure(t0 + Duration::from_secs(i)));
            assert!(b.allows(t0 + Duration::from_secs(i)));
        }
        assert!(b.failure(t0 + Duration::from_secs(5)), "the fifth trips");
        assert!(!b.allows(t0 + Duration::from_secs(6)));
        assert_eq!(b.trips(), 1);
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(!b.failure(t0 + Duration::from_secs(i * 3)), "{i}");
        }
        assert!(b.allows(t0 + Duration::from_secs(40)));
    }

    #[test]
    fn after_the_cool_down_one_success_closes_and_one_failure_reopens() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..TRIP_FAILURES {
            b.failure(t0);
        }
        let later = t0 + COOL_DOWN;
        assert!(b.allows(later), "half-open: one call goes through");
        assert!(
            b.failure(later),
            "a failure while half-open reopens at once"
        );
        assert!(!b.allows(later + Duration::from_secs(1)));
        let again = later + COOL_DOWN;
        b.success(again);
        assert!(b.allows(again + Duration::from_secs(1)));
        assert!(
            !b.failure(again + Duration::from_secs(1)),
            "closed: counting anew"
        );
    }
}
