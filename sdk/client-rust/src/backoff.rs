//! Reconnect delays: exponential backoff with jitter (the seed's formula), and
//! the clock and random source the reconnect loop uses, both injectable so
//! that tests check the timings without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest `reconnectIn` a `SERVER_SHUTDOWN` is believed for.
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);

/// Reconnect policy. Defaults are the seed's
/// `{maxRetries: 8, baseDelay: 1000, jitter: 0.4}` with a 30 s cap:
/// retry `n` (0-based) waits `min(30 s, 1 s · 2ⁿ) · (1 + (r · 0.4 − 0.2))`.
///
/// ```
/// use std::time::Duration;
/// use switchyard_client::Backoff;
///
/// let b = Backoff::default();
/// // r = 0.5 is the middle of the jitter band: no jitter at all.
/// assert_eq!(b.delay(0, 0.5), Duration::from_secs(1));
/// assert_eq!(b.delay(3, 0.5), Duration::from_secs(8));
/// assert_eq!(b.delay(10, 0.5), Duration::from_secs(30)); // capped
/// // r = 0 is the low edge: −20 %.
/// assert_eq!(b.delay(1, 0.0), Duration::from_millis(1600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Failed attempts in a row before the client gives up ([`Error::GaveUp`](crate::Error::GaveUp)).
    pub max_retries: u32,
    /// Delay of the first retry.
    pub base_delay: Duration,
    /// Cap of the exponential part.
    pub max_delay: Duration,
    /// Total spread: 0.4 means ±20 %.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            max_retries: 8,
            base_delay: Duration::from_millis(1000),
            max_delay: Duration::from_millis(30_000),
            jitter: 0.4,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based), with `random` uniform in
    /// `[0, 1)`: `min(max_delay, base_delay · 2^attempt) · (1 + (random · jitter − jitter / 2))`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2f64.powi(i32::try_from(attempt.min(62)).unwrap_or(62));
        let base = (self.base_delay.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        let r = sanitize(random);
        let jitter = sanitize_jitter(self.jitter);
        Duration::from_secs_f64((base * (1.0 + (r * jitter - jitter / 2.0))).max(0.0))
    }

    /// Delay after `SERVER_SHUTDOWN {reconnectIn}`: the announced delay (at
    /// most [`MAX_SHUTDOWN_DELAY`]) plus up to `jitter` of it again, which
    /// spreads the reconnects of a drained node's clients.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchyard_client::Backoff;
    ///
    /// let b = Backoff::default();
    /// assert_eq!(b.shutdown_delay(Duration::from_secs(2), 0.0), Duration::from_secs(2));
    /// assert_eq!(b.shutdown_delay(Duration::from_secs(2), 0.5), Duration::from_millis(2400));
    /// ```
    pub fn shutdown_delay(&self, reconnect_in: Duration, random: f64) -> Duration {
        let ms = reconnect_in.min(MAX_SHUTDOWN_DELAY).as_secs_f64();
        let jitter = sanitize_jitter(self.jitter);
        Duration::from_secs_f64(ms * (1.0 + sanitize(random) * jitter))
    }
}

fn sanitize(r: f64) -> f64 {
    if r.is_finite() {
        r.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

fn sanitize_jitter(j: f64) -> f64 {
    if j.is_finite() {
        j.clamp(0.0, 2.0)
    } else {
        0.0
    }
}

/// A boxed future, as [`Clock::sleep`] returns.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the reconnect loop waits. The default is tokio's timer
/// ([`TokioClock`]); tests inject [`FakeClock`] to record the delays instead
/// of waiting for them.
pub trait Clock: Send + Sync + 'static {
    /// A future that completes after `d`.
    fn sleep(&self, d: Duration) -> Sleep;
}

/// [`Clock`] on `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The random source of the jitter: uniform values in `[0, 1)`.
pub trait Random: Send + Sync + 'static {
    /// The next value in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

/// [`Random`] from the thread-local generator of `rand`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandom;

impl Random for ThreadRandom {
    fn next_f64(&self) -> f64 {
        rand::random::<f64>()
    }
}

/// A [`Clock`] whose sleeps complete at once and are recorded, with a virtual
/// "now" that advances by each sleep. For tests of reconnect timings:
///
/// ```
/// use std::time::Duration;
/// use switchyard_client::{Clock, FakeClock};
///
/// # tokio_test_block_on(async {
/// let clock = FakeClock::default();
/// clock.sleep(Duration::from_secs(5)).await; // returns at once
/// assert_eq!(clock.sleeps(), vec![Duration::from_secs(5)]);
/// assert_eq!(clock.elapsed(), Duration::from_secs(5));
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    inner: Arc<Mutex<Vec<Duration>>>,
}

