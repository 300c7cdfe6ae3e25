//! Prices per model and the reservation estimator.
//!
//! All money is integer. Configured prices are [`Price`] (micro-USD per million tokens); the table holds
//! [`Rate`]s, a thousand times finer (nano-USD per million tokens = femto-USD per token), so that prices
//! loaded from a LiteLLM price file convert exactly (see [`crate::governance::litellm`]). Costs are [`Nanos`].
//! Every token count is rounded **up** to the next nano-dollar per price component, so a sum of settled
//! costs is never below what the provider bills at the same prices.
//!
//! A model's [`Pricing`] has standard rates and, where the table has them, service-tier rates (`priority`,
//! `flex`: OpenAI's `service_tier`) and long-context bands (every token of a request whose input is above a
//! threshold costs more: Anthropic, Gemini, OpenAI above 272k). [`Pricing::rates`] resolves the four rates
//! that apply to one request; see docs/governance.md for the rules.

use crate::usage::Usage;
use std::sync::Arc;
use tollgate::{ModelPattern, Nanos, Price};

/// A token price in nano-USD per million tokens (= femto-USD per token).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

/// The largest rate accepted: 100,000 USD per million tokens (as [`tollgate::money::MAX_PRICE_USD_PER_MTOK`]).
pub const MAX_RATE: Rate = Rate(100_000 * 1_000_000_000);

impl Rate {
    /// A configured price (micro-USD per million tokens), exactly.
    pub const fn from_price(p: Price) -> Rate {
        Rate(p.0.saturating_mul(1000))
    }

    /// The cost of `tokens` at this rate, rounded **up** to the next nano-dollar.
    pub fn cost(self, tokens: u64) -> Nanos {
        // femto-dollars = tokens × rate; nanos = ceil(femto / 10^6). u128 cannot overflow here.
        let femto = u128::from(tokens) * u128::from(self.0);
        Nanos(i64::try_from(femto.div_ceil(1_000_000)).unwrap_or(i64::MAX))
    }
}

impl From<Price> for Rate {
    fn from(p: Price) -> Rate {
        Rate::from_price(p)
    }
}

impl std::fmt::Display for Rate {
    /// `$1.25/Mtok`, `$0.000000001/Mtok`: exact.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (int, frac) = (self.0 / 1_000_000_000, self.0 % 1_000_000_000);
        let mut frac = format!("{frac:09}");
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        write!(f, "${int}.{frac}/Mtok")
    }
}

impl std::fmt::Debug for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rate({self})")
    }
}

/// The four token rates that apply to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    pub input: Rate,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: Rate,
    /// Input tokens written to the provider's prompt cache (Anthropic charges more for these).
    pub cache_write: Rate,
    /// Output tokens, reasoning included.
    pub output: Rate,
}

impl Rates {
    /// The cost of reported usage. `input_tokens` includes cached and cache-write tokens; the uncached
    /// remainder is charged at the input rate.
    pub fn cost(&self, u: &Usage) -> Nanos {
        let cached = u.cached_input_tokens.min(u.input_tokens);
        let write = u.cache_write_tokens.min(u.input_tokens - cached);
        let plain = u.input_tokens - cached - write;
        self.input
            .cost(plain)
            .saturating_add(self.cached_input.cost(cached))
            .saturating_add(self.cache_write.cost(write))
            .saturating_add(self.output.cost(u.output_tokens))
    }

    /// The most one input token can cost (cache writes may cost more than plain input).
    pub fn max_input(&self) -> Rate {
        self.input.max(self.cache_write).max(self.cached_input)
    }

    /// Component-wise maximum (a combination the table does not price is charged the highest of the prices
    /// that apply).
    pub fn max(&self, o: &Rates) -> Rates {
        Rates {
            input: self.input.max(o.input),
            cached_input: self.cached_input.max(o.cached_input),
            cache_write: self.cache_write.max(o.cache_write),
            output: self.output.max(o.output),
        }
    }
}

impl From<ModelPrice> for Rates {
    fn from(p: ModelPrice) -> Rates {
        Rates {
            input: p.input.into(),
            cached_input: p.cached_input.into(),
            cache_write: p.cache_write.into(),
            output: p.output.into(),
        }
    }
}

/// A service tier, as the request asks for it (`service_tier`) or the response reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceTier {
    /// `default`, `auto`, `standard`, `scale`, or none given.
    #[default]
    Standard,
    Priority,
    Flex,
}

impl ServiceTier {
    /// `priority` and `flex` are priced tiers; every other value (`auto`, `default`, `standard`, `scale`,
    /// unknown) is the standard tier.
    pub fn parse(s: &str) -> ServiceTier {
        match s.trim().to_ascii_lowercase().as_str() {
            "priority" => ServiceTier::Priority,
            "flex" => ServiceTier::Flex,
            _ => ServiceTier::Standard,
        }
    }

    /// The request's own `service_tier` (Responses and Chat Completions name it the same).
    pub fn of_request(body: &serde_json::Value) -> ServiceTier {
        body.get("service_tier")
            .and_then(serde_json::Value::as_str)
            .map_or(ServiceTier::Standard, ServiceTier::parse)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceTier::Standard => "standard",
            ServiceTier::Priority => "priority",
            ServiceTier::Flex => "flex",
        }
    }
}

