//! `[affinity]`: keep a session on the target that holds its encrypted reasoning and its prompt cache, and
//! which providers can read each other's encrypted reasoning. The raw section as written (strict) and its
//! validated form; the mechanism is `proxy/affinity.rs`.

use super::{ConfigError, ProviderConfig, Source};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// `[affinity]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    /// Seconds a session's target is remembered after its last request. Default 3600; 0 turns affinity
    /// (and the stripping of encrypted reasoning it makes possible) off.
    pub ttl_secs: Option<u64>,
    /// Groups of provider names that can read each other's encrypted reasoning (one OpenAI organisation, or
    /// one Anthropic account, configured as several providers). Any other provider reads only its own.
    pub reasoning_domains: Option<Spanned<Vec<Vec<String>>>>,
}

#[derive(Clone, Debug)]
pub struct AffinityConfig {
    pub ttl_secs: u64,
    /// Provider name → its reasoning domain (providers not named here are their own domain).
    pub domains: BTreeMap<String, String>,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            ttl_secs: 3600,
            domains: BTreeMap::new(),
        }
    }
}

/// Validate `[affinity]`: every provider named exists and is in at most one group.
pub fn config(
    s: &Source,
    raw: &RawAffinity,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<AffinityConfig, ConfigError> {
    let mut domains = BTreeMap::new();
    if let Some(groups) = &raw.reasoning_domains {
        let span = groups.span();
        for group in groups.get_ref() {
            if group.is_empty() {
                return Err(s.error_at(
                    span,
                    "affinity.reasoning_domains",
                    "a group names at least one provider",
                ));
            }
            let domain = group.join("+");
            for name in group {
                if !providers.contains_key(name) {
                    return Err(s.error_at(
                        span,
                        "affinity.reasoning_domains",
                        format_args!("unknown provider {name:?}"),
                    ));
                }
                if domains.insert(name.clone(), domain.clone()).is_some() {
                    return Err(s.error_at(
                        span,
                        "affinity.reasoning_domains",
                        format_args!("provider {name:?} is in more than one group"),
                    ));
                }
            }
        }
    }
    Ok(AffinityConfig {
        ttl_secs: raw.ttl_secs.unwrap_or(AffinityConfig::default().ttl_secs),
        domains,
    })
}
