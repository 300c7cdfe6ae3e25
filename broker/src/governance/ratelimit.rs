//! Rate limits per principal and per team.
//!
//! Requests per minute use `governor` (GCRA, burst = one minute's worth). Tokens per minute cannot be
//! known before the answer, so they use GCRA with debt: a request is admitted while the bucket is not more
//! than one minute in debt, and its real token count is charged when it settles. A single large-context
//! request is therefore never refused for its size alone (the false-refusal trap of worst-case
//! pre-charging), and sustained use still converges to the configured rate.
//!
//! Limits are per broker process (documented: with N replicas the effective ceiling is N × the limit).

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A refusal: wait this long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub what: String,
    pub retry_after: Duration,
}

#[derive(Default)]
pub struct RateLimits {
    requests: Mutex<HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>>,
    tokens: Mutex<HashMap<(String, u32), TokenBucket>>,
}

/// GCRA with debt for tokens per minute.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    /// Theoretical arrival time of the next token.
    tat: Instant,
}

const MINUTE: Duration = Duration::from_secs(60);

impl TokenBucket {
    pub fn new(now: Instant) -> Self {
        TokenBucket { tat: now }
    }

    /// `Err(wait)` while the bucket is more than a minute in debt.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let allowed = now + MINUTE;
        if self.tat > allowed {
            Err(self.tat - allowed)
        } else {
            Ok(())
        }
    }

    pub fn charge(&mut self, now: Instant, tokens: u64, per_minute: u32) {
        let per_token = MINUTE.as_nanos() / u128::from(per_minute.max(1));
        let add = Duration::from_nanos(
            u64::try_from(per_token.saturating_mul(u128::from(tokens))).unwrap_or(u64::MAX),
        );
        self.tat = self.tat.max(now).checked_add(add).unwrap_or(self.tat);
    }
}

impl RateLimits {
    /// Count one request against `key` (e.g. `principal:alice`) limited to `rpm`.
    pub fn check_request(&self, key: &str, rpm: u32) -> Result<(), Limited> {
        let limiter = {
            let mut m = self
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.entry((key.to_string(), rpm))
                .or_insert_with(|| {
                    let n = NonZeroU32::new(rpm.max(1)).unwrap_or(NonZeroU32::MIN);
                    Arc::new(RateLimiter::direct(Quota::per_minute(n)))
                })
                .clone()
        };
        limiter.check().map_err(|not_until| Limited {
            what: format!("{key}: {rpm} requests per minute"),
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }

    pub fn check_tokens(&self, key: &str, tpm: u32) -> Result<(), Limited> {
        let now = Instant::now();
        let m = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get(&(key.to_string(), tpm)) {
            Some(b) => b.check(now).map_err(|wait| Limited {
                what: format!("{key}: {tpm} tokens per minute"),
                retry_after: wait,
            }),
            None => Ok(()),
        }
    }

    pub fn charge_tokens(&self, key: &str, tpm: u32, tokens: u64) {
        let now = Instant::now();
        let mut m = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry((key.to_string(), tpm))
            .or_insert_with(|| TokenBucket::new(now))
            .charge(now, tokens, tpm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_admits_big_request_then_waits_off_the_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        assert!(b.check(t0).is_ok());
        // 100k tokens at 10k/min: admitted (not in debt yet), then 10 minutes of debt.
        b.charge(t0, 100_000, 10_000);
        let wait = b.check(t0).expect_err("in debt");
        assert_eq!(wait, Duration::from_secs(9 * 60));
        assert!(b.check(t0 + Duration::from_secs(9 * 60)).is_ok());
    }

    #[test]
    fn requests_per_minute_refuses_with_wait() {
        let r = RateLimits::default();
        assert!(r.check_request("principal:a", 2).is_ok());
        assert!(r.check_request("principal:a", 2).is_ok());
        let e = r.check_request("principal:a", 2).expect_err("third");
        assert!(
            e.retry_after > Duration::from_secs(20) && e.retry_after <= Duration::from_secs(30),
            "{e:?}"
        );
        assert!(r.check_request("principal:b", 2).is_ok());
    }
}