/// Rates per service tier: standard always, the others where the table has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierRates {
    pub standard: Rates,
    pub priority: Option<Rates>,
    pub flex: Option<Rates>,
}

impl TierRates {
    pub fn flat(r: Rates) -> Self {
        TierRates {
            standard: r,
            priority: None,
            flex: None,
        }
    }

    fn tier(&self, t: ServiceTier) -> Option<&Rates> {
        match t {
            ServiceTier::Standard => Some(&self.standard),
            ServiceTier::Priority => self.priority.as_ref(),
            ServiceTier::Flex => self.flex.as_ref(),
        }
    }
}

/// A long-context band: when a request's input tokens (cached and cache writes included) are **above**
/// `above`, these rates apply to every token of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Band {
    pub above: u64,
    pub rates: TierRates,
}

/// Everything the table knows about one model's price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pricing {
    /// Up to the first band's threshold.
    pub base: TierRates,
    /// Ascending by threshold.
    pub bands: Vec<Band>,
    /// Which table entry this is (`builtin-2025-11-01`, `litellm-…`, `config-…`): recorded with every
    /// request it charges (`spend.price_version`).
    pub version: Arc<str>,
}

/// The rates that apply to one request, and how they were chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub rates: Rates,
    /// The tier charged: the one asked for if the table prices it, else standard.
    pub tier: ServiceTier,
    /// The long-context band's threshold, if one applied.
    pub above: Option<u64>,
}

impl Applied {
    /// `standard`, `priority`, `flex above 200000`: recorded with the request (`spend.price_tier`).
    pub fn label(&self) -> String {
        match self.above {
            Some(t) => format!("{} above {t}", self.tier.as_str()),
            None => self.tier.as_str().to_string(),
        }
    }
}

impl Pricing {
    /// One flat price for every tier and context length.
    pub fn flat(rates: Rates, version: impl Into<Arc<str>>) -> Self {
        Pricing {
            base: TierRates::flat(rates),
            bands: Vec::new(),
            version: version.into(),
        }
    }

    /// The rates for a request of `input_tokens` input tokens at service tier `tier`:
    ///
    /// - the band is the one with the highest threshold below `input_tokens` (none: the base rates);
    /// - within it, the tier's rates if the table has them; a tier the model has no price for at all is
    ///   charged at standard rates;
    /// - a tier the table prices for the model but not in this band is charged the component-wise highest
    ///   of the band's standard rates and the tier's rates one band down (never below either).
    pub fn rates(&self, tier: ServiceTier, input_tokens: u64) -> Applied {
        let band = self.bands.iter().rev().find(|b| input_tokens > b.above);
        let priced = tier == ServiceTier::Standard
            || self.base.tier(tier).is_some()
            || self.bands.iter().any(|b| b.rates.tier(tier).is_some());
        let tier = if priced { tier } else { ServiceTier::Standard };
        let rates = match band {
            None => self.base.tier(tier).copied().unwrap_or(self.base.standard),
            Some(b) => match b.rates.tier(tier) {
                Some(r) => *r,
                None => {
                    // The nearest lower definition of this tier, raised to the band's standard rates.
                    let below = self
                        .bands
                        .iter()
                        .rev()
                        .filter(|x| x.above < b.above)
                        .find_map(|x| x.rates.tier(tier))
                        .or_else(|| self.base.tier(tier))
                        .copied()
                        .unwrap_or(b.rates.standard);
                    below.max(&b.rates.standard)
                }
            },
        };
        Applied {
            rates,
            tier,
            above: band.map(|b| b.above),
        }
    }

    /// The cost of reported usage at `tier` (the band is chosen by the reported input tokens).
    pub fn cost_at(&self, u: &Usage, tier: ServiceTier) -> (Nanos, Applied) {
        let a = self.rates(tier, u.input_tokens);
        (a.rates.cost(u), a)
    }

    /// The cost of reported usage at the standard tier.
    pub fn cost(&self, u: &Usage) -> Nanos {
        self.cost_at(u, ServiceTier::Standard).0
    }
}

/// A flat price as configured (`[pricing.models]`, `unpriced_price`): USD per million tokens, micro-USD
/// exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: Price,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: Price,
    /// Input tokens written to the provider's prompt cache (Anthropic charges more for these).
    pub cache_write: Price,
    /// Output tokens, reasoning included.
    pub output: Price,
}

impl ModelPrice {
    pub const fn usd_micro(input: u64, cached: u64, write: u64, output: u64) -> Self {
        ModelPrice {
            input: Price(input),
            cached_input: Price(cached),
            cache_write: Price(write),
            output: Price(output),
        }
    }

    /// The cost of reported usage at this flat price.
    pub fn cost(&self, u: &Usage) -> Nanos {
        Rates::from(*self).cost(u)
    }
}

/// What to do with a model that has no price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpriced {
    /// Refuse the request (the default): nothing is ever let through unpriced.
    Refuse,
    /// Charge this price.
    Charge(ModelPrice),
}

/// The date the built-in table was last checked against the providers' public price pages.
pub const DEFAULT_PRICES_DATE: &str = "2025-11-01";