impl FakeClock {
    /// Every sleep asked for so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.inner.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Virtual time passed: the sum of the sleeps.
    pub fn elapsed(&self) -> Duration {
        self.sleeps().iter().sum()
    }
}

impl Clock for FakeClock {
    fn sleep(&self, d: Duration) -> Sleep {
        if let Ok(mut v) = self.inner.lock() {
            v.push(d);
        }
        Box::pin(async {
            // Yield once so a loop of zero-cost sleeps still lets others run.
            tokio::task::yield_now().await;
        })
    }
}

/// A [`Random`] that replays a fixed sequence (cycling), for tests.
#[derive(Debug, Clone)]
pub struct SequenceRandom {
    values: Arc<[f64]>,
    next: Arc<Mutex<usize>>,
}

impl SequenceRandom {
    /// Replays `values` in order, then from the start again; an empty list gives 0.5.
    pub fn new(values: impl Into<Vec<f64>>) -> Self {
        SequenceRandom {
            values: values.into().into(),
            next: Arc::new(Mutex::new(0)),
        }
    }
}

impl Random for SequenceRandom {
    fn next_f64(&self) -> f64 {
        if self.values.is_empty() {
            return 0.5;
        }
        let Ok(mut i) = self.next.lock() else {
            return 0.5;
        };
        let v = self.values[*i % self.values.len()];
        *i += 1;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) <= Duration::from_micros(1)
    }

    #[test]
    fn the_seeds_formula() {
        let b = Backoff::default();
        // min(30000, 1000 * 2^attempt) * (1 + (r * 0.4 - 0.2))
        for attempt in 0..10u32 {
            for r in [0.0, 0.25, 0.5, 0.999] {
                let base = (1000.0 * 2f64.powi(attempt as i32)).min(30000.0);
                let want = Duration::from_secs_f64(base * (1.0 + (r * 0.4 - 0.2)) / 1000.0);
                assert!(close(b.delay(attempt, r), want), "{attempt} {r}");
            }
        }
        assert!(close(b.delay(0, 0.0), ms(800)));
        assert!(b.delay(0, 0.999_999) < ms(1200));
        assert!(close(b.delay(5, 0.5), ms(30_000)));
    }

    #[test]
    fn hostile_inputs_stay_bounded() {
        let b = Backoff::default();
        assert!(close(b.delay(u32::MAX, 0.5), ms(30_000)));
        assert!(close(b.delay(0, f64::NAN), ms(1000)));
        assert!(close(b.delay(0, 7.0), ms(1200)));
        let wild = Backoff {
            jitter: f64::INFINITY,
            ..b
        };
        assert!(close(wild.delay(0, 0.3), ms(1000)));
        assert!(close(
            b.shutdown_delay(Duration::from_secs(10_000), 0.0),
            MAX_SHUTDOWN_DELAY
        ));
    }

    #[test]
    fn shutdown_delay_adds_up_to_jitter() {
        let b = Backoff::default();
        assert!(close(b.shutdown_delay(ms(2000), 0.0), ms(2000)));
        assert!(close(b.shutdown_delay(ms(2000), 1.0), ms(2800)));
        assert!(close(b.shutdown_delay(ms(0), 0.7), ms(0)));
    }

    #[test]
    fn sequence_random_cycles() {
        let r = SequenceRandom::new(vec![0.1, 0.9]);
        assert_eq!([r.next_f64(), r.next_f64(), r.next_f64()], [0.1, 0.9, 0.1]);
        assert_eq!(SequenceRandom::new(Vec::new()).next_f64(), 0.5);
    }
}
