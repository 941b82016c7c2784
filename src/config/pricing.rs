//! Price tables: the built-in one (`assets/pricing.toml`, compiled into the binary), the one
//! `gaffer pricing import` keeps in the state dir (`pricing.toml`, converted from LiteLLM's
//! `model_prices_and_context_window.json`), and their TOML form. The workflow file's
//! `[pricing."model"]` tables are read by the parser; `model::cost::Pricing` layers them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::Price;
use crate::model::money::{format_usd, json_number_micros, parse_usd_micros};

const BUILTIN: &str = include_str!("../../assets/pricing.toml");

/// The imported table, in the state dir. It overrides the built-in one, so a refresh from
/// LiteLLM wins over the list prices this binary was built with; a workflow file's own
/// `[pricing]` still wins over both.
pub const IMPORTED_FILE: &str = "pricing.toml";

/// A LiteLLM file larger than this is refused (the real one is a few MiB).
pub const MAX_IMPORT_BYTES: u64 = 64 * 1024 * 1024;

/// Model names longer than this are skipped on import (they are keys people read and type).
const MAX_MODEL_NAME: usize = 200;

/// The built-in prices. The file ships with the binary and is checked by a test, so a broken
/// entry is a build-time bug; here it is skipped rather than taking gaffer down.
pub fn builtin() -> BTreeMap<String, Price> {
    parse_table(BUILTIN).unwrap_or_default()
}

pub fn imported_path(state_dir: &Path) -> PathBuf {
    state_dir.join(IMPORTED_FILE)
}