/// Built-in list prices (USD per million tokens, standard tier, ≤200k-token prompts for Anthropic;
/// Anthropic cache writes at the 5-minute rate = 1.25 × input). Config `[pricing.models]` overrides or
/// extends them. Values are micro-USD per million tokens.
pub const DEFAULT_PRICES: &[(&str, ModelPrice)] = &[
    // OpenAI
    (
        "gpt-5",
        ModelPrice::usd_micro(1_250_000, 125_000, 1_250_000, 10_000_000),
    ),
    (
        "gpt-5-20*",
        ModelPrice::usd_micro(1_250_000, 125_000, 1_250_000, 10_000_000),
    ),
    (
        "gpt-5-codex",
        ModelPrice::usd_micro(1_250_000, 125_000, 1_250_000, 10_000_000),
    ),
    (
        "gpt-5.1",
        ModelPrice::usd_micro(1_250_000, 125_000, 1_250_000, 10_000_000),
    ),
    (
        "gpt-5.1-codex",
        ModelPrice::usd_micro(1_250_000, 125_000, 1_250_000, 10_000_000),
    ),
    (
        "gpt-5-mini*",
        ModelPrice::usd_micro(250_000, 25_000, 250_000, 2_000_000),
    ),
    (
        "gpt-5.1-codex-mini",
        ModelPrice::usd_micro(250_000, 25_000, 250_000, 2_000_000),
    ),
    (
        "gpt-5-nano*",
        ModelPrice::usd_micro(50_000, 5_000, 50_000, 400_000),
    ),
    (
        "gpt-4.1",
        ModelPrice::usd_micro(2_000_000, 500_000, 2_000_000, 8_000_000),
    ),
    (
        "gpt-4.1-mini",
        ModelPrice::usd_micro(400_000, 100_000, 400_000, 1_600_000),
    ),
    (
        "gpt-4.1-nano",
        ModelPrice::usd_micro(100_000, 25_000, 100_000, 400_000),
    ),
    (
        "gpt-4o",
        ModelPrice::usd_micro(2_500_000, 1_250_000, 2_500_000, 10_000_000),
    ),
    (
        "gpt-4o-mini",
        ModelPrice::usd_micro(150_000, 75_000, 150_000, 600_000),
    ),
    (
        "o3",
        ModelPrice::usd_micro(2_000_000, 500_000, 2_000_000, 8_000_000),
    ),
    (
        "o4-mini",
        ModelPrice::usd_micro(1_100_000, 275_000, 1_100_000, 4_400_000),
    ),
    (
        "codex-mini-latest",
        ModelPrice::usd_micro(1_500_000, 375_000, 1_500_000, 6_000_000),
    ),
    // Anthropic
    (
        "claude-opus-4-1*",
        ModelPrice::usd_micro(15_000_000, 1_500_000, 18_750_000, 75_000_000),
    ),
    (
        "claude-opus-4-0*",
        ModelPrice::usd_micro(15_000_000, 1_500_000, 18_750_000, 75_000_000),
    ),
    (
        "claude-opus-4-2*",
        ModelPrice::usd_micro(15_000_000, 1_500_000, 18_750_000, 75_000_000),
    ),
    (
        "claude-sonnet-4-5*",
        ModelPrice::usd_micro(3_000_000, 300_000, 3_750_000, 15_000_000),
    ),
    (
        "claude-sonnet-4-0*",
        ModelPrice::usd_micro(3_000_000, 300_000, 3_750_000, 15_000_000),
    ),
    (
        "claude-sonnet-4-2*",
        ModelPrice::usd_micro(3_000_000, 300_000, 3_750_000, 15_000_000),
    ),
    (
        "claude-haiku-4-5*",
        ModelPrice::usd_micro(1_000_000, 100_000, 1_250_000, 5_000_000),
    ),
    (
        "claude-3-5-haiku*",
        ModelPrice::usd_micro(800_000, 80_000, 1_000_000, 4_000_000),
    ),
];

/// Built-in service-tier prices (OpenAI's `priority` and `flex`, same date), micro-USD per million tokens.
pub const DEFAULT_TIER_PRICES: &[(&str, ServiceTier, ModelPrice)] = &[
    (
        "gpt-5",
        ServiceTier::Priority,
        ModelPrice::usd_micro(2_500_000, 250_000, 2_500_000, 20_000_000),
    ),
    (
        "gpt-5",
        ServiceTier::Flex,
        ModelPrice::usd_micro(625_000, 62_500, 625_000, 5_000_000),
    ),
    (
        "gpt-5-20*",
        ServiceTier::Priority,
        ModelPrice::usd_micro(2_500_000, 250_000, 2_500_000, 20_000_000),
    ),
    (
        "gpt-5-20*",
        ServiceTier::Flex,
        ModelPrice::usd_micro(625_000, 62_500, 625_000, 5_000_000),
    ),
    (
        "gpt-5.1",
        ServiceTier::Priority,
        ModelPrice::usd_micro(2_500_000, 250_000, 2_500_000, 20_000_000),
    ),
    (
        "gpt-5.1",
        ServiceTier::Flex,
        ModelPrice::usd_micro(625_000, 62_500, 625_000, 5_000_000),
    ),
    (
        "gpt-5-mini*",
        ServiceTier::Priority,
        ModelPrice::usd_micro(450_000, 45_000, 450_000, 3_600_000),
    ),
    (
        "gpt-5-mini*",
        ServiceTier::Flex,
        ModelPrice::usd_micro(125_000, 12_500, 125_000, 1_000_000),
    ),
    (
        "gpt-5-nano*",
        ServiceTier::Flex,
        ModelPrice::usd_micro(25_000, 2_500, 25_000, 200_000),
    ),
];

