//! Native stand-in for the gateway's `host` interface (only on non-wasm
//! targets), so plugin logic can be unit-tested with `cargo test`.
//!
//! State is per thread (each `#[test]` runs on its own thread): config, a
//! key-value map, an optional frozen clock and the captured log.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::LogLevel;

#[derive(Default)]
struct State {
    config: String,
    kv: HashMap<String, Vec<u8>>,
    /// Token buckets: tokens, and when they were counted (monotonic ns).
    buckets: HashMap<String, (f64, u64)>,
    now_ms: Option<u64>,
    logs: Vec<(LogLevel, String)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Sets the JSON text returned by [`crate::host::config_json`].
pub fn set_config(json: &str) {
    STATE.with_borrow_mut(|s| s.config = json.to_owned());
}

/// Freezes the clock at `ms` (wall clock; the monotonic clock follows it).
/// `None` returns to the real clock.
pub fn set_now_ms(ms: Option<u64>) {
    STATE.with_borrow_mut(|s| s.now_ms = ms);
}

/// Messages logged so far on this thread.
pub fn logs() -> Vec<(LogLevel, String)> {
    STATE.with_borrow(|s| s.logs.clone())
}

/// Clears config, key-value store, clock and log.
pub fn reset() {
    STATE.with_borrow_mut(|s| *s = State::default());
}

/// The stand-in implementations behind [`crate::host`].
pub(crate) mod native {
    use super::STATE;
    use crate::LogLevel;

    pub fn log(level: LogLevel, message: &str) {
        STATE.with_borrow_mut(|s| s.logs.push((level, message.to_owned())));
    }

    pub fn now_ms() -> u64 {
        STATE.with_borrow(|s| s.now_ms).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    }

    pub fn monotonic_ns() -> u64 {
        now_ms().saturating_mul(1_000_000)
    }

    pub fn config() -> String {
        STATE.with_borrow(|s| s.config.clone())
    }

    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        STATE.with_borrow(|s| s.kv.get(key).cloned())
    }

    pub fn kv_set(key: &str, value: &[u8]) -> Result<(), String> {
        STATE.with_borrow_mut(|s| s.kv.insert(key.to_owned(), value.to_vec()));
        Ok(())
    }

    pub fn kv_delete(key: &str) {
        STATE.with_borrow_mut(|s| s.kv.remove(key));
    }

    /// Same rules as the gateway's bucket table (`host/policy/src/buckets.rs`),
    /// on this thread's clock.
    pub fn take_tokens(
        key: &str,
        rate: f64,
        burst: f64,
        cost: f64,
        max_wait_ms: u64,
    ) -> Result<u64, u64> {
        const REFUSED_MS: u64 = 1000;
        const MAX_WAIT_MS: u64 = 3_600_000;
        let sane = rate.is_finite()
            && rate > 0.0
            && burst.is_finite()
            && burst >= 1.0
            && cost.is_finite()
            && cost >= 0.0;
        if !sane {
            return Err(REFUSED_MS);
        }
        let now = monotonic_ns();
        STATE.with_borrow_mut(|s| {
            let (tokens, at) = s.buckets.entry(key.to_owned()).or_insert((burst, now));
            let elapsed_s = now.saturating_sub(*at) as f64 / 1e9;
            *tokens = (*tokens + elapsed_s * rate).min(burst);
            *at = (*at).max(now);
            let short = cost - *tokens;
            let wait_ms = if short <= 0.0 {
                0
            } else {
                (short / rate * 1000.0)
                    .ceil()
                    .clamp(1.0, MAX_WAIT_MS as f64) as u64
            };
            if wait_ms > max_wait_ms {
                return Err(wait_ms);
            }
            *tokens -= cost;
            Ok(wait_ms)
        })
    }
}
