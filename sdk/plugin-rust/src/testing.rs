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
}