/// Built-in long-context prices: Claude Sonnet 4 and 4.5 with the 1M-token context bill every token of a
/// request whose input is above 200,000 tokens at these rates (micro-USD per million tokens, same date).
pub const DEFAULT_LONG_CONTEXT_PRICES: &[(&str, u64, ModelPrice)] = &[
    (
        "claude-sonnet-4-5*",
        200_000,
        ModelPrice::usd_micro(6_000_000, 600_000, 7_500_000, 22_500_000),
    ),
    (
        "claude-sonnet-4-0*",
        200_000,
        ModelPrice::usd_micro(6_000_000, 600_000, 7_500_000, 22_500_000),
    ),
    (
        "claude-sonnet-4-2*",
        200_000,
        ModelPrice::usd_micro(6_000_000, 600_000, 7_500_000, 22_500_000),
    ),
];

/// The version recorded for requests charged from the built-in table.
pub fn builtin_version() -> String {
    format!("builtin-{DEFAULT_PRICES_DATE}")
}

/// The version of a configured flat price: `config-` and the first 12 hex digits of a SHA-256 over the
/// pattern and the four prices, so changing a price changes the version.
pub fn config_version(pattern: &str, p: &ModelPrice) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(
        format!(
            "{pattern}\0{}\0{}\0{}\0{}",
            p.input.0, p.cached_input.0, p.cache_write.0, p.output.0
        )
        .as_bytes(),
    );
    format!("config-{}", &hex::encode(d)[..12])
}

/// The built-in table as [`Pricing`]s (flat prices with their tiers and bands).
pub fn builtin_pricing() -> Vec<(ModelPattern, Pricing)> {
    let version: Arc<str> = builtin_version().into();
    DEFAULT_PRICES
        .iter()
        .filter_map(|(pat, price)| {
            let mut p = Pricing::flat(Rates::from(*price), version.clone());
            for (_, tier, tp) in DEFAULT_TIER_PRICES.iter().filter(|(q, ..)| q == pat) {
                match tier {
                    ServiceTier::Priority => p.base.priority = Some(Rates::from(*tp)),
                    ServiceTier::Flex => p.base.flex = Some(Rates::from(*tp)),
                    ServiceTier::Standard => {}
                }
            }
            for (_, above, bp) in DEFAULT_LONG_CONTEXT_PRICES
                .iter()
                .filter(|(q, ..)| q == pat)
            {
                p.bands.push(Band {
                    above: *above,
                    rates: TierRates::flat(Rates::from(*bp)),
                });
            }
            ModelPattern::new(*pat).ok().map(|pat| (pat, p))
        })
        .collect()
}

/// Prices by model pattern: an exact name wins, then the longest matching glob. Layers, each replacing the
/// one below for the same pattern: the built-in dated table, a LiteLLM price file, `[pricing.models]`.
#[derive(Clone, Debug)]
pub struct PriceTable {
    literals: std::collections::HashMap<String, Arc<Pricing>>,
    globs: Vec<(ModelPattern, Arc<Pricing>)>,
    pub unpriced: Unpriced,
    unpriced_pricing: Option<Arc<Pricing>>,
}

impl PriceTable {
    /// The built-in table with `overrides` on top (an override for the same pattern replaces it).
    pub fn new(
        overrides: Vec<(ModelPattern, ModelPrice)>,
        unpriced: Unpriced,
        defaults: bool,
    ) -> Self {
        Self::layered(defaults, Vec::new(), overrides, unpriced)
    }

    /// The built-in table (if `defaults`), then `file` (e.g. a LiteLLM price file), then `overrides`.
    pub fn layered(
        defaults: bool,
        file: Vec<(ModelPattern, Pricing)>,
        overrides: Vec<(ModelPattern, ModelPrice)>,
        unpriced: Unpriced,
    ) -> Self {
        let mut t = PriceTable {
            literals: std::collections::HashMap::new(),
            globs: Vec::new(),
            unpriced,
            unpriced_pricing: match unpriced {
                Unpriced::Refuse => None,
                Unpriced::Charge(p) => Some(Arc::new(Pricing::flat(
                    Rates::from(p),
                    config_version("(unpriced)", &p),
                ))),
            },
        };
        if defaults {
            for (pat, p) in builtin_pricing() {
                t.insert(pat, p);
            }
        }
        for (pat, p) in file {
            t.insert(pat, p);
        }
        for (pat, price) in overrides {
            let version = config_version(pat.as_str(), &price);
            t.insert(pat, Pricing::flat(Rates::from(price), version));
        }
        t
    }

    fn insert(&mut self, pat: ModelPattern, p: Pricing) {
        let p = Arc::new(p);
        if pat.is_literal() {
            self.literals.insert(pat.as_str().to_string(), p);
        } else {
            self.globs.retain(|(q, _)| q != &pat);
            self.globs.push((pat, p));
        }
    }

    /// Everything the table knows about `model`'s price, or `None` if it is unpriced and the policy is to
    /// refuse.
    pub fn pricing(&self, model: &str) -> Option<Arc<Pricing>> {
        if let Some(p) = self.literals.get(model) {
            return Some(p.clone());
        }
        self.globs
            .iter()
            .filter(|(pat, _)| pat.matches(model))
            .max_by_key(|(pat, _)| pat.as_str().len())
            .map(|(_, p)| p.clone())
            .or_else(|| self.unpriced_pricing.clone())
    }

