//! `[routing]`: circuit breakers and how long the broker waits out a `Retry-After` itself.

use super::source::{ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    /// Consecutive failures that open a target's circuit breaker. Default 3.
    breaker_failures: Option<Spanned<u32>>,
    /// Seconds an open breaker parks its target before one probe is let through. Default 30.
    breaker_cooldown_secs: Option<u64>,
    /// Longest `Retry-After` the broker waits out itself when every target is parked. Default 2 s;
    /// anything longer goes back to the client as 429 with `Retry-After`.
    retry_after_max_wait_secs: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub breaker_failures: u32,
    pub breaker_cooldown_secs: u64,
    pub retry_after_max_wait_secs: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            breaker_failures: 3,
            breaker_cooldown_secs: 30,
            retry_after_max_wait_secs: 2,
        }
    }
}

pub(super) fn validate(s: &Source, raw: &RawRouting) -> Result<RoutingConfig, ConfigError> {
    let d = RoutingConfig::default();
    let breaker_failures = match &raw.breaker_failures {
        Some(f) if *f.get_ref() == 0 => {
            return Err(s.error_at(f.span(), "routing.breaker_failures", "must be at least 1"));
        }
        Some(f) => *f.get_ref(),
        None => d.breaker_failures,
    };
    Ok(RoutingConfig {
        breaker_failures,
        breaker_cooldown_secs: raw.breaker_cooldown_secs.unwrap_or(d.breaker_cooldown_secs),
        retry_after_max_wait_secs: raw
            .retry_after_max_wait_secs
            .unwrap_or(d.retry_after_max_wait_secs),
    })
}
