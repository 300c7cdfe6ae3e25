//! Money as integers. Amounts are nano-dollars (`Nanos`, 1 USD = 10^9); prices are micro-dollars per
//! million tokens (`Price`), which is the same as pico-dollars per token, so `$0.0375 / 1M tokens` is
//! exactly 37_500 and no float ever touches money.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount of money in nano-dollars (10^-9 USD). Signed so that refunds and deltas are representable;
/// a configured amount is never negative (validated at load).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nanos(pub i64);

/// A price: micro-dollars per million tokens (equivalently pico-dollars per token).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Price(pub u64);

/// A USD amount string could not be parsed exactly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseMoneyError {
    #[error("{0:?} is not a decimal USD amount (expected e.g. \"12.50\")")]
    Syntax(String),
    #[error("{0:?} is negative; amounts must be zero or more")]
    Negative(String),
    #[error("{0:?} has more decimal places than {1} supports")]
    TooPrecise(String, &'static str),
    #[error("{0:?} is too large (at most {1})")]
    TooLarge(String, &'static str),
}

/// The largest amount a budget may hold: one billion USD. Anything above is a typo, not a budget.
pub const MAX_AMOUNT_USD: i64 = 1_000_000_000;
/// The largest price we accept: 100,000 USD per million tokens.
pub const MAX_PRICE_USD_PER_MTOK: u64 = 100_000;

/// Parse a non-negative decimal with at most `scale` fractional digits into an integer of that scale.
fn parse_decimal(text: &str, scale: u32) -> Result<(u128, usize), ParseMoneyError> {
    let t = text.trim();
    let t = t.strip_prefix('$').unwrap_or(t);
    if t.starts_with('-') {
        return Err(ParseMoneyError::Negative(text.to_string()));
    }
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() && frac.is_empty() || !digits_ok(int) || !digits_ok(frac) || int.len() > 20 {
        return Err(ParseMoneyError::Syntax(text.to_string()));
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale as usize {
        return Err(ParseMoneyError::TooPrecise(text.to_string(), ""));
    }
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| ParseMoneyError::Syntax(text.to_string()))?
    };
    let mut frac_v: u128 = 0;
    for (i, b) in frac_trimmed.bytes().enumerate() {
        frac_v += u128::from(b - b'0') * 10u128.pow(scale - 1 - i as u32);
    }
    Ok((int_v * 10u128.pow(scale) + frac_v, int.len()))
}

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);
    pub const PER_USD: i64 = 1_000_000_000;

    /// Parse a USD amount such as `"12.50"`, `"0.000000001"` or `"$3"` exactly.
    pub fn parse_usd(text: &str) -> Result<Self, ParseMoneyError> {
        let (v, _) = parse_decimal(text, 9).map_err(|e| match e {
            ParseMoneyError::TooPrecise(s, _) => {
                ParseMoneyError::TooPrecise(s, "nano-dollars (9 decimals)")
            }
            e => e,
        })?;
        if v > (MAX_AMOUNT_USD as u128) * (Self::PER_USD as u128) {
            return Err(ParseMoneyError::TooLarge(
                text.to_string(),
                "1,000,000,000 USD",
            ));
        }
        Ok(Nanos(v as i64))
    }

    pub fn from_usd(usd: i64) -> Self {
        Nanos(usd.saturating_mul(Self::PER_USD))
    }

    pub fn saturating_add(self, o: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(o.0))
    }

    pub fn saturating_sub(self, o: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(o.0))
    }
}

impl Price {
    /// Parse `USD per million tokens`, e.g. `"1.25"` → 1_250_000 (micro-dollars per million tokens).
    pub fn parse_usd_per_mtok(text: &str) -> Result<Self, ParseMoneyError> {
        let (v, _) = parse_decimal(text, 6).map_err(|e| match e {
            ParseMoneyError::TooPrecise(s, _) => {
                ParseMoneyError::TooPrecise(s, "prices (6 decimals per million tokens)")
            }
            e => e,
        })?;
        if v > u128::from(MAX_PRICE_USD_PER_MTOK) * 1_000_000 {
            return Err(ParseMoneyError::TooLarge(
                text.to_string(),
                "100,000 USD per million tokens",
            ));
        }
        Ok(Price(v as u64))
    }

    /// The exact cost of `tokens` at this price, in nano-dollars, rounded **up** to the next nano-dollar so
    /// that many small requests can never sum to less than the provider charges.
    pub fn cost(self, tokens: u64) -> Nanos {
        // pico-dollars = tokens * price; nanos = ceil(pico / 1000). u128 cannot overflow here.
        let pico = u128::from(tokens) * u128::from(self.0);
        let nanos = pico.div_ceil(1000);
        Nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }
}

fn fmt_scaled(f: &mut fmt::Formatter<'_>, v: i128, scale: u32) -> fmt::Result {
    let sign = if v < 0 { "-" } else { "" };
    let v = v.unsigned_abs();
    let div = 10u128.pow(scale);
    let (int, frac) = (v / div, v % div);
    let mut frac_s = format!("{frac:0width$}", width = scale as usize);
    while frac_s.len() > 2 && frac_s.ends_with('0') {
        frac_s.pop();
    }
    write!(f, "{sign}{int}.{frac_s}")
}

