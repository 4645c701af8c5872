//! Back-off with full jitter for transient failures (5xx, connection resets, timeouts, cut-off bodies).
//! Only idempotent requests (GETs, and `$batch` of GETs) are retried; writes belong to provisioning.

use std::time::Duration;

/// How many times and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts for transient failures (the first try included).
    pub transient_attempts: u32,
    /// Attempts for throttled requests (429).
    pub throttled_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            transient_attempts: 8,
            throttled_attempts: 30,
        }
    }
}

/// The wait before retry number `attempt` (1-based): uniform in [0, min(10 s, 200 ms × 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let cap_ms = (200u64 << attempt.min(6)).min(10_000);
    Duration::from_millis(jitter(cap_ms / 4, cap_ms))
}

/// A pseudo-random number in [lo, hi] (xorshift of the clock and a counter: jitter, not cryptography).
pub fn jitter(lo: u64, hi: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(1);
    let mut x = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ t;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if hi <= lo { lo } else { lo + x % (hi - lo + 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for a in 1..20 {
            let b = backoff(a);
            assert!(b <= Duration::from_secs(10), "{b:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(400));
    }
}
