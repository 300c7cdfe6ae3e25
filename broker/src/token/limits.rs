//! What the token endpoint is allowed to take: its settings (TTLs, body limit) and the per-address rate
//! limiter, held in the application state. The endpoint itself is [`super::endpoint`].

use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

/// The shortest token the endpoint mints, in seconds (a shorter request is raised to it, unless the policy
/// ceiling is lower still).
pub const MIN_TTL_SECS: u64 = 60;

/// The client's socket address, as the server saw the connection (not a header a client can set).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The endpoint's settings and per-address limiter.
pub struct TokenEndpoint {
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub max_request_bytes: usize,
    pub(super) limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl TokenEndpoint {
    pub fn new(cfg: &crate::config::tokens::TokenConfig) -> Self {
        let limiter = NonZeroU32::new(cfg.exchanges_per_minute_per_address).map(|per_min| {
            let burst = NonZeroU32::new((per_min.get() / 10).max(10)).unwrap_or(per_min);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst))
        });
        TokenEndpoint {
            default_ttl_secs: cfg.default_ttl_secs,
            max_ttl_secs: cfg.max_ttl_secs,
            max_request_bytes: cfg.max_request_bytes,
            limiter,
        }
    }

    /// Forget addresses that have been quiet (the background loop calls this).
    pub fn upkeep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
        }
    }
}
