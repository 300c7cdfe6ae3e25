//! A price table from a LiteLLM `model_prices_and_context_window.json` file (`[pricing] litellm_file`), so
//! operators do not retype hundreds of prices.
//!
//! Fields used (USD per token, JSON numbers; `null` = absent):
//!
//! | LiteLLM field | Tollgate |
//! |---|---|
//! | `input_cost_per_token`, `output_cost_per_token` | input, output (both required, else the entry is skipped) |
//! | `cache_read_input_token_cost` | cached input (default: input) |
//! | `cache_creation_input_token_cost` | cache writes (default: input) |
//! | any of the four + `_above_<N>k_tokens` | a long-context band above N×1000 input tokens |
//! | any of the four + `_priority` / `_flex` | the `priority` / `flex` service tier (also after `_above_…`) |
//!
//! Every other field (`mode`, `max_tokens`, `_batches`, `_above_1hr`, per-image or per-second prices,
//! `tiered_pricing`, …) is ignored. A missing input or output price in a tier or band is the one below it
//! (the band's standard rates, then the base); a missing cached-input price is the tier's own input price, a
//! missing cache-write price the tier's input price or the one below, whichever is higher — never a price
//! below what the file says.
//!
//! **Conversion.** A JSON number is read as the shortest decimal that reads back as the same float (which is
//! the number as written for any price with at most 15 significant digits), then taken exactly as nano-USD
//! per million tokens ([`Rate`], 10⁻¹⁵ USD per token), rounding **up** only if it has more than 15 decimal
//! places. No float is used after this.

use super::pricing::{Band, MAX_RATE, Pricing, Rate, Rates, ServiceTier, TierRates};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate::ModelPattern;

/// A price file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
}

