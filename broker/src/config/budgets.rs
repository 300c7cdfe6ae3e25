//! `[[budgets]]`: spend limits per token, principal, team or org over a window, with alert thresholds and
//! soft limits.

use super::source::{ConfigError, RawDecimal, Source};
use crate::governance::window::Window;
use serde::Deserialize;
use tollgate::Nanos;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    id: Spanned<String>,
    /// `token`, `principal`, `team` or `org`.
    scope: Spanned<String>,
    /// Only this principal/team/org (or jti); default: every one separately.
    #[serde(rename = "match")]
    matches: Option<String>,
    amount_usd: Spanned<RawDecimal>,
    /// `daily`, `weekly`, `monthly` (UTC calendar) or `lifetime`.
    window: Spanned<String>,
    /// Percentages of `amount_usd` that each emit one alert per window (`[alerts]`), e.g. `[50, 80, 100]`.
    /// Default: none.
    thresholds: Option<Spanned<Vec<u32>>>,
    /// A soft limit: reaching it emits one alert per window and refuses nothing. Default: none.
    soft_usd: Option<Spanned<RawDecimal>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Token,
    Principal,
    Team,
    Org,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Token => "token",
            Scope::Principal => "principal",
            Scope::Team => "team",
            Scope::Org => "org",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BudgetConfig {
    pub id: String,
    pub scope: Scope,
    pub matches: Option<String>,
    pub amount: Nanos,
    pub window: Window,
    /// Percentages of `amount` that alert (once per window), ascending.
    pub thresholds: Vec<u32>,
    /// The soft limit: alerts, never refuses.
    pub soft: Option<Nanos>,
}

pub(super) fn validate(
    s: &Source,
    raw: &[Spanned<RawBudget>],
) -> Result<Vec<BudgetConfig>, ConfigError> {
    let mut out: Vec<BudgetConfig> = Vec::new();
    for b in raw {
        let b = b.get_ref();
        let id = b.id.get_ref();
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        {
            return Err(s.error_at(
                b.id.span(),
                "budgets.id",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if out.iter().any(|o| &o.id == id) {
            return Err(s.error_at(
                b.id.span(),
                "budgets.id",
                format_args!("duplicate budget id {id:?}"),
            ));
        }
        let scope = match b.scope.get_ref().as_str() {
            "token" => Scope::Token,
            "principal" => Scope::Principal,
            "team" => Scope::Team,
            "org" => Scope::Org,
            other => {
                return Err(s.error_at(
                    b.scope.span(),
                    "budgets.scope",
                    format_args!("unknown scope {other:?} (use token, principal, team or org)"),
                ));
            }
        };
        let window = Window::parse(b.window.get_ref()).ok_or_else(|| {
            s.error_at(
                b.window.span(),
                "budgets.window",
                format_args!(
                    "unknown window {:?} (use daily, weekly, monthly or lifetime)",
                    b.window.get_ref()
                ),
            )
        })?;
        let amount = Nanos::parse_usd(&b.amount_usd.get_ref().text())
            .map_err(|e| s.error_at(b.amount_usd.span(), "budgets.amount_usd", e))?;
        if let Some(m) = &b.matches
            && m.trim().is_empty()
        {
            return Err(s.error_at(b.id.span(), "budgets.match", "must not be empty"));
        }
        let soft = b
            .soft_usd
            .as_ref()
            .map(|v| {
                Nanos::parse_usd(&v.get_ref().text())
                    .map_err(|e| s.error_at(v.span(), "budgets.soft_usd", e))
            })
            .transpose()?;
        let mut thresholds = b
            .thresholds
            .as_ref()
            .map_or(Vec::new(), |t| t.get_ref().clone());
        validate_marks(&thresholds, soft, amount).map_err(|e| {
            match (&b.thresholds, &b.soft_usd) {
                (_, Some(v)) if e.starts_with("soft_usd") => {
                    s.error_at(v.span(), "budgets.soft_usd", e)
                }
                (Some(t), _) => s.error_at(t.span(), "budgets.thresholds", e),
                _ => s.error_at(b.id.span(), "budgets", e),
            }
        })?;
        thresholds.sort_unstable();
        out.push(BudgetConfig {
            id: id.clone(),
            scope,
            matches: b.matches.clone(),
            amount,
            window,
            thresholds,
            soft,
        });
    }
    Ok(out)
}

/// Validate a budget's `thresholds` (percent) and `soft_usd`: the marks it alerts at.
pub fn validate_marks(
    thresholds: &[u32],
    soft: Option<tollgate::Nanos>,
    amount: tollgate::Nanos,
) -> Result<(), String> {
    let mut seen = Vec::new();
    for t in thresholds {
        if !(1..=100).contains(t) {
            return Err(format!("{t} is not a percentage between 1 and 100"));
        }
        if seen.contains(t) {
            return Err(format!("{t} is listed twice"));
        }
        seen.push(*t);
    }
    if let Some(s) = soft
        && (s.0 <= 0 || s > amount)
    {
        return Err(format!(
            "soft_usd must be above zero and at most the budget's amount ({amount})"
        ));
    }
    Ok(())
}
