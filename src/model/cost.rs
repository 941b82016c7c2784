//! Pricing tokens into micro-dollars, and adding up what was spent, by kind of token and by
//! model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Price;

/// The most tokens one cost report may claim, per kind. No call comes near it (it would cost
/// millions of dollars); a larger count is a bug or a hostile task, refused with a warning
/// instead of wrapping or saturating every total it touches.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;

/// How spending reported without a model is listed by model (`cost --by model`, the TUI,
/// `/metrics`).
pub const NO_MODEL: &str = "(none)";

/// Dollars and tokens by kind: what some spending consisted of. `input_tokens` are the ones
/// billed at the full input price; tokens read from or written to a prompt cache are counted
/// apart because they are priced apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Totals saturate: a sum can never wrap around to a small number.
    pub fn add(&mut self, other: &Usage) {
        self.usd_micros = self.usd_micros.saturating_add(other.usd_micros);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(other.cache_write_tokens);
    }

    pub fn tokens(&self) -> u64 {
        [self.input_tokens, self.output_tokens, self.cache_read_tokens, self.cache_write_tokens]
            .into_iter()
            .fold(0, u64::saturating_add)
    }
}

/// One model's share of some spending (`None`: reported without a model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    pub model: Option<String>,
    pub usage: Usage,
}

impl ModelUsage {
    /// The model's name as views list it.
    pub fn label(&self) -> &str {
        self.model.as_deref().unwrap_or(NO_MODEL)
    }
}

/// Adds `usage` to the row of `model` in `rows` (one row per model, in order of first use).
pub fn add_to_model(rows: &mut Vec<ModelUsage>, model: Option<&str>, usage: &Usage) {
    match rows.iter_mut().find(|r| r.model.as_deref() == model) {
        Some(row) => row.usage.add(usage),
        None => rows.push(ModelUsage { model: model.map(str::to_string), usage: *usage }),
    }
}

/// Spending summed per model label, in name order: the one definition behind `cost --by model`,
/// `/metrics` and the TUI's snapshot, so they cannot disagree.
pub fn sum_by_model<'a>(rows: impl IntoIterator<Item = &'a ModelUsage>) -> BTreeMap<String, Usage> {
    let mut out: BTreeMap<String, Usage> = BTreeMap::new();
    for row in rows {
        out.entry(row.label().to_string()).or_default().add(&row.usage);
    }
    out
}

/// Token prices by model: the built-in table with the imported one and then the workflow's
/// `[pricing."model"]` tables on top.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    prices: BTreeMap<String, Price>,
}

/// What one cost report adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostDelta {
    pub usage: Usage,
    pub model: Option<String>,
    /// Tokens were given without dollars for a model the table does not know: counted as $0.
    pub unpriced: bool,
}

impl Pricing {
    /// Later tables override earlier ones, model by model.
    pub fn layered(tables: &[&BTreeMap<String, Price>]) -> Pricing {
        let mut prices = BTreeMap::new();
        for table in tables {
            prices.extend(table.iter().map(|(k, v)| (k.clone(), *v)));
        }
        Pricing { prices }
    }

    pub fn new(builtin: BTreeMap<String, Price>, overrides: &BTreeMap<String, Price>) -> Pricing {
        Pricing::layered(&[&builtin, overrides])
    }

