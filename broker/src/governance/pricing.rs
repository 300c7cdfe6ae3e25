//! Prices per model and the reservation estimator.
//!
//! All money is integer: prices are [`Price`] (micro-USD per million tokens = pico-USD per token), costs
//! are [`Nanos`]. Every token count is rounded **up** to the next nano-dollar per price component, so a sum
//! of settled costs is never below what the provider bills at the same prices.

use crate::usage::Usage;
use tollgate::{ModelPattern, Nanos, Price};

/// The price of one model, per million tokens.
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

    /// The cost of reported usage. `input_tokens` includes cached and cache-write tokens; the uncached
    /// remainder is charged at the input price.
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
    pub fn max_input(&self) -> Price {
        self.input.max(self.cache_write).max(self.cached_input)
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

/// Prices by model pattern: an exact name wins, then the longest matching glob.
#[derive(Clone, Debug)]
pub struct PriceTable {
    entries: Vec<(ModelPattern, ModelPrice)>,
    pub unpriced: Unpriced,
}

impl PriceTable {
    /// The built-in table with `overrides` on top (an override for the same pattern replaces it).
    pub fn new(
        overrides: Vec<(ModelPattern, ModelPrice)>,
        unpriced: Unpriced,
        defaults: bool,
    ) -> Self {
        let mut entries: Vec<(ModelPattern, ModelPrice)> = Vec::new();
        if defaults {
            for (p, price) in DEFAULT_PRICES {
                if let Ok(p) = ModelPattern::new(*p) {
                    entries.push((p, *price));
                }
            }
        }
        for (p, price) in overrides {
            entries.retain(|(q, _)| q != &p);
            entries.push((p, price));
        }
        PriceTable { entries, unpriced }
    }

    /// The price for `model`, or `None` if it is unpriced and the policy is to refuse.
    pub fn lookup(&self, model: &str) -> Option<ModelPrice> {
        if let Some((_, p)) = self
            .entries
            .iter()
            .find(|(pat, _)| pat.is_literal() && pat.as_str() == model)
        {
            return Some(*p);
        }
        let best = self
            .entries
            .iter()
            .filter(|(pat, _)| !pat.is_literal() && pat.matches(model))
            .max_by_key(|(pat, _)| pat.as_str().len());
        match (best, self.unpriced) {
            (Some((_, p)), _) => Some(*p),
            (None, Unpriced::Charge(p)) => Some(p),
            (None, Unpriced::Refuse) => None,
        }
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
    /// Size the reservation for a request body of `body_len` bytes asking for at most `max_output` tokens.
    pub fn estimate(&self, price: &ModelPrice, body_len: u64, max_output: Option<u64>) -> Estimate {
        let input_tokens = body_len.div_ceil(self.input_bytes_per_token.max(1));
        let output_tokens = max_output
            .unwrap_or(self.output_reserve_cap_tokens)
            .min(self.output_reserve_cap_tokens);
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
    fn cost_splits_cached_and_writes() {
        let price = p(1_250_000, 125_000, 2_000_000, 10_000_000);
        let u = Usage {
            input_tokens: 1000,
            cached_input_tokens: 400,
            cache_write_tokens: 100,
            output_tokens: 50,
            reasoning_tokens: 20,
        };
        // 500 plain × 1.25 + 400 × 0.125 + 100 × 2 + 50 × 10 (µ$/Mtok = p$/tok → /1000 = n$)
        assert_eq!(price.cost(&u), Nanos(625_000 + 50_000 + 200_000 + 500_000));
    }

    #[test]
    fn estimate_caps_output_reserve() {
        let e = Estimator {
            input_bytes_per_token: 3,
            output_reserve_cap_tokens: 4096,
        };
        let price = p(1_000_000, 0, 0, 10_000_000);
        let x = e.estimate(&price, 40_000, Some(128_000));
        assert_eq!((x.input_tokens, x.output_tokens), (13_334, 4096));
        assert_eq!(
            x.cost,
            Nanos(13_334_000 + 40_960_000 + ROUNDING_SLACK_NANOS)
        );
        assert_eq!(e.estimate(&price, 3, Some(10)).output_tokens, 10);
        assert_eq!(e.estimate(&price, 3, None).output_tokens, 4096);
        assert_eq!(
            requested_max_output(&serde_json::json!({"max_output_tokens": 77})),
            Some(77)
        );
    }

    proptest! {
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

        /// The reservation covers the real cost whenever the real usage is within the estimate.
        #[test]
        fn reservation_covers_usage_within_estimate(
            body in 0u64..2_000_000, max_out in proptest::option::of(0u64..200_000),
            frac_in in 0u64..=100, frac_out in 0u64..=100, cached_pct in 0u64..=100,
            pi in 0u64..50_000_000, pc in 0u64..50_000_000, pw in 0u64..50_000_000, po in 0u64..50_000_000,
        ) {
            let e = Estimator::default();
            let price = p(pi, pc, pw, po);
            let est = e.estimate(&price, body, max_out);
            let input = est.input_tokens * frac_in / 100;
            let cached = input * cached_pct / 100;
            let u = Usage { input_tokens: input, cached_input_tokens: cached, cache_write_tokens: 0,
                output_tokens: est.output_tokens * frac_out / 100, reasoning_tokens: 0 };
            prop_assert!(price.cost(&u) <= est.cost, "{:?} > {:?}", price.cost(&u), est.cost);
        }
    }
}