impl fmt::Display for Nanos {
    /// `$12.50`, `$0.000001234`: exact, at least two decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        fmt_scaled(f, i128::from(self.0), 9)
    }
}

impl Nanos {
    /// For people: whole cents (`$0.13`, `$12.50`), or four significant digits below a cent
    /// (`$0.001296`). Rounded half away from zero; exact values stay in the API's `*_nanos` fields.
    pub fn human(self) -> String {
        let n = i128::from(self.0);
        let (sign, a) = if n < 0 { ("-", -n) } else { ("", n) };
        if a >= 10_000_000 || a == 0 {
            // Cents: 1 cent = 10^7 nanos.
            let cents = (a + 5_000_000) / 10_000_000;
            return format!("{sign}${}.{:02}", cents / 100, cents % 100);
        }
        // Below a cent: keep four significant digits.
        let digits = a.to_string().len() as u32; // 1..=7
        let drop = digits.saturating_sub(4);
        let scale = 10i128.pow(drop);
        let kept = (a + scale / 2) / scale * scale;
        let mut s = format!("{:09}", kept);
        while s.ends_with('0') {
            s.pop();
        }
        format!("{sign}$0.{s}")
    }
}

impl fmt::Debug for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nanos({self})")
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        fmt_scaled(f, i128::from(self.0), 6)?;
        f.write_str("/Mtok")
    }
}

impl fmt::Debug for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Price({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_usd_exactly() {
        assert_eq!(Nanos::parse_usd("12.50"), Ok(Nanos(12_500_000_000)));
        assert_eq!(Nanos::parse_usd("$3"), Ok(Nanos(3_000_000_000)));
        assert_eq!(Nanos::parse_usd("0.000000001"), Ok(Nanos(1)));
        assert_eq!(Nanos::parse_usd(".5"), Ok(Nanos(500_000_000)));
        assert!(matches!(
            Nanos::parse_usd("-1"),
            Err(ParseMoneyError::Negative(_))
        ));
        assert!(matches!(
            Nanos::parse_usd("0.0000000001"),
            Err(ParseMoneyError::TooPrecise(..))
        ));
        assert!(matches!(
            Nanos::parse_usd("1e3"),
            Err(ParseMoneyError::Syntax(_))
        ));
        assert!(matches!(
            Nanos::parse_usd(""),
            Err(ParseMoneyError::Syntax(_))
        ));
        assert!(matches!(
            Nanos::parse_usd("."),
            Err(ParseMoneyError::Syntax(_))
        ));
        assert!(matches!(
            Nanos::parse_usd("1000000001"),
            Err(ParseMoneyError::TooLarge(..))
        ));
    }

    #[test]
    fn prices_and_costs() {
        let p = Price::parse_usd_per_mtok("1.25").expect("price");
        assert_eq!(p, Price(1_250_000));
        assert_eq!(p.cost(1_000_000), Nanos(1_250_000_000));
        assert_eq!(p.cost(1), Nanos(1_250));
        let tiny = Price::parse_usd_per_mtok("0.0375").expect("price");
        assert_eq!(tiny.cost(1), Nanos(38)); // 37.5 nano-dollars rounds up
        assert_eq!(tiny.cost(2), Nanos(75));
        assert_eq!(Price(0).cost(u64::MAX), Nanos(0));
        assert!(matches!(
            Price::parse_usd_per_mtok("100001"),
            Err(ParseMoneyError::TooLarge(..))
        ));
    }

    #[test]
    fn displays() {
        assert_eq!(Nanos(12_500_000_000).to_string(), "$12.50");
        assert_eq!(Nanos(1).to_string(), "$0.000000001");
        assert_eq!(Nanos(-1_500_000_000).to_string(), "$-1.50");
        assert_eq!(Price(1_250_000).to_string(), "$1.25/Mtok");
    }

    proptest! {
        #[test]
        fn cost_is_additive_within_rounding(a in 0u64..10_000_000, b in 0u64..10_000_000, p in 0u64..100_000_000_000) {
            let price = Price(p);
            let whole = price.cost(a + b).0;
            let parts = price.cost(a).0 + price.cost(b).0;
            prop_assert!(parts >= whole && parts - whole <= 1);
        }

        #[test]
        fn display_round_trips(n in 0i64..1_000_000_000_000_000) {
            let s = Nanos(n).to_string();
            prop_assert_eq!(Nanos::parse_usd(&s), Ok(Nanos(n)));
        }
    }
}

#[cfg(test)]
mod human_tests {
    use super::Nanos;

    #[test]
    fn money_for_people() {
        assert_eq!(Nanos(129_620_003).human(), "$0.13");
        assert_eq!(Nanos(12_500_000_000).human(), "$12.50");
        assert_eq!(Nanos(1_000_000_000).human(), "$1.00");
        assert_eq!(Nanos(0).human(), "$0.00");
        assert_eq!(Nanos(1_296_123).human(), "$0.001296");
        assert_eq!(Nanos(9_999_999).human(), "$0.01");
        assert_eq!(Nanos(5).human(), "$0.000000005");
        assert_eq!(Nanos(-129_620_003).human(), "-$0.13");
    }
}