    /// `model`'s standard, short-context price in micro-USD per million tokens (each rounded up to a
    /// micro-dollar), or `None` if it is unpriced and the policy is to refuse. For display; governance
    /// charges from [`PriceTable::pricing`].
    pub fn lookup(&self, model: &str) -> Option<ModelPrice> {
        let r = self.pricing(model)?.base.standard;
        let p = |r: Rate| Price(r.0.div_ceil(1000));
        Some(ModelPrice {
            input: p(r.input),
            cached_input: p(r.cached_input),
            cache_write: p(r.cache_write),
            output: p(r.output),
        })
    }

    /// How many models (exact names and patterns) the table prices.
    pub fn len(&self) -> usize {
        self.literals.len() + self.globs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a reservation is sized. See docs/governance.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimator {
    /// Input estimate = ceil(request body bytes / this). Default 3: BPE tokens of English or code average
    /// about 4 bytes, and the JSON envelope adds more bytes than tokens, so bytes/3 is above the real count
    /// for text; 1 is a strict upper bound for text-only input.
    pub input_bytes_per_token: u64,
    /// Output reserve = min(the request's max output tokens, this cap); the cap when the request sets none.
    pub output_reserve_cap_tokens: u64,
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator {
            input_bytes_per_token: 3,
            output_reserve_cap_tokens: 4096,
        }
    }
}

/// Nano-dollars added to every estimate so that per-component rounding at settlement can never exceed it.
pub const ROUNDING_SLACK_NANOS: i64 = 3;

/// A sized reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Nanos,
}

impl Estimator {
    /// Size the reservation for a request body of `body_len` bytes asking for at most `max_output` tokens,
    /// at service tier `tier` (the long-context band is chosen by the input estimate, as settlement chooses
    /// it by the reported input).
    pub fn estimate(
        &self,
        pricing: &Pricing,
        tier: ServiceTier,
        body_len: u64,
        max_output: Option<u64>,
    ) -> Estimate {
        let input_tokens = body_len.div_ceil(self.input_bytes_per_token.max(1));
        let output_tokens = max_output
            .unwrap_or(self.output_reserve_cap_tokens)
            .min(self.output_reserve_cap_tokens);
        let price = pricing.rates(tier, input_tokens).rates;
        Estimate {
            input_tokens,
            output_tokens,
            cost: price
                .max_input()
                .cost(input_tokens)
                .saturating_add(price.output.cost(output_tokens))
                // Settlement rounds each of the four components up separately; the estimate rounds two.
                .saturating_add(Nanos(ROUNDING_SLACK_NANOS)),
        }
    }

    /// The charge when a stream ends without usage (client disconnect, upstream break): the input estimate
    /// plus the output streamed so far, counting one token per `input_bytes_per_token` bytes of streamed text
    /// (never less than one token per 4 bytes), capped by nothing — the client did receive it.
    pub fn partial_usage(&self, est: &Estimate, streamed_text_bytes: u64) -> Usage {
        let per = self.input_bytes_per_token.clamp(1, 4);
        Usage {
            input_tokens: est.input_tokens,
            output_tokens: streamed_text_bytes.div_ceil(per),
            ..Usage::default()
        }
    }
}