/// A loaded price file.
#[derive(Debug)]
pub struct PriceFile {
    pub entries: Vec<(ModelPattern, Pricing)>,
    /// Entries without token prices (images, audio, search, …) or with a name that is a pattern.
    pub skipped: usize,
    /// The version recorded with every request charged from this file.
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Component {
    Input,
    Output,
    Cached,
    Write,
}

/// `input_cost_per_token_above_200k_tokens_priority` → (Input, Some(200_000), Priority). `None`: a field we
/// do not use. `Err`: a threshold that makes no sense.
fn classify(field: &str) -> Result<Option<(Component, Option<u64>, ServiceTier)>, String> {
    const BASES: [(&str, Component); 4] = [
        ("input_cost_per_token", Component::Input),
        ("output_cost_per_token", Component::Output),
        ("cache_read_input_token_cost", Component::Cached),
        ("cache_creation_input_token_cost", Component::Write),
    ];
    let Some((c, mut rest)) = BASES
        .iter()
        .find_map(|(b, c)| field.strip_prefix(b).map(|r| (*c, r)))
    else {
        return Ok(None);
    };
    let mut tier = ServiceTier::Standard;
    let mut above = None;
    loop {
        if rest.is_empty() {
            return Ok(Some((c, above, tier)));
        }
        if tier == ServiceTier::Standard {
            if let Some(r) = rest.strip_prefix("_priority") {
                tier = ServiceTier::Priority;
                rest = r;
                continue;
            }
            if let Some(r) = rest.strip_prefix("_flex") {
                tier = ServiceTier::Flex;
                rest = r;
                continue;
            }
        }
        if above.is_none()
            && let Some(r) = rest.strip_prefix("_above_")
            && let Some((n, r)) = r.split_once("_tokens")
        {
            above = Some(threshold(n).ok_or_else(|| {
                format!("{field}: the threshold {n:?} is not a positive token count (e.g. 200k)")
            })?);
            rest = r;
            continue;
        }
        // `_batches`, `_above_1hr`, regional suffixes, …: not a price we charge.
        return Ok(None);
    }
}

/// `200k` → 200_000, `1m` → 1_000_000, `128000` → 128_000; zero or overflow → `None`.
fn threshold(s: &str) -> Option<u64> {
    let (digits, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1_000u64),
        b'm' | b'M' => (&s[..s.len() - 1], 1_000_000u64),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(mul)
        .filter(|n| *n > 0)
}

/// A USD-per-token JSON number → [`Rate`] (see the module docs for the rounding).
pub fn rate_of(v: f64) -> Result<Rate, String> {
    if !v.is_finite() || v < 0.0 {
        return Err("must be a number of USD per token, zero or more".into());
    }
    // Rust prints the shortest decimal that reads back as the same float, never in exponent form.
    let text = format!("{v}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    const SCALE: usize = 15;
    let int: u128 = int.parse().map_err(|_| format!("{text} is not a price"))?;
    let mut value = int
        .checked_mul(10u128.pow(SCALE as u32))
        .ok_or("is too large")?;
    let (kept, dropped) = frac.split_at(frac.len().min(SCALE));
    for (i, b) in kept.bytes().enumerate() {
        value += u128::from(b - b'0') * 10u128.pow((SCALE - 1 - i) as u32);
    }
    if dropped.bytes().any(|b| b != b'0') {
        value += 1;
    }
    if value > u128::from(MAX_RATE.0) {
        return Err(format!(
            "{text} USD per token is more than {} (100,000 USD per million tokens)",
            MAX_RATE
        ));
    }
    Ok(Rate(value as u64))
}

#[derive(Clone, Copy, Debug, Default)]
struct Partial {
    input: Option<Rate>,
    output: Option<Rate>,
    cached: Option<Rate>,
    write: Option<Rate>,
}

impl Partial {
    fn set(&mut self, c: Component, r: Rate) {
        let slot = match c {
            Component::Input => &mut self.input,
            Component::Output => &mut self.output,
            Component::Cached => &mut self.cached,
            Component::Write => &mut self.write,
        };
        *slot = Some(r);
    }

    /// Complete against the rates one level below (see the module docs).
    fn complete(&self, below: &Rates) -> Rates {
        let input = self.input.unwrap_or(below.input);
        Rates {
            input,
            output: self.output.unwrap_or(below.output),
            cached_input: self.cached.unwrap_or(input),
            cache_write: self.write.unwrap_or(input.max(below.cache_write)),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// Where `"key":` first appears at or after `from` (for error messages; `from` if not found).
fn find_key(text: &str, key: &str, from: usize) -> usize {
    let needle = format!("\"{key}\"");
    let mut at = from;
    while let Some(i) = text.get(at..).and_then(|t| t.find(&needle)) {
        let after = at + i + needle.len();
        if text[after..].trim_start().starts_with(':') {
            return at + i;
        }
        at = after;
    }
    from
}

/// Load a LiteLLM price file. `version` names it in `spend.price_version`; default `litellm-` and the first
/// 12 hex digits of the file's SHA-256.
pub fn load(path: &Path, version: Option<&str>) -> Result<PriceFile, PriceFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PriceFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, version)
}

/// [`load`] on text already read.
pub fn parse(text: &str, path: &Path, version: Option<&str>) -> Result<PriceFile, PriceFileError> {
    let invalid = |offset: usize, message: String| {
        let (line, col) = line_col(text, offset);
        PriceFileError::Invalid {
            path: path.to_path_buf(),
            line,
            col,
            message,
        }
    };
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PriceFileError::Invalid {
            path: path.to_path_buf(),
            line: e.line(),
            col: e.column(),
            message: format!("not a LiteLLM price file: {e}"),
        })?;
    let serde_json::Value::Object(models) = doc else {
        return Err(invalid(
            0,
            "not a LiteLLM price file: expected a JSON object of models".into(),
        ));
    };
    let version: Arc<str> = match version {
        Some(v) => v.into(),
        None => {
            use sha2::Digest;
            format!(
                "litellm-{}",
                &hex::encode(sha2::Sha256::digest(text.as_bytes()))[..12]
            )
            .into()
        }
    };
    let mut entries = Vec::new();
    let mut skipped = 0;
    for (name, entry) in &models {
        if name == "sample_spec" {
            continue;
        }
        let at = find_key(text, name, 0);
        let serde_json::Value::Object(fields) = entry else {
            return Err(invalid(
                at,
                format!("model {name:?}: expected an object of prices"),
            ));
        };
        // (band, tier) → the prices given for it.
        let mut parts: BTreeMap<(Option<u64>, ServiceTier), Partial> = BTreeMap::new();
        for (field, value) in fields {
            let class = classify(field)
                .map_err(|m| invalid(find_key(text, field, at), format!("model {name:?}: {m}")))?;
            let Some((component, above, tier)) = class else {
                continue;
            };
            let rate = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::Number(n) => {
                    n.as_f64().ok_or_else(|| "not a number".to_string())
                }
                _ => Err("must be a number of USD per token, zero or more".to_string()),
            }
            .and_then(rate_of)
            .map_err(|m| {
                invalid(
                    find_key(text, field, at),
                    format!("model {name:?}: {field}: {m}"),
                )
            })?;
            parts.entry((above, tier)).or_default().set(component, rate);
        }
        let base = parts
            .get(&(None, ServiceTier::Standard))
            .copied()
            .unwrap_or_default();
        let (Some(input), Some(output)) = (base.input, base.output) else {
            skipped += 1;
            continue;
        };
        let Ok(pattern) = ModelPattern::new(name.clone()) else {
            skipped += 1;
            continue;
        };
        if !pattern.is_literal() {
            skipped += 1;
            continue;
        }
        let standard = Rates {
            input,
            output,
            cached_input: base.cached.unwrap_or(input),
            cache_write: base.write.unwrap_or(input),
        };
        let tiers = |above: Option<u64>, standard: Rates| TierRates {
            standard,
            priority: parts
                .get(&(above, ServiceTier::Priority))
                .map(|p| p.complete(&standard)),
            flex: parts
                .get(&(above, ServiceTier::Flex))
                .map(|p| p.complete(&standard)),
        };
        let mut thresholds: Vec<u64> = parts.keys().filter_map(|(a, _)| *a).collect();
        thresholds.dedup();
        let mut bands = Vec::new();
        let mut below = standard;
        for above in thresholds {
            let band_standard = parts
                .get(&(Some(above), ServiceTier::Standard))
                .map_or(below, |p| p.complete(&below));
            bands.push(Band {
                above,
                rates: tiers(Some(above), band_standard),
            });
            below = band_standard;
        }
        entries.push((
            pattern,
            Pricing {
                base: tiers(None, standard),
                bands,
                version: version.clone(),
            },
        ));
    }
    if entries.is_empty() {
        return Err(invalid(
            0,
            "no model in this file has input_cost_per_token and output_cost_per_token: not a LiteLLM price file?".into(),
        ));
    }
    Ok(PriceFile {
        entries,
        skipped,
        version: version.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(usd_per_mtok_nanos: u64) -> Rate {
        Rate(usd_per_mtok_nanos)
    }

    #[test]
    fn floats_convert_exactly_and_round_up_past_femto() {
        assert_eq!(rate_of(1.25e-06), Ok(r(1_250_000_000)));
        assert_eq!(rate_of(3e-07), Ok(r(300_000_000)));
        assert_eq!(rate_of(3.75e-08), Ok(r(37_500_000)));
        assert_eq!(rate_of(1.875e-11), Ok(r(18_750)));
        assert_eq!(rate_of(0.0), Ok(r(0)));
        assert_eq!(rate_of(1e-15), Ok(r(1)));
        // Below a femto-dollar per token: rounded up, never down.
        assert_eq!(rate_of(1e-16), Ok(r(1)));
        assert_eq!(rate_of(1.0000000000000002e-6), Ok(r(1_000_000_001)));
        assert!(rate_of(-1e-6).is_err());
        assert!(rate_of(0.2).expect_err("too large").contains("100,000"));
    }

    #[test]
    fn field_names() {
        use Component::*;
        use ServiceTier::*;
        assert_eq!(
            classify("input_cost_per_token"),
            Ok(Some((Input, None, Standard)))
        );
        assert_eq!(
            classify("cache_read_input_token_cost_above_200k_tokens"),
            Ok(Some((Cached, Some(200_000), Standard)))
        );
        assert_eq!(
            classify("output_cost_per_token_priority"),
            Ok(Some((Output, None, Priority)))
        );
        assert_eq!(
            classify("input_cost_per_token_above_272k_tokens_priority"),
            Ok(Some((Input, Some(272_000), Priority)))
        );
        assert_eq!(
            classify("input_cost_per_token_flex_above_128k_tokens"),
            Ok(Some((Input, Some(128_000), Flex)))
        );
        for ignored in [
            "input_cost_per_token_batches",
            "cache_creation_input_token_cost_above_1hr",
            "input_cost_per_token_above_200k_tokens_us_east",
            "output_cost_per_reasoning_token",
            "input_cost_per_image",
            "max_tokens",
        ] {
            assert_eq!(classify(ignored), Ok(None), "{ignored}");
        }
        assert!(classify("input_cost_per_token_above_0_tokens").is_err());
        assert!(classify("input_cost_per_token_above_99999999999999999999k_tokens").is_err());
    }

    #[test]
    fn a_file_with_tiers_and_bands() {
        let text = r#"{
  "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "mode": "chat"},
  "gpt-x": {
    "input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
    "cache_read_input_token_cost": 1.25e-07,
    "input_cost_per_token_priority": 2.5e-06, "output_cost_per_token_priority": 2e-05,
    "cache_read_input_token_cost_priority": 2.5e-07,
    "input_cost_per_token_flex": 6.25e-07, "output_cost_per_token_flex": 5e-06,
    "input_cost_per_token_above_272k_tokens": 2.5e-06,
    "litellm_provider": "openai", "mode": "responses", "max_output_tokens": 128000,
    "supports_reasoning": true
  },
  "claude-y": {
    "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
    "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
    "input_cost_per_token_above_200k_tokens": 6e-06, "output_cost_per_token_above_200k_tokens": 2.25e-05,
    "cache_read_input_token_cost_above_200k_tokens": 6e-07,
    "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
    "cache_creation_input_token_cost_above_1hr": 6e-06
  },
  "dall-e-3": {"input_cost_per_image": 0.04, "mode": "image_generation"},
  "azure/*": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
  "null-fields": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "cache_read_input_token_cost": null}
}"#;
        let f = parse(text, Path::new("p.json"), Some("litellm-2025-12-01")).expect("valid");
        assert_eq!(f.skipped, 2, "the image model and the pattern");
        assert_eq!(f.version, "litellm-2025-12-01");
        let get = |n: &str| {
            f.entries
                .iter()
                .find(|(p, _)| p.as_str() == n)
                .map(|(_, p)| p.clone())
                .expect(n)
        };
        let g = get("gpt-x");
        assert_eq!(
            g.base.standard,
            Rates {
                input: r(1_250_000_000),
                cached_input: r(125_000_000),
                cache_write: r(1_250_000_000),
                output: r(10_000_000_000)
            }
        );
        assert_eq!(
            g.base.priority,
            Some(Rates {
                input: r(2_500_000_000),
                cached_input: r(250_000_000),
                cache_write: r(2_500_000_000),
                output: r(20_000_000_000)
            })
        );
        // Flex without a cached price: its own input price (never below the file).
        assert_eq!(
            g.base.flex.map(|x| (x.input, x.cached_input, x.output)),
            Some((r(625_000_000), r(625_000_000), r(5_000_000_000)))
        );
        // A band with only an input price: output from below.
        assert_eq!(g.bands.len(), 1);
        assert_eq!(g.bands[0].above, 272_000);
        assert_eq!(g.bands[0].rates.standard.input, r(2_500_000_000));
        assert_eq!(g.bands[0].rates.standard.output, r(10_000_000_000));
        assert_eq!(&*g.version, "litellm-2025-12-01");
        let c = get("claude-y");
        assert_eq!(
            c.bands[0].rates.standard,
            Rates {
                input: r(6_000_000_000),
                cached_input: r(600_000_000),
                cache_write: r(7_500_000_000),
                output: r(22_500_000_000)
            }
        );
        assert_eq!(c.base.standard.cache_write, r(3_750_000_000));
        let n = get("null-fields");
        assert_eq!(n.base.standard.cached_input, r(1_000_000_000));
        // Default version: a digest of the file.
        let f = parse(text, Path::new("p.json"), None).expect("valid");
        assert!(
            f.version.starts_with("litellm-") && f.version.len() == 20,
            "{}",
            f.version
        );
    }

    #[test]
    fn bad_files_name_the_place() {
        let cases = [
            (
                "{\"m\": {\"input_cost_per_token\": 1e-6,,}}",
                ":1:",
                "not a LiteLLM price file",
            ),
            ("[1, 2]", ":1:1", "expected a JSON object"),
            (
                "{\n  \"m\": {\n    \"input_cost_per_token\": -1e-6,\n    \"output_cost_per_token\": 1e-6\n  }\n}",
                ":3:5",
                "model \"m\": input_cost_per_token: must be a number of USD per token, zero or more",
            ),
            (
                "{\n  \"m\": {\"input_cost_per_token\": \"0.000001\", \"output_cost_per_token\": 1e-6}\n}",
                ":2:",
                "input_cost_per_token: must be a number",
            ),
            (
                "{\n  \"m\": {\"input_cost_per_token\": 1e-6, \"output_cost_per_token\": 1e-6,\n  \"input_cost_per_token_above_0k_tokens\": 1e-6}\n}",
                ":3:3",
                "threshold",
            ),
            ("{\n  \"m\": 5\n}", ":2:3", "expected an object of prices"),
            (
                "{\"dall-e\": {\"input_cost_per_image\": 0.04}}",
                ":1:1",
                "no model in this file",
            ),
            (
                "{\"m\": {\"input_cost_per_token\": 0.5, \"output_cost_per_token\": 1e-6}}",
                ":1:",
                "100,000 USD per million tokens",
            ),
        ];
        for (text, place, needle) in cases {
            let e = parse(text, Path::new("p.json"), None)
                .expect_err(text)
                .to_string();
            assert!(
                e.starts_with("p.json") && e.contains(place) && e.contains(needle),
                "{text}: {e}"
            );
        }
    }
}
