//! `[[routes]]`: which models go to which providers, as ordered (or weighted) chains of targets.

use super::providers::ProviderConfig;
use super::source::{ConfigError, Source};
use serde::Deserialize;
use std::collections::BTreeMap;
use tollgate::ModelPattern;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    model: String,
    targets: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    provider: String,
    /// Upstream model id; defaults to the requested model.
    model: Option<String>,
    /// A standby target is used only when no other target in the chain is configured (e.g. the demo
    /// provider stands in while no upstream key is set).
    #[serde(default)]
    standby: bool,
    /// Share of traffic among targets of equal priority. Default 1; 0 = only when the others are down.
    weight: Option<u32>,
    /// Lower is tried first; targets of equal priority share load by weight. Default: the target's
    /// position in the list (a plain ordered chain).
    priority: Option<u32>,
    /// Overrides the provider's timeouts for this target, milliseconds.
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub pattern: ModelPattern,
    pub targets: Vec<Target>,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub provider: String,
    pub model: Option<String>,
    pub standby: bool,
    pub weight: u32,
    pub priority: u32,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// Every route; each target must name one of `providers`.
pub(super) fn validate(
    s: &Source,
    raw: &[Spanned<RawRoute>],
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::new();
    for r in raw {
        let span = r.span();
        let r = r.get_ref();
        let pattern = ModelPattern::new(r.model.clone())
            .map_err(|e| s.error_at(span.clone(), "routes.model", e))?;
        if r.targets.is_empty() {
            return Err(s.error_at(span, "routes.targets", "a route needs at least one target"));
        }
        let mut targets = Vec::new();
        for (position, t) in r.targets.iter().enumerate() {
            if !providers.contains_key(&t.provider) {
                return Err(s.error_at(
                    span,
                    "routes.targets.provider",
                    format_args!("unknown provider {:?}", t.provider),
                ));
            }
            targets.push(Target {
                provider: t.provider.clone(),
                model: t.model.clone(),
                standby: t.standby,
                weight: t.weight.unwrap_or(1),
                priority: t
                    .priority
                    .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX)),
                connect_timeout_ms: t.connect_timeout_ms,
                first_byte_timeout_ms: t.first_byte_timeout_ms,
                timeout_ms: t.timeout_ms,
            });
        }
        routes.push(Route { pattern, targets });
    }
    Ok(routes)
}
