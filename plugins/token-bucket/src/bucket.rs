//! The token bucket itself and its 16-byte encoding in the key-value store.

/// Tokens left and when they were counted (monotonic nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ns: u64,
}

impl Bucket {
    /// A full bucket at `now_ns`.
    pub fn full(burst: f64, now_ns: u64) -> Self {
        Self {
            tokens: burst,
            at_ns: now_ns,
        }
    }

    /// Refills for the time elapsed, then takes `cost` tokens; when there are
    /// not enough, returns how long until there will be (ms, rounded up).
    pub fn take(&mut self, now_ns: u64, rate: f64, burst: f64, cost: f64) -> Result<(), u64> {
        let elapsed_s = now_ns.saturating_sub(self.at_ns) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed_s * rate).min(burst);
        self.at_ns = self.at_ns.max(now_ns);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            let wait_ms = ((cost - self.tokens) / rate * 1000.0).ceil();
            Err(wait_ms.clamp(1.0, u64::MAX as f64) as u64)
        }
    }

    /// Spends `cost` tokens in advance (the balance goes negative).
    pub fn borrow(&mut self, cost: f64) {
        self.tokens -= cost;
    }

    /// 16 bytes: tokens (f64 LE), timestamp (u64 LE).
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.tokens.to_le_bytes());
        out[8..].copy_from_slice(&self.at_ns.to_le_bytes());
        out
    }

    /// Inverse of [`Bucket::encode`]; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let tokens = f64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let at_ns = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16 && tokens.is_finite()).then_some(Self { tokens, at_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;

    #[test]
    fn encoding_round_trips_and_rejects_junk() {
        let b = Bucket::full(3.5, 42);
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(Bucket::decode(b"short"), None);
        assert_eq!(Bucket::decode(&[0; 17]), None);
        let mut nan = [0u8; 16];
        nan[..8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(Bucket::decode(&nan), None);
    }

    #[test]
    fn refill_is_capped_and_clock_going_back_is_ignored() {
        let mut b = Bucket::full(2.0, 10_000_000_000);
        assert_eq!(b.take(0, 1.0, 2.0, 2.0), Ok(()));
        assert_eq!(b.take(0, 1.0, 2.0, 1.0), Err(1000));
        assert_eq!(b.take(11_000_000_000, 1.0, 2.0, 1.0), Ok(()));
    }
}
