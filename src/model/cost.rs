//! Pricing tokens into micro-dollars, and adding up what an attempt cost.

use std::collections::BTreeMap;

use crate::config::Price;

/// Token prices by model: the built-in table (`assets/pricing.toml`) with the workflow's
/// `[pricing."model"]` tables on top.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    prices: BTreeMap<String, Price>,
}

/// What one cost report adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostDelta {
    pub usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model: Option<String>,
    /// Tokens were given without dollars for a model the table does not know: counted as $0.
    pub unpriced: bool,
}

/// What one attempt cost so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptCost {
    pub usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model: Option<String>,
}

impl AttemptCost {
    pub fn add(&mut self, delta: &CostDelta) {
        self.usd_micros = self.usd_micros.saturating_add(delta.usd_micros);
        self.input_tokens = self.input_tokens.saturating_add(delta.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(delta.output_tokens);
        if delta.model.is_some() {
            self.model = delta.model.clone();
        }
    }
}

impl Pricing {
    pub fn new(builtin: BTreeMap<String, Price>, overrides: &BTreeMap<String, Price>) -> Pricing {
        let mut prices = builtin;
        prices.extend(overrides.iter().map(|(k, v)| (k.clone(), *v)));
        Pricing { prices }
    }

    /// The price of `model`: an exact entry, else the longest entry it starts with, so a dated
    /// release (`claude-sonnet-4-5-20250929`) takes its family's price.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.prices.get(model) {
            return Some(*p);
        }
        self.prices
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }

    /// Dollars as reported win; otherwise tokens are priced by model.
    pub fn price(&self, report: &crate::executor::CostReport) -> CostDelta {
        let input = report.input_tokens.unwrap_or(0);
        let output = report.output_tokens.unwrap_or(0);
        let mut delta = CostDelta {
            usd_micros: 0,
            input_tokens: input,
            output_tokens: output,
            model: report.model.clone(),
            unpriced: false,
        };
        match (report.usd_micros, report.model.as_deref().and_then(|m| self.lookup(m))) {
            (Some(usd), _) => delta.usd_micros = usd,
            (None, Some(price)) => {
                delta.usd_micros = tokens_cost(input, price.input_usd_micros_per_mtok)
                    .saturating_add(tokens_cost(output, price.output_usd_micros_per_mtok))
            }
            (None, None) => delta.unpriced = input + output > 0,
        }
        delta
    }
}

/// `tokens * price_per_million / 1e6`, rounded half up, in micro-dollars.
fn tokens_cost(tokens: u64, usd_micros_per_mtok: u64) -> u64 {
    let micros = (u128::from(tokens) * u128::from(usd_micros_per_mtok) + 500_000) / 1_000_000;
    u64::try_from(micros).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::CostReport;

    fn pricing() -> Pricing {
        let sonnet = Price { input_usd_micros_per_mtok: 3_000_000, output_usd_micros_per_mtok: 15_000_000 };
        Pricing::new(BTreeMap::from([("claude-sonnet-4-5".to_string(), sonnet)]), &BTreeMap::new())
    }

    #[test]
    fn tokens_are_priced_by_model_family() {
        let report = CostReport {
            usd_micros: None,
            input_tokens: Some(1200),
            output_tokens: Some(340),
            model: Some("claude-sonnet-4-5-20250929".into()),
        };
        let delta = pricing().price(&report);
        assert_eq!(delta.usd_micros, 3_600 + 5_100);
        assert!(!delta.unpriced);
    }

    #[test]
    fn reported_dollars_win_and_unknown_models_are_flagged() {
        let report = CostReport {
            usd_micros: Some(12_300),
            input_tokens: Some(10),
            output_tokens: None,
            model: Some("mystery".into()),
        };
        assert_eq!(pricing().price(&report).usd_micros, 12_300);
        let report =
            CostReport { usd_micros: None, input_tokens: Some(10), output_tokens: None, model: Some("mystery".into()) };
        assert!(pricing().price(&report).unpriced);
    }
}
