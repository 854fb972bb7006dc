//! Rate limits (§9 `803`): the token bucket every limit uses, and the per-account send rate shared
//! by an account's endpoints.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use msnp24_proto::AccountName;

use crate::config::SendRateConfig;

/// Accounts tracked before idle (full) buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// A token bucket: at most `burst` tokens, refilled at `rate` tokens per second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            at: now,
        }
    }

    /// The tokens it holds at `now`.
    pub fn level(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst)
    }

    /// Refills for the time passed and takes one token; false when there is none.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens = self.level(now, rate, burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets of every account that sent recently.
pub struct SendLimiter {
    config: SendRateConfig,
    buckets: Mutex<HashMap<AccountName, TokenBucket>>,
}

impl SendLimiter {
    /// A limiter with these settings.
    pub fn new(config: SendRateConfig) -> SendLimiter {
        SendLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `account`; false when the account is over its rate.
    pub fn try_send(&self, account: &AccountName) -> bool {
        self.try_send_at(account, Instant::now())
    }

    /// [`SendLimiter::try_send`] at a given moment (tests drive the clock).
    pub fn try_send_at(&self, account: &AccountName, now: Instant) -> bool {
        let rate = self.config.per_second;
        if rate <= 0.0 || !rate.is_finite() {
            return true;
        }
        let burst = f64::from(self.config.burst.max(1));
        // Nothing panics while holding this lock; recover rather than poison every sender.
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, b| b.level(now, rate, burst) < burst);
        }
        map.entry(account.clone())
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(now, rate, burst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill_per_account() {
        let l = SendLimiter::new(SendRateConfig {
            per_second: 2.0,
            burst: 3,
        });
        let a = AccountName::parse("alice").unwrap();
        let b = AccountName::parse("bob").unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.try_send_at(&a, t0)));
        assert!(!l.try_send_at(&a, t0));
        assert!(l.try_send_at(&b, t0), "accounts have their own buckets");
        assert!(l.try_send_at(&a, t0 + Duration::from_millis(500)));
        assert!(!l.try_send_at(&a, t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| l.try_send_at(&a, later)));
        assert!(!l.try_send_at(&a, later), "never more than the burst");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let l = SendLimiter::new(SendRateConfig {
            per_second: 0.0,
            burst: 1,
        });
        let a = AccountName::parse("alice").unwrap();
        assert!((0..1000).all(|_| l.try_send(&a)));
    }
}
