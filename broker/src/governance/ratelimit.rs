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

/// The same two limiters kept in Redis, so that every replica counts against one bucket. Scripts run
/// atomically on the server and use the server's clock (`TIME`). A minimal RESP client over one pooled
/// connection: `EVAL` with integer replies is all it needs. If Redis cannot be reached the caller falls back
/// to the in-process limits (rate limits protect capacity, not money; budgets never depend on Redis).
pub struct RedisLimits {
    addr: String,
    prefix: String,
    conn: tokio::sync::Mutex<Option<tokio::io::BufStream<tokio::net::TcpStream>>>,
}

/// GCRA for requests: ARGV[1] = emission interval (µs), ARGV[2] = how far ahead of now the theoretical
/// arrival time may run (µs; one minute = a burst of `rpm`). Returns 0 when admitted, else the wait in µs.
const GCRA_REQUEST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + tonumber(ARGV[1])
local allow_at = new - tonumber(ARGV[2])
if allow_at > now then return allow_at - now end
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return 0
";

/// GCRA with debt for tokens: ARGV[1] = tokens to charge (0 = check only), ARGV[2] = µs per token.
/// Check: 0 while not more than a minute in debt, else the wait in µs.
const GCRA_TOKENS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local n = tonumber(ARGV[1])
if n == 0 then
  if tat - now > 60000000 then return tat - now - 60000000 end
  return 0
end
local new = tat + n * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return 0
";

impl RedisLimits {
    /// `url` is `redis://host:port` (no auth; loopback or a private network).
    pub fn new(url: &str, prefix: &str) -> Option<Self> {
        let rest = url.strip_prefix("redis://")?;
        let addr = rest.split('/').next()?.to_string();
        if addr.is_empty() {
            return None;
        }
        Some(RedisLimits {
            addr,
            prefix: prefix.to_string(),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn eval(&self, script: &str, key: &str, args: &[String]) -> std::io::Result<i64> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let s = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(&self.addr),
            )
            .await
            .map_err(|_| std::io::Error::other("redis connect timeout"))??;
            s.set_nodelay(true)?;
            *guard = Some(tokio::io::BufStream::new(s));
        }
        let full_key = format!("{}{key}", self.prefix);
        let mut parts: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), b"1", full_key.as_bytes()];
        parts.extend(args.iter().map(|a| a.as_bytes()));
        let mut cmd = format!("*{}\r\n", parts.len()).into_bytes();
        for p in &parts {
            cmd.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            cmd.extend_from_slice(p);
            cmd.extend_from_slice(b"\r\n");
        }
        let result = async {
            let Some(conn) = guard.as_mut() else {
                return Err(std::io::Error::other("no connection"));
            };
            conn.write_all(&cmd).await?;
            conn.flush().await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            match line.as_bytes().first() {
                Some(b':') => line[1..]
                    .trim()
                    .parse()
                    .map_err(|_| std::io::Error::other("bad integer reply")),
                _ => Err(std::io::Error::other(format!(
                    "unexpected redis reply {:?}",
                    line.trim()
                ))),
            }
        };
        let r = tokio::time::timeout(Duration::from_millis(500), result)
            .await
            .map_err(|_| std::io::Error::other("redis timeout"))
            .and_then(|r| r);
        if r.is_err() {
            *guard = None;
        }
        r
    }

    pub async fn check_request(&self, key: &str, rpm: u32) -> std::io::Result<Result<(), Limited>> {
        let interval = 60_000_000 / u64::from(rpm.max(1));
        // Burst = one minute's worth of cells, as with governor's `Quota::per_minute`.
        let burst = 60_000_000u64;
        let wait = self
            .eval(
                GCRA_REQUEST,
                &format!("rpm:{rpm}:{key}"),
                &[interval.to_string(), burst.to_string()],
            )
            .await?;
        Ok(if wait > 0 {
            Err(Limited {
                what: format!("{key}: {rpm} requests per minute"),
                retry_after: Duration::from_micros(wait as u64),
            })
        } else {
            Ok(())
        })
    }

    pub async fn check_tokens(&self, key: &str, tpm: u32) -> std::io::Result<Result<(), Limited>> {
        let per = 60_000_000 / u64::from(tpm.max(1));
        let wait = self
            .eval(
                GCRA_TOKENS,
                &format!("tpm:{tpm}:{key}"),
                &["0".into(), per.max(1).to_string()],
            )
            .await?;
        Ok(if wait > 0 {
            Err(Limited {
                what: format!("{key}: {tpm} tokens per minute"),
                retry_after: Duration::from_micros(wait as u64),
            })
        } else {
            Ok(())
        })
    }

    pub async fn charge_tokens(&self, key: &str, tpm: u32, tokens: u64) -> std::io::Result<()> {
        if tokens == 0 {
            return Ok(());
        }
        let per = 60_000_000 / u64::from(tpm.max(1));
        self.eval(
            GCRA_TOKENS,
            &format!("tpm:{tpm}:{key}"),
            &[tokens.to_string(), per.max(1).to_string()],
        )
        .await
        .map(|_| ())
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
