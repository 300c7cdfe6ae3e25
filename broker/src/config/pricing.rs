//! `[pricing]`: the price table (built-in, a LiteLLM file, per-model overrides), unpriced models and the
//! admission estimate.

use super::source::{ConfigError, RawDecimal, Source};
use crate::governance::pricing::{Estimator, ModelPrice, PriceTable, Unpriced};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tollgate::{ModelPattern, Price};
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPricing {
    /// Include the built-in dated price table. Default true.
    defaults: Option<bool>,
    /// `refuse` (default) or `charge` (use `unpriced_price`).
    unpriced: Option<Spanned<String>>,
    unpriced_price: Option<Spanned<RawPrice>>,
    /// Default 3.
    input_bytes_per_token: Option<Spanned<u64>>,
    /// Default 4096.
    output_reserve_cap_tokens: Option<Spanned<u64>>,
    #[serde(default)]
    models: BTreeMap<String, Spanned<RawPrice>>,
    /// A LiteLLM `model_prices_and_context_window.json` (relative to this file): its token prices, service
    /// tiers and long-context bands on top of the built-in table, under `[pricing.models]`. Default: none.
    litellm_file: Option<Spanned<PathBuf>>,
    /// The version recorded with requests charged from `litellm_file`. Default `litellm-` and the first 12
    /// hex digits of the file's SHA-256.
    litellm_version: Option<Spanned<String>>,
}

/// USD per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    input: RawDecimal,
    /// Default: the input price.
    cached_input: Option<RawDecimal>,
    /// Default: the input price.
    cache_write: Option<RawDecimal>,
    output: RawDecimal,
}

#[derive(Clone, Debug)]
pub struct PricingConfig {
    pub table: PriceTable,
    pub estimator: Estimator,
}

fn price_of(
    s: &Source,
    span: std::ops::Range<usize>,
    field: &str,
    raw: &RawPrice,
) -> Result<ModelPrice, ConfigError> {
    let one = |d: &RawDecimal, name: &str| {
        Price::parse_usd_per_mtok(&d.text())
            .map_err(|e| s.error_at(span.clone(), &format!("{field}.{name}"), e))
    };
    let input = one(&raw.input, "input")?;
    Ok(ModelPrice {
        input,
        cached_input: raw
            .cached_input
            .as_ref()
            .map_or(Ok(input), |d| one(d, "cached_input"))?,
        cache_write: raw
            .cache_write
            .as_ref()
            .map_or(Ok(input), |d| one(d, "cache_write"))?,
        output: one(&raw.output, "output")?,
    })
}

pub(super) fn validate(s: &Source, raw: &RawPricing) -> Result<PricingConfig, ConfigError> {
    let mut overrides = Vec::new();
    for (name, p) in &raw.models {
        let field = format!("pricing.models.{name}");
        let pattern =
            ModelPattern::new(name.clone()).map_err(|e| s.error_at(p.span(), &field, e))?;
        overrides.push((pattern, price_of(s, p.span(), &field, p.get_ref())?));
    }
    let unpriced = match raw
        .unpriced
        .as_ref()
        .map(|u| (u.span(), u.get_ref().as_str()))
    {
        None | Some((_, "refuse")) => Unpriced::Refuse,
        Some((span, "charge")) => match &raw.unpriced_price {
            Some(p) => Unpriced::Charge(price_of(
                s,
                p.span(),
                "pricing.unpriced_price",
                p.get_ref(),
            )?),
            None => {
                return Err(s.error_at(
                    span,
                    "pricing.unpriced_price",
                    "unpriced = \"charge\" needs unpriced_price = { input = \"...\", output = \"...\" }",
                ));
            }
        },
        Some((span, other)) => {
            return Err(s.error_at(
                span,
                "pricing.unpriced",
                format_args!("unknown value {other:?} (use \"refuse\" or \"charge\")"),
            ));
        }
    };
    let mut estimator = Estimator::default();
    if let Some(b) = &raw.input_bytes_per_token {
        estimator.input_bytes_per_token = s.in_range(b, "pricing.input_bytes_per_token", 16)?;
    }
    if let Some(c) = &raw.output_reserve_cap_tokens {
        estimator.output_reserve_cap_tokens =
            s.in_range(c, "pricing.output_reserve_cap_tokens", 1_000_000)?;
    }
    let file = match &raw.litellm_file {
        None => Vec::new(),
        Some(f) => {
            if let Some(v) = &raw.litellm_version
                && (v.get_ref().is_empty()
                    || v.get_ref().len() > 64
                    || v.get_ref()
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(s.error_at(
                    v.span(),
                    "pricing.litellm_version",
                    "must be 1-64 characters without spaces",
                ));
            }
            crate::governance::litellm::load(
                &s.resolve(f.get_ref()),
                raw.litellm_version.as_ref().map(|v| v.get_ref().as_str()),
            )
            .map_err(|e| s.error_at(f.span(), "pricing.litellm_file", e))?
            .entries
        }
    };
    Ok(PricingConfig {
        table: PriceTable::layered(raw.defaults.unwrap_or(true), file, overrides, unpriced),
        estimator,
    })
}
