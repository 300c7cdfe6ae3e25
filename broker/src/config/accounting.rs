//! `[accounting]`: what happens after a request is admitted, until its spend is stored
//! ([`crate::accounting`]).

use super::{ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAccounting {
    /// Finished requests that may wait to be settled before admission refuses new ones (503).
    settlement_queue_capacity: Option<Spanned<u64>>,
}

#[derive(Clone, Debug)]
pub struct AccountingConfig {
    /// Finished requests that may wait in the settlement queue; while it holds this many (the store has
    /// been failing), admission answers 503 `store_unavailable`. Default
    /// [`crate::accounting::DEFAULT_CAPACITY`].
    pub settlement_queue_capacity: usize,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            settlement_queue_capacity: crate::accounting::DEFAULT_CAPACITY,
        }
    }
}

/// The most finished requests the queue may hold (each is a few hundred bytes to a few KiB in memory).
const MAX_CAPACITY: u64 = 10_000_000;

pub fn validate(s: &Source, r: &RawAccounting) -> Result<AccountingConfig, ConfigError> {
    let settlement_queue_capacity = match &r.settlement_queue_capacity {
        None => crate::accounting::DEFAULT_CAPACITY,
        Some(c) => {
            usize::try_from(s.in_range(c, "accounting.settlement_queue_capacity", MAX_CAPACITY)?)
                .unwrap_or(usize::MAX)
        }
    };
    Ok(AccountingConfig {
        settlement_queue_capacity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AccountingConfig, ConfigError> {
        let s = Source {
            path: "broker.toml".into(),
            text: text.to_string(),
        };
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            accounting: RawAccounting,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        validate(&s, &doc.accounting)
    }

    #[test]
    fn capacity_defaults_is_bounded_and_named_with_its_line() {
        assert_eq!(
            load("").expect("default").settlement_queue_capacity,
            crate::accounting::DEFAULT_CAPACITY
        );
        assert_eq!(
            load("[accounting]\nsettlement_queue_capacity = 8\n")
                .expect("8")
                .settlement_queue_capacity,
            8
        );
        for bad in ["0", "10000001"] {
            let e = load(&format!(
                "[accounting]\n\nsettlement_queue_capacity = {bad}\n"
            ))
            .expect_err(bad)
            .to_string();
            assert!(
                e.contains("accounting.settlement_queue_capacity") && e.contains(":3"),
                "{e}"
            );
        }
    }
}