    /// Every model and its price, in name order.
    pub fn entries(&self) -> &BTreeMap<String, Price> {
        &self.prices
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

    /// Dollars as reported win; otherwise tokens are priced by model, each kind at its price.
    pub fn price(&self, report: &crate::executor::CostReport) -> CostDelta {
        let mut usage = Usage {
            usd_micros: 0,
            input_tokens: report.input_tokens.unwrap_or(0),
            output_tokens: report.output_tokens.unwrap_or(0),
            cache_read_tokens: report.cache_read_tokens.unwrap_or(0),
            cache_write_tokens: report.cache_write_tokens.unwrap_or(0),
        };
        let mut unpriced = false;
        match (report.usd_micros, report.model.as_deref().and_then(|m| self.lookup(m))) {
            (Some(usd), _) => usage.usd_micros = usd,
            (None, Some(price)) => usage.usd_micros = tokens_cost(&usage, &price),
            (None, None) => unpriced = usage.tokens() > 0,
        }
        CostDelta { usage, model: report.model.clone(), unpriced }
    }
}

/// Σ tokens × price per million, rounded half up once, in micro-dollars.
fn tokens_cost(usage: &Usage, price: &Price) -> u64 {
    let parts = [
        (usage.input_tokens, price.input_usd_micros_per_mtok),
        (usage.output_tokens, price.output_usd_micros_per_mtok),
        (usage.cache_read_tokens, price.cache_read()),
        (usage.cache_write_tokens, price.cache_write()),
    ];
    let sum: u128 = parts.iter().map(|(tokens, per_mtok)| u128::from(*tokens) * u128::from(*per_mtok)).sum();
    u64::try_from((sum + 500_000) / 1_000_000).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::CostReport;

    fn sonnet() -> Price {
        Price {
            input_usd_micros_per_mtok: 3_000_000,
            output_usd_micros_per_mtok: 15_000_000,
            cache_read_usd_micros_per_mtok: Some(300_000),
            cache_write_usd_micros_per_mtok: Some(3_750_000),
        }
    }

    fn pricing() -> Pricing {
        Pricing::new(BTreeMap::from([("claude-sonnet-4-5".to_string(), sonnet())]), &BTreeMap::new())
    }

    fn report(usd: Option<u64>, tokens: [u64; 4], model: Option<&str>) -> CostReport {
        CostReport::of(model, usd, tokens)
    }

    #[test]
    fn every_kind_of_token_is_priced_at_its_own_price() {
        let cases: &[(CostReport, u64, bool)] = &[
            // 1200 × $3 + 340 × $15 per million.
            (report(None, [1200, 340, 0, 0], Some("claude-sonnet-4-5-20250929")), 3_600 + 5_100, false),
            // Cache reads at 0.1×, cache writes at 1.25× the input price.
            (report(None, [0, 0, 1_000_000, 0], Some("claude-sonnet-4-5")), 300_000, false),
            (report(None, [0, 0, 0, 1_000_000], Some("claude-sonnet-4-5")), 3_750_000, false),
            // 9 × $3 + 510 × $15 + 36391 × $0.30 + 12871 × $3.75 per million = 66860.55 µ$.
            (report(None, [9, 510, 36_391, 12_871], Some("claude-sonnet-4-5")), 66_861, false),
            // Rounded once over the sum, half up: one input token and one cache read, 3.3 µ$.
            (report(None, [1, 0, 1, 0], Some("claude-sonnet-4-5")), 3, false),
            (report(Some(12_300), [10, 0, 0, 0], Some("mystery")), 12_300, false),
            (report(None, [10, 0, 0, 0], Some("mystery")), 0, true),
            (report(None, [0, 0, 5, 0], None), 0, true),
            (report(None, [0, 0, 0, 0], None), 0, false),
        ];
        for (r, usd, unpriced) in cases {
            let delta = pricing().price(r);
            assert_eq!((delta.usage.usd_micros, delta.unpriced), (*usd, *unpriced), "{r:?}");
        }
    }

    #[test]
    fn a_missing_cache_price_is_the_input_price() {
        let plain =
            Price { input_usd_micros_per_mtok: 2_000_000, output_usd_micros_per_mtok: 8_000_000, ..Price::default() };
        let p = Pricing::new(BTreeMap::from([("m".to_string(), plain)]), &BTreeMap::new());
        assert_eq!(p.price(&report(None, [0, 0, 1_000_000, 1_000_000], Some("m"))).usage.usd_micros, 4_000_000);
    }

    #[test]
    fn later_tables_win_and_the_longest_prefix_prices_a_dated_model() {
        let cheap = Price { input_usd_micros_per_mtok: 1, ..Price::default() };
        let builtin =
            BTreeMap::from([("claude-sonnet-4".to_string(), sonnet()), ("claude-sonnet-4-5".to_string(), sonnet())]);
        let imported = BTreeMap::from([("claude-sonnet-4-5".to_string(), cheap)]);
        let p = Pricing::layered(&[&builtin, &imported, &BTreeMap::new()]);
        assert_eq!(p.lookup("claude-sonnet-4-5-20250929"), Some(cheap));
        assert_eq!(p.lookup("claude-sonnet-4-20250514"), Some(sonnet()));
        assert_eq!(p.lookup("gpt-4o"), None);
    }

    #[test]
    fn sums_saturate_and_group_by_model_label() {
        let mut rows = Vec::new();
        let big = Usage { usd_micros: u64::MAX - 1, input_tokens: 7, ..Usage::default() };
        add_to_model(&mut rows, Some("a"), &big);
        add_to_model(&mut rows, Some("a"), &big);
        add_to_model(&mut rows, None, &Usage { output_tokens: 3, ..Usage::default() });
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].usage.usd_micros, u64::MAX, "saturated, not wrapped");
        let summed = sum_by_model(rows.iter().chain(rows.iter()));
        assert_eq!(summed.keys().map(String::as_str).collect::<Vec<_>>(), vec![NO_MODEL, "a"]);
        assert_eq!(summed["a"].input_tokens, 28);
        assert_eq!(summed[NO_MODEL].output_tokens, 6);
    }
}