/// The table `gaffer pricing import` wrote, or an empty one if there is none.
pub fn imported(state_dir: &Path) -> Result<BTreeMap<String, Price>, String> {
    let path = imported_path(state_dir);
    match read_imported(state_dir) {
        Ok(text) => parse_table(&text).map_err(|e| {
            format!(
                "{}: {e} (run `gaffer pricing import FILE` again, or delete it to use the built-in prices)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The imported table's text, read through the state dir (never via a link); `NotFound` when
/// there is no state dir or no table.
fn read_imported(state_dir: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let dir = match crate::state_dir::StateDir::open(state_dir) {
        Ok(dir) => dir,
        Err(crate::state_dir::StateDirError::Missing(_)) => return Err(std::io::ErrorKind::NotFound.into()),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let mut text = String::new();
    dir.open_file(IMPORTED_FILE, crate::state_dir::Access::Read)?.read_to_string(&mut text)?;
    Ok(text)
}

/// A `[models."name"]` table of `*_per_mtok` dollar amounts.
pub fn parse_table(text: &str) -> Result<BTreeMap<String, Price>, String> {
    let doc: toml_edit::Document<String> = text.parse().map_err(|e: toml_edit::TomlError| e.to_string())?;
    let models = doc.get("models").and_then(|m| m.as_table_like()).ok_or("no [models] table")?;
    let mut out = BTreeMap::new();
    for (name, item) in models.iter() {
        let table = item.as_table_like().ok_or_else(|| format!("models.{name} is not a table"))?;
        let field = |key: &str| -> Result<Option<u64>, String> {
            let Some(value) = table.get(key) else { return Ok(None) };
            let value = value.as_value().ok_or_else(|| format!("models.{name}.{key} is not a number"))?;
            parse_usd_micros(value.to_string().trim()).map(Some).map_err(|e| format!("models.{name}.{key}: {e}"))
        };
        let required = |key: &str| field(key)?.ok_or_else(|| format!("models.{name}.{key} is missing"));
        out.insert(
            name.to_string(),
            Price {
                input_usd_micros_per_mtok: required("input_per_mtok")?,
                output_usd_micros_per_mtok: required("output_per_mtok")?,
                cache_read_usd_micros_per_mtok: field("cache_read_per_mtok")?,
                cache_write_usd_micros_per_mtok: field("cache_write_per_mtok")?,
            },
        );
    }
    Ok(out)
}

/// The prices LiteLLM's `model_prices_and_context_window.json` gives per token, per million
/// tokens, and how many entries had no usable per-token price (images, audio, embeddings
/// priced otherwise, the `sample_spec` template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub prices: BTreeMap<String, Price>,
    pub skipped: usize,
}

/// Reads LiteLLM's format: an object of model name → `input_cost_per_token`,
/// `output_cost_per_token`, and optionally `cache_read_input_token_cost`,
/// `cache_creation_input_token_cost` (dollars per token, JSON numbers).
pub fn from_litellm(text: &str) -> Result<Imported, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let entries = root.as_object().ok_or("expected a JSON object of model name → prices")?;
    let mut prices = BTreeMap::new();
    let mut skipped = 0;
    for (name, entry) in entries {
        match litellm_price(name, entry) {
            Some(price) => {
                prices.insert(name.clone(), price);
            }
            None => skipped += 1,
        }
    }
    if prices.is_empty() {
        return Err("no entry has `input_cost_per_token` and `output_cost_per_token`".to_string());
    }
    Ok(Imported { prices, skipped })
}

fn litellm_price(name: &str, entry: &Value) -> Option<Price> {
    let plain_name = !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && name != "sample_spec"
        && !name.chars().any(|c| c.is_control());
    if !plain_name {
        return None;
    }
    let per_mtok = |key: &str| -> Option<u64> {
        let number = entry.get(key)?.as_number()?;
        json_number_micros(&number.to_string(), 6)
    };
    Some(Price {
        input_usd_micros_per_mtok: per_mtok("input_cost_per_token")?,
        output_usd_micros_per_mtok: per_mtok("output_cost_per_token")?,
        cache_read_usd_micros_per_mtok: per_mtok("cache_read_input_token_cost"),
        cache_write_usd_micros_per_mtok: per_mtok("cache_creation_input_token_cost"),
    })
}

/// The TOML form [`parse_table`] reads, with `header` as its opening comment lines.
pub fn to_toml(prices: &BTreeMap<String, Price>, header: &str) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    for (name, p) in prices {
        out.push_str(&format!("\n[models.{}]\n", toml_string(name)));
        out.push_str(&format!("input_per_mtok = {}\n", format_usd(p.input_usd_micros_per_mtok)));
        out.push_str(&format!("output_per_mtok = {}\n", format_usd(p.output_usd_micros_per_mtok)));
        if let Some(v) = p.cache_read_usd_micros_per_mtok {
            out.push_str(&format!("cache_read_per_mtok = {}\n", format_usd(v)));
        }
        if let Some(v) = p.cache_write_usd_micros_per_mtok {
            out.push_str(&format!("cache_write_per_mtok = {}\n", format_usd(v)));
        }
    }
    out
}

/// A TOML basic string (names have no control characters: [`litellm_price`] skips those).
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses() {
        let table = parse_table(BUILTIN).expect("assets/pricing.toml parses");
        let sonnet = table.get("claude-sonnet-4-5").expect("sonnet listed");
        assert_eq!(sonnet.input_usd_micros_per_mtok, 3_000_000);
        assert_eq!(sonnet.output_usd_micros_per_mtok, 15_000_000);
        assert_eq!(sonnet.cache_read_usd_micros_per_mtok, Some(300_000), "0.1× input");
        assert_eq!(sonnet.cache_write_usd_micros_per_mtok, Some(3_750_000), "1.25× input");
        for (name, p) in table.iter().filter(|(n, _)| n.starts_with("claude-")) {
            assert_eq!(p.cache_read(), p.input_usd_micros_per_mtok / 10, "{name}: cache reads cost 0.1× input");
            assert_eq!(p.cache_write(), p.input_usd_micros_per_mtok * 5 / 4, "{name}: cache writes cost 1.25× input");
        }
        assert!(table.len() >= 10);
    }

    #[test]
    fn litellm_entries_convert_exactly_and_round_trip_through_toml() {
        let text = r#"{
            "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
            "claude-sonnet-4-5": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06},
            "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07},
            "dall-e-3": {"output_cost_per_pixel": 0.0},
            "weird\"name": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
        }"#;
        let imported = from_litellm(text).expect("imports");
        assert_eq!(imported.skipped, 2, "sample_spec and an entry without per-token prices");
        let sonnet = imported.prices["claude-sonnet-4-5"];
        assert_eq!(
            sonnet,
            Price {
                input_usd_micros_per_mtok: 3_000_000,
                output_usd_micros_per_mtok: 15_000_000,
                cache_read_usd_micros_per_mtok: Some(300_000),
                cache_write_usd_micros_per_mtok: Some(3_750_000),
            }
        );
        assert_eq!(imported.prices["gpt-4o-mini"].input_usd_micros_per_mtok, 150_000);
        let toml = to_toml(&imported.prices, "imported\nfrom a test");
        assert!(toml.starts_with("# imported\n# from a test\n"), "{toml}");
        assert_eq!(parse_table(&toml).expect("reads back"), imported.prices);
    }

    #[test]
    fn bad_imports_are_refused_with_a_reason() {
        assert!(from_litellm("[1, 2]").is_err());
        assert!(
            from_litellm("{\"a\": {\"mode\": \"chat\"}}").expect_err("nothing usable").contains("input_cost_per_token")
        );
        assert!(from_litellm("not json").expect_err("garbage").starts_with("not JSON"));
        let negative = r#"{"m": {"input_cost_per_token": -1, "output_cost_per_token": 1e-6}}"#;
        assert!(from_litellm(negative).is_err(), "a negative price is no price");
    }
}