/// The request's own output limit: Responses `max_output_tokens`, Chat `max_completion_tokens` or
/// `max_tokens`.
pub fn requested_max_output(body: &serde_json::Value) -> Option<u64> {
    ["max_output_tokens", "max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(serde_json::Value::as_u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(i: u64, c: u64, w: u64, o: u64) -> ModelPrice {
        ModelPrice::usd_micro(i, c, w, o)
    }

    fn rates(i: u64, c: u64, w: u64, o: u64) -> Rates {
        Rates {
            input: Rate(i),
            cached_input: Rate(c),
            cache_write: Rate(w),
            output: Rate(o),
        }
    }

    fn usage(input: u64, cached: u64, write: u64, output: u64, reasoning: u64) -> Usage {
        Usage {
            input_tokens: input,
            cached_input_tokens: cached,
            cache_write_tokens: write,
            output_tokens: output,
            reasoning_tokens: reasoning,
        }
    }

    fn builtin() -> PriceTable {
        PriceTable::new(vec![], Unpriced::Refuse, true)
    }

    #[test]
    fn lookup_exact_then_longest_glob_then_policy() {
        let t = PriceTable::new(
            vec![(ModelPattern::new("gpt-5").expect("p"), p(1, 1, 1, 1))],
            Unpriced::Refuse,
            true,
        );
        assert_eq!(t.lookup("gpt-5"), Some(p(1, 1, 1, 1)));
        assert_eq!(
            t.lookup("gpt-5-mini-2025-08-07").map(|x| x.output),
            Some(Price(2_000_000))
        );
        assert_eq!(
            t.lookup("claude-sonnet-4-5-20250929")
                .map(|x| x.cache_write),
            Some(Price(3_750_000))
        );
        assert_eq!(t.lookup("no-such-model"), None);
        let t = PriceTable::new(vec![], Unpriced::Charge(p(9, 9, 9, 9)), false);
        assert_eq!(t.lookup("gpt-5"), Some(p(9, 9, 9, 9)));
    }

    #[test]
    fn versions_name_the_layer_that_priced() {
        let over = ModelPattern::new("gpt-5").expect("p");
        let t = PriceTable::new(vec![(over, p(1, 1, 1, 1))], Unpriced::Refuse, true);
        assert_eq!(
            &*t.pricing("gpt-5-mini").expect("priced").version,
            "builtin-2025-11-01"
        );
        let v = t.pricing("gpt-5").expect("priced").version.clone();
        assert!(v.starts_with("config-") && v.len() == 19, "{v}");
        let t2 = PriceTable::new(
            vec![(ModelPattern::new("gpt-5").expect("p"), p(1, 1, 1, 2))],
            Unpriced::Refuse,
            true,
        );
        assert_ne!(
            t2.pricing("gpt-5").expect("priced").version,
            v,
            "a new price is a new version"
        );
        // A file entry beats the built-in table; an override beats the file.
        let file = vec![
            (
                ModelPattern::new("gpt-5").expect("p"),
                Pricing::flat(rates(7, 7, 7, 7), "litellm-test"),
            ),
            (
                ModelPattern::new("o3").expect("p"),
                Pricing::flat(rates(8, 8, 8, 8), "litellm-test"),
            ),
        ];
        let t = PriceTable::layered(
            true,
            file,
            vec![(ModelPattern::new("gpt-5").expect("p"), p(1, 1, 1, 1))],
            Unpriced::Refuse,
        );
        assert_eq!(&*t.pricing("o3").expect("o3").version, "litellm-test");
        assert!(
            t.pricing("gpt-5")
                .expect("gpt-5")
                .version
                .starts_with("config-")
        );
    }

    // ---- golden cases, one per dimension (built-in table, dated 2025-11-01) ----

    #[test]
    fn golden_plain_input_and_output() {
        // gpt-5: $1.25 / $10 per Mtok. 1000 in, 100 out = $0.00125 + $0.001.
        let g = builtin().pricing("gpt-5").expect("gpt-5");
        assert_eq!(g.cost(&usage(1000, 0, 0, 100, 0)), Nanos(2_250_000));
    }

    #[test]
    fn golden_cached_input() {
        // 800 of 1000 input tokens from the cache at $0.125: 200 × 1.25 + 800 × 0.125 = 350 µ$.
        let g = builtin().pricing("gpt-5").expect("gpt-5");
        assert_eq!(g.cost(&usage(1000, 800, 0, 0, 0)), Nanos(350_000));
    }

    #[test]
    fn golden_cache_writes() {
        // claude-sonnet-4-5: $3 in, $0.30 read, $3.75 write, $15 out. 10,000 in = 3,000 plain + 2,000 read
        // + 5,000 written; 1,000 out: $0.009 + $0.0006 + $0.01875 + $0.015.
        let c = builtin()
            .pricing("claude-sonnet-4-5-20250929")
            .expect("sonnet");
        assert_eq!(
            c.cost(&usage(10_000, 2_000, 5_000, 1_000, 0)),
            Nanos(43_350_000)
        );
    }

    #[test]
    fn golden_reasoning_is_output() {
        // Reasoning tokens are part of the reported output tokens (OpenAI counts them there): charged once,
        // as output.
        let g = builtin().pricing("gpt-5").expect("gpt-5");
        assert_eq!(
            g.cost(&usage(0, 0, 0, 500, 400)),
            g.cost(&usage(0, 0, 0, 500, 0))
        );
        assert_eq!(g.cost(&usage(0, 0, 0, 500, 400)), Nanos(5_000_000));
    }

    #[test]
    fn golden_service_tiers() {
        let g = builtin().pricing("gpt-5-2025-08-07").expect("gpt-5");
        let u = usage(1000, 0, 0, 100, 0);
        // priority: $2.50 / $20; flex: $0.625 / $5.
        let (c, a) = g.cost_at(&u, ServiceTier::Priority);
        assert_eq!((c, a.label()), (Nanos(4_500_000), "priority".to_string()));
        let (c, a) = g.cost_at(&u, ServiceTier::Flex);
        assert_eq!((c, a.label()), (Nanos(1_125_000), "flex".to_string()));
        assert_eq!(ServiceTier::parse("auto"), ServiceTier::Standard);
        assert_eq!(ServiceTier::parse("default"), ServiceTier::Standard);
        assert_eq!(
            ServiceTier::of_request(&serde_json::json!({"service_tier": "priority"})),
            ServiceTier::Priority
        );
        // A model without a priority price is charged (and labelled) standard.
        let o = builtin().pricing("gpt-4.1").expect("gpt-4.1");
        let (c, a) = o.cost_at(&u, ServiceTier::Priority);
        assert_eq!(c, o.cost(&u));
        assert_eq!(a.tier, ServiceTier::Standard);
    }

    #[test]
    fn golden_long_context() {
        // Sonnet 4.5 above 200k input tokens: $6 / $22.50 for every token of the request.
        let c = builtin().pricing("claude-sonnet-4-5").expect("sonnet");
        let (cost, a) = c.cost_at(&usage(250_000, 0, 0, 1_000, 0), ServiceTier::Standard);
        assert_eq!(cost, Nanos(1_522_500_000));
        assert_eq!(a.label(), "standard above 200000");
        // Exactly at the threshold is not above it.
        let (cost, a) = c.cost_at(&usage(200_000, 0, 0, 1_000, 0), ServiceTier::Standard);
        assert_eq!(cost, Nanos(615_000_000));
        assert_eq!(a.above, None);
        // Cached reads and writes count toward the threshold and are charged at the band's rates.
        let (cost, _) = c.cost_at(
            &usage(200_001, 100_000, 100_000, 0, 0),
            ServiceTier::Standard,
        );
        assert_eq!(cost, Nanos(6_000 + 60_000_000 + 750_000_000));
    }

    #[test]
    fn golden_tier_inside_a_band_the_table_does_not_price() {
        // Priority priced only below the band: above it, the highest of the band's standard rates and the
        // priority rates.
        let p = Pricing {
            base: TierRates {
                standard: rates(1_000, 100, 1_000, 10_000),
                priority: Some(rates(2_000, 200, 2_000, 15_000)),
                flex: None,
            },
            bands: vec![Band {
                above: 100,
                rates: TierRates::flat(rates(1_500, 150, 1_500, 20_000)),
            }],
            version: "t".into(),
        };
        let a = p.rates(ServiceTier::Priority, 101);
        assert_eq!(a.rates, rates(2_000, 200, 2_000, 20_000));
        assert_eq!(a.label(), "priority above 100");
        assert_eq!(
            p.rates(ServiceTier::Priority, 100).rates,
            rates(2_000, 200, 2_000, 15_000)
        );
    }

    #[test]
    fn golden_rounding() {
        // $0.0375 per Mtok: 37.5 n$ for one token, rounded up; a femto-precise rate still charges 1 n$.
        assert_eq!(Rate::from_price(Price(37_500)).cost(1), Nanos(38));
        assert_eq!(Rate(18_750).cost(1), Nanos(1));
        assert_eq!(Rate(18_750).cost(0), Nanos(0));
        assert_eq!(Rate(1_250_000_000).cost(1_000_000), Nanos(1_250_000_000));
        assert_eq!(Rate(1_250_000_000).to_string(), "$1.25/Mtok");
        assert_eq!(Rate(1).to_string(), "$0.000000001/Mtok");
    }

    #[test]
    fn estimate_caps_output_reserve() {
        let e = Estimator {
            input_bytes_per_token: 3,
            output_reserve_cap_tokens: 4096,
        };
        let price = Pricing::flat(Rates::from(p(1_000_000, 0, 0, 10_000_000)), "t");
        let x = e.estimate(&price, ServiceTier::Standard, 40_000, Some(128_000));
        assert_eq!((x.input_tokens, x.output_tokens), (13_334, 4096));
        assert_eq!(
            x.cost,
            Nanos(13_334_000 + 40_960_000 + ROUNDING_SLACK_NANOS)
        );
        assert_eq!(
            e.estimate(&price, ServiceTier::Standard, 3, Some(10))
                .output_tokens,
            10
        );
        assert_eq!(
            e.estimate(&price, ServiceTier::Standard, 3, None)
                .output_tokens,
            4096
        );
        assert_eq!(
            requested_max_output(&serde_json::json!({"max_output_tokens": 77})),
            Some(77)
        );
        // The tier and the band of the input estimate price the reservation.
        let g = builtin().pricing("gpt-5").expect("gpt-5");
        let std = e.estimate(&g, ServiceTier::Standard, 3000, Some(100));
        let pri = e.estimate(&g, ServiceTier::Priority, 3000, Some(100));
        assert_eq!(
            pri.cost.0 - ROUNDING_SLACK_NANOS,
            2 * (std.cost.0 - ROUNDING_SLACK_NANOS)
        );
        let c = builtin().pricing("claude-sonnet-4-5").expect("sonnet");
        let long = e.estimate(&c, ServiceTier::Standard, 3 * 250_000, Some(1_000));
        assert_eq!(
            long.cost,
            Nanos(250_000 * 7_500 + 22_500_000 + ROUNDING_SLACK_NANOS)
        );
    }

    fn arb_rates() -> impl Strategy<Value = Rates> {
        (
            0u64..50_000_000_000,
            0u64..50_000_000_000,
            0u64..50_000_000_000,
            0u64..100_000_000_000,
        )
            .prop_map(|(i, c, w, o)| rates(i, c, w, o))
    }

    fn arb_tiers() -> impl Strategy<Value = TierRates> {
        (
            arb_rates(),
            proptest::option::of(arb_rates()),
            proptest::option::of(arb_rates()),
        )
            .prop_map(|(standard, priority, flex)| TierRates {
                standard,
                priority,
                flex,
            })
    }

    fn arb_pricing() -> impl Strategy<Value = Pricing> {
        (
            arb_tiers(),
            proptest::collection::vec((1u64..400_000, arb_tiers()), 0..3),
        )
            .prop_map(|(base, mut bands)| {
                bands.sort_by_key(|b| b.0);
                bands.dedup_by_key(|b| b.0);
                Pricing {
                    base,
                    bands: bands
                        .into_iter()
                        .map(|(above, rates)| Band { above, rates })
                        .collect(),
                    version: "prop".into(),
                }
            })
    }

    fn arb_tier() -> impl Strategy<Value = ServiceTier> {
        prop_oneof![
            Just(ServiceTier::Standard),
            Just(ServiceTier::Priority),
            Just(ServiceTier::Flex)
        ]
    }

    /// The exact cost of `u` at `r`, in femto-dollars (no rounding).
    fn exact_femto(r: &Rates, u: &Usage) -> u128 {
        let cached = u.cached_input_tokens.min(u.input_tokens);
        let write = u.cache_write_tokens.min(u.input_tokens - cached);
        let plain = u.input_tokens - cached - write;
        u128::from(plain) * u128::from(r.input.0)
            + u128::from(cached) * u128::from(r.cached_input.0)
            + u128::from(write) * u128::from(r.cache_write.0)
            + u128::from(u.output_tokens) * u128::from(r.output.0)
    }

    proptest! {
        /// A request's charged cost is never below what the table says for its reported usage: for the band
        /// its input falls in and the tier it was served at, every price the table states that applies (the
        /// tier's own price in that band; else the band's standard price and the tier's nearest price below
        /// it); and at most four nano-dollars of rounding above the highest stated price of each component.
        #[test]
        fn charged_cost_never_below_the_table(
            pricing in arb_pricing(), tier in arb_tier(),
            input in 0u64..1_000_000, cached_pct in 0u64..=100, write_pct in 0u64..=100,
            output in 0u64..200_000, reasoning in 0u64..200_000,
        ) {
            let cached = input * cached_pct / 100;
            let write = (input - cached) * write_pct / 100;
            let u = usage(input, cached, write, output, reasoning.min(output));
            let (cost, applied) = pricing.cost_at(&u, tier);
            let charged = cost.0 as u128 * 1_000_000;
            let band = pricing.bands.iter().rev().find(|b| input > b.above);
            prop_assert_eq!(applied.above, band.map(|b| b.above));
            let mut stated: Vec<Rates> = Vec::new();
            let in_band = band.map_or(&pricing.base, |b| &b.rates);
            match in_band.tier(tier) {
                Some(r) => stated.push(*r),
                None => {
                    stated.push(in_band.standard);
                    let lower = pricing
                        .bands
                        .iter()
                        .rev()
                        .filter(|b| band.is_some_and(|x| b.above < x.above))
                        .find_map(|b| b.rates.tier(tier))
                        .or_else(|| pricing.base.tier(tier));
                    if band.is_some() && let Some(r) = lower {
                        stated.push(*r);
                    }
                }
            }
            let highest = stated.iter().fold(Rates::default(), |m, r| m.max(r));
            let highest = exact_femto(&highest, &u);
            for r in &stated {
                prop_assert!(charged >= exact_femto(r, &u), "charged {} < table {:?}", cost.0, r);
            }
            prop_assert!(
                charged < highest + 4_000_000,
                "more than rounding above the highest stated price of each component"
            );
            // Reasoning tokens never add to the charge (they are part of the output tokens).
            prop_assert_eq!(pricing.cost_at(&usage(input, cached, write, output, 0), tier).0, cost);
        }

        /// Cost is monotone in every component and never below the exact rational cost.
        #[test]
        fn cost_monotone_and_never_under(
            i in 0u64..5_000_000, c in 0u64..5_000_000, w in 0u64..5_000_000, o in 0u64..1_000_000,
            pi in 0u64..100_000_000, pc in 0u64..100_000_000, pw in 0u64..100_000_000, po in 0u64..100_000_000,
        ) {
            let price = p(pi, pc, pw, po);
            let u = Usage { input_tokens: i, cached_input_tokens: c, cache_write_tokens: w, output_tokens: o, reasoning_tokens: 0 };
            let cost = price.cost(&u).0 as u128;
            let cached = c.min(i);
            let write = w.min(i - cached);
            let plain = i - cached - write;
            let exact_pico = u128::from(plain) * u128::from(pi) + u128::from(cached) * u128::from(pc)
                + u128::from(write) * u128::from(pw) + u128::from(o) * u128::from(po);
            prop_assert!(cost * 1000 >= exact_pico);
            prop_assert!(cost * 1000 < exact_pico + 4000);
            let more = Usage { output_tokens: o + 1, ..u };
            prop_assert!(price.cost(&more) >= price.cost(&u));
        }

        /// The reservation covers the real cost whenever the real usage is within the estimate (same tier;
        /// the band of the real input is at most the band of the estimate).
        #[test]
        fn reservation_covers_usage_within_estimate(
            body in 0u64..2_000_000, max_out in proptest::option::of(0u64..200_000),
            frac_in in 0u64..=100, frac_out in 0u64..=100, cached_pct in 0u64..=100,
            pricing in arb_pricing(), tier in arb_tier(),
        ) {
            let e = Estimator::default();
            let est = e.estimate(&pricing, tier, body, max_out);
            let input = est.input_tokens * frac_in / 100;
            let cached = input * cached_pct / 100;
            let u = Usage { input_tokens: input, cached_input_tokens: cached, cache_write_tokens: 0,
                output_tokens: est.output_tokens * frac_out / 100, reasoning_tokens: 0 };
            // Bands may price a longer context lower than a shorter one in a random table; real tables do
            // not, and the estimate is for the band of its own input estimate.
            let same_band = pricing.rates(tier, input).above == pricing.rates(tier, est.input_tokens).above;
            prop_assume!(same_band);
            let (cost, _) = pricing.cost_at(&u, tier);
            prop_assert!(cost <= est.cost, "{:?} > {:?}", cost, est.cost);
        }
    }
}
