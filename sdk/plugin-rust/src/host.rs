//! Safe wrappers around the `host` interface every plugin imports: log, clocks,
//! the plugin's config (JSON) and a key-value store scoped to plugin + tenant.
//!
//! In a component these call the gateway. On a native target they are served by
//! an in-process stand-in (see [`crate::testing`]) so plugin logic can be
//! unit-tested with `cargo test`.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::LogLevel;

/// The plugin's config could not be parsed into the expected type.
#[derive(Debug, thiserror::Error)]
#[error("invalid plugin config: {0}")]
pub struct ConfigError(#[from] serde_json::Error);

/// The host refused a key-value write (store full or entry too large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key-value store refused the write: {0}")]
pub struct KvError(pub String);

#[cfg(target_arch = "wasm32")]
use crate::bindings::switchyard::gateway::host as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imp;

/// Writes `message` to the gateway log, tagged with plugin and tenant.
pub fn log(level: LogLevel, message: &str) {
    imp::log(level, message)
}

/// Logs at `info`.
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// Logs at `warn`.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Monotonic time in nanoseconds (for rates and durations).
pub fn monotonic_ns() -> u64 {
    imp::monotonic_ns()
}

/// This plugin's `config` table for the calling tenant, as JSON text (`{}` when none).
pub fn config_json() -> String {
    imp::config()
}

/// The plugin's config parsed into `T` (an empty config parses as `{}`).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Cfg { #[serde(default)] greeting: String }
///
/// switchyard_sdk::testing::set_config(r#"{"greeting":"hi"}"#);
/// let cfg: Cfg = switchyard_sdk::host::config().unwrap();
/// assert_eq!(cfg.greeting, "hi");
/// ```
pub fn config<T: DeserializeOwned>() -> Result<T, ConfigError> {
    parse_config(&config_json())
}

fn parse_config<T: DeserializeOwned>(raw: &str) -> Result<T, ConfigError> {
    let raw = if raw.trim().is_empty() { "{}" } else { raw };
    Ok(serde_json::from_str(raw)?)
}

/// A parsed config: its type, the JSON it came from, the value.
type CachedConfig = (std::any::TypeId, Rc<str>, Rc<dyn Any>);

thread_local! {
    /// Last parsed config per type, keyed by the JSON it was parsed from.
    static CONFIG_CACHE: RefCell<Vec<CachedConfig>> =
        const { RefCell::new(Vec::new()) };
}

/// The config JSON. In a component it is fetched once: the host guarantees that
/// an instance's config never changes (a changed config gets fresh instances).
/// Natively it is re-read on every call, so tests can change it.
fn config_raw() -> Rc<str> {
    #[cfg(target_arch = "wasm32")]
    {
        thread_local! {
            static RAW: std::cell::OnceCell<Rc<str>> = const { std::cell::OnceCell::new() };
        }
        RAW.with(|raw| raw.get_or_init(|| Rc::from(imp::config())).clone())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Rc::from(imp::config())
    }
}

/// Like [`config`], but parses once per instance and type: the value is kept
/// and handed out again, with no host call (the host guarantees an instance's
/// config never changes).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Cfg { rate: f64 }
///
/// switchyard_sdk::testing::set_config(r#"{"rate":2.5}"#);
/// let a = switchyard_sdk::host::config_cached::<Cfg>().unwrap();
/// let b = switchyard_sdk::host::config_cached::<Cfg>().unwrap();
/// assert!(std::rc::Rc::ptr_eq(&a, &b), "parsed once");
/// assert_eq!(a.rate, 2.5);
/// ```
pub fn config_cached<T: DeserializeOwned + 'static>() -> Result<Rc<T>, ConfigError> {
    let raw = config_raw();
    let id = std::any::TypeId::of::<T>();
    let hit = CONFIG_CACHE.with_borrow(|cache| {
        cache
            .iter()
            .find(|(t, r, _)| *t == id && (Rc::ptr_eq(r, &raw) || **r == *raw))
            .and_then(|(_, _, v)| Rc::clone(v).downcast::<T>().ok())
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let parsed = Rc::new(parse_config::<T>(&raw)?);
    CONFIG_CACHE.with_borrow_mut(|cache| {
        cache.retain(|(t, _, _)| *t != id);
        // Bounded: one entry per config type.
        cache.push((id, raw, parsed.clone() as Rc<dyn Any>));
    });
    Ok(parsed)
}

/// Reads a value from the plugin's key-value store.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    imp::kv_get(key)
}

/// Writes a value to the plugin's key-value store.
///
/// ```
/// use switchyard_sdk::host::{kv_delete, kv_get, kv_set};
/// kv_set("visits", b"1").unwrap();
/// assert_eq!(kv_get("visits").as_deref(), Some(&b"1"[..]));
/// kv_delete("visits");
/// assert_eq!(kv_get("visits"), None);
/// ```
pub fn kv_set(key: &str, value: &[u8]) -> Result<(), KvError> {
    imp::kv_set(key, value).map_err(KvError)
}

/// Deletes a key from the plugin's key-value store (no-op when absent).
pub fn kv_delete(key: &str) {
    imp::kv_delete(key)
}

/// Atomically takes `cost` tokens from this plugin's token bucket `key` (per
/// plugin and tenant, shared by every instance), which refills at `rate` tokens
/// per second up to `burst` and starts full.
///
/// `Ok(0)`: taken now. `Ok(wait_ms)`: the tokens were short by at most
/// `max_wait_ms`; they are spent in advance and the caller proceeds after the
/// wait. `Err(retry_after_ms)`: not taken. Nonsense arguments and a full bucket
/// table are refused with 1000 ms.
///
/// ```
/// use switchyard_sdk::host::take_tokens;
/// switchyard_sdk::testing::set_now_ms(Some(0));
/// assert_eq!(take_tokens("alice", 1.0, 2.0, 1.0, 0), Ok(0));
/// assert_eq!(take_tokens("alice", 1.0, 2.0, 1.0, 0), Ok(0));
/// assert_eq!(take_tokens("alice", 1.0, 2.0, 1.0, 0), Err(1000));
/// assert_eq!(take_tokens("alice", 1.0, 2.0, 1.0, 5000), Ok(1000));
/// ```
pub fn take_tokens(
    key: &str,
    rate: f64,
    burst: f64,
    cost: f64,
    max_wait_ms: u64,
) -> Result<u64, u64> {
    imp::take_tokens(key, rate, burst, cost, max_wait_ms)
}
