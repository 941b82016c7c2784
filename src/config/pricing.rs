//! The built-in pricing table, `assets/pricing.toml`, compiled into the binary.

use std::collections::BTreeMap;

use crate::config::Price;
use crate::model::money::parse_usd_micros;

const BUILTIN: &str = include_str!("../../assets/pricing.toml");

/// The built-in prices. The file ships with the binary and is checked by a test, so a broken
/// entry is a build-time bug; here it is skipped rather than taking gaffer down.
pub fn builtin() -> BTreeMap<String, Price> {
    parse_table(BUILTIN).unwrap_or_default()
}

fn parse_table(text: &str) -> Result<BTreeMap<String, Price>, String> {
    let doc: toml_edit::Document<String> = text.parse().map_err(|e: toml_edit::TomlError| e.to_string())?;
    let models = doc.get("models").and_then(|m| m.as_table_like()).ok_or("no [models] table")?;
    let mut out = BTreeMap::new();
    for (name, item) in models.iter() {
        let table = item.as_table_like().ok_or_else(|| format!("models.{name} is not a table"))?;
        let field = |key: &str| -> Result<u64, String> {
            let value =
                table.get(key).and_then(|v| v.as_value()).ok_or_else(|| format!("models.{name}.{key} is missing"))?;
            let raw = value.to_string();
            parse_usd_micros(raw.trim())
        };
        out.insert(
            name.to_string(),
            Price {
                input_usd_micros_per_mtok: field("input_per_mtok")?,
                output_usd_micros_per_mtok: field("output_per_mtok")?,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_table_parses() {
        let table = super::parse_table(super::BUILTIN).expect("assets/pricing.toml parses");
        let sonnet = table.get("claude-sonnet-4-5").expect("sonnet listed");
        assert_eq!(sonnet.input_usd_micros_per_mtok, 3_000_000);
        assert_eq!(sonnet.output_usd_micros_per_mtok, 15_000_000);
        assert!(table.len() >= 5);
    }
}
