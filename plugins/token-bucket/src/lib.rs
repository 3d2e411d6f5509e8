//! `token-bucket`: a token bucket per principal, channel or client, kept by the
//! host (`host.take-tokens`): one atomic take per check, shared by every
//! instance of the plugin.
//!
//! Config: `rate` (tokens per second, default 10), `burst` (bucket size,
//! default = rate), `key` = `"principal"` (default; falls back to the client id
//! for anonymous principals) | `"channel"` | `"client"`, `max_delay_ms`
//! (default 0: over the limit → reject; otherwise a wait up to this long is
//! answered with `delay`).

use serde::Deserialize;
use switchyard_sdk::{RateDecision, RateKey, RateLimit, host};

/// What the bucket is keyed on.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum KeyBy {
    #[default]
    Principal,
    Channel,
    Client,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_rate")]
    rate: f64,
    burst: Option<f64>,
    #[serde(default)]
    key: KeyBy,
    #[serde(default)]
    max_delay_ms: u64,
}

fn default_rate() -> f64 {
    10.0
}

/// Validated config.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawConfig")]
struct Config {
    rate: f64,
    burst: f64,
    key: KeyBy,
    max_delay_ms: u64,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(c: RawConfig) -> Result<Self, String> {
        let burst = c.burst.unwrap_or(c.rate.max(1.0));
        if !(c.rate.is_finite() && c.rate > 0.0) {
            return Err("rate must be a positive number".into());
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err("burst must be at least 1".into());
        }
        Ok(Self {
            rate: c.rate,
            burst,
            key: c.key,
            max_delay_ms: c.max_delay_ms,
        })
    }
}

/// The store key of the bucket for `key`; `None` when there is nothing to key on.
fn store_key(by: KeyBy, key: &RateKey) -> Option<String> {
    let (tag, id) = match by {
        KeyBy::Principal if !key.principal.is_empty() => ("p:", &key.principal),
        KeyBy::Principal | KeyBy::Client => ("c:", &key.client_id),
        KeyBy::Channel => ("ch:", &key.channel),
    };
    (!id.is_empty()).then(|| format!("{tag}{id}"))
}

struct TokenBucket;

impl RateLimit for TokenBucket {
    fn check(key: &RateKey, cost: u32) -> RateDecision {
        let cfg = match host::config_cached::<Config>() {
            Ok(c) => c,
            Err(e) => {
                // A misconfigured limiter must not silently let everything through.
                host::warn(&format!("token-bucket: {e}"));
                return RateDecision::Reject(1000);
            }
        };
        let Some(skey) = store_key(cfg.key, key) else {
            return RateDecision::Allow;
        };
        match host::take_tokens(
            &skey,
            cfg.rate,
            cfg.burst,
            f64::from(cost),
            cfg.max_delay_ms,
        ) {
            Ok(0) => RateDecision::Allow,
            // Granted in advance: the tokens are spent now, the caller waits.
            Ok(wait_ms) => RateDecision::Delay(wait_ms),
            Err(retry_ms) => RateDecision::Reject(retry_ms),
        }
    }
}

switchyard_sdk::export_rate_limit!(TokenBucket);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing;

    fn setup(config: &str, now_ms: u64) {
        testing::reset();
        testing::set_config(config);
        testing::set_now_ms(Some(now_ms));
    }

    fn key(p: &str, c: &str, ch: &str) -> RateKey {
        RateKey::new(p, c, ch)
    }

    #[test]
    fn burst_then_rate_per_principal() {
        setup(r#"{"rate": 2, "burst": 3}"#, 1_000);
        let alice = key("alice", "c1", "room:1");
        for _ in 0..3 {
            assert_eq!(TokenBucket::check(&alice, 1), RateDecision::Allow);
        }
        // Empty: one token comes back every 500 ms.
        assert_eq!(TokenBucket::check(&alice, 1), RateDecision::Reject(500));
        // Another principal has its own bucket; same principal on another client shares.
        assert_eq!(
            TokenBucket::check(&key("bob", "c1", "x"), 1),
            RateDecision::Allow
        );
        assert!(matches!(
            TokenBucket::check(&key("alice", "c2", "y"), 1),
            RateDecision::Reject(_)
        ));
        testing::set_now_ms(Some(1_250));
        assert_eq!(TokenBucket::check(&alice, 1), RateDecision::Reject(250));
        testing::set_now_ms(Some(1_500));
        assert_eq!(TokenBucket::check(&alice, 1), RateDecision::Allow);
        assert!(matches!(
            TokenBucket::check(&alice, 1),
            RateDecision::Reject(_)
        ));
        // A long pause refills up to the burst, not beyond.
        testing::set_now_ms(Some(100_000));
        for _ in 0..3 {
            assert_eq!(TokenBucket::check(&alice, 1), RateDecision::Allow);
        }
        assert!(matches!(
            TokenBucket::check(&alice, 1),
            RateDecision::Reject(_)
        ));
    }

    #[test]
    fn anonymous_falls_back_to_client_and_channel_key() {
        setup(r#"{"rate": 1, "burst": 1}"#, 0);
        assert_eq!(
            TokenBucket::check(&key("", "c1", "a"), 1),
            RateDecision::Allow
        );
        assert_eq!(
            TokenBucket::check(&key("", "c1", "b"), 1),
            RateDecision::Reject(1000)
        );
        assert_eq!(
            TokenBucket::check(&key("", "c2", "a"), 1),
            RateDecision::Allow
        );

        setup(r#"{"rate": 1, "burst": 1, "key": "channel"}"#, 0);
        assert_eq!(
            TokenBucket::check(&key("alice", "c1", "a"), 1),
            RateDecision::Allow
        );
        assert!(matches!(
            TokenBucket::check(&key("bob", "c2", "a"), 1),
            RateDecision::Reject(_)
        ));
        assert_eq!(
            TokenBucket::check(&key("bob", "c2", "b"), 1),
            RateDecision::Allow
        );
    }

    #[test]
    fn cost_and_delay() {
        setup(r#"{"rate": 10, "burst": 10, "max_delay_ms": 200}"#, 0);
        let k = key("alice", "c", "x");
        assert_eq!(TokenBucket::check(&k, 10), RateDecision::Allow);
        // 1 token short: 100 ms wait, within max_delay → delay, and the token is spent.
        assert_eq!(TokenBucket::check(&k, 1), RateDecision::Delay(100));
        assert_eq!(TokenBucket::check(&k, 1), RateDecision::Delay(200));
        assert_eq!(TokenBucket::check(&k, 1), RateDecision::Reject(300));
    }

    #[test]
    fn bad_config_rejects_and_logs() {
        setup(r#"{"rate": 0}"#, 0);
        assert!(matches!(
            TokenBucket::check(&key("a", "c", "x"), 1),
            RateDecision::Reject(_)
        ));
        assert!(
            testing::logs()
                .iter()
                .any(|(_, m)| m.contains("rate must be"))
        );
        setup(r#"{"key": "ip"}"#, 0);
        assert!(matches!(
            TokenBucket::check(&key("a", "c", "x"), 1),
            RateDecision::Reject(_)
        ));
    }
}
