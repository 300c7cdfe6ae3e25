//! `[limits]`: rate limits per principal and per team, optionally shared between replicas through Redis.

use super::source::{ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// Per principal, unless the grant sets its own. Default: unlimited.
    requests_per_minute: Option<Spanned<u32>>,
    tokens_per_minute: Option<Spanned<u32>>,
    /// Per team (all principals of a team together). Default: unlimited.
    team_requests_per_minute: Option<Spanned<u32>>,
    team_tokens_per_minute: Option<Spanned<u32>>,
    /// `redis://host:port`: share the limits between replicas. Default: per process.
    redis_url: Option<Spanned<String>>,
    /// Key prefix in Redis. Default `tollgate:`.
    redis_prefix: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct LimitsConfig {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub team_requests_per_minute: Option<u32>,
    pub team_tokens_per_minute: Option<u32>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
}

pub(super) fn validate(s: &Source, raw: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    let one = |v: &Option<Spanned<u32>>, field: &str| match v {
        Some(x) if *x.get_ref() == 0 => Err(s.error_at(
            x.span(),
            field,
            "0 would refuse everything; remove the limit or deny by policy",
        )),
        Some(x) => Ok(Some(*x.get_ref())),
        None => Ok(None),
    };
    Ok(LimitsConfig {
        requests_per_minute: one(&raw.requests_per_minute, "limits.requests_per_minute")?,
        tokens_per_minute: one(&raw.tokens_per_minute, "limits.tokens_per_minute")?,
        team_requests_per_minute: one(
            &raw.team_requests_per_minute,
            "limits.team_requests_per_minute",
        )?,
        team_tokens_per_minute: one(&raw.team_tokens_per_minute, "limits.team_tokens_per_minute")?,
        redis_url: match &raw.redis_url {
            Some(u)
                if !u.get_ref().starts_with("redis://")
                    || u.get_ref().len() <= "redis://".len() =>
            {
                return Err(s.error_at(
                    u.span(),
                    "limits.redis_url",
                    "must look like redis://host:port",
                ));
            }
            Some(u) => Some(u.get_ref().clone()),
            None => None,
        },
        redis_prefix: raw
            .redis_prefix
            .clone()
            .unwrap_or_else(|| "tollgate:".into()),
    })
}
